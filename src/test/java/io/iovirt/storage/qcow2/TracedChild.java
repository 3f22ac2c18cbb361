// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.ok;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A child JVM run on a copy of an image under a command prefix (strace, which traces it or injects a fault), for the
 * tests that fail or kill a qcow2 writer at a chosen system call.
 */
final class TracedChild {
    private TracedChild() {}

    /** How the prefix (strace) ended, and what the child and it printed. */
    record Run(int exit, String output) {}

    /**
     * Runs {@code main} on {@code img} under {@code prefix}, its output logged in {@code dir} as {@code name.log};
     * fails if it does not end within 120 s.
     */
    static Run run(Path dir, Class<?> main, List<String> prefix, Path img, String name)
            throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>(prefix);
        cmd.addAll(IovirtCli.java(
                List.of("-XX:+UseSerialGC", "-XX:-UsePerfData"), main.getName(), List.of(img.toString())));
        Path log = dir.resolve(name + ".log");
        Process p = new ProcessBuilder(cmd)
                .redirectErrorStream(true)
                .redirectOutput(log.toFile())
                .start();
        try {
            assertTrue(p.waitFor(120, TimeUnit.SECONDS), name + " did not end in 120 s: " + Files.readString(log));
        } finally {
            // the traced JVM too: strace killed on a timeout detaches it, and it would go on writing the image
            p.descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
        }
        return new Run(p.exitValue(), Files.readString(log));
    }

    /** A sparse copy of {@code base} in {@code dir}. */
    static Path copy(Path dir, Path base, String name) throws IOException, InterruptedException {
        Path p = dir.resolve(name);
        ok("cp", "--sparse=always", base.toString(), p.toString());
        return p;
    }
}
