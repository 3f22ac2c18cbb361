// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * The command that runs this build's CLI ({@code io.iovirt.cli.Main}) in a child JVM with the test class path, so
 * tests start iovirt as a real separate process (e.g. {@code serve blk}) without going through the launcher.
 */
public final class IovirtCli {

    private IovirtCli() {}

    public static List<String> command(List<String> args) {
        List<String> cmd = new ArrayList<>(List.of(
                Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "--enable-native-access=ALL-UNNAMED",
                "-XX:+UseSerialGC",
                "-cp",
                System.getProperty("java.class.path"),
                "io.iovirt.cli.Main"));
        cmd.addAll(args);
        return cmd;
    }

    public static List<String> command(String... args) {
        return command(List.of(args));
    }
}
