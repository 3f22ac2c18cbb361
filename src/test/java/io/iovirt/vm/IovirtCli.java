// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * The command that runs this build's CLI ({@code io.iovirt.cli.Main}) in a child JVM with the test class path, so
 * tests start iovirt as a real separate process (e.g. {@code serve blk}) without going through the launcher; and
 * {@link #java} for any other class's {@code main} run that way (the allocation tests' measuring child).
 */
public final class IovirtCli {

    private IovirtCli() {}

    public static List<String> command(List<String> args) {
        return java(List.of("-XX:+UseSerialGC"), "io.iovirt.cli.Main", args);
    }

    /** Any class's {@code main} in a child JVM with the test class path, native access and {@code jvmOptions}. */
    public static List<String> java(List<String> jvmOptions, String mainClass, List<String> args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.add("--enable-native-access=ALL-UNNAMED");
        cmd.addAll(jvmOptions);
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), mainClass));
        cmd.addAll(args);
        return cmd;
    }

    public static List<String> command(String... args) {
        return command(List.of(args));
    }

    /** {@code iovirt serve blk --image IMAGE --socket SOCKET} and then {@code options}, as {@link #command} runs it. */
    public static List<String> serveBlk(Path image, Path socket, String... options) {
        List<String> args =
                new ArrayList<>(List.of("serve", "blk", "--image", image.toString(), "--socket", socket.toString()));
        args.addAll(List.of(options));
        return command(args);
    }
}
