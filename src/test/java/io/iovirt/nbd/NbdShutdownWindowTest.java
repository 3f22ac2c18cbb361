// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.nbd.NbdServerTest.Answer;
import io.iovirt.nbd.NbdServerTest.RawClient;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import java.io.IOException;
import java.net.StandardProtocolFamily;
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
            HeldChannel held = new HeldChannel(l.accept());
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
     * A real socket whose read, once asked to, holds the first read that completes a request header (28 bytes) until
     * the test's go-ahead: the bytes are taken from the socket, the connection's thread has not seen them yet.
     */
    private static final class HeldChannel implements ByteChannel, GatheringByteChannel, NbdChannel.Input {
        private final SocketChannel ch;
        private volatile boolean hold;
        final CountDownLatch inWindow = new CountDownLatch(1);
        final CountDownLatch go = new CountDownLatch(1);

        HeldChannel(SocketChannel ch) {
            this.ch = ch;
        }

        void holdNextHeader() {
            hold = true;
        }

        @Override
        public int read(ByteBuffer dst) throws IOException {
            int n = ch.read(dst);
            if (hold && !dst.hasRemaining() && dst.limit() == 28) {
                hold = false;
                inWindow.countDown();
                try {
                    go.await(60, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
            return n;
        }

        /** Nothing the client sent waits unread at any point the server asks (the test's steps). */
        @Override
        public boolean ready() {
            return false;
        }

        @Override
        public void stop() throws IOException {
            ch.shutdownInput();
        }

        @Override
        public int write(ByteBuffer src) throws IOException {
            return ch.write(src);
        }

        @Override
        public long write(ByteBuffer[] srcs, int offset, int length) throws IOException {
            return ch.write(srcs, offset, length);
        }

        @Override
        public long write(ByteBuffer[] srcs) throws IOException {
            return ch.write(srcs);
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
