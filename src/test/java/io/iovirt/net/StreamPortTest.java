// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.UnixSocket;
import io.iovirt.testing.Await;
import io.iovirt.testing.Frames;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** The stream port against a real UNIX socket peer speaking QEMU's framing (4-byte big-endian length, frame). */
@Timeout(60)
class StreamPortTest {
    static final String A = "52:54:00:00:00:0a";
    static final String B = "52:54:00:00:00:0b";

    @TempDir
    Path dir;

    Switch sw;
    StreamPort port;
    TestPort other;

    @BeforeEach
    void setUp() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        port = sw.addPort(new StreamPort(dir.resolve("s.sock")));
        other = sw.addPort(new TestPort("other"));
    }

    @AfterEach
    void tearDown() {
        sw.close();
    }

    static byte[] framed(byte[]... frames) {
        int n = 0;
        for (byte[] f : frames) {
            n += 4 + f.length;
        }
        ByteBuffer b = ByteBuffer.allocate(n);
        for (byte[] f : frames) {
            b.putInt(f.length).put(f);
        }
        return b.array();
    }

    static void send(UnixSocket s, byte[] bytes) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            s.send(a.allocateFrom(JAVA_BYTE, bytes), List.of());
        }
    }

    /** Reads exactly n bytes (or fewer at EOF). */
    static byte[] read(UnixSocket s, int n) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(n);
            UnixSocket.Received r = s.recvFully(buf, 0);
            return r.eof() ? new byte[0] : buf.toArray(JAVA_BYTE);
        }
    }

    static final Duration TIMEOUT = Duration.ofSeconds(20);

    static void await(BooleanSupplier cond, String what) {
        Await.until(TIMEOUT, what, cond);
    }

    private static int unreadByPort(UnixSocket peer) {
        try {
            return peer.unreadByPeer();
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    UnixSocket connect() throws Exception {
        UnixSocket s = UnixSocket.connect(port.path());
        s.setReceiveTimeout(Duration.ofSeconds(20));
        await(port::isLinkUp, "link up");
        return s;
    }

    @Test
    void framesFlowBothWaysWithTheLengthPrefix() throws Exception {
        try (UnixSocket peer = connect()) {
            byte[] f1 = Frames.ethernet(B, A, 60);
            byte[] f2 = Frames.ethernet(B, A, 1514);
            send(peer, framed(f1, f2)); // two frames in one write
            await(() -> other.stats().txPackets() == 2, "two frames at the other port");
            List<byte[]> got = other.takeSent();
            assertArrayEquals(f1, got.get(0));
            assertArrayEquals(f2, got.get(1));

            byte[] back = Frames.ethernet(A, B, 1000);
            other.inject(back);
            assertArrayEquals(framed(back), read(peer, 4 + 1000));
            PortStats s = port.stats();
            assertEquals(2, s.rxPackets());
            assertEquals(60 + 1514, s.rxBytes());
            assertEquals(1, s.txPackets());
            assertEquals(1000, s.txBytes());
        }
    }

    @Test
    void partialReadsAreReassembled() throws Exception {
        try (UnixSocket peer = connect()) {
            byte[] f = Frames.ethernet(B, A, 1514);
            byte[] wire = framed(f, f);
            int[] cuts = {1, 3, 4, 5, 700, 1518, 1519, 1521, 2000, wire.length};
            int from = 0;
            for (int cut : cuts) {
                send(peer, java.util.Arrays.copyOfRange(wire, from, cut));
                from = cut;
                // the port has read this piece before the next is sent: each piece arrives in a read of its own
                Await.until(TIMEOUT, "the port read the piece ending at byte " + cut, () -> unreadByPort(peer) == 0);
            }
            await(() -> other.stats().txPackets() == 2, "both frames");
            for (byte[] g : other.takeSent()) {
                assertArrayEquals(f, g);
            }
            assertEquals(0, port.stats().rxDropped());
        }
    }

    @Test
    void runtAndOversizedFramesAreDroppedButTheConnectionStays() throws Exception {
        try (UnixSocket peer = connect()) {
            byte[] good = Frames.ethernet(B, A, 64);
            send(peer, framed(new byte[5], new byte[0], Frames.ethernet(B, A, 9000), good));
            await(() -> other.stats().txPackets() == 1, "the good frame");
            assertArrayEquals(good, other.takeSent().get(0));
            PortStats s = port.stats();
            assertEquals(2, s.get(PortStat.RX_DROPPED_RUNT));
            assertEquals(1, s.get(PortStat.RX_DROPPED_OVERSIZE));
            assertTrue(port.isLinkUp());
        }
    }

    @Test
    void aBogusLengthDropsTheConnectionAndThePortTakesTheNextPeer() throws Exception {
        try (UnixSocket peer = connect()) {
            send(peer, framed(Frames.ethernet(B, A, 60)));
            await(() -> other.stats().txPackets() == 1, "first frame");
            assertEquals(port.index(), sw.macTable().lookup(Mac.parse(A), sw.now()));
            send(peer, new byte[] {(byte) 0x7f, (byte) 0xff, (byte) 0xff, (byte) 0xff, 1, 2, 3});
            assertEquals(0, read(peer, 1).length, "the port closed the connection");
            await(() -> !port.isLinkUp(), "link down");
            assertEquals(1, port.stats().get(PortStat.RX_DROPPED_MALFORMED));
            assertEquals(-1, sw.macTable().lookup(Mac.parse(A), sw.now()), "its addresses were forgotten");
        }
        try (UnixSocket again = connect()) {
            byte[] f = Frames.ethernet(B, A, 100);
            send(again, framed(f));
            await(() -> other.stats().txPackets() == 2, "frame over the new connection");
            assertEquals(2, port.connections());
        }
        // a negative length (top bit set) is as bogus as a huge one
        try (UnixSocket third = connect()) {
            send(third, new byte[] {(byte) 0x80, 0, 0, 0});
            assertEquals(0, read(third, 1).length);
            await(() -> port.stats().get(PortStat.RX_DROPPED_MALFORMED) == 2, "second malformed count");
        }
    }

    @Test
    void oneFramePerConnectionLimitAtQemusBufferSize() throws Exception {
        try (UnixSocket peer = connect()) {
            byte[] max = new byte[StreamPort.MAX_STREAM_FRAME];
            System.arraycopy(Frames.ethernet(B, A, 14), 0, max, 0, 14);
            send(peer, framed(max)); // legal on the stream, too big for the switch
            await(() -> port.stats().get(PortStat.RX_DROPPED_OVERSIZE) == 1, "oversize count");
            assertTrue(port.isLinkUp());
        }
    }

    @Test
    void aSecondPeerIsRefusedWhileOneIsAttached() throws Exception {
        try (UnixSocket first = connect();
                UnixSocket second = UnixSocket.connect(port.path())) {
            second.setReceiveTimeout(Duration.ofSeconds(20));
            assertEquals(0, read(second, 1).length, "second connection closed");
            send(first, framed(Frames.ethernet(B, A, 60)));
            await(() -> other.stats().txPackets() == 1, "first peer still forwards");
        }
    }

    @Test
    void withoutAPeerFramesAreNotSentAndUnicastCountsAsLinkDown() throws Exception {
        assertFalse(port.isLinkUp());
        other.inject(Frames.ethernet("ff:ff:ff:ff:ff:ff", B, 60)); // flood skips the down port
        assertEquals(0, port.stats().txDropped());
        try (UnixSocket peer = connect()) {
            send(peer, framed(Frames.ethernet(B, A, 60)));
            await(() -> other.stats().txPackets() == 1, "a learned");
        }
        await(() -> !port.isLinkUp(), "link down after the peer left");
        other.inject(Frames.ethernet(A, B, 60)); // a was forgotten: flooded, and the down port is skipped
        assertEquals(0, port.stats().txPackets());
    }

    @Test
    void aPeerThatStopsReadingCostsDropsNotAStall() throws Exception {
        try (UnixSocket peer = connect()) {
            byte[] f = Frames.ethernet(A, B, 1514);
            int sent = 20_000; // ~30 MB: far more than the socket buffers hold
            for (int i = 0; i < sent; i++) {
                other.inject(f);
            }
            PortStats s = port.stats();
            assertEquals(sent, s.txPackets() + s.get(PortStat.TX_DROPPED_NO_BUFFERS));
            assertTrue(s.get(PortStat.TX_DROPPED_NO_BUFFERS) > 0, s.toString());
            // what was counted as sent arrives whole: drain and check framing of every frame
            long frames = 0;
            peer.setReceiveTimeout(Duration.ofSeconds(2));
            while (frames < s.txPackets()) {
                byte[] got = read(peer, 4 + 1514);
                assertArrayEquals(framed(f), got, "frame " + frames);
                frames++;
            }
        }
    }

    /**
     * A peer that writes faster than the switch forwards (here into a destination that takes 10 µs per frame) keeps
     * the socket readable for good. The port's thread used to read until the socket was empty, so it never went back
     * to its loop: it never saw a stop request — closing the switch gave up on it after the stop timeout and closed
     * the connection under the thread still reading it — nor the socket turning writable to finish a partly sent
     * frame. Now it goes back to its loop after a bounded number of reads, and its thread has ended when the port's
     * close returns.
     */
    @Test
    void aFloodingPeerDoesNotKeepThePortsThreadFromStopping() throws Exception {
        other.link = false; // the frames go to the slow port alone
        SlowPort slow = sw.addPort(new SlowPort());
        UnixSocket peer = connect();
        byte[] f = framed(Frames.ethernet(B, A, 60)); // to an unknown address: flooded, i.e. to the slow port
        Thread writer;
        try (Arena a = Arena.ofShared()) {
            MemorySegment burst = a.allocate(f.length * 4096L);
            for (int i = 0; i < 4096; i++) {
                MemorySegment.copy(f, 0, burst, JAVA_BYTE, (long) i * f.length, f.length);
            }
            writer = Thread.ofPlatform().daemon().name("flooding peer").start(() -> {
                try {
                    while (true) {
                        peer.send(burst, List.of());
                    }
                } catch (IOException | RuntimeException e) {
                    // the port closed the connection
                }
            });
            try {
                await(() -> slow.frames > 1000, "the flood to arrive");
                String name = "iovirt " + port + " receive";
                Thread receiver = Thread.getAllStackTraces().keySet().stream()
                        .filter(t -> t.getName().equals(name))
                        .findFirst()
                        .orElseThrow(() -> new AssertionError("no thread named '" + name + "'"));
                sw.close(); // the ports stay in the switch while it closes them: forwarding stays as slow
                assertFalse(receiver.isAlive(), "the port's thread still runs after the port was closed");
            } finally {
                peer.close();
                writer.join(TIMEOUT);
            }
        }
    }

    /** A destination that takes 10 µs per frame (a busy guest's ring, a slow device). */
    private static final class SlowPort extends Port {
        volatile long frames;

        SlowPort() {
            super("slow");
        }

        @Override
        public boolean isLinkUp() {
            return true;
        }

        @Override
        protected void transmit(Frame frame) {
            long until = System.nanoTime() + 10_000;
            while (System.nanoTime() < until) {
                Thread.onSpinWait();
            }
            frames++;
        }

        @Override
        protected void start() {}

        @Override
        public void close() {}
    }

    @Test
    void aLiveSocketPathIsNotStolenAndAStaleOneIsReused() throws Exception {
        IOException e;
        try (Switch second = new Switch(Switch.Config.defaults())) {
            e = assertThrows(IOException.class, () -> second.addPort(new StreamPort(port.path())));
        }
        assertTrue(e.getMessage().contains("another process is listening"), e.getMessage());
        Path stale = dir.resolve("stale.sock");
        UnixSocket.listen(stale, 1).close(); // leaves the socket file behind
        assertTrue(Files.exists(stale));
        StreamPort p2 = sw.addPort(new StreamPort(stale));
        try (UnixSocket s = UnixSocket.connect(stale)) {
            await(p2::isLinkUp, "link on the reused path");
        }
    }
}
