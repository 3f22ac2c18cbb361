// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.pci.Bdf;
import java.nio.file.Path;
import java.util.List;

/** A separate JVM that assigns and releases devices in a loop, reporting each completed update on stdout. */
public final class RegistryChurnMain {
    private RegistryChurnMain() {}

    public static void main(String[] args) {
        AssignmentRegistry r = new AssignmentRegistry(Path.of(args[0]));
        Bdf churn = Bdf.parse("0000:7f:00.0");
        for (int i = 0; ; i++) {
            r.assign(churn, "churn-" + (i % 7), List.of());
            r.release(churn, null);
            System.out.println(i);
            System.out.flush();
        }
    }
}
