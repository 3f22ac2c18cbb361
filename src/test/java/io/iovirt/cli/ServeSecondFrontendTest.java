// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Two real QEMUs on one {@code serve blk} socket: the second waits (not refused) while the first is connected, the
 * server says so in its log and its statistics line, and the second is served as soon as the first exits.
 * QEMU runs with -S and no guest: the vhost-user handshake happens while its devices are realised.
 */
@Tag("peer")
class ServeSecondFrontendTest {
    static final Duration TIMEOUT = Duration.ofMinutes(3);

    @TempDir
    Path tmp;

    private ChildProcess qemu(Path socket, String name) {
        return ChildProcess.builder(
                        "qemu-system-x86_64",
                        "-M",
                        "q35,accel=tcg,memory-backend=mem",
                        "-m",
                        "64M",
                        "-object",
                        "memory-backend-memfd,id=mem,size=64M,share=on",
                        "-nographic",
                        "-display",
                        "none",
                        "-S",
                        "-monitor",
                        "none",
                        "-serial",
                        "none",
                        "-chardev",
                        "socket,id=c0,path=" + socket,
                        "-device",
                        "vhost-user-blk-pci,chardev=c0")
                .name(name)
                .log(tmp.resolve(name + ".log"))
                .directory(tmp)
                .start();
    }

    @Test
    void aSecondQemuWaitsUntilTheFirstExitsAndTheServerSaysSo() throws Exception {
        Require.program("qemu-system-x86_64", "apt-get install qemu-system-x86");
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[1 << 20]);
        Path socket = tmp.resolve("blk.sock");
        Path log = tmp.resolve("serve.log");
        Process serve = new ProcessBuilder(IovirtCli.serveBlk(image, socket, "--stats-interval", "1"))
                .redirectErrorStream(true)
                .redirectOutput(log.toFile())
                .start();
        try {
            Await.until(
                    TIMEOUT,
                    "serve blk listening",
                    () -> Files.exists(socket) && read(log).contains("serving "));
            try (ChildProcess first = qemu(socket, "qemu-first")) {
                Await.until(
                        TIMEOUT,
                        () -> "the first QEMU connected: " + read(log),
                        () -> read(log).contains("frontend pid " + first.pid() + " uid "));
                try (ChildProcess second = qemu(socket, "qemu-second")) {
                    Await.until(
                            TIMEOUT,
                            () -> "the server noticed the second QEMU: " + read(log),
                            () -> read(log)
                                    .contains("another frontend is connecting while frontend pid " + first.pid()));
                    Await.until(
                            TIMEOUT,
                            () -> "a statistics line saying a frontend waits: " + read(log),
                            () -> read(log).contains("another frontend waiting for it"));
                    assertTrue(second.isAlive(), "the second QEMU waits, it is not turned away: " + second.log());
                    first.stop(Duration.ofSeconds(30));
                    Await.until(
                            TIMEOUT,
                            () -> "the second QEMU served after the first exited: " + read(log),
                            () -> read(log).contains("frontend pid " + second.pid() + " uid "));
                    assertTrue(second.isAlive(), second.log());
                    assertTrue(!second.log().contains("vhost"), "QEMU reported no vhost-user error: " + second.log());
                }
            }
            new ProcessBuilder("kill", "-TERM", Long.toString(serve.pid()))
                    .start()
                    .waitFor();
            assertTrue(serve.waitFor(60, TimeUnit.SECONDS), read(log));
            assertEquals(0, serve.exitValue(), read(log));
        } finally {
            serve.destroyForcibly();
        }
        List<String> lines = Files.readAllLines(log);
        assertEquals(
                1,
                lines.stream()
                        .filter(l -> l.contains("another frontend is connecting"))
                        .count(),
                "logged once: " + String.join("\n", lines));
    }

    private static String read(Path p) {
        try {
            return Files.exists(p) ? Files.readString(p) : "";
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }
}
