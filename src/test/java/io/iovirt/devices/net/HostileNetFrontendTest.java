// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.MemFd;
import io.iovirt.net.Mac;
import io.iovirt.net.PortStat;
import io.iovirt.net.Switch;
import io.iovirt.vhostuser.LogCapture;
import io.iovirt.virtio.DeviceStatus;
import io.iovirt.virtio.VirtioFeatures;
import io.iovirt.virtio.WorkerGroup;
import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A hostile vhost-user-net frontend attacks the data path of a switch with three ports: the attacker A, and two
 * honest guests B and C. Each test checks that the attacked queue fails (or the attack is contained) with a clear log
 * line, and that B and C keep exchanging frames — in particular on the cross-tenant path where frames to A are
 * delivered on B's transmit thread.
 */
@Timeout(180)
class HostileNetFrontendTest {
    static final long A = Mac.parse("52:54:00:00:00:0a");
    static final long B = Mac.parse("52:54:00:00:00:0b");
    static final long C = Mac.parse("52:54:00:00:00:0c");
    static final long BASE = VirtioFeatures.VIRTIO_F_VERSION_1
            | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
            | VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC
            | VirtioNet.F_MRG_RXBUF;
    static final Duration BOUND = Duration.ofSeconds(20);

    @TempDir
    Path dir;

    Switch sw;
    VirtioNetPort pa;
    VirtioNetPort pb;
    VirtioNetPort pc;
    LogCapture log;
    /** The shared poll threads of the ports' transmit queues, or null (a thread per queue). */
    WorkerGroup group;

    /** Shared poll threads for the ports' transmit queues (0: one thread per queue). */
    int pollThreads() {
        return 0;
    }

    VirtioNetPort port(VirtioNetPort.Options o) {
        return new VirtioNetPort(o).workers(group);
    }

    @BeforeEach
    void start() throws IOException {
        log = LogCapture.start("io.iovirt");
        group = pollThreads() > 0 ? WorkerGroup.create("test poll", pollThreads()) : null;
        sw = new Switch(Switch.Config.defaults());
        pa = sw.addPort(port(new VirtioNetPort.Options(dir.resolve("a.sock"), 1, -1, 0)));
        pb = sw.addPort(port(new VirtioNetPort.Options(dir.resolve("b.sock"), 1, -1, 0)));
        pc = sw.addPort(port(new VirtioNetPort.Options(dir.resolve("c.sock"), 1, -1, 0)));
    }

    @AfterEach
    void stop() {
        sw.close();
        if (group != null) {
            group.close();
        }
        log.close();
    }

    /** B and C still exchange frames both ways, within the bound. */
    static void honestTrafficFlows(NetDriver b, NetDriver c, int round) throws Exception {
        for (int i = 0; i < 4; i++) {
            byte[] f = VirtioNetPortTest.frame(C, B, 100 + round * 7 + i);
            b.send(0, f);
            assertArrayEquals(f, c.receive(0), "B -> C frame " + i + " of round " + round);
            byte[] g = VirtioNetPortTest.frame(B, C, 200 + round * 7 + i);
            c.send(0, g);
            assertArrayEquals(g, b.receive(0), "C -> B frame " + i + " of round " + round);
        }
    }

    /**
     * Waits for A, B and C's links, posts receive buffers ({@code aBuffers} for A, 128 for B and C), lets the switch
     * learn each address, and takes the frames that left in the drivers' receive rings (A's too when {@code drainA}).
     */
    private void linkAndLearn(NetDriver a, NetDriver b, NetDriver c, int aBuffers, boolean drainA) throws Exception {
        linksUp(b, c, 128);
        a.postRx(0, 2048, aBuffers);
        learn(a, A, B);
        learnBAndC(b, c);
        if (drainA) {
            a.drainRx(0);
        }
    }

    /** Waits for A, B and C's links and posts {@code buffers} receive buffers for B and for C. */
    private void linksUp(NetDriver b, NetDriver c, int buffers) throws Exception {
        VirtioNetPortTest.await(() -> pa.isLinkUp() && pb.isLinkUp() && pc.isLinkUp(), "links up");
        b.postRx(0, 2048, buffers);
        c.postRx(0, 2048, buffers);
    }

    /** Lets the switch learn B's and C's addresses, and takes the frames that left in their receive rings. */
    private static void learnBAndC(NetDriver b, NetDriver c) throws Exception {
        learn(b, B, C);
        learn(c, C, B);
        b.drainRx(0);
        c.drainRx(0);
    }

    /** A's receive queue failed on a fault in A's memory: a line names A's port, and A's device needs a reset. */
    private void aFailedOnAMemoryFault(NetDriver a) throws Exception {
        String line = log.awaitLine("queue 0: guest memory access faulted");
        assertTrue(line.contains(pa.name()), line);
        assertEquals(
                DeviceStatus.DEVICE_NEEDS_RESET,
                a.fe.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET,
                "A's device needs a reset");
    }

    private static void learn(NetDriver d, long src, long dst) throws Exception {
        d.send(0, VirtioNetPortTest.frame(dst, src, 60)); // the switch learns src on that port
        // forwarded: in every ring it went to, before a drain looks (a drain's quiet moment alone let a frame a loaded
        // machine delivered later through, and a test then received it in place of its own)
        d.awaitTxDone(0);
    }

    @Test
    void aBlockingFullCallEventfdStallsNeitherTheSenderNorTheFrontendsControlRequests() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1);
                EventFd trap = EventFd.create(0, EventFd.EFD_CLOEXEC)) { // blocking
            linkAndLearn(a, b, c, 128, true);
            // A's rx call descriptor: a blocking eventfd whose counter is full. The backend makes it non-blocking
            // when it arrives; A clears the flag again (they share the open file) — the attack in the issue.
            trap.write(0xffff_ffff_ffff_fffeL);
            a.replaceCall(0, trap);
            trap.fd().setNonBlocking(false);
            // B floods A: every frame is delivered on B's transmit thread, which then interrupts A's guest.
            for (int i = 0; i < 100; i++) {
                b.send(0, VirtioNetPortTest.frame(A, B, 60 + i));
            }
            b.awaitTxUsed(0, 100);
            honestTrafficFlows(b, c, 1);
            // A's own control requests are answered within the bound: stopping A's rx queue does not wait for ever.
            CompletableFuture<Integer> base = CompletableFuture.supplyAsync(() -> {
                try {
                    return a.fe.getVringBase(0);
                } catch (IOException e) {
                    throw new RuntimeException(e);
                }
            });
            base.get(BOUND.toSeconds(), TimeUnit.SECONDS);
            honestTrafficFlows(b, c, 2);
            String line = log.awaitLine("eventfd is full or was made blocking");
            assertTrue(line.contains(pa.name()), line);
            assertTrue(pa.rxQueueTotals(0).lostSignals() >= 1, "counted: " + pa.rxQueueTotals(0));
            assertEquals(0, pb.rxQueueTotals(0).lostSignals(), "B's own interrupts were not lost");
        }
    }

    /**
     * A frontend sends fresh call eventfds for its receive queue whose counters are full, then makes each blocking
     * again (it shares the open file with us). The threads that would interrupt its guest are other tenants': B's
     * transmit thread delivering into A's queue, and the receive recheck thread all ports share. The first such write
     * blocks until the watchdog ends it, and marks A's frontend: every later eventfd it sends is looked at before each
     * write, so its full counter is never written (the count the frontend left is still there, no watchdog drained
     * it), and B and C keep exchanging frames throughout. Before, each new eventfd cost a shared thread one blocked
     * write, a fraction of a second per eventfd the frontend sent.
     */
    @Test
    void freshBlockingFullCallEventfdsCostASharedThreadOneBlockedWriteInAll() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            linkAndLearn(a, b, c, 200, true);
            long[] lost = {pa.rxQueueTotals(0).lostSignals()};
            for (int round = 0; round < 4; round++) { // each round a new eventfd
                try (EventFd trap = EventFd.create(0, EventFd.EFD_CLOEXEC)) {
                    trap.write(0xffff_ffff_ffff_fffeL); // the largest count: a write of 1 would block
                    a.replaceCall(0, trap);
                    a.fe.getFeatures(); // answered after SET_VRING_CALL was handled (made non-blocking then)
                    trap.fd().setNonBlocking(false); // the frontend undoes that on the file it shares with us
                    for (int i = 0; i < 20; i++) {
                        b.send(0, VirtioNetPortTest.frame(A, B, 60 + i));
                    }
                    b.awaitTxUsed(0, 20);
                    honestTrafficFlows(b, c, round);
                    VirtioNetPortTest.await(
                            () -> pa.rxQueueTotals(0).lostSignals() > lost[0],
                            "round " + round + ": an interrupt for A's guest was tried and dropped");
                    lost[0] = pa.rxQueueTotals(0).lostSignals();
                    trap.fd().setNonBlocking(true);
                    long count = trap.read();
                    if (round == 0) {
                        assertEquals(1, count, "the first write blocked, the watchdog drained the counter, it went on");
                    } else {
                        assertEquals(
                                0xffff_ffff_ffff_fffeL,
                                count,
                                "round " + round + ": the full eventfd was never written (no thread blocked on it, "
                                        + "no watchdog drained it)");
                    }
                    a.drainRx(0); // A's driver takes its frames: the next ones are worth an interrupt again
                }
            }
            assertTrue(pa.rxQueueTotals(0).lostSignals() >= 4, "counted: " + pa.rxQueueTotals(0));
            assertEquals(0, pb.rxQueueTotals(0).lostSignals(), "B's own interrupts were not lost");
        }
    }

    /**
     * A frontend breaks its transmit ring (a buffer outside guest memory) and restarts it, again and again: each
     * failure's line goes through the port's bucket for lines a frontend can repeat at will. Before, every failure of
     * every new queue worker made an ERROR line, without bound.
     */
    @Test
    void aFrontendBreakingAndRestartingItsTransmitQueueMakesABoundedNumberOfLogLines() throws Exception {
        int failures = 60;
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                EventFd err = EventFd.create(true)) {
            VirtioNetPortTest.await(pa::isLinkUp, "link up");
            a.fe.setVringErr(1, err);
            a.addRaw(
                    1,
                    new long[] {NetDriver.RAM_SIZE + 4096},
                    new int[] {64},
                    new boolean[] {false},
                    io.iovirt.virtio.DriverRing.NO_INDIRECT);
            long start = System.nanoTime();
            for (int i = 0; i < failures; i++) {
                if (i > 0) { // restart the failed ring where it stopped: the broken request is taken again
                    int base = a.fe.getVringBase(1);
                    a.fe.setVringBase(1, base);
                    a.fe.setVringKick(1, a.kickFd(1));
                    a.kickQueue(1);
                }
                int round = i;
                io.iovirt.testing.Await.until(BOUND, "failure " + round + " signalled on the err eventfd", () -> {
                    try {
                        return err.read() > 0;
                    } catch (io.iovirt.linux.LinuxException e) {
                        throw new IllegalStateException(e);
                    }
                });
            }
            long seconds = (System.nanoTime() - start) / 1_000_000_000L + 1;
            List<String> lines = log.all().stream()
                    .filter(l -> l.contains("queue stopped until the driver resets the device"))
                    .filter(l -> l.contains(pa.name()))
                    .toList();
            assertTrue(
                    lines.size() <= io.iovirt.util.LogLimiter.BURST + seconds,
                    lines.size() + " lines for " + failures + " failures in " + seconds + " s");
            assertTrue(lines.size() >= 1, "the first failures are logged");
        }
    }

    /**
     * A frontend restarts its packed receive ring at a SET_VRING_BASE whose used side is more than a ring behind the
     * available side (no state a ring can be in): the port refuses to start the queue with a line naming why, the
     * connection and the backend carry on, and the ring restarted at its real base moves frames again.
     */
    @Test
    void aPackedRingRestartedAtAnImpossibleBaseIsRefused() throws Exception {
        long packed = BASE | VirtioFeatures.VIRTIO_F_RING_PACKED;
        try (NetDriver a = new NetDriver(pa.options().socket(), packed, 1);
                NetDriver b = new NetDriver(pb.options().socket(), packed, 1)) {
            assertTrue(a.negotiated(VirtioFeatures.VIRTIO_F_RING_PACKED));
            VirtioNetPortTest.await(() -> pa.isLinkUp() && pb.isLinkUp(), "links up");
            int base = a.fe.getVringBase(0); // stopped: a fresh ring, 0x8000_8000
            assertEquals(0x8000_8000, base);
            // available at 5 on wrap 1, used at 3 on wrap 0: 258 slots in flight in a ring of 256
            a.fe.setVringBase(0, 0x0003_8005);
            org.junit.jupiter.api.Assertions.assertThrows(
                    io.iovirt.vhostuser.RequestRejectedException.class,
                    () -> a.fe.setVringKick(0, a.kickFd(0)), // enabled: starts on the kick, refused
                    "the port refuses to start the queue");
            String line = log.awaitLine("slots behind the available side");
            assertTrue(line.contains(pa.name()) && line.contains("BAD_CONFIG"), line);
            a.fe.getVringBase(0); // the connection carries on; the ring is stopped again to get a new base
            a.fe.setVringBase(0, base);
            a.fe.setVringKick(0, a.kickFd(0));
            a.postRx(0, 2048, 16);
            learn(a, A, B);
            byte[] f = VirtioNetPortTest.frame(A, B, 80);
            b.send(0, f);
            assertArrayEquals(f, a.receive(0), "the ring restarted at its real base moves frames");
        }
    }

    @Test
    void aFrontendThatTruncatesItsMemoryFailsOnlyItsOwnQueueEvenOnAnotherPortsThread() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1, false);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            linkAndLearn(a, b, c, 64, false);
            // A truncates the memory file it shared: the backend's next access to A's rx buffers is a SIGBUS,
            // on B's transmit thread.
            MemFd.truncate(a.ram.fd(), 4096);
            for (int i = 0; i < 10; i++) {
                b.send(0, VirtioNetPortTest.frame(A, B, 60 + i));
            }
            b.awaitTxUsed(0, 10);
            aFailedOnAMemoryFault(a);
            honestTrafficFlows(b, c, 1); // B's thread survived the fault in A's memory
            assertTrue(pb.stats().get(PortStat.RX_DROPPED_MALFORMED) == 0);
        }
    }

    @Test
    void aDestinationWhoseMemoryEndsMidBurstFailsAloneAndTheBurstsOtherFramesArrive() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1, false);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            linksUp(b, c, 128);
            learn(a, A, B);
            learnBAndC(b, c);
            // A's receive buffers, one page each from a page boundary; A truncates its memory after the second:
            // the first two frames to A fit, the third faults — in the middle of A's share of B's burst.
            long cut = a.alloc(0, 4096);
            a.postRx(0, 4096, 32);
            MemFd.truncate(a.ram.fd(), cut + 2 * 4096);
            long errorsBefore = pa.stats().get(PortStat.TX_DROPPED_ERROR);
            long sentBefore = pa.stats().txPackets();
            long countedBefore = sentBefore + pa.stats().txDropped();
            // one batch from B, A and C interleaved (A first): A's share fails A, C's share still arrives
            List<byte[]> toC = new ArrayList<>();
            for (int i = 0; i < 12; i++) {
                byte[] f = NetBurstTest.numbered(i % 2 == 0 ? A : C, B, 60 + i, i);
                if (i % 2 == 1) {
                    toC.add(f);
                }
                b.queue(0, f);
            }
            b.kickTx(0);
            b.awaitTxUsed(0, 12);
            aFailedOnAMemoryFault(a);
            for (int i = 0; i < toC.size(); i++) {
                assertArrayEquals(toC.get(i), c.receive(0), "B -> C frame " + i + " of the burst");
            }
            assertTrue(pa.stats().get(PortStat.TX_DROPPED_ERROR) > errorsBefore, "A counted the failed delivery");
            // Exact counters: each of the 6 frames for A is counted once, and as sent only if A's driver was shown
            // it (its used entry published). The frames written before the fault never reached A's driver.
            io.iovirt.testing.Await.until(
                    BOUND,
                    () -> "A's 6 frames counted once each: " + pa.stats(),
                    () -> pa.stats().txPackets() + pa.stats().txDropped() - countedBefore == 6);
            int shown = 0;
            while (a.ring(0).pollUsed() != -1) {
                shown++;
            }
            assertEquals(shown, pa.stats().txPackets() - sentBefore, "frames counted as sent to A: " + pa.stats());
            honestTrafficFlows(b, c, 1); // B's thread survived the fault in A's memory
        }
    }

    @Test
    void overlongChainsFailTheQueueAndHeapStaysBounded() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            linksUp(b, c, 128);
            long before = retainedHeap();
            // 64 heads, each the longest chain the device accepts: 256 one-byte buffers (a runt frame each).
            int n = VirtioNetPort.MAX_CHAIN;
            long[] addrs = new long[n];
            int[] lens = new int[n];
            boolean[] w = new boolean[n];
            long buf = a.alloc(4096, 64);
            for (int i = 0; i < n; i++) {
                addrs[i] = buf + i;
                lens[i] = 1;
            }
            long table = a.alloc(16L * n, 16);
            for (int k = 0; k < 64; k++) {
                a.addRaw(1, addrs, lens, w, table); // all share one indirect table
            }
            a.awaitTxUsed(0, 64);
            long retained = retainedHeap() - before;
            assertTrue(retained < 8 << 20, "64 maximal chains retain " + retained + " bytes of heap");
            // One buffer more than the bound (the attack used 32768): the queue fails at once. The driver
            // helper refuses such a request, so its indirect descriptor is lengthened in the table before the kick.
            long table2 = a.alloc(16L * 32768, 16);
            int id = a.addRawNoKick(1, addrs, lens, w, table2);
            io.iovirt.virtio.SplitDriverRing ring = (io.iovirt.virtio.SplitDriverRing) a.ring(1);
            a.ram.segment()
                    .set(java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED, ring.descAddr() + 16L * id + 8, 16 * 32768);
            a.kickQueue(1);
            String line = log.awaitLine("tx1: virtqueue 1:");
            assertTrue(line.contains("BAD_INDIRECT_TABLE") || line.contains("CHAIN_TOO_LONG"), line);
            VirtioNetPortTest.await(
                    () -> {
                        try {
                            return (a.fe.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET) != 0;
                        } catch (IOException e) {
                            throw new RuntimeException(e);
                        }
                    },
                    "NEEDS_RESET");
            learnBAndC(b, c);
            honestTrafficFlows(b, c, 1);
        }
    }

    /**
     * A receiver whose merge buffers are chains of many tiny descriptors costs a sender no more than about two chains'
     * walk per frame: A posts a 12-byte chain (room for the header only) and then chains of 256 zero-length
     * descriptors, and a frame from B to A is dropped once its chains hold more than MAX_FRAME_DESCRIPTORS
     * descriptors — two chains taken, returned unused, counted — instead of walking 64 × 256 descriptors on B's
     * thread (~130 µs a frame, 4 ms a burst) and dropping it anyway.
     */
    @Test
    void aReceiverPostingChainsOfTinyDescriptorsCostsTheSenderABoundedWalk() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            linksUp(b, c, 64);
            int n = VirtioNetPort.MAX_CHAIN;
            long[] addrs = new long[n];
            int[] lens = new int[n]; // zero-length: the walk costs, no byte fits
            boolean[] w = new boolean[n];
            java.util.Arrays.fill(w, true);
            long table = a.alloc(16L * n, 16);
            int chains = 20;
            a.addRawNoKick(0, new long[] {a.alloc(64, 64)}, new int[] {12}, new boolean[] {true}, -1);
            for (int k = 1; k < chains; k++) {
                a.addRawNoKick(0, addrs, lens, w, table); // all share one indirect table
            }
            b.send(0, VirtioNetPortTest.frame(A, B, 1500)); // A unknown: flooded to A and C
            b.awaitTxDone(0); // forwarded: A's chains returned and C's copy delivered before B's request
            c.drainRx(0);
            VirtioNetPortTest.await(() -> pa.stats().txDropped() == 1, "the frame to A dropped");
            int returned = 0;
            long quiet = System.nanoTime() + Duration.ofMillis(300).toNanos();
            while (System.nanoTime() < quiet) {
                long u = a.ring(0).pollUsed();
                if (u != -1) {
                    returned++;
                    assertEquals(0, io.iovirt.virtio.DriverRing.usedLen(u), "returned unused");
                }
            }
            assertEquals(2, returned, "chains taken for the frame (its descriptors: 1 + 256)");
            assertEquals(1, pa.stats().get(PortStat.TX_DROPPED_BUFFER_TOO_SMALL));
            assertEquals(0, pa.stats().get(PortStat.TX_DROPPED_NO_BUFFERS), "the rest of A's chains stay posted");
            assertEquals(0, pa.stats().txPackets());
            learnBAndC(b, c);
            honestTrafficFlows(b, c, 1);
        }
    }

    /** Heap in use after a full collection: what the process retains, not what it allocated. */
    static long retainedHeap() throws InterruptedException {
        var mem = ManagementFactory.getMemoryMXBean();
        long best = Long.MAX_VALUE;
        for (int i = 0; i < 3; i++) {
            System.gc();
            Thread.sleep(50);
            best = Math.min(best, mem.getHeapMemoryUsage().getUsed());
        }
        return best;
    }

    @Test
    void kickCallAndErrMustBeEventfds() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1);
                io.iovirt.linux.Fd file = io.iovirt.linux.FileIo.open(
                        dir.resolve("regular"), io.iovirt.linux.FileIo.O_RDWR | io.iovirt.linux.FileIo.O_CREAT, 0600)) {
            linksUp(b, c, 64);
            // a regular file posing as the call eventfd: refused, the connection closed
            org.junit.jupiter.api.Assertions.assertThrows(
                    IOException.class, () -> a.fe.setVringCall(1, EventFd.adopt(file.dup())));
            String line = log.awaitLine("protocol error");
            assertTrue(
                    line.contains("SET_VRING_CALL descriptor of queue 1 is /") && line.contains("not an eventfd"),
                    line);
            learnBAndC(b, c);
            honestTrafficFlows(b, c, 1);
            // the next frontend on A's socket is served
            VirtioNetPortTest.await(() -> !pa.connected(), "A disconnected");
            try (NetDriver again = new NetDriver(pa.options().socket(), BASE, 1)) {
                VirtioNetPortTest.await(pa::isLinkUp, "A's link up again");
            }
        }
    }

    @Test
    void aPinnedPortCannotSpoofOrFillTheMacTable() throws Exception {
        sw.close();
        sw = new Switch(Switch.Config.defaults());
        pa = sw.addPort(
                port(new VirtioNetPort.Options(dir.resolve("pa.sock"), 1, A, 0)).pinSource(true));
        pb = sw.addPort(port(new VirtioNetPort.Options(dir.resolve("pb.sock"), 1, -1, 0)));
        pc = sw.addPort(port(new VirtioNetPort.Options(dir.resolve("pc.sock"), 1, -1, 0)));
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            linksUp(b, c, 128);
            learnBAndC(b, c);
            int before = sw.macTable().size();
            // A claims to be B (to steal B's traffic) and then floods 200 made-up sources.
            a.send(0, VirtioNetPortTest.frame(C, B, 60));
            for (int i = 0; i < 200; i++) {
                a.send(0, VirtioNetPortTest.frame(C, 0x0252_5400_1000L + i, 60));
            }
            a.awaitTxUsed(0, 201);
            assertEquals(201, pa.stats().get(PortStat.RX_DROPPED_BAD_SOURCE));
            assertEquals(before, sw.macTable().size(), "nothing learned from A's spoofed frames");
            honestTrafficFlows(b, c, 1); // B's traffic still goes to B
            a.send(0, VirtioNetPortTest.frame(C, A, 70)); // its own address is forwarded
            assertEquals(70, c.receive(0).length);
            assertTrue(log.awaitLine("the port is pinned to").contains(pa.name()));
        }
    }
}
