// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.net.Frame;
import io.iovirt.net.Mac;
import io.iovirt.net.Port;
import io.iovirt.net.PortStat;
import io.iovirt.net.PortStats;
import io.iovirt.net.Switch;
import io.iovirt.testing.Await;
import io.iovirt.testing.Frames;
import io.iovirt.testing.OpenFiles;
import io.iovirt.vhostuser.LogCapture;
import io.iovirt.vhostuser.RequestRejectedException;
import io.iovirt.virtio.DeviceStatus;
import io.iovirt.virtio.QueueWorker;
import io.iovirt.virtio.VirtioFeatures;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The virtio-net port against a real vhost-user frontend over real sockets (the project's frontend client and driver
 * rings in shared memfd memory): frames between two "guests", merged receive buffers, every drop reason, hostile
 * headers and rings, announcements, MTU, multiqueue.
 */
@Timeout(120)
class VirtioNetPortTest {
    static final long A = Mac.parse("52:54:00:00:00:0a");
    static final long B = Mac.parse("52:54:00:00:00:0b");
    static final long BASE = VirtioFeatures.VIRTIO_F_VERSION_1
            | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
            | VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC;

    @TempDir
    Path dir;

    Switch sw;

    @AfterEach
    void stop() {
        if (sw != null) {
            sw.close();
        }
    }

    VirtioNetPort port(String name, int pairs, long mac) throws IOException {
        return sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(dir.resolve(name), pairs, mac, 0)));
    }

    static byte[] frame(long dst, long src, int len) {
        return Frames.ethernet(dst, src, len);
    }

    static void await(BooleanSupplier c, String what) {
        Await.until(java.time.Duration.ofSeconds(20), what, c);
    }

    @ParameterizedTest(name = "packed={0}")
    @ValueSource(booleans = {false, true})
    void framesMoveBetweenTwoGuestsAndCountersAgree(boolean packed) throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        long f = BASE | VirtioNet.F_MRG_RXBUF | (packed ? VirtioFeatures.VIRTIO_F_RING_PACKED : 0);
        try (NetDriver a = new NetDriver(pa.options().socket(), f, 1);
                NetDriver b = new NetDriver(pb.options().socket(), f, 1)) {
            assertEquals(packed, a.negotiated(VirtioFeatures.VIRTIO_F_RING_PACKED));
            await(() -> pa.isLinkUp() && pb.isLinkUp(), "links up");
            a.postRx(0, 2048, 64);
            b.postRx(0, 2048, 64);
            int frames = 40;
            long bytes = 0;
            for (int i = 0; i < frames; i++) {
                byte[] fr = frame(B, A, 60 + 37 * i);
                bytes += fr.length;
                a.send(0, fr);
                assertArrayEquals(fr, b.receive(0), "frame " + i);
            }
            a.awaitTxUsed(0, frames);
            byte[] back = frame(A, B, 1514);
            b.sendRaw(0, concat(new byte[12], back), 12, 12 + 1514); // header in its own buffer
            assertArrayEquals(back, a.receive(0));
            PortStats sa = pa.stats();
            PortStats sb = pb.stats();
            assertEquals(frames, sa.rxPackets());
            assertEquals(bytes, sa.rxBytes());
            assertEquals(frames, sb.txPackets());
            assertEquals(bytes, sb.txBytes());
            assertEquals(1, sb.rxPackets());
            assertEquals(1, sa.txPackets());
            assertEquals(0, sa.rxDropped() + sa.txDropped() + sb.rxDropped() + sb.txDropped());
        }
    }

    /**
     * A frontend that breaks its receive ring, resets and restarts it in a loop: each failure's line goes through the
     * port's bucket for lines a frontend can repeat at will (a burst, then one a second). Before, every failure made a
     * line, without bound.
     */
    /**
     * The switch publishes a port before it starts it, and a pinned one is a unicast destination from then on: a
     * frame sent to a port whose start has not made its queues yet is dropped as link down (a NullPointerException
     * on the sender's thread before, which failed the sender's transmit queue).
     */
    @Test
    void aFrameForAPortNotStartedYetIsDroppedAsLinkDown() {
        VirtioNetPort p = new VirtioNetPort(dir.resolve("early.sock"));
        byte[] bytes = Frames.ethernet("52:54:00:00:00:0b", "52:54:00:00:00:0a", 60);
        java.lang.foreign.MemorySegment buf = java.lang.foreign.Arena.ofAuto().allocate(bytes.length);
        buf.copyFrom(java.lang.foreign.MemorySegment.ofArray(bytes));
        p.transmit(new Frame(buf).set(0, bytes.length));
        p.flush();
        assertFalse(p.isLinkUp());
        assertEquals(0, p.activeQueuePairs());
        assertEquals(1, p.stats().get(PortStat.TX_DROPPED_LINK_DOWN));
        p.close();
    }

    @Test
    void receiveQueueFailuresAFrontendRepeatsMakeABoundedNumberOfLogLines() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort p = port("a.sock", 1, -1);
        int failures = 300;
        try (LogCapture log = LogCapture.start("io.iovirt")) {
            long start = System.nanoTime();
            for (int i = 0; i < failures; i++) {
                p.queueFailed(0, "virtqueue 0: buffer ID 300 at ring position 4, queue size is 256 (ID_OUT_OF_RANGE)");
            }
            long seconds = (System.nanoTime() - start) / 1_000_000_000L + 1;
            List<String> lines = log.all().stream()
                    .filter(l -> l.contains(p.name() + " queue 0: virtqueue 0: buffer ID 300"))
                    .toList();
            assertTrue(
                    lines.size() <= io.iovirt.util.LogLimiter.BURST + seconds,
                    lines.size() + " lines for " + failures + " failures in " + seconds + " s");
            assertTrue(lines.size() >= 1, "the first failures are logged");
            assertTrue(lines.get(0).contains("queue stopped until the driver resets the device"), lines.get(0));
        }
    }

    /**
     * A receive interrupt the driver missed (it asked for none while the frame arrived, then asked for one without
     * looking at the ring again — what a driver with reordered ring accesses does) is sent once the queue has been
     * quiet for QueueWorker.RECHECK_MILLIS; no other frame is needed to trigger it.
     */
    @Test
    void aReceiveInterruptTheDriverMissedIsSentAgain() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1)) {
            await(() -> pa.isLinkUp() && pb.isLinkUp(), "links up");
            a.postRx(0, 2048, 64);
            b.postRx(0, 2048, 64);
            a.send(0, frame(B, A, 60)); // the switch learns A (and floods to b)
            b.receive(0);
            b.send(0, frame(A, B, 60)); // a first frame for a: the receive queue's first interrupt decision
            a.receive(0);
            a.ring(0).enableInterrupts();
            Await.until(java.time.Duration.ofSeconds(20), "the first frame's interrupt", () -> read(a.call(0)) > 0);
            // The driver asks for no interrupt; a frame arrives and is returned silently.
            a.ring(0).disableInterrupts();
            b.send(0, frame(A, B, 61));
            await(a.ring(0)::hasUsed, "the frame returned");
            // It asks again but does not look at the ring: only the recheck can wake it.
            a.ring(0).enableInterrupts();
            Await.until(
                    java.time.Duration.ofSeconds(20), "an interrupt after the quiet spell", () -> read(a.call(0)) > 0);
            assertEquals(61, a.receive(0).length);
            assertTrue(pa.rxQueueTotals(0).recheckSignals() >= 1, "counted: " + pa.rxQueueTotals(0));
            assertEquals(0, pa.rxQueueTotals(0).lostSignals());
        }
    }

    private static long read(io.iovirt.linux.EventFd e) {
        try {
            return e.read();
        } catch (io.iovirt.linux.LinuxException x) {
            throw new IllegalStateException(x);
        }
    }

    @Test
    void mergeableBuffersCarryAJumboFrameAcrossChains() throws Exception {
        sw = new Switch(Switch.Config.defaults().withMtu(9000));
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1)) {
            await(() -> pb.isLinkUp(), "link");
            b.postRx(0, 2048, 8);
            byte[] jumbo = frame(B, A, 9014);
            a.send(0, jumbo);
            NetDriver.Rx first = b.pollRx(0, NetDriver.TIMEOUT);
            assertNotNull(first);
            assertEquals(5, first.numBuffers(), "12 + 9014 bytes over 2048-byte buffers");
            assertEquals(2048, first.length());
            byte[] got = new byte[9014];
            System.arraycopy(first.data(), 12, got, 0, 2036);
            int at = 2036;
            for (int i = 1; i < 5; i++) {
                NetDriver.Rx r = b.pollRx(0, NetDriver.TIMEOUT);
                System.arraycopy(r.data(), 0, got, at, r.length());
                at += r.length();
            }
            assertEquals(9014, at);
            assertArrayEquals(jumbo, got);
            assertEquals(1, pb.stats().txPackets());
        }
    }

    /**
     * VIRTIO 1.2 §5.1.6.4.2: the buffers of one receive frame are used together — a driver that sees a frame's first
     * buffer (num_buffers n) sees the other n - 1 with it. On a packed ring each used descriptor used to be published
     * by its own flags store as its chain was returned, so a driver polling meanwhile found a frame's first buffer and
     * not yet the rest (Linux counts rx_length_errors, drops the frame and parses the rest as frames of their own).
     * Here the driver spins on its used ring while frames of six buffers arrive one at a time, and at each frame's
     * first buffer looks at once for the other five.
     */
    @ParameterizedTest(name = "packed={0}")
    @ValueSource(booleans = {false, true})
    void aFrameSpreadOverSeveralBuffersBecomesVisibleWhole(boolean packed) throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        long f = BASE | VirtioNet.F_MRG_RXBUF | (packed ? VirtioFeatures.VIRTIO_F_RING_PACKED : 0);
        int frames = 1500;
        int perFrame = 6; // 12 + 1500 bytes over 300-byte buffers: 5 full and one of 12
        try (NetDriver a = new NetDriver(pa.options().socket(), f, 1);
                NetDriver b = new NetDriver(pb.options().socket(), f, 1)) {
            await(() -> pa.isLinkUp() && pb.isLinkUp(), "links up");
            b.postRx(0, 300, 40 * perFrame);
            java.util.concurrent.Semaphore taken = new java.util.concurrent.Semaphore(0);
            CompletableFuture<Void> sender = CompletableFuture.runAsync(() -> {
                try {
                    for (int i = 0; i < frames; i++) {
                        a.send(0, frame(B, A, 1500));
                        a.awaitTxUsed(0, 1);
                        if (!taken.tryAcquire(20, TimeUnit.SECONDS)) { // one frame in flight: the driver watches it
                            throw new AssertionError("frame " + i + " was not taken");
                        }
                    }
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
            io.iovirt.virtio.DriverRing ring = b.ring(0);
            int partial = 0;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            for (int i = 0; i < frames; i++) {
                while (ring.pollUsed() == -1) { // spin: the frame's first buffer
                    assertTrue(System.nanoTime() < deadline, "frame " + i + " did not arrive");
                }
                int missing = 0;
                for (int k = 1; k < perFrame; k++) {
                    if (!ring.hasUsed()) {
                        missing++;
                        while (!ring.hasUsed()) {
                            Thread.onSpinWait();
                        }
                    }
                    ring.pollUsed();
                }
                partial += missing > 0 ? 1 : 0;
                b.postRx(0, 300, perFrame);
                taken.release();
            }
            sender.get(60, TimeUnit.SECONDS);
            assertEquals(0, partial, "frames whose first buffer was visible before the rest, of " + frames);
            assertEquals(frames, pb.stats().txPackets());
        }
    }

    @Test
    void withoutMergeableBuffersTooSmallChainsAreReturnedAndTheFrameCounted() throws Exception {
        sw = new Switch(Switch.Config.defaults().withMtu(9000));
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1)) {
            assertFalse(b.negotiated(VirtioNet.F_MRG_RXBUF));
            await(() -> pb.isLinkUp(), "link");
            b.postRx(0, 2048, 1);
            a.send(0, frame(B, A, 3000));
            NetDriver.Rx r = b.pollRx(0, NetDriver.TIMEOUT);
            assertNotNull(r, "the chain comes back");
            assertEquals(0, r.length(), "unused");
            assertEquals(1, pb.stats().get(PortStat.TX_DROPPED_BUFFER_TOO_SMALL));
            // a chain of several small buffers that together hold the frame is fine without merging
            b.postRxChain(0, 12, 100, 1000, 2000);
            byte[] fr = frame(B, A, 3000);
            a.send(0, fr);
            assertArrayEquals(fr, b.receive(0));
            assertEquals(1, pb.stats().txPackets());
        }
    }

    /**
     * VIRTIO_F_IN_ORDER is offered, and it holds: each queue returns its buffers in the order they were made
     * available, including a malformed frame dropped in the middle of a transmit batch and a receive buffer too
     * small for its frame, returned unused in its place.
     */
    @ParameterizedTest(name = "packed={0}")
    @ValueSource(booleans = {false, true})
    void inOrderIsOfferedAndEveryQueueReturnsBuffersInTheOrderTheyWereMadeAvailable(boolean packed) throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        long f = BASE | VirtioFeatures.VIRTIO_F_IN_ORDER | (packed ? VirtioFeatures.VIRTIO_F_RING_PACKED : 0);
        try (NetDriver a = new NetDriver(pa.options().socket(), f, 1);
                NetDriver b = new NetDriver(pb.options().socket(), f, 1)) {
            assertTrue(a.negotiated(VirtioFeatures.VIRTIO_F_IN_ORDER), "offered and taken");
            await(() -> pa.isLinkUp() && pb.isLinkUp(), "links up");
            b.postRx(0, 2048, 2);
            b.postRx(0, 40, 1); // too small for any frame below, no merging: returned unused
            b.postRx(0, 2048, 3);
            byte[] bad = new byte[5]; // shorter than the virtio-net header: dropped, still returned in place
            int rounds = 3;
            for (int r = 0; r < rounds; r++) {
                a.queue(0, frame(B, A, 100 + r));
                a.queue(0, frame(B, A, 200 + r));
            }
            a.sendRaw(0, bad, bad.length); // queued behind the six and kicked: one batch
            a.awaitTxUsed(0, 2 * rounds + 1);
            assertEquals(a.madeAvailable(1), a.returned(1), "tx: used in avail order");
            for (int i = 0; i < 6; i++) {
                assertNotNull(b.pollRx(0, NetDriver.TIMEOUT), "rx buffer " + i);
            }
            assertEquals(b.madeAvailable(0), b.returned(0), "rx: used in avail order");
            assertEquals(1, pb.stats().get(PortStat.TX_DROPPED_BUFFER_TOO_SMALL));
            assertEquals(1, pa.stats().get(PortStat.RX_DROPPED_MALFORMED));
        }
    }

    @Test
    void noReceiveBuffersDropsAndCountsWithoutStallingTheSender() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1)) {
            await(() -> pb.isLinkUp(), "link");
            for (int i = 0; i < 100; i++) {
                a.send(0, frame(B, A, 100));
            }
            a.awaitTxUsed(0, 100);
            assertEquals(100, pa.stats().rxPackets());
            assertEquals(100, pb.stats().get(PortStat.TX_DROPPED_NO_BUFFERS));
            assertEquals(0, pb.stats().txPackets());
            b.postRx(0, 2048, 4);
            byte[] fr = frame(B, A, 100);
            a.send(0, fr);
            assertArrayEquals(fr, b.receive(0), "delivery resumes once buffers are posted");
        }
    }

    @Test
    void headersAskingForOffloadsAreIgnoredAndBadFramesAreCountedDroppedAndThePortKeepsRunning() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1)) {
            await(() -> pb.isLinkUp(), "link");
            b.postRx(0, 2048, 16);
            byte[] good = frame(B, A, 200);
            // Headers asking for what was not negotiated: the header is not read (§5.1.6.2.2: flag bits the device
            // does not recognize are ignored), so each is the plain frame after it, checked and forwarded as sent.
            byte[] csum = concat(new byte[12], frame(B, A, 201));
            csum[0] = VirtioNet.HDR_F_NEEDS_CSUM; // checksum offload, not negotiated
            a.sendRaw(0, csum, csum.length);
            byte[] gso = concat(new byte[12], frame(B, A, 202));
            gso[1] = 1; // GSO_TCPV4, not negotiated
            a.sendRaw(0, gso, gso.length);
            byte[] dataValid = concat(new byte[12], frame(B, A, 203));
            dataValid[0] = 2; // DATA_VALID, a receive-direction flag
            a.sendRaw(0, dataValid, dataValid.length);
            a.sendRaw(0, new byte[5], 5); // shorter than a header
            a.sendRaw(0, new byte[0], 0); // an empty buffer
            a.send(0, new byte[10]); // runt frame
            a.send(0, frame(B, A, 1500 + 18 + 1)); // over the MTU
            a.send(0, frame(B, Mac.BROADCAST, 100)); // group source address
            a.send(0, good);
            a.awaitTxUsed(0, 9);
            assertArrayEquals(frame(B, A, 201), b.receive(0), "NEEDS_CSUM ignored: the frame as sent");
            assertArrayEquals(frame(B, A, 202), b.receive(0), "gso_type ignored: the frame as sent");
            assertArrayEquals(frame(B, A, 203), b.receive(0), "DATA_VALID ignored: the frame as sent");
            assertArrayEquals(good, b.receive(0), "the good frame after all the bad ones");
            assertNull(b.pollRx(0, Duration.ofMillis(200)), "nothing else got through");
            PortStats s = pa.stats();
            assertEquals(2, s.get(PortStat.RX_DROPPED_MALFORMED), "the two requests shorter than a header");
            assertEquals(1, s.get(PortStat.RX_DROPPED_RUNT));
            assertEquals(1, s.get(PortStat.RX_DROPPED_OVERSIZE));
            assertEquals(1, s.get(PortStat.RX_DROPPED_BAD_SOURCE));
            assertEquals(4, s.rxPackets());
            assertTrue(pa.isLinkUp());
            assertEquals(0, pa.deviceStatus(), "frame errors do not need a reset");
        }
    }

    @Test
    void aBrokenRingFailsOnlyItsQueue() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        VirtioNetPort pc = port("c.sock", 1, -1);
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1)) {
            await(() -> pc.isLinkUp(), "link");
            c.postRx(0, 2048, 8);
            // a's transmit descriptor points far outside its memory
            a.sendRawAt(0, 0x7fff_0000_0000L, 100);
            await(() -> pa.deviceStatus() == DeviceStatus.DEVICE_NEEDS_RESET, "DEVICE_NEEDS_RESET");
            byte[] fr = frame(Mac.parse("52:54:00:00:00:0c"), B, 80);
            b.send(0, fr);
            assertArrayEquals(fr, c.receive(0), "the switch and the other ports carry on");
        }
    }

    /** A switch port whose transmit holds the sending thread until the test lets it go: a slow transmit queue. */
    static final class HoldingPort extends Port {
        final CountDownLatch entered = new CountDownLatch(1);
        final CountDownLatch release = new CountDownLatch(1);

        HoldingPort() {
            super("holding");
        }

        @Override
        public boolean isLinkUp() {
            return true;
        }

        @Override
        protected void transmit(Frame frame) {
            entered.countDown();
            try {
                release.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }

        @Override
        protected void start() {}

        @Override
        public void close() {
            release.countDown();
        }
    }

    private static CompletableFuture<Integer> vringBase(NetDriver d, int q) {
        return CompletableFuture.supplyAsync(() -> {
            try {
                return d.fe.getVringBase(q);
            } catch (IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        });
    }

    /**
     * A transmit queue whose thread is busy with a batch (here a frame a port holds) when the frontend stops it is
     * waited for: GET_VRING_BASE is answered once the thread has let go, with the final position. It used to give up
     * after QueueWorker.STOP_TIMEOUT (3 s), forget the worker and answer anyway, so a start on the same ring ran a
     * second worker next to the first.
     */
    @Test
    void aTransmitQueueThatStopsSlowlyIsWaitedFor() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        HoldingPort held = sw.addPort(new HoldingPort());
        try (LogCapture log = LogCapture.start("io.iovirt");
                NetDriver a = new NetDriver(pa.options().socket(), BASE, 1)) {
            a.send(0, frame(Mac.BROADCAST, A, 60));
            assertTrue(held.entered.await(20, TimeUnit.SECONDS), "the frame reached the holding port");
            CompletableFuture<Integer> base = vringBase(a, 1);
            long pastStopTimeout = QueueWorker.STOP_TIMEOUT.toMillis() + 1500;
            assertThrows(
                    TimeoutException.class,
                    () -> base.get(pastStopTimeout, TimeUnit.MILLISECONDS),
                    "GET_VRING_BASE is not answered while the queue thread runs");
            assertTrue(log.awaitLine("has not stopped within").contains(" tx1"));
            held.release.countDown();
            assertEquals(1, base.get(20, TimeUnit.SECONDS), "past the frame");
            assertTrue(log.awaitLine("stopped after").contains(" tx1"));
            assertEquals(0, pa.deviceStatus());
        } finally {
            held.release.countDown();
        }
    }

    /**
     * A transmit queue whose thread does not let go within the limit is given up on: the position is handed back,
     * the port reports NEEDS_RESET and the queue is not started again on its ring while that thread runs; once it has
     * let go the queue starts and forwards again.
     */
    @Test
    void aTransmitQueueThatDoesNotStopInTimeFailsThePortAndKeepsItsRing() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        pa.stopWaitLimit(Duration.ofSeconds(1));
        HoldingPort held = sw.addPort(new HoldingPort());
        try (LogCapture log = LogCapture.start("io.iovirt");
                NetDriver a = new NetDriver(pa.options().socket(), BASE, 1)) {
            long frontendKick = OpenFiles.eventfdId(a.kickFd(1).fd().get());
            List<Integer> kicks = new java.util.ArrayList<>(OpenFiles.eventfd(frontendKick));
            kicks.remove((Integer) a.kickFd(1).fd().get());
            assertEquals(1, kicks.size(), "the port's number for the frontend's kick");
            int kick = kicks.get(0);
            a.send(0, frame(Mac.BROADCAST, A, 60));
            assertTrue(held.entered.await(20, TimeUnit.SECONDS), "the frame reached the holding port");
            assertEquals(1, a.fe.getVringBase(1), "answered after the limit");
            assertTrue(log.awaitLine("did not stop within").contains(" tx1"));
            assertEquals(DeviceStatus.DEVICE_NEEDS_RESET, pa.deviceStatus());
            // the kick's number stays open for the thread still running (GET_VRING_BASE closed it), no longer the
            // frontend's file; it is closed once the thread has let go
            assertEquals("anon_inode:[eventfd]", OpenFiles.kind(kick), "kept open while the thread runs");
            long parked = OpenFiles.eventfdId(kick);
            assertNotEquals(frontendKick, parked, "no longer the frontend's kick");
            assertThrows(
                    RequestRejectedException.class,
                    () -> a.fe.setVringKick(1, a.kickFd(1)),
                    "no second worker on the ring while the first runs");

            held.release.countDown();
            a.awaitTxUsed(0, 1); // the held frame is returned when the thread lets go
            Await.until(
                    Duration.ofSeconds(20),
                    "the kick set aside is closed",
                    () -> OpenFiles.eventfd(parked).isEmpty());
            Await.until(Duration.ofSeconds(20), "the queue starts again", () -> {
                try {
                    a.fe.setVringKick(1, a.kickFd(1));
                    return true;
                } catch (RequestRejectedException e) {
                    return false;
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            });
            assertTrue(log.awaitLine("given up on has stopped").contains(" tx1"));
            assertEquals(0, pa.deviceStatus());
            a.send(0, frame(Mac.BROADCAST, A, 60));
            a.awaitTxUsed(0, 1);
        } finally {
            held.release.countDown();
        }
    }

    /** Runs {@code call} on a platform thread of its own (a switch call that may wait). */
    private static <T> CompletableFuture<T> onThread(java.util.concurrent.Callable<T> call) {
        CompletableFuture<T> f = new CompletableFuture<>();
        Thread.ofPlatform().daemon().start(() -> {
            try {
                f.complete(call.call());
            } catch (Throwable t) {
                f.completeExceptionally(t);
            }
        });
        return f;
    }

    /**
     * A port whose removal waits for its transmit worker (held here by a frame a port holds) holds up no other
     * tenant of the switch: another port is added and removed meanwhile, a second removal of the same port waits
     * for the first and returns with it, and the removed port's name and number stay reserved (re-adding it is
     * refused, saying why) until its close has returned; then it can be added again and forwards. The removal used
     * to close the port under the switch's lock, so every add and removal on the switch waited up to the worker's
     * 30 s stop limit.
     */
    @Test
    void aPortThatStopsSlowlyHoldsUpNoOtherPortOfTheSwitch() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        pa.stopWaitLimit(Duration.ofMinutes(10)); // its close waits for the held worker until the test lets it go
        HoldingPort held = sw.addPort(new HoldingPort());
        CompletableFuture<Boolean> removal = null;
        try (LogCapture log = LogCapture.start("io.iovirt");
                NetDriver a = new NetDriver(pa.options().socket(), BASE, 1)) {
            a.send(0, frame(Mac.BROADCAST, A, 60));
            assertTrue(held.entered.await(20, TimeUnit.SECONDS), "the frame reached the holding port");
            removal = onThread(() -> {
                sw.removePort(pa);
                return true;
            });
            assertTrue(log.awaitLine("has not stopped within").contains(" tx1"), "the removal waits for tx1");
            assertFalse(sw.ports().contains(pa), "taken out before its close");

            VirtioNetPort pb = onThread(() -> port("b.sock", 1, -1)).get(20, TimeUnit.SECONDS);
            assertNotEquals(pa.index(), pb.index(), "a's number is not reused while a closes");
            CompletableFuture<Boolean> second = new CompletableFuture<>();
            Thread secondRemover = Thread.ofPlatform().daemon().start(() -> {
                sw.removePort(pa); // a second removal of the port being removed
                second.complete(true);
            });
            io.iovirt.testing.Await.until(
                    Duration.ofSeconds(20),
                    "the second removal to wait for the first, or to return",
                    () -> second.isDone() || secondRemover.getState() == Thread.State.WAITING);
            assertFalse(second.isDone(), "a second removal returns only when the first has (the port still holds a)");
            var again = onThread(() -> port("a.sock", 1, -1));
            var refused =
                    assertThrows(java.util.concurrent.ExecutionException.class, () -> again.get(20, TimeUnit.SECONDS));
            assertTrue(
                    refused.getCause() instanceof IllegalArgumentException,
                    refused.getCause().toString());
            assertTrue(
                    refused.getCause().getMessage().contains("still being removed"),
                    refused.getCause().getMessage());
            onThread(() -> {
                        sw.removePort(pb);
                        return true;
                    })
                    .get(20, TimeUnit.SECONDS);
            assertFalse(removal.isDone(), "a's close was still waiting for its worker all along");

            held.release.countDown();
            assertTrue(removal.get(20, TimeUnit.SECONDS));
            assertTrue(second.get(20, TimeUnit.SECONDS), "the second removal returns with the first");
        } finally {
            held.release.countDown();
        }
        VirtioNetPort pa2 = port("a.sock", 1, -1);
        assertEquals(pa.index(), pa2.index(), "the number is free again");
        try (NetDriver a = new NetDriver(pa2.options().socket(), BASE, 1)) {
            a.send(0, frame(Mac.BROADCAST, A, 60));
            a.awaitTxUsed(0, 1);
            await(() -> pa2.stats().rxPackets() == 1, "the new port forwards");
        }
    }

    @Test
    void transmitWorkerCountersRunOnAcrossReconnects() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        assertEquals(new io.iovirt.virtio.QueueWorker.Totals(0, 0, 0, 0, 0), pa.txWorkerStats(0));
        try (NetDriver b = new NetDriver(pb.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1)) {
            b.postRx(0, 2048, 64);
            long batches = 0;
            long sleeps = 0;
            for (int round = 0; round < 2; round++) { // the second connection counts on from the first's totals
                try (NetDriver a = new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1)) {
                    await(() -> pa.isLinkUp() && pb.isLinkUp(), "links up");
                    if (round == 1) { // the address the guest used before is announced for it on reconnect
                        assertRarp(b.receive(0), A);
                    }
                    for (int i = 0; i < 10; i++) { // one at a time: each frame is a batch of its own
                        byte[] fr = frame(B, A, 60);
                        a.send(0, fr);
                        assertArrayEquals(fr, b.receive(0));
                        a.awaitTxUsed(0, 1);
                    }
                }
                await(() -> !pa.isLinkUp(), "link down after disconnect");
                io.iovirt.virtio.QueueWorker.Totals t = pa.txWorkerStats(0);
                assertTrue(t.batches() >= batches + 10, "10 more batches after " + batches + ": " + t);
                assertTrue(t.sleeps() > sleeps, "the idle worker slept (poll-us 0): " + t);
                assertEquals(0, t.spinHits(), "poll-us is 0: no spinning: " + t);
                batches = t.batches();
                sleeps = t.sleeps();
            }
        }
    }

    @Test
    void sendRarpAndReconnectAnnounceTheGuest() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        long guest = Mac.parse("52:54:00:12:34:56");
        VirtioNetPort pa = port("a.sock", 1, guest);
        VirtioNetPort pb = port("b.sock", 1, -1);
        try (NetDriver b = new NetDriver(pb.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1)) {
            await(() -> pb.isLinkUp(), "link");
            b.postRx(0, 2048, 16);
            try (NetDriver a =
                    new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MRG_RXBUF | VirtioNet.F_MAC, 1)) {
                assertTrue(a.negotiated(VirtioNet.F_MAC), "a configured MAC is offered");
                assertRarp(b.receive(0), guest);
                assertEquals(pa.index(), sw.macTable().lookup(guest, sw.now()));
                long moved = Mac.parse("52:54:00:99:99:99");
                a.fe.sendRarp(Mac.toBytes(moved));
                assertRarp(b.receive(0), moved);
                assertEquals(2, pa.announcements());
                assertEquals(0, pa.stats().rxPackets(), "announcements are not counted as the guest's frames");
            }
            await(() -> !pa.isLinkUp(), "link down after disconnect");
            await(() -> sw.macTable().lookup(guest, sw.now()) == -1, "the guest's address forgotten with the peer");
            try (NetDriver again = new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MRG_RXBUF, 1)) {
                assertRarp(b.receive(0), guest);
                assertEquals(pa.index(), sw.macTable().lookup(guest, sw.now()), "relearned before the guest spoke");
            }
        }
    }

    static void assertRarp(byte[] f, long mac) {
        assertEquals(60, f.length);
        ByteBuffer b = ByteBuffer.wrap(f);
        assertEquals(Mac.BROADCAST, Mac.read(java.lang.foreign.MemorySegment.ofArray(f), 0));
        assertEquals(mac, Mac.read(java.lang.foreign.MemorySegment.ofArray(f), 6));
        assertEquals(0x8035, Short.toUnsignedInt(b.getShort(12)));
        assertEquals(3, b.getShort(20), "RARP request reverse");
        assertEquals(mac, Mac.read(java.lang.foreign.MemorySegment.ofArray(f), 22));
    }

    @Test
    void aGuestMayLowerItsMtuButNotRaiseItAboveTheSwitch() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 1, -1);
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MTU, 1)) {
            assertTrue(a.negotiated(VirtioNet.F_MTU));
            byte[] cfg = a.fe.getConfig(0, VirtioNet.CFG_SIZE);
            assertEquals(1500, (cfg[VirtioNet.CFG_MTU] & 0xff) | (cfg[VirtioNet.CFG_MTU + 1] & 0xff) << 8);
            assertEquals(VirtioNet.S_LINK_UP, cfg[VirtioNet.CFG_STATUS]);
            a.fe.setMtu(1400);
            assertEquals(1400, pa.guestMtu());
            IOException e = assertThrows(IOException.class, () -> a.fe.setMtu(9000));
            assertTrue(e.getMessage() != null);
            assertEquals(1400, pa.guestMtu());
        }
    }

    /**
     * VIRTIO 1.2 §5.1.4.2: with VIRTIO_NET_F_MTU negotiated the device passes no frame longer than the guest's MTU
     * (plus the Ethernet header). A guest whose frontend set a lower MTU than the switch's (QEMU's host_mtu, sent as
     * NET_SET_MTU) used to get every frame the switch forwarded, up to the switch's MTU. Now a longer one is dropped
     * and counted before it takes a buffer, one by one and within a burst, whose other frames still arrive in order;
     * a guest that did not negotiate the feature still gets them all.
     */
    @Test
    void aGuestWithALowerMtuReceivesNoLongerFrame() throws Exception {
        sw = new Switch(Switch.Config.defaults().withMtu(9000));
        VirtioNetPort pa = port("a.sock", 1, -1);
        VirtioNetPort pb = port("b.sock", 1, -1);
        VirtioNetPort pc = port("c.sock", 1, -1);
        long mrg = BASE | VirtioNet.F_MRG_RXBUF;
        try (NetDriver a = new NetDriver(pa.options().socket(), mrg, 1);
                NetDriver b = new NetDriver(pb.options().socket(), mrg | VirtioNet.F_MTU, 1);
                NetDriver c = new NetDriver(pc.options().socket(), mrg, 1)) {
            assertTrue(b.negotiated(VirtioNet.F_MTU));
            await(() -> pa.isLinkUp() && pb.isLinkUp() && pc.isLinkUp(), "links up");
            b.fe.setMtu(1500);
            c.fe.setMtu(1500); // C did not negotiate VIRTIO_NET_F_MTU: nothing is promised to it
            a.postRx(0, 2048, 4);
            b.postRx(0, 2048, 16);
            c.postRx(0, 2048, 64);
            byte[] fits = frame(B, A, 1518); // 1500 + Ethernet header + a VLAN tag
            byte[] tooLong = frame(B, A, 1519);
            byte[] jumbo = frame(B, A, 9014);
            byte[] small = frame(B, A, 100);
            a.send(0, fits);
            assertArrayEquals(fits, b.receive(0));
            assertArrayEquals(fits, c.receive(0)); // B unknown so far: flooded
            a.send(0, tooLong);
            a.send(0, jumbo);
            a.send(0, small);
            assertArrayEquals(small, b.receive(0), "the longer frames did not reach B nor take its buffers");
            assertEquals(2, pb.stats().get(PortStat.TX_DROPPED_OVERSIZE));
            assertArrayEquals(tooLong, c.receive(0));
            assertArrayEquals(jumbo, c.receive(0));
            assertArrayEquals(small, c.receive(0));
            b.send(0, frame(A, B, 60)); // the switch learns B: A's next frames go to B alone
            a.receive(0);
            for (byte[] fr : List.of(small, tooLong, fits, jumbo, small)) { // one batch: one burst, one big frame
                a.queue(0, fr);
            }
            a.kickTx(0);
            assertArrayEquals(small, b.receive(0));
            assertArrayEquals(fits, b.receive(0));
            assertArrayEquals(small, b.receive(0));
            assertNull(b.pollRx(0, Duration.ofMillis(300)));
            assertEquals(4, pb.stats().get(PortStat.TX_DROPPED_OVERSIZE));
            assertEquals(0, pb.stats().get(PortStat.TX_DROPPED_BUFFER_TOO_SMALL));
            assertEquals(5, pb.stats().txPackets());
            assertEquals(16 - 5, b.ring(0).inFlight(), "every buffer taken was returned");
        }
    }

    @Test
    void multiqueueSpreadsFlowsAndEveryQueueForwards() throws Exception {
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort pa = port("a.sock", 2, -1);
        VirtioNetPort pb = port("b.sock", 2, -1);
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE | VirtioNet.F_MRG_RXBUF | VirtioNet.F_MQ, 2);
                NetDriver b = new NetDriver(pb.options().socket(), BASE | VirtioNet.F_MRG_RXBUF | VirtioNet.F_MQ, 2)) {
            assertTrue(a.negotiated(VirtioNet.F_MQ));
            await(() -> pb.isLinkUp(), "link");
            b.postRx(0, 2048, 64);
            b.postRx(1, 2048, 64);
            Set<Integer> queuesUsed = new HashSet<>();
            int total = 0;
            for (int flow = 0; flow < 16; flow++) {
                byte[] fr = ipv4Udp(B, A, 1000 + flow);
                a.send(flow % 2, fr); // both transmit queues
                for (int pair = 0; pair < 2; pair++) {
                    NetDriver.Rx r = b.pollRx(pair, Duration.ofMillis(pair == 0 ? 2000 : 0));
                    if (r != null) {
                        queuesUsed.add(pair);
                        assertEquals(12 + fr.length, r.length());
                        total++;
                    }
                }
                if (total <= flow) { // arrived late on queue 0? look again at both
                    for (int pair = 0; pair < 2 && total <= flow; pair++) {
                        if (b.pollRx(pair, Duration.ofSeconds(5)) != null) {
                            queuesUsed.add(pair);
                            total++;
                        }
                    }
                }
            }
            assertEquals(16, total);
            assertEquals(Set.of(0, 1), queuesUsed, "16 flows use both receive queues");
            assertEquals(16, pa.stats().rxPackets());
        }
    }

    /** An IPv4/UDP frame whose source port makes it its own flow. */
    static byte[] ipv4Udp(long dst, long src, int sport) {
        ByteBuffer b = ByteBuffer.allocate(14 + 20 + 8 + 32);
        b.put(Mac.toBytes(dst)).put(Mac.toBytes(src)).putShort((short) 0x0800);
        b.put((byte) 0x45)
                .put((byte) 0)
                .putShort((short) (20 + 8 + 32))
                .putInt(0)
                .put((byte) 64)
                .put((byte) 17)
                .putShort((short) 0)
                .putInt(0x0a000001)
                .putInt(0x0a000002);
        b.putShort((short) sport).putShort((short) 9).putShort((short) 40).putShort((short) 0);
        return b.array();
    }

    static byte[] concat(byte[] x, byte[] y) {
        byte[] r = new byte[x.length + y.length];
        System.arraycopy(x, 0, r, 0, x.length);
        System.arraycopy(y, 0, r, x.length, y.length);
        return r;
    }
}
