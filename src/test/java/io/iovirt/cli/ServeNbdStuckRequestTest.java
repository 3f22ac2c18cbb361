// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.testing.StoppableFuse;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code serve nbd} stopped while a client's request is stuck in image I/O (a FUSE file system that stops answering,
 * as a hung NFS server or a dying disk would): it exits 1 at once, saying so, with the image neither flushed nor
 * closed under the request. It flushed and closed the image after the server's wait for the connection — the flush
 * waited on the same file system, so the process never exited, and a descriptor closed under the request could have
 * been reused.
 */
@Tag("peer") // iovirt serve nbd, qemu-io, fuse2fs
@Timeout(value = 240, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class ServeNbdStuckRequestTest {
    static final Duration TIMEOUT = Duration.ofSeconds(60);

    @TempDir
    Path dir;

    @Test
    void stoppedWhileAReadIsStuckItExitsWithoutFlushingOrClosingTheImage() throws Exception {
        Path qemuIo = Require.program("qemu-io", "apt-get install qemu-utils");
        Path sock = dir.resolve("nbd.sock");
        try (StoppableFuse fs = StoppableFuse.mount(dir)) {
            Path image = fs.file("disk.raw", 4 << 20);
            try (ChildProcess serve = ChildProcess.builder(IovirtCli.command(
                            "serve",
                            "nbd",
                            "--image",
                            image.toString(),
                            "--socket",
                            sock.toString(),
                            "--format",
                            "raw"))
                    .name("iovirt serve nbd")
                    .log(dir.resolve("serve.log"))
                    .start()) {
                awaitServing(serve, sock, qemuIo);
                fs.stop(); // the next read of the image goes to the stopped daemon, not the page cache
                try (ChildProcess reader = ChildProcess.builder(
                                qemuIo.toString(), "-f", "raw", "nbd+unix:///?socket=" + sock, "-c", "read 1M 64k")
                        .name("qemu-io")
                        .log(dir.resolve("qemu-io.log"))
                        .start()) {
                    Await.until(
                            TIMEOUT,
                            () -> "a thread of serve nbd to wait for the stopped file system: " + threads(serve.pid()),
                            () -> threads(serve.pid()).contains(" D "));
                    assertEquals(
                            0,
                            new ProcessBuilder("kill", "-TERM", Long.toString(serve.pid()))
                                    .start()
                                    .waitFor());
                    assertTrue(
                            serve.waitFor(TIMEOUT),
                            "serve nbd did not exit while a request was stuck: " + serve.logTail(20));
                    assertEquals(1, serve.exitValue(), serve.log());
                    assertTrue(serve.log().contains("a request of a client is still in I/O on " + image), serve.log());
                    assertTrue(serve.log().contains("stopped; image not synced."), serve.log());
                } finally {
                    fs.resume();
                }
            }
        }
    }

    /** Each thread of {@code pid}: its state and the system call it is in (/proc/PID/task/TID/stat and syscall). */
    private static String threads(long pid) {
        StringBuilder out = new StringBuilder();
        try (var tasks = java.nio.file.Files.list(Path.of("/proc", Long.toString(pid), "task"))) {
            for (Path t : (Iterable<Path>) tasks::iterator) {
                try {
                    String stat = java.nio.file.Files.readString(t.resolve("stat"));
                    String call =
                            java.nio.file.Files.readString(t.resolve("syscall")).split(" ")[0];
                    // "tid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'
                    out.append(t.getFileName())
                            .append(' ')
                            .append(stat.charAt(stat.lastIndexOf(')') + 2))
                            .append(' ')
                            .append(call)
                            .append("; ");
                } catch (java.io.IOException e) {
                    // the thread ended
                }
            }
        } catch (java.io.IOException e) {
            return "(exited)";
        }
        return out.toString();
    }

    /** Waits until serve nbd answers on {@code sock}: a read through qemu-io succeeds. */
    private static void awaitServing(ChildProcess serve, Path sock, Path qemuIo) {
        Await.until(TIMEOUT, "serve nbd to serve on " + sock, serve, () -> {
            if (!sock.toFile().exists()) {
                return false;
            }
            try {
                Process p = new ProcessBuilder(
                                qemuIo.toString(), "-r", "-f", "raw", "nbd+unix:///?socket=" + sock, "-c", "read 0 4k")
                        .redirectErrorStream(true)
                        .start();
                p.getInputStream().readAllBytes();
                return p.waitFor() == 0;
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return false;
            }
        });
    }
}
