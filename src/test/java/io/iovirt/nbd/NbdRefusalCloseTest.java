// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.UnixSocket;
import io.iovirt.nbd.NbdServerTest.RawClient;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.testing.Await;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A TCP connection over the server's limit is refused with an orderly close: the client reads what the refusal sent
 * and then the end of the stream — not a reset. Before, a refusal closed its socket with the client's handshake bytes
 * unread (an EXPORT_NAME's name; everything a client sent when the refusals were full), and Linux answers such a
 * close with a reset: the client saw ECONNRESET instead of the end of the stream (and could lose the refusal's reply).
 */
@Timeout(value = 120, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class NbdRefusalCloseTest {
    @TempDir
    Path dir;

    /** Reads the server's greeting, then sends the client's flags and an option with {@code data}. */
    private static void flagsAndOption(SocketChannel ch, int option, byte[] data) throws IOException {
        write(
                ch,
                ByteBuffer.allocate(4 + 16 + data.length)
                        .putInt(Nbd.FLAG_FIXED_NEWSTYLE | Nbd.FLAG_NO_ZEROES)
                        .putLong(Nbd.IHAVEOPT)
                        .putInt(option)
                        .putInt(data.length)
                        .put(data)
                        .flip());
    }

    private static void write(SocketChannel ch, ByteBuffer b) throws IOException {
        while (b.hasRemaining()) {
            ch.write(b);
        }
    }

    private static SocketChannel connect(int port) throws IOException {
        SocketChannel ch = SocketChannel.open(new InetSocketAddress("127.0.0.1", port));
        ch.setOption(StandardSocketOptions.TCP_NODELAY, true);
        return ch;
    }

    /** Reads until the end of the stream: what came, or the failure (a reset) as an assertion error. */
    private static int readToEnd(SocketChannel ch, String what) {
        ByteBuffer b = ByteBuffer.allocate(64 << 10);
        int total = 0;
        try {
            while (true) {
                int n = ch.read(b.clear());
                if (n < 0) {
                    return total;
                }
                total += n;
            }
        } catch (IOException e) {
            throw new AssertionError(what + ": the refusal ended with " + e + " instead of the end of the stream", e);
        }
    }

    private NbdServer server(DiskImage image) throws IOException {
        NbdServer s = NbdServer.startTcp("127.0.0.1", 0, 1);
        s.addExport(new NbdExport("x", image, false));
        return s;
    }

    private DiskImage image() throws IOException {
        Path img = dir.resolve("r.raw");
        Files.write(img, new byte[1 << 20]);
        return Images.open(img, null, false, false);
    }

    /**
     * EXPORT_NAME has no error reply: the refused client is closed — after its name was read, so the close is the
     * end of its stream.
     */
    @Test
    void anExportNameOverTheLimitGetsTheEndOfTheStreamNotAReset() throws Exception {
        try (DiskImage image = image();
                NbdServer s = server(image);
                RawClient admitted = RawClient.tcp(s.port())) {
            admitted.go("x"); // the one connection allowed
            try (SocketChannel ch = connect(s.port())) {
                ByteBuffer g = ByteBuffer.allocate(18);
                while (g.hasRemaining()) {
                    assertTrue(ch.read(g) >= 0, "the refusal sends the greeting");
                }
                assertEquals(Nbd.NBDMAGIC, g.flip().getLong());
                flagsAndOption(ch, Nbd.OPT_EXPORT_NAME, "x".repeat(100).getBytes(StandardCharsets.UTF_8));
                assertEquals(0, readToEnd(ch, "EXPORT_NAME over the limit"));
            }
        }
    }

    /**
     * A connection closed at once, unanswered (the refusals are full, or the server is closing: here the latter, on a
     * connection accepted by the test once the client's handshake bytes had arrived), gets the end of the stream too.
     */
    @Test
    void aConnectionClosedUnansweredGetsTheEndOfTheStreamNotAReset() throws Exception {
        java.util.concurrent.ScheduledThreadPoolExecutor timer =
                new java.util.concurrent.ScheduledThreadPoolExecutor(1);
        try (UnixSocket listener = UnixSocket.listenTcp(java.net.InetAddress.getLoopbackAddress(), 0, 4);
                SocketChannel ch = connect(listener.localPort())) {
            // sent at once, without waiting for the greeting
            flagsAndOption(ch, Nbd.OPT_GO, new byte[] {0, 0, 0, 1, 'x', 0, 0});
            UnixSocket accepted = listener.accept();
            Await.until(Duration.ofSeconds(20), "the client's bytes to arrive", () -> {
                try {
                    return accepted.inputReady();
                } catch (io.iovirt.linux.LinuxException e) {
                    throw new AssertionError(e);
                }
            });
            NbdRefusals refusals = new NbdRefusals("test", 1, timer);
            refusals.close(); // from now on refusals close at once, unanswered
            refusals.refuse(NbdRefusals.Peer.of(accepted));
            assertEquals(0, readToEnd(ch, "a connection closed unanswered"));
        } finally {
            timer.shutdownNow();
        }
    }
}
