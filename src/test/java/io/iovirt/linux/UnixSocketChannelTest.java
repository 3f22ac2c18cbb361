// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import java.lang.foreign.Arena;
import java.lang.ref.WeakReference;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The channel's raw-address reads and writes (it remembers the memory of the direct buffers it was given): bytes land
 * at each buffer's position, whether the buffer is remembered, new, or was forgotten to make room for others, and
 * whether it is direct or on the heap; a buffer whose arena was closed is refused instead of being written to.
 */
@Timeout(30)
class UnixSocketChannelTest {

    /**
     * A TCP connection released with bytes of the client's still unread (a request sent after the server stopped
     * reading), and its replies not all sent yet (the client reads slowly): Linux answers such a close with a reset
     * and throws away what it had not sent — the client got part of the replies, then "Connection reset". With the
     * unread bytes dropped first, the close ends the stream after all of them.
     */
    @Test
    void aTcpConnectionReleasedWithUnreadBytesEndsTheClientsStreamAfterTheReplies() throws Exception {
        int reply = 32 << 10;
        try (UnixSocket l = UnixSocket.listenTcp(InetAddress.getLoopbackAddress(), 0, 1);
                SocketChannel client = SocketChannel.open()) {
            client.setOption(StandardSocketOptions.SO_RCVBUF, 4096); // the replies wait in the server's socket
            client.connect(new InetSocketAddress(InetAddress.getLoopbackAddress(), l.localPort()));
            UnixSocketChannel server = new UnixSocketChannel(l.accept());
            try {
                client.write(ByteBuffer.wrap(new byte[100])); // never read by the server
                while (!server.inputReady()) { // loopback: arrived at once
                    Thread.onSpinWait();
                }
                ByteBuffer out = ByteBuffer.allocateDirect(reply);
                while (out.hasRemaining()) {
                    server.write(out);
                }
                server.close();
            } finally {
                server.release();
            }
            ByteBuffer got = ByteBuffer.allocate(reply + 1);
            while (got.position() < reply) {
                assertTrue(client.read(got) > 0, "the stream ended after " + got.position() + " bytes of the replies");
            }
            assertEquals(-1, client.read(got), "the stream ends after the replies, without a reset");
        }
    }

    @Test
    void readsAndGatheringWritesHonourEachBuffersPositionPastTheRememberedOnes() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        UnixSocketChannel a = new UnixSocketChannel(p[0]);
        UnixSocketChannel b = new UnixSocketChannel(p[1]);
        try {
            // more distinct buffers than the channel remembers, each used twice: after the first round every one
            // of the first KNOWN has been forgotten again
            int n = UnixSocketChannel.KNOWN + 8;
            List<ByteBuffer> out = new ArrayList<>();
            List<ByteBuffer> in = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                out.add(i % 3 == 0 ? ByteBuffer.allocate(64) : ByteBuffer.allocateDirect(64));
                in.add(i % 4 == 0 ? ByteBuffer.allocate(64) : ByteBuffer.allocateDirect(64));
            }
            for (int round = 0; round < 2; round++) {
                for (int i = 0; i < n; i++) {
                    ByteBuffer header =
                            ByteBuffer.allocateDirect(8).putInt(0, i).putInt(4, round);
                    ByteBuffer data = out.get(i).clear();
                    for (int k = 0; k < 64; k++) {
                        data.put(k, (byte) (i * 7 + k + round));
                    }
                    data.position(5 + round).limit(40); // only [5+round, 40) is sent
                    ByteBuffer[] gather = {header, data};
                    long sent = 0;
                    while (sent < 8 + 35 - round) {
                        sent += a.write(gather);
                    }
                    assertEquals(40, data.position(), "the written buffer's position moved past what was sent");

                    ByteBuffer h = ByteBuffer.allocate(8);
                    readFully(b, h);
                    assertEquals(i, h.getInt(0));
                    assertEquals(round, h.getInt(4));
                    ByteBuffer got = in.get(i).clear().position(3).limit(3 + 35 - round);
                    readFully(b, got);
                    byte[] want = new byte[35 - round];
                    for (int k = 0; k < want.length; k++) {
                        want[k] = (byte) (i * 7 + 5 + round + k + round);
                    }
                    byte[] have = new byte[want.length];
                    got.get(3, have);
                    assertArrayEquals(want, have, "buffer " + i + " round " + round);
                }
            }
        } finally {
            a.release();
            b.release();
        }
    }

    @Test
    void aBufferWhoseArenaWasClosedIsRefusedAndTheChannelGoesOn() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        UnixSocketChannel a = new UnixSocketChannel(p[0]);
        UnixSocketChannel b = new UnixSocketChannel(p[1]);
        try {
            Arena arena = Arena.ofShared();
            ByteBuffer gone = arena.allocate(16).asByteBuffer();
            a.write(gone.duplicate()); // remembered under another identity: a duplicate is another buffer
            a.write(gone); // remembered
            ByteBuffer sink = ByteBuffer.allocateDirect(32);
            readFully(b, sink);
            arena.close();
            assertThrows(IllegalStateException.class, () -> a.write(gone.clear()));
            assertThrows(IllegalStateException.class, () -> b.read(gone.clear()));
            ByteBuffer ok = ByteBuffer.allocateDirect(4).putInt(0, 0x1234abcd);
            a.write(ok);
            ByteBuffer r = ByteBuffer.allocateDirect(4);
            readFully(b, r);
            assertEquals(0x1234abcd, r.getInt(0));
        } finally {
            a.release();
            b.release();
        }
    }

    /**
     * A heap buffer larger than the staging area goes out in part; a buffer after it must then wait for the next
     * write: gathered behind the part, its bytes were counted as the heap buffer's (which moved past bytes never
     * sent) and sent again by the next write.
     */
    @Test
    void aHeapBufferLargerThanTheStagingAreaIsNotFollowedByTheNextBuffer() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        UnixSocketChannel a = new UnixSocketChannel(p[0]);
        UnixSocketChannel b = new UnixSocketChannel(p[1]);
        try {
            byte[] big = new byte[70_000]; // more than the 64 KiB staging area
            for (int i = 0; i < big.length; i++) {
                big[i] = (byte) (i * 31 + i / 256);
            }
            ByteBuffer tail = ByteBuffer.allocateDirect(10);
            for (int i = 0; i < 10; i++) {
                tail.put(i, (byte) (0xA0 + i));
            }
            ByteBuffer received = ByteBuffer.allocateDirect(big.length + 10);
            Thread reader = Thread.ofPlatform().start(() -> {
                try {
                    readFully(b, received);
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
            ByteBuffer[] gather = {ByteBuffer.wrap(big), tail};
            long sent = 0;
            while (sent < big.length + 10) {
                sent += a.write(gather);
            }
            reader.join();
            assertEquals(big.length, gather[0].position(), "the heap buffer's position");
            assertEquals(10, tail.position(), "the direct buffer's position");
            byte[] want = new byte[big.length + 10];
            System.arraycopy(big, 0, want, 0, big.length);
            for (int i = 0; i < 10; i++) {
                want[big.length + i] = (byte) (0xA0 + i);
            }
            byte[] have = new byte[want.length];
            received.get(0, have);
            assertArrayEquals(want, have, "the bytes in the stream, in the order of the buffers");
        } finally {
            a.release();
            b.release();
        }
    }

    /**
     * The channel remembers the direct buffers it was given without keeping them: once their owner drops them they
     * are collected (with their native memory) while the channel lives on. Before, each direction held the last 32
     * for the connection's life — NBD's payload buffers replaced by larger ones among them.
     */
    @Test
    void theBuffersItRemembersAreNotKeptReachable() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        UnixSocketChannel a = new UnixSocketChannel(p[0]);
        UnixSocketChannel b = new UnixSocketChannel(p[1]);
        try {
            List<WeakReference<ByteBuffer>> used = exchangeThroughFreshBuffers(a, b);
            Await.until(Duration.ofSeconds(20), "the dropped buffers to be collected", () -> {
                System.gc();
                return used.stream().allMatch(r -> r.get() == null);
            });
            ByteBuffer ok = ByteBuffer.allocateDirect(4).putInt(0, 0x5a5a1234);
            a.write(ok);
            ByteBuffer r = ByteBuffer.allocateDirect(4);
            readFully(b, r);
            assertEquals(0x5a5a1234, r.getInt(0), "the channel still works");
        } finally {
            a.release();
            b.release();
        }
    }

    /** Sends and receives through new direct buffers and drops them; returns weak references to them. */
    private static List<WeakReference<ByteBuffer>> exchangeThroughFreshBuffers(UnixSocketChannel a, UnixSocketChannel b)
            throws Exception {
        List<WeakReference<ByteBuffer>> used = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
            ByteBuffer out = ByteBuffer.allocateDirect(1 << 16).putInt(0, i);
            ByteBuffer in = ByteBuffer.allocateDirect(1 << 16);
            Thread reader = Thread.ofPlatform().start(() -> {
                try {
                    readFully(b, in);
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
            while (out.hasRemaining()) {
                a.write(out);
            }
            reader.join();
            assertEquals(i, in.getInt(0));
            used.add(new WeakReference<>(out));
            used.add(new WeakReference<>(in));
        }
        return used;
    }

    private static void readFully(UnixSocketChannel ch, ByteBuffer b) throws Exception {
        while (b.hasRemaining()) {
            if (ch.read(b) < 0) {
                throw new java.io.EOFException("peer closed with " + b.remaining() + " bytes to go");
            }
        }
    }
}
