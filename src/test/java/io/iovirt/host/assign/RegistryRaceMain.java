// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.cli.Main;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

/**
 * A separate JVM for the concurrency tests: waits until the start file exists (so all racers start together), then
 * runs the real CLI with the remaining arguments and exits with its status.
 */
public final class RegistryRaceMain {
    private RegistryRaceMain() {}

    public static void main(String[] args) throws Exception {
        Path start = Path.of(args[0]);
        System.out.println("READY");
        System.out.flush();
        while (!Files.exists(start)) {
            Thread.onSpinWait();
        }
        System.exit(Main.commandLine().execute(Arrays.copyOfRange(args, 1, args.length)));
    }
}
