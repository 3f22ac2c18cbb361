// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.UnixSocket;
import io.iovirt.linux.UnixSocketChannel;
import io.iovirt.nbd.NbdServerTest.Answer;
import io.iovirt.nbd.NbdServerTest.RawClient;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.StandardProtocolFamily;
import java.net.StandardSocketOptions;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ByteChannel;
import java.nio.channels.GatheringByteChannel;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The shutdown meeting a connection whose thread has just taken a request from the socket and not yet marked itself
 * busy: nothing waits unread, the thread looks idle. The shutdown closed the connection there, and the request it had
 * read was never answered; doc/proto.md asks for ESHUTDOWN. The test holds the thread in that window with a channel
 * whose read, once it has taken a whole request header, waits for the test's go-ahead before it returns.
 */
@Timeout(value = 120, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class NbdShutdownWindowTest {
    @TempDir
    Path dir;

    @Test
    void aReadTakenFromTheSocketAsTheShutdownBeginsGetsEshutdown() throws Exception {
        window(Nbd.CMD_READ);
    }

    @Test
    void aWriteWhosePayloadHasNotComeGetsEshutdown() throws Exception {
        window(Nbd.CMD_WRITE);
    }

    private void window(int type) throws Exception {
        Path img = dir.resolve("g.raw");
        try (var f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        Path sock = dir.resolve("g.sock");
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startUnix(dir.resolve("listener.sock"), 8);
                ServerSocketChannel l = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            s.addExport(new NbdExport("g", image, false));
            l.bind(UnixDomainSocketAddress.of(sock));
            SocketChannel client = SocketChannel.open(StandardProtocolFamily.UNIX);
            client.connect(UnixDomainSocketAddress.of(sock));
            SocketChannel accepted = l.accept();
            HeldChannel held = new HeldChannel(accepted, new NbdChannel.Input() {
                /** Nothing the client sent waits unread at any point the server asks (the test's steps). */
                @Override
                public boolean ready() {
                    return false;
                }

                @Override
                public void stop() throws IOException {
                    accepted.shutdownInput();
                }
            });
            NbdConnection conn = new NbdConnection(s, new NbdChannel(held, held), 1);
            Thread reader = Thread.ofPlatform().daemon().start(conn::run);
            try (RawClient c = new RawClient(client)) {
                c.go("g");
                held.holdNextHeader();
                // a write's header alone: its payload would come after the shutdown
                long cookie = c.send(type, 0, 0, 4096, null);
                assertTrue(held.inWindow.await(60, TimeUnit.SECONDS), "the request's header was not read");

                conn.shutdown(); // nothing unread, the thread not yet busy
                held.go.countDown();

                Answer a = c.answer(false, 4096);
                assertEquals(cookie, a.cookie());
                assertEquals(Nbd.ESHUTDOWN, a.error(), "the request read as the shutdown began");
                assertTrue(c.closedByPeer(), "the connection ends once nothing is in flight");
            } finally {
                held.go.countDown();
                conn.close();
                reader.join(TimeUnit.SECONDS.toMillis(60));
            }
            assertFalse(reader.isAlive(), "the connection's thread ended");
        }
    }

    /**
     * Over TCP: the client's request reaches the server's socket after the shutdown found nothing unread and before
     * it stopped the input, while the connection's thread waits to read a request header. java.nio's
     * {@code shutdownInput}, which the TCP connections used, made the thread's read return the end of the stream at
     * once: the request was never read, never answered, and the close with its bytes unread reset the connection.
     * The kernel's SHUT_RD, as on a UNIX socket, lets the thread read it and answer it first.
     */
    @Test
    void aTcpRequestArrivingBetweenTheCheckAndTheStopGetsEshutdown() throws Exception {
        tcpWindow(0);
    }

    /** The same with the thread between two reads of one header: the header's rest arrives in the window. */
    @Test
    void theRestOfAHalfReadTcpHeaderArrivingInTheWindowGetsEshutdown() throws Exception {
        tcpWindow(10);
    }

    /**
     * The connection's thread waits before its read at byte {@code at} of a request header (the client has sent
     * those bytes already); the shutdown's readiness check finds nothing unread; the request's (other) bytes then
     * reach the server's socket; the shutdown stops the input; the thread reads on.
     */
    private void tcpWindow(int at) throws Exception {
        Path img = dir.resolve("t.raw");
        try (var f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startUnix(dir.resolve("listener.sock"), 8);
                UnixSocket l = UnixSocket.listenTcp(InetAddress.getLoopbackAddress(), 0, 1)) {
            s.addExport(new NbdExport("t", image, false));
            SocketChannel client =
                    SocketChannel.open(new InetSocketAddress(InetAddress.getLoopbackAddress(), l.localPort()));
            client.setOption(StandardSocketOptions.TCP_NODELAY, true);
            UnixSocketChannel server = new UnixSocketChannel(l.accept());
            NbdChannel.Input real = NbdChannel.inputOf(server);
            HeldChannel held = new HeldChannel(server, real);
            NbdConnection conn = new NbdConnection(s, new NbdChannel(held, held), 1);
            Thread reader = Thread.ofPlatform().daemon().start(conn::run);
            try (RawClient c = new RawClient(client)) {
                held.holdBeforeHeaderRead(at); // before the first header read begins (the handshake reads none)
                c.go("t");
                ByteBuffer request = ByteBuffer.allocate(28)
                        .putInt(Nbd.REQUEST_MAGIC)
                        .putShort((short) 0)
                        .putShort((short) Nbd.CMD_READ)
                        .putLong(7)
                        .putLong(0)
                        .putInt(4096)
                        .flip();
                c.raw(request.slice(0, at));
                assertTrue(held.inWindow.await(60, TimeUnit.SECONDS), "the thread did not come to the header read");
                held.inCheck(() -> {
                    try {
                        c.raw(request.slice(at, 28 - at));
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                    while (!real.ready()) { // until the bytes are in the server's socket: loopback, at once
                        Thread.onSpinWait();
                    }
                });

                conn.shutdown(); // idle, nothing in flight, nothing unread when it looks
                held.go.countDown();

                Answer a = c.answer(false, 4096);
                assertEquals(7, a.cookie());
                assertEquals(Nbd.ESHUTDOWN, a.error(), "the request that arrived as the shutdown began");
                assertEquals(-1, client.read(ByteBuffer.allocate(1)), "the connection ends cleanly (no reset)");
            } finally {
                held.go.countDown();
                conn.close();
                reader.join(TimeUnit.SECONDS.toMillis(60));
                server.release();
            }
            assertFalse(reader.isAlive(), "the connection's thread ended");
        }
    }

    /**
     * A real socket whose read, once asked to, waits for the test's go-ahead: either after the read that completes a
     * request header (28 bytes: taken from the socket, the connection's thread has not seen them yet), or before the
     * read at a given byte of a header (the thread waits for the client, idle). Its {@link NbdChannel.Input} is
     * {@code input}, with the test's step run inside the shutdown's readiness check when asked.
     */
    private static final class HeldChannel implements ByteChannel, GatheringByteChannel, NbdChannel.Input {
        private final ByteChannel ch;
        private final GatheringByteChannel out;
        private final NbdChannel.Input input;
        private volatile boolean holdAfter;
        private volatile int holdBefore = -1;
        private volatile Runnable inCheck;
        final CountDownLatch inWindow = new CountDownLatch(1);
        final CountDownLatch go = new CountDownLatch(1);

        <C extends ByteChannel & GatheringByteChannel> HeldChannel(C ch, NbdChannel.Input input) {
            this.ch = ch;
            this.out = ch;
            this.input = input;
        }

        void holdNextHeader() {
            holdAfter = true;
        }

        void holdBeforeHeaderRead(int at) {
            holdBefore = at;
        }

        /** Runs {@code step} in the next readiness check, after the check looked. */
        void inCheck(Runnable step) {
            inCheck = step;
        }

        @Override
        public int read(ByteBuffer dst) throws IOException {
            if (holdBefore >= 0 && dst.limit() == 28 && dst.position() == holdBefore) {
                holdBefore = -1;
                hold();
            }
            int n = ch.read(dst);
            if (holdAfter && !dst.hasRemaining() && dst.limit() == 28) {
                holdAfter = false;
                hold();
            }
            return n;
        }

        private void hold() {
            inWindow.countDown();
            try {
                go.await(60, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }

        @Override
        public boolean ready() {
            boolean r = input.ready();
            Runnable step = inCheck;
            if (step != null) {
                inCheck = null;
                step.run();
            }
            return r;
        }

        @Override
        public void stop() throws IOException {
            input.stop();
        }

        @Override
        public int write(ByteBuffer src) throws IOException {
            return out.write(src);
        }

        @Override
        public long write(ByteBuffer[] srcs, int offset, int length) throws IOException {
            return out.write(srcs, offset, length);
        }

        @Override
        public long write(ByteBuffer[] srcs) throws IOException {
            return out.write(srcs);
        }

        @Override
        public boolean isOpen() {
            return ch.isOpen();
        }

        @Override
        public void close() throws IOException {
            ch.close();
        }
    }
}
