// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

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
import java.util.function.Predicate;
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
            log.assertLimited(CLIENT_LINE, start, CONNECTIONS, "connections");
            log.awaitSuppressedCount(CLIENT_LINE, () -> hangUp(sock));
        }
    }

    /** Connects and closes at once, as a scanner or a broken client in a retry loop does. */
    private static void hangUp(Path sock) throws java.io.IOException {
        try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX)) {
            ch.connect(UnixDomainSocketAddress.of(sock));
        }
    }

    /** A line about one client connection. */
    private static final Predicate<String> CLIENT_LINE = l -> l.contains(" client #");
}
