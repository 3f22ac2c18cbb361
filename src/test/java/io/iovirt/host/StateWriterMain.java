// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import java.nio.file.Path;
import java.util.List;

/** Writes one table into the state directory {@code args[0]}: run by StateStoreAccessTest under umask 000. */
public final class StateWriterMain {
    private StateWriterMain() {}

    public static void main(String[] args) {
        StateStore s = new StateStore(Path.of(args[0]));
        s.locked(() -> {
            s.write("t", List.<String[]>of(new String[] {"0000:03:10.0", "igbvf"}));
            return null;
        });
    }
}
