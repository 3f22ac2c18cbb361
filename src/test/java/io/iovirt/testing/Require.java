// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Prerequisites of a test. A missing one fails the test with what is missing and how to get it: a suite that skips
 * silently looks green on a machine where it proved nothing. {@code ./iovirt test} installs everything the suite needs
 * (scripts/install-deps.sh, scripts/install-dpdk.sh).
 */
public final class Require {
    private Require() {}

    /** Fails with "missing prerequisite: {@code what}" unless {@code condition} holds. */
    public static void that(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError("missing prerequisite: " + what);
        }
    }

    /** The program on the PATH, or a failure naming the package that provides it. */
    public static Path program(String name, String remedy) {
        for (String dir : System.getenv().getOrDefault("PATH", "/usr/bin:/bin").split(":")) {
            if (!dir.isEmpty() && Files.isExecutable(Path.of(dir, name))) {
                return Path.of(dir, name);
            }
        }
        throw new AssertionError("missing prerequisite: " + name + " is not on the PATH (" + remedy + ")");
    }

    /** True when {@code name} is an executable on the PATH. */
    public static boolean onPath(String name) {
        for (String dir : System.getenv().getOrDefault("PATH", "/usr/bin:/bin").split(":")) {
            if (!dir.isEmpty() && Files.isExecutable(Path.of(dir, name))) {
                return true;
            }
        }
        return false;
    }
}
