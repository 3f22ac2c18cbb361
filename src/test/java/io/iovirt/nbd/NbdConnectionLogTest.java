// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.testing.Await;
import io.iovirt.util.LogLimiter;
import io.iovirt.vhostuser.LogCapture;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A client connecting and hanging up in a loop does not flood the log: each such connection's line ("client
 * disconnected in the handshake", a broken pipe...) goes through the server's {@link LogLimiter}, so the loop makes a
 * burst of lines, then at most one a second, and a later line says how many were left out. Before, every connection
 * made its own line.
 */
class NbdConnectionLogTest {
    static final int CONNECTIONS = 300;

    @TempDir
    Path dir;

    @Test
    void aClientConnectingInALoopMakesABoundedNumberOfLogLines() throws Exception {
        Path img = dir.resolve("l.raw");
        Files.write(img, new byte[1 << 20]);
        Path sock = dir.resolve("l.sock");
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startUnix(sock, 64);
                LogCapture log = LogCapture.start("io.iovirt.nbd")) {
            s.addExport(new NbdExport("l", image, false));
            long start = System.nanoTime();
            for (int i = 0; i < CONNECTIONS; i++) {
                hangUp(sock);
            }
            Await.until(Duration.ofSeconds(60), "the connections to end", () -> s.connectionCount() == 0);
            // the bucket's bound for the time the loop took: its burst, and one line a second since
            long seconds = (System.nanoTime() - start) / 1_000_000_000L + 1;
            List<String> lines = clientLines(log);
            assertTrue(
                    lines.size() <= LogLimiter.BURST + seconds,
                    lines.size() + " lines for " + CONNECTIONS + " connections in " + seconds + " s: " + lines);
            assertTrue(lines.size() >= 1, "the first connections are logged");
            // once the bucket has a token again, the next line says how many were left out
            Await.until(Duration.ofSeconds(60), "a line counting the suppressed ones", () -> {
                try {
                    hangUp(sock);
                } catch (java.io.IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
                return clientLines(log).stream().anyMatch(l -> l.contains("similar lines suppressed)"));
            });
        }
    }

    /** Connects and closes at once, as a scanner or a broken client in a retry loop does. */
    private static void hangUp(Path sock) throws java.io.IOException {
        try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX)) {
            ch.connect(UnixDomainSocketAddress.of(sock));
        }
    }

    private static List<String> clientLines(LogCapture log) {
        return log.all().stream().filter(l -> l.contains(" client #")).toList();
    }
}
