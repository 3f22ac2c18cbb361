// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * SIGTERM (what Ctrl-C's SIGINT does too) to the README's {@code iovirt demo} while it runs: nothing is left in the
 * temporary directory. The JVM's default handling used to end the process before the command's cleanup ran, leaving
 * the two 256 MiB disk images, the sockets and the guest's directory behind on every interrupted demo.
 */
@Tag("guest")
@Timeout(300)
class DemoSignalGuestTest {
    @TempDir
    Path dir;

    @Test
    void aDemoStoppedBySigtermLeavesNothingInTheTemporaryDirectory() throws Exception {
        Path tmp = Files.createDirectories(dir.resolve("tmp"));
        GuestImage.ensure(); // built (or found) before the child needs it
        try (ChildProcess demo = ChildProcess.builder(IovirtCli.java(
                        List.of("-XX:+UseSerialGC", "-Djava.io.tmpdir=" + tmp),
                        "io.iovirt.cli.Main",
                        List.of("demo", "--only", "disk", "--accel", "tcg", "--seconds", "30")))
                .name("iovirt demo")
                .log(dir.resolve("demo.log"))
                .start()) {
            // the images are written and the guest is being started: the most the demo has on disk
            Await.until(
                    Duration.ofSeconds(120),
                    "the demo's guest start",
                    () -> demo.log().contains("demo: booting the guest"));
            List<ProcessHandle> qemu = ProcessHandle.of(demo.pid())
                    .orElseThrow()
                    .descendants()
                    .filter(h -> h.info().command().orElse("").contains("qemu-system"))
                    .toList();

            new ProcessBuilder("kill", "-TERM", Long.toString(demo.pid()))
                    .start()
                    .waitFor();
            assertTrue(demo.waitFor(Duration.ofSeconds(60)), "demo did not stop on SIGTERM:\n" + demo.logTail(20));
            assertEquals(143, demo.exitValue(), demo.log()); // a signal's status, not success
            for (ProcessHandle q : qemu) {
                q.onExit().get(30, java.util.concurrent.TimeUnit.SECONDS); // throws TimeoutException if it lives on
            }
            try (Stream<Path> left = Files.list(tmp)) {
                assertEquals(List.of(), left.toList(), "left in the temporary directory");
            }
        }
    }
}
