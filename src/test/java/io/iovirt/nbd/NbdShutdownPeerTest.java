// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * QEMU's NBD client (an interactive qemu-io) across a server shutdown: its request in flight when the shutdown
 * begins is served, and a request it sends afterwards fails with ESHUTDOWN ("Cannot send after transport endpoint
 * shutdown") instead of a dropped connection.
 */
@Tag("peer")
@Timeout(value = 180, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class NbdShutdownPeerTest {
    static final Duration TIMEOUT = Duration.ofSeconds(30);

    @TempDir
    Path dir;

    /** Over a UNIX socket, and over loopback TCP (whose connections stop their input as UNIX ones do). */
    @ParameterizedTest(name = "tcp={0}")
    @ValueSource(booleans = {false, true})
    void qemuIoGetsEshutdownForARequestSentAfterTheShutdownBegan(boolean tcp) throws Exception {
        Path qemuIo = Require.program("qemu-io", "apt-get install qemu-utils");
        Path img = dir.resolve("q.raw");
        Files.write(img, new byte[1 << 20]);
        Path sock = dir.resolve("q.sock");
        StringBuffer out = new StringBuffer();
        Process p = null;
        Thread closer = null;
        try (DiskImage real = Images.open(img, null, false, false)) {
            GatedImage image = new GatedImage(real);
            NbdServer s = tcp ? NbdServer.startTcp("127.0.0.1", 0, 4) : NbdServer.startUnix(sock, 4);
            s.shutdownGrace(Duration.ofSeconds(60)); // the test's steps, however slow the machine, fit in it
            try {
                s.addExport(new NbdExport("q", image, false));
                String uri = tcp ? "nbd://127.0.0.1:" + s.port() + "/q" : "nbd+unix:///q?socket=" + sock;
                p = new ProcessBuilder(qemuIo.toString(), "-f", "raw", uri)
                        .redirectErrorStream(true)
                        .start();
                InputStream in = p.getInputStream();
                Thread reader = Thread.ofPlatform().daemon().start(() -> {
                    byte[] b = new byte[4096];
                    try {
                        for (int n; (n = in.read(b)) > 0; ) {
                            out.append(new String(b, 0, n, StandardCharsets.UTF_8));
                        }
                    } catch (java.io.IOException e) {
                        // qemu-io ended
                    }
                });
                OutputStream cmd = p.getOutputStream();
                Await.until(TIMEOUT, () -> "qemu-io to connect: " + out, () -> out.indexOf("qemu-io> ") >= 0);

                CountDownLatch held = image.hold();
                send(cmd, "aio_write -z 0 64k"); // a write of zeroes, held in the image
                assertTrue(held.await(30, TimeUnit.SECONDS), "the write of zeroes did not reach the image: " + out);
                closer = Thread.ofPlatform().start(s::close);
                Await.until(TIMEOUT, "the server to begin its shutdown", s::draining);

                send(cmd, "read 0 4k");
                Await.until(TIMEOUT, () -> "qemu-io's read to fail: " + out, () -> out.indexOf("read failed") >= 0);
                assertTrue(
                        out.indexOf("read failed: Cannot send after transport endpoint shutdown") >= 0,
                        "ESHUTDOWN expected: " + out);

                image.release();
                closer.join(TimeUnit.SECONDS.toMillis(30));
                assertFalse(closer.isAlive(), "close() returned once nothing was in flight");
                // qemu-io's output is a pipe: an aio completion's line is flushed with the next prompt or at exit
                send(cmd, "quit");
                assertTrue(p.waitFor(30, TimeUnit.SECONDS), "qemu-io did not quit: " + out);
                Await.until(TIMEOUT, () -> "qemu-io's output to end: " + out, () -> !reader.isAlive());
                assertTrue(
                        out.indexOf("wrote 65536/65536 bytes at offset 0") >= 0,
                        "the write in flight when the shutdown began was served: " + out);
            } finally {
                image.release();
                if (p != null) {
                    p.destroyForcibly();
                }
                s.close();
                if (closer != null) {
                    closer.join();
                }
            }
        }
    }

    private static void send(OutputStream cmd, String line) throws java.io.IOException {
        cmd.write((line + "\n").getBytes(StandardCharsets.UTF_8));
        cmd.flush();
    }
}
