// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.testing.Frames;
import java.lang.management.ManagementFactory;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

@Timeout(60)
class SwitchTest {
    static final String A = "52:54:00:00:00:0a";
    static final String B = "52:54:00:00:00:0b";
    static final String C = "52:54:00:00:00:0c";
    static final String BCAST = "ff:ff:ff:ff:ff:ff";

    Switch sw;
    TestPort pa;
    TestPort pb;
    TestPort pc;

    @BeforeEach
    void setUp() throws Exception {
        sw = new Switch(Switch.Config.defaults().withMacAging(10));
        pa = sw.addPort(new TestPort("a"));
        pb = sw.addPort(new TestPort("b"));
        pc = sw.addPort(new TestPort("c"));
    }

    @AfterEach
    void tearDown() {
        sw.close();
    }

    @Test
    void aBurstIsCheckedCountedAndDeliveredFrameByFrameInOrder() {
        pb.inject(Frames.ethernet(BCAST, B, 60)); // b is learned; c is not
        pa.takeSent();
        pc.takeSent();
        byte[] f0 = Frames.ethernet(B, A, 60);
        byte[] f1 = Frames.ethernet(B, A, 61);
        byte[] runt = java.util.Arrays.copyOf(Frames.ethernet(B, A, 60), 13); // same addresses, no EtherType
        byte[] f3 = Frames.ethernet(B, A, 62);
        byte[] oversize = Frames.ethernet(B, A, 1600); // over the 1500-byte MTU
        byte[] bcast = Frames.ethernet(BCAST, A, 64);
        byte[] f6 = Frames.ethernet(B, A, 63);
        byte[] toC = Frames.ethernet(C, A, 70); // c unknown: flooded to b and c
        byte[] f8 = Frames.ethernet(B, A, 65);
        byte[] badSource = Frames.ethernet(B, "01:00:5e:00:00:01", 66);
        byte[] f10 = Frames.ethernet(B, A, 67);
        pa.injectBurst(f0, f1, runt, f3, oversize, bcast, f6, toC, f8, badSource, f10);
        List<byte[]> atB = pb.takeSent();
        List<byte[]> atC = pc.takeSent();
        byte[][] wantB = {f0, f1, f3, bcast, f6, toC, f8, f10};
        assertEquals(wantB.length, atB.size(), "frames at b");
        for (int i = 0; i < wantB.length; i++) {
            assertArrayEquals(wantB[i], atB.get(i), "frame " + i + " at b");
        }
        assertEquals(2, atC.size(), "frames at c");
        assertArrayEquals(bcast, atC.get(0));
        assertArrayEquals(toC, atC.get(1));
        assertEquals(0, pa.takeSent().size(), "no hairpin");
        PortStats s = pa.stats();
        assertEquals(wantB.length, s.rxPackets());
        assertEquals(1, s.get(PortStat.RX_DROPPED_RUNT));
        assertEquals(1, s.get(PortStat.RX_DROPPED_OVERSIZE));
        assertEquals(1, s.get(PortStat.RX_DROPPED_BAD_SOURCE));
        assertEquals(1, s.get(PortStat.RX_MULTICAST));
        assertEquals(2, s.get(PortStat.RX_FLOODED));
        assertEquals(wantB.length, pb.stats().txPackets());
    }

    /**
     * A pinned port owns its address: another port sending from it is dropped (before, the switch moved the address
     * to the sender and the pinned guest's unicast with it), a second port cannot pin it, and it is free again once
     * the pinned port is gone.
     */
    @Test
    void anAddressPinnedToOnePortCannotBeTakenByAnother() throws Exception {
        String d = "52:54:00:00:00:0d";
        TestPort pinned = new TestPort("pinned");
        pinned.pin = Mac.parse(d);
        sw.addPort(pinned);
        assertEquals(pinned.index(), sw.macTable().lookup(Mac.parse(d), sw.now()), "its address is known at once");

        pa.inject(Frames.ethernet(BCAST, d, 60)); // a sends from the pinned port's address
        assertEquals(0, pb.takeSent().size(), "dropped");
        assertEquals(0, pinned.takeSent().size());
        assertEquals(1, pa.stats().get(PortStat.RX_DROPPED_BAD_SOURCE));
        assertEquals(pinned.index(), sw.macTable().lookup(Mac.parse(d), sw.now()), "not moved to a");

        byte[] toD = Frames.ethernet(d, B, 60);
        pb.inject(toD);
        assertArrayEquals(toD, pinned.takeSent().get(0), "unicast to the address still reaches its owner");
        assertEquals(0, pa.takeSent().size());

        pinned.inject(Frames.ethernet(B, d, 60)); // the owner itself sends from it
        assertEquals(1, pb.takeSent().size());
        assertEquals(0, pinned.stats().get(PortStat.RX_DROPPED_BAD_SOURCE));

        TestPort twin = new TestPort("twin");
        twin.pin = Mac.parse(d);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> sw.addPort(twin));
        assertTrue(e.getMessage().contains("already pinned"), e.getMessage());

        sw.removePort(pinned);
        pa.inject(Frames.ethernet(BCAST, d, 60));
        assertEquals(pa.index(), sw.macTable().lookup(Mac.parse(d), sw.now()), "free once its owner is gone");
    }

    /**
     * A pinned address stays its port's when the table forgets it — the guest silent for the aging time, or its
     * peer gone (a frontend reconnecting) — so frames to it go to that port alone (counted there as link down while
     * its guest is away), never flooded to every other port as they were.
     */
    @Test
    void framesToAPinnedAddressReachOnlyItsPortEvenOnceTheTableForgotIt() throws Exception {
        String d = "52:54:00:00:00:0d";
        TestPort pinned = new TestPort("pinned");
        pinned.pin = Mac.parse(d);
        sw.addPort(pinned);
        pb.inject(Frames.ethernet(BCAST, B, 60)); // b known
        pa.takeSent();
        pc.takeSent();
        pinned.takeSent();

        sw.tick(10); // the aging time: the pinned guest sent nothing
        assertEquals(-1, sw.macTable().lookup(Mac.parse(d), sw.now()), "the table forgot it");
        byte[] toD = Frames.ethernet(d, B, 60);
        long flooded = pb.stats().get(PortStat.RX_FLOODED);
        pb.inject(toD);
        assertEquals(1, pinned.takeSent().size(), "its port gets it");
        assertEquals(0, pa.takeSent().size(), "not flooded");
        assertEquals(0, pc.takeSent().size(), "not flooded");
        assertEquals(flooded, pb.stats().get(PortStat.RX_FLOODED));

        pinned.link = false;
        pinned.peerGone(); // its frontend went away
        pb.injectBurst(toD, toD);
        assertEquals(0, pa.takeSent().size(), "not flooded while its guest is away");
        assertEquals(0, pc.takeSent().size());
        assertEquals(2, pinned.stats().get(PortStat.TX_DROPPED_LINK_DOWN), "dropped at its port");

        pinned.inject(Frames.ethernet(B, d, 60)); // nor does a frame from the address itself get filtered or lost
        assertEquals(1, pb.takeSent().size());
        sw.removePort(pinned);
        pb.inject(toD);
        assertEquals(1, pa.takeSent().size(), "once the port is gone, an unknown address like any other");
        assertEquals(1, pc.takeSent().size());
    }

    @Test
    void unknownUnicastFloodsToEveryOtherPortButNeverBack() {
        byte[] f = Frames.ethernet(B, A, 100);
        pa.inject(f);
        assertEquals(0, pa.takeSent().size(), "no hairpin");
        assertArrayEquals(f, pb.takeSent().get(0));
        assertArrayEquals(f, pc.takeSent().get(0));
        PortStats s = pa.stats();
        assertEquals(1, s.rxPackets());
        assertEquals(100, s.rxBytes());
        assertEquals(1, s.get(PortStat.RX_FLOODED));
        assertEquals(0, s.get(PortStat.RX_MULTICAST));
        assertEquals(1, pb.stats().txPackets());
        assertEquals(100, pc.stats().txBytes());
    }

    @Test
    void learnedDestinationGetsTheFrameAlone() {
        pb.inject(Frames.ethernet(BCAST, B, 60)); // b announces itself
        pa.takeSent();
        pc.takeSent();
        byte[] f = Frames.ethernet(B, A, 1514);
        pa.inject(f);
        assertArrayEquals(f, pb.takeSent().get(0));
        assertEquals(0, pc.takeSent().size());
        assertEquals(0, pa.stats().get(PortStat.RX_FLOODED));
        assertEquals(pb.index(), sw.macTable().lookup(Mac.parse(B), sw.now()));
        assertEquals(pa.index(), sw.macTable().lookup(Mac.parse(A), sw.now()));
    }

    @Test
    void broadcastAndMulticastFloodEvenWhenTheSourceIsKnown() {
        pb.inject(Frames.ethernet(A, B, 60));
        pa.inject(Frames.ethernet(BCAST, A, 60));
        pa.inject(Frames.ethernet("01:00:5e:00:00:01", A, 60));
        pa.inject(Frames.ethernet("33:33:00:00:00:01", A, 60));
        assertEquals(3, pb.takeSent().size() - 0);
        assertEquals(3 + 1, pc.takeSent().size(), "c also got b's frame to the then unknown a");
        PortStats s = pa.stats();
        assertEquals(3, s.get(PortStat.RX_MULTICAST));
        assertEquals(3, s.get(PortStat.RX_FLOODED));
    }

    @Test
    void frameToAnAddressLearnedOnTheIngressPortIsFiltered() {
        pa.inject(Frames.ethernet(BCAST, A, 60));
        pa.inject(Frames.ethernet(BCAST, "52:54:00:00:00:aa", 60)); // a second station behind port a
        pb.takeSent();
        pc.takeSent();
        pa.inject(Frames.ethernet("52:54:00:00:00:aa", A, 80));
        assertEquals(0, pa.takeSent().size());
        assertEquals(0, pb.takeSent().size());
        assertEquals(0, pc.takeSent().size());
        assertEquals(1, pa.stats().get(PortStat.RX_FILTERED));
        assertEquals(3, pa.stats().rxPackets());
    }

    @Test
    void addressesAgeOutAfterTheAgingTime() {
        sw.tick(100);
        pb.inject(Frames.ethernet(BCAST, B, 60));
        sw.tick(109);
        pc.takeSent();
        pa.inject(Frames.ethernet(B, A, 60));
        assertEquals(0, pc.takeSent().size(), "9 s after: still known");
        sw.tick(110);
        assertEquals(-1, sw.macTable().lookup(Mac.parse(B), sw.now()));
        pa.inject(Frames.ethernet(B, A, 60));
        assertEquals(1, pc.takeSent().size(), "10 s after: forgotten, flooded");
        assertEquals(1, pb.takeSent().size() - 1);
    }

    @Test
    void trafficRefreshesTheAge() {
        pb.inject(Frames.ethernet(BCAST, B, 60));
        sw.tick(8);
        pb.inject(Frames.ethernet(A, B, 60));
        sw.tick(16);
        assertEquals(pb.index(), sw.macTable().lookup(Mac.parse(B), sw.now()));
    }

    @Test
    void aStationThatMovesIsFollowed() {
        pb.inject(Frames.ethernet(BCAST, B, 60));
        pc.inject(Frames.ethernet(BCAST, B, 60)); // b moved to port c
        pb.takeSent();
        pc.takeSent();
        pa.inject(Frames.ethernet(B, A, 60));
        assertEquals(0, pb.takeSent().size());
        assertEquals(1, pc.takeSent().size());
    }

    @Test
    void runtAndOversizedFramesAreCountedAndDropped() {
        pa.inject(Frames.ethernet(B, A, 13));
        pa.inject(new byte[0]);
        pa.inject(Frames.ethernet(B, A, 1500 + 18 + 1));
        pa.inject(Frames.ethernet(B, A, 9000));
        assertEquals(0, pb.takeSent().size());
        PortStats s = pa.stats();
        assertEquals(2, s.get(PortStat.RX_DROPPED_RUNT));
        assertEquals(2, s.get(PortStat.RX_DROPPED_OVERSIZE));
        assertEquals(0, s.rxPackets());
        assertEquals(4, s.rxDropped());
        // the limits themselves pass: a bare header, and MTU + header + one VLAN tag
        pa.inject(Frames.ethernet(B, A, 14));
        pa.inject(Frames.ethernet(B, A, 1518));
        assertEquals(2, pb.takeSent().size());
        assertEquals(2, pa.stats().rxPackets());
    }

    @Test
    void groupOrZeroSourceAddressesAreDroppedAndNotLearned() {
        pa.inject(Frames.ethernet(B, BCAST, 60));
        pa.inject(Frames.ethernet(B, "01:00:5e:00:00:01", 60));
        pa.inject(Frames.ethernet(B, "00:00:00:00:00:00", 60));
        assertEquals(3, pa.stats().get(PortStat.RX_DROPPED_BAD_SOURCE));
        assertEquals(0, pb.takeSent().size());
        assertEquals(0, sw.macTable().size());
    }

    /**
     * A burst counts exactly what the same frames sent one by one count: runs of one flow (broadcast, flooded to an
     * unknown address, unicast) are counted together when the run ends, a dropped frame ends a run, and every frame's
     * bytes are its own.
     */
    @Test
    void aBurstCountsWhatTheSameFramesOneByOneCount() throws Exception {
        List<byte[]> frames = new java.util.ArrayList<>();
        for (int i = 0; i < 3; i++) {
            frames.add(Frames.ethernet(BCAST, A, 60 + i));
        }
        for (int i = 0; i < 4; i++) {
            frames.add(Frames.ethernet(C, A, 100 + i)); // c never sends: flooded
        }
        frames.add(java.util.Arrays.copyOf(Frames.ethernet(C, A, 60), 13)); // a runt of the same flow
        for (int i = 0; i < 3; i++) {
            frames.add(Frames.ethernet(C, A, 200 + i));
        }
        for (int i = 0; i < 5; i++) {
            frames.add(Frames.ethernet(B, A, 300 + i)); // b is learned: unicast
        }
        byte[][] burst = frames.toArray(new byte[0][]);

        pb.inject(Frames.ethernet(BCAST, B, 60));
        pa.injectBurst(burst);
        PortStats together = pa.stats();

        try (Switch one = new Switch(Switch.Config.defaults().withMacAging(10))) {
            TestPort a = one.addPort(new TestPort("a"));
            TestPort b = one.addPort(new TestPort("b"));
            one.addPort(new TestPort("c"));
            b.inject(Frames.ethernet(BCAST, B, 60));
            for (byte[] f : burst) {
                a.inject(f);
            }
            PortStats oneByOne = a.stats();
            for (PortStat stat : PortStat.ALL) {
                assertEquals(oneByOne.get(stat), together.get(stat), stat.name());
            }
        }
        assertEquals(burst.length - 1, together.rxPackets());
        long bytes = 0;
        for (byte[] f : burst) {
            bytes += f.length >= 14 ? f.length : 0;
        }
        assertEquals(bytes, together.rxBytes());
        assertEquals(3, together.get(PortStat.RX_MULTICAST));
        assertEquals(3 + 4 + 3, together.get(PortStat.RX_FLOODED));
        assertEquals(1, together.get(PortStat.RX_DROPPED_RUNT));
    }

    @Test
    void aBurstToAnUnknownAddressReachesEachOtherPortInOneCallInOrder() {
        pb.inject(Frames.ethernet(BCAST, B, 60)); // b is learned; c is not
        pa.takeSent();
        pc.takeSent();
        pc.link = false;
        byte[][] frames = new byte[8][];
        for (int i = 0; i < frames.length; i++) {
            // unknown destination (flooded) and b (unicast), interleaved
            frames[i] = Frames.ethernet(i % 3 == 0 ? B : "52:54:00:00:00:99", A, 60 + i);
        }
        int bCalls = pb.burstCalls;
        int cCalls = pc.burstCalls;
        pa.injectBurst(frames);
        List<byte[]> atB = pb.takeSent();
        assertEquals(frames.length, atB.size(), "b gets the unicast and the flooded frames");
        for (int i = 0; i < frames.length; i++) {
            assertArrayEquals(frames[i], atB.get(i), "frame " + i + " at b, in the order sent");
        }
        assertEquals(1, pb.burstCalls - bCalls, "one delivery call for the whole burst");
        assertEquals(0, pc.takeSent().size(), "a port whose link is down gets no floods");
        assertEquals(0, pc.burstCalls - cCalls);
        assertEquals(0, pc.stats().txDropped(), "and does not count them as drops");
        assertEquals(5, pa.stats().get(PortStat.RX_FLOODED));
        pc.link = true;
        pa.injectBurst(frames);
        assertEquals(5, pc.takeSent().size(), "with its link up it gets the flooded ones");
        assertEquals(1, pc.burstCalls - cCalls);
    }

    @Test
    void floodingSkipsPortsWhoseLinkIsDown() {
        pc.link = false;
        pa.inject(Frames.ethernet(BCAST, A, 60));
        assertEquals(1, pb.takeSent().size());
        assertEquals(0, pc.takeSent().size());
        assertEquals(0, pc.stats().txDropped(), "a down port is not a drop target for floods");
    }

    @Test
    void aPeerGoingAwayForgetsItsAddresses() {
        pb.inject(Frames.ethernet(BCAST, B, 60));
        assertEquals(pb.index(), sw.macTable().lookup(Mac.parse(B), 0));
        pb.peerGone();
        assertEquals(-1, sw.macTable().lookup(Mac.parse(B), 0));
        pc.takeSent();
        sw.removePort(pc);
        assertEquals(List.of(pa, pb), sw.ports());
        pa.inject(Frames.ethernet(B, A, 60));
        assertEquals(1, pb.takeSent().size());
        assertEquals(0, pc.takeSent().size(), "a removed port gets nothing");
    }

    /**
     * A daemon's switch lives as long as the daemon while ports come and go: a removed port's number is the next
     * port's (the lowest free one), so add/remove cycles never run out of the 65,534 numbers.
     */
    @Test
    void removedPortNumbersAreReused() throws Exception {
        Switch s = new Switch(Switch.Config.defaults().withMacTable(16, 16)); // a small table: cheap flushes
        try {
            TestPort a = assertDoesNotThrowAdd(s, new TestPort("a"));
            for (int i = 0; i < MacTable.MAX_PORTS + 10; i++) {
                TestPort p = s.addPort(new TestPort("p" + i));
                assertEquals(1, p.index());
                s.removePort(p);
            }
            TestPort b = s.addPort(new TestPort("b"));
            TestPort c = s.addPort(new TestPort("c"));
            s.removePort(b);
            TestPort d = s.addPort(new TestPort("d"));
            assertEquals(List.of(1, 2, 1), List.of(b.index(), c.index(), d.index()), "the lowest free number");
            assertEquals(List.of(a, d, c), s.ports());
        } finally {
            s.close();
        }
    }

    /**
     * A reused number carries nothing of the removed port: its addresses are forgotten (frames to them flood, not
     * reach the new port as if the station were there), frames its thread still delivers after removal are dropped
     * unlearned, and its late peerGone does not forget the new port's addresses.
     */
    @Test
    void aReusedNumberCarriesNothingOfTheRemovedPort() throws Exception {
        pb.inject(Frames.ethernet(BCAST, B, 60));
        pa.takeSent();
        pc.takeSent();
        int number = pb.index();
        sw.removePort(pb);
        pb.inject(Frames.ethernet(BCAST, B, 60)); // its receive thread, not yet stopped
        assertEquals(0, pa.takeSent().size(), "a removed port's frame is not forwarded");
        TestPort d = sw.addPort(new TestPort("d"));
        assertEquals(number, d.index());
        assertEquals(-1, sw.macTable().lookup(Mac.parse(B), sw.now()), "b's address went with b");
        pa.inject(Frames.ethernet(B, A, 60));
        assertEquals(1, d.takeSent().size());
        assertEquals(1, pc.takeSent().size(), "flooded: b's address is unknown");
        d.inject(Frames.ethernet(BCAST, C.replace("0c", "0d"), 60));
        pb.peerGone();
        assertEquals(number, sw.macTable().lookup(Mac.parse(C.replace("0c", "0d")), sw.now()), "d's address stays");
    }

    /** A port whose close waits until the test lets it go (a port whose threads are slow to stop). */
    static class SlowClosingPort extends TestPort {
        final java.util.concurrent.CountDownLatch closing = new java.util.concurrent.CountDownLatch(1);
        final java.util.concurrent.CountDownLatch mayEnd = new java.util.concurrent.CountDownLatch(1);

        SlowClosingPort(String name) {
            super(name);
        }

        @Override
        public void close() {
            super.close();
            closing.countDown();
            try {
                mayEnd.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /**
     * A removal under way (the port's close outside the switch's lock) is waited for by the switch's close: what the
     * owner tears down after the switch (a worker group the port's queues use) is no longer in use by it.
     */
    @Test
    void closingTheSwitchWaitsForARemovalUnderWay() throws Exception {
        SlowClosingPort slow = sw.addPort(new SlowClosingPort("slow"));
        java.util.concurrent.CountDownLatch removed = new java.util.concurrent.CountDownLatch(1);
        java.util.concurrent.CountDownLatch closed = new java.util.concurrent.CountDownLatch(1);
        try {
            Thread.ofPlatform().daemon().start(() -> {
                sw.removePort(slow);
                removed.countDown();
            });
            assertTrue(slow.closing.await(20, java.util.concurrent.TimeUnit.SECONDS), "the removal is closing it");
            TestPort d = sw.addPort(new TestPort("d")); // another port comes meanwhile
            assertTrue(d.index() != slow.index(), "the number stays reserved while the port closes");
            Thread.ofPlatform().daemon().start(() -> {
                sw.close();
                closed.countDown();
            });
            Await.until(java.time.Duration.ofSeconds(20), "the other ports closed", () -> !pa.link && !d.link);
            assertEquals(1, closed.getCount(), "the switch's close waits for the removal");
            slow.mayEnd.countDown();
            assertTrue(closed.await(20, java.util.concurrent.TimeUnit.SECONDS), "then it returns");
            assertTrue(removed.await(20, java.util.concurrent.TimeUnit.SECONDS));
        } finally {
            slow.mayEnd.countDown();
        }
    }

    /**
     * One port whose close fails does not leave the ports after it open: the switch closes every port, then throws
     * the failure (the daemon then still closes the worker group and frees what the other ports held, which must be
     * closed by then).
     */
    @Test
    void aPortWhoseCloseFailsDoesNotLeaveTheOthersOpen() throws Exception {
        sw.removePort(pa); // its number 0 goes to the failing port: closed before b and c
        TestPort bad = sw.addPort(new TestPort("bad") {
            @Override
            public void close() {
                super.close();
                throw new IllegalStateException("this port's close fails");
            }
        });
        assertEquals(0, bad.index());
        IllegalStateException e = assertThrows(IllegalStateException.class, sw::close);
        assertEquals("this port's close fails", e.getMessage());
        assertFalse(pb.link, "b closed");
        assertFalse(pc.link, "c closed");
    }

    /** A port whose start waits until the test lets it go (a socket path or TAP on a file system that is slow). */
    static final class SlowStartingPort extends TestPort {
        final java.util.concurrent.CountDownLatch starting = new java.util.concurrent.CountDownLatch(1);
        final java.util.concurrent.CountDownLatch mayStart = new java.util.concurrent.CountDownLatch(1);
        volatile boolean started;
        volatile boolean closedBeforeStarted;

        SlowStartingPort(String name) {
            super(name);
        }

        @Override
        protected void start() {
            starting.countDown();
            try {
                mayStart.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            super.start();
            started = true;
        }

        @Override
        public void close() {
            closedBeforeStarted |= !started;
            super.close();
        }
    }

    /** Runs {@code add} on a thread of its own; the result is the port, or what the add threw. */
    private static java.util.concurrent.CompletableFuture<Object> addOnThread(Switch s, Port p) {
        java.util.concurrent.CompletableFuture<Object> f = new java.util.concurrent.CompletableFuture<>();
        Thread.ofPlatform().daemon().start(() -> {
            try {
                f.complete(s.addPort(p));
            } catch (Throwable t) {
                f.complete(t);
            }
        });
        return f;
    }

    /** Runs {@code action} on a thread of its own; the latch opens when it has returned. */
    private static java.util.concurrent.CountDownLatch onThread(Runnable action) {
        java.util.concurrent.CountDownLatch done = new java.util.concurrent.CountDownLatch(1);
        Thread.ofPlatform().daemon().start(() -> {
            action.run();
            done.countDown();
        });
        return done;
    }

    /** Adds {@code slow} on a thread of its own ({@link #addOnThread}) and waits until its start has begun. */
    private java.util.concurrent.CompletableFuture<Object> addUntilStarting(SlowStartingPort slow)
            throws InterruptedException {
        java.util.concurrent.CompletableFuture<Object> added = addOnThread(sw, slow);
        assertTrue(slow.starting.await(20, java.util.concurrent.TimeUnit.SECONDS), "the port is starting");
        return added;
    }

    /**
     * Removes {@code p} on a thread of its own and waits until that removal waits, or has returned ({@code what});
     * the latch opens when it has returned.
     */
    private java.util.concurrent.CountDownLatch removeUntilItWaits(Port p, String what) {
        java.util.concurrent.CountDownLatch removed = new java.util.concurrent.CountDownLatch(1);
        Thread remover = Thread.ofPlatform().daemon().start(() -> {
            sw.removePort(p);
            removed.countDown();
        });
        Await.until(
                java.time.Duration.ofSeconds(20),
                what,
                () -> removed.getCount() == 0 || remover.getState() == Thread.State.WAITING);
        return removed;
    }

    /**
     * A port's start runs outside the switch's lock: while one port is slow to start, another port is added and
     * another removed (a tenant's socket path on a file system that does not answer holds up no other tenant).
     */
    @Test
    void aPortSlowToStartHoldsUpNoOtherPortsAddOrRemoval() throws Exception {
        SlowStartingPort slow = new SlowStartingPort("slow");
        try {
            java.util.concurrent.CompletableFuture<Object> added = addUntilStarting(slow);
            java.util.concurrent.CompletableFuture<Object> other = addOnThread(sw, new TestPort("d"));
            Object d = other.get(20, java.util.concurrent.TimeUnit.SECONDS);
            assertTrue(d instanceof TestPort, "another port was added meanwhile: " + d);
            assertTrue(((TestPort) d).index() != slow.index(), "the starting port's number is taken");
            assertThrows(
                    IllegalArgumentException.class,
                    () -> sw.addPort(new TestPort("slow")),
                    "the starting port's name is taken");
            java.util.concurrent.CountDownLatch removed = onThread(() -> sw.removePort(pb));
            assertTrue(removed.await(20, java.util.concurrent.TimeUnit.SECONDS), "another port was removed meanwhile");
            assertFalse(added.isDone(), "the slow port is still starting");
            slow.mayStart.countDown();
            assertEquals(slow, added.get(20, java.util.concurrent.TimeUnit.SECONDS));
        } finally {
            slow.mayStart.countDown();
        }
    }

    /**
     * A removal of a port still starting (the caller found it in {@link Switch#ports}) waits for its start to return
     * before it closes it: a close during the start would miss what the start opens after it.
     */
    @Test
    void aRemovalOfAPortStillStartingClosesItOnceItHasStarted() throws Exception {
        SlowStartingPort slow = new SlowStartingPort("slow");
        try {
            java.util.concurrent.CompletableFuture<Object> added = addUntilStarting(slow);
            java.util.concurrent.CountDownLatch removed =
                    removeUntilItWaits(slow, "the removal to wait for the start, or to return");
            assertEquals(1, removed.getCount(), "the removal waits while the port starts");
            assertTrue(slow.link, "not closed while it starts");
            slow.mayStart.countDown();
            assertEquals(slow, added.get(20, java.util.concurrent.TimeUnit.SECONDS), "its add returns it");
            assertTrue(removed.await(20, java.util.concurrent.TimeUnit.SECONDS), "then the removal returns");
            assertFalse(slow.link, "the port was closed");
            assertFalse(slow.closedBeforeStarted, "after its start had returned");
            assertFalse(sw.ports().contains(slow), "and is out of the switch");
        } finally {
            slow.mayStart.countDown();
        }
    }

    /**
     * A switch closed while a port starts closes the others at once, leaves that port to its add, which closes it
     * once its start has returned (never during it) and throws; the switch's close returns after that.
     */
    @Test
    void aSwitchClosedWhileAPortStartsClosesItOnceItHasStarted() throws Exception {
        SlowStartingPort slow = new SlowStartingPort("slow");
        try {
            java.util.concurrent.CompletableFuture<Object> added = addUntilStarting(slow);
            java.util.concurrent.CountDownLatch closed = onThread(sw::close);
            Await.until(java.time.Duration.ofSeconds(20), "the other ports closed", () -> !pa.link && !pc.link);
            assertEquals(1, closed.getCount(), "the switch's close waits for the port that is starting");
            assertTrue(slow.link, "not closed while it starts");
            slow.mayStart.countDown();
            Object result = added.get(20, java.util.concurrent.TimeUnit.SECONDS);
            assertTrue(result instanceof IllegalStateException, "the add fails: " + result);
            assertTrue(closed.await(20, java.util.concurrent.TimeUnit.SECONDS), "then the switch's close returns");
            assertFalse(slow.link, "the port was closed");
            assertFalse(slow.closedBeforeStarted, "after its start had returned");
        } finally {
            slow.mayStart.countDown();
        }
    }

    /** A slow-closing port whose close returns at once when one has begun already, as a real port's does. */
    static final class OnceClosingPort extends SlowClosingPort {
        private final java.util.concurrent.atomic.AtomicBoolean closeBegan =
                new java.util.concurrent.atomic.AtomicBoolean();

        OnceClosingPort(String name) {
            super(name);
        }

        @Override
        public void close() {
            if (closeBegan.compareAndSet(false, true)) {
                super.close();
            }
        }
    }

    /**
     * A removal of a port the switch's close is closing (the daemon's port removal racing its switch's: the switch's
     * close took the port first) returns when that close has, not at once with the port's second close: the caller
     * frees what the port holds (its socket path, its TAP name) once the removal returns.
     */
    @Test
    void aRemovalOfAPortTheSwitchIsClosingReturnsWhenThatCloseHas() throws Exception {
        OnceClosingPort slow = sw.addPort(new OnceClosingPort("slow"));
        try {
            Thread.ofPlatform().daemon().start(sw::close);
            assertTrue(slow.closing.await(20, java.util.concurrent.TimeUnit.SECONDS), "the switch is closing it");
            java.util.concurrent.CountDownLatch removed =
                    removeUntilItWaits(slow, "the removal to wait for the switch's close of the port, or to return");
            assertEquals(1, removed.getCount(), "the removal returns only when the port's close has");
            slow.mayEnd.countDown();
            assertTrue(removed.await(20, java.util.concurrent.TimeUnit.SECONDS), "then it returns");
        } finally {
            slow.mayEnd.countDown();
        }
    }

    /** A pinned port whose next frame's forwarding stops, once armed, until the test lets it go on. */
    static final class StallingPort extends SlowClosingPort {
        final java.util.concurrent.CountDownLatch stalled = new java.util.concurrent.CountDownLatch(1);
        final java.util.concurrent.CountDownLatch goOn = new java.util.concurrent.CountDownLatch(1);
        volatile boolean armed;

        StallingPort(String name, long pin) {
            super(name);
            this.pin = pin;
        }

        @Override
        protected long pinnedSource() { // the switch asks while it checks a frame, before it learns the source
            if (armed && Thread.currentThread().getName().equals("stalling sender")) {
                armed = false;
                stalled.countDown();
                try {
                    goOn.await();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
            return pin;
        }
    }

    /**
     * A port taken out while its receive thread was forwarding a frame learns that frame's source (its pinned
     * address) under its number after the removal forgot it; meanwhile, its close still under way, another port
     * pinned to that address is added. Frames to the address go to that port alone, not flooded to every other
     * port (its number's slot being empty) until the old port's close has returned.
     */
    @Test
    void aPortStillForwardingAsItIsRemovedCannotMakeThePinnedAddressOfItsSuccessorFlood() throws Exception {
        String d = "52:54:00:00:00:0d";
        StallingPort old = sw.addPort(new StallingPort("old", Mac.parse(d)));
        Thread remover = null;
        try {
            old.armed = true;
            Thread sender = Thread.ofPlatform()
                    .daemon()
                    .name("stalling sender")
                    .start(() -> old.inject(Frames.ethernet(B, d, 60)));
            assertTrue(old.stalled.await(20, java.util.concurrent.TimeUnit.SECONDS), "the frame is being checked");
            remover = Thread.ofPlatform().daemon().start(() -> sw.removePort(old));
            assertTrue(old.closing.await(20, java.util.concurrent.TimeUnit.SECONDS), "the removal is closing it");
            TestPort successor = new TestPort("successor");
            successor.pin = Mac.parse(d);
            sw.addPort(successor); // the address is free again: its owner was taken out
            old.goOn.countDown();
            sender.join(20_000);
            assertTrue(!sender.isAlive(), "the old port's frame was forwarded");
            pa.takeSent();
            pb.takeSent();
            pc.takeSent();
            successor.takeSent();

            byte[] toD = Frames.ethernet(d, B, 60);
            pb.inject(toD);
            assertEquals(1, successor.takeSent().size(), "the address's port gets it");
            assertEquals(0, pa.takeSent().size(), "not flooded");
            assertEquals(0, pc.takeSent().size(), "not flooded");
        } finally {
            old.goOn.countDown();
            old.mayEnd.countDown();
            if (remover != null) {
                remover.join(20_000);
            }
        }
    }

    /**
     * A burst that began before a port was removed and its number reused may reach both ports: each gets its flush
     * (the deferred interrupt), although they share the number.
     */
    @Test
    void aBurstReachingARemovedPortAndItsSuccessorFlushesBoth() throws Exception {
        Ingress in = new Ingress(Counters.detached());
        in.touch(pb);
        sw.removePort(pb);
        TestPort d = sw.addPort(new TestPort("d"));
        assertEquals(pb.index(), d.index());
        in.touch(d);
        in.touch(d);
        in.flush();
        assertEquals(1, pb.flushes);
        assertEquals(1, d.flushes);
    }

    @Test
    void aPortSprayingSourceAddressesFillsOnlyItsOwnShare() throws Exception {
        Switch s = new Switch(Switch.Config.defaults().withMacTable(64, 8));
        try {
            TestPort spray = assertDoesNotThrowAdd(s, new TestPort("spray"));
            TestPort b = assertDoesNotThrowAdd(s, new TestPort("b"));
            TestPort c = assertDoesNotThrowAdd(s, new TestPort("c"));
            b.inject(Frames.ethernet(BCAST, B, 60));
            c.inject(Frames.ethernet(BCAST, C, 60));
            spray.takeSent();
            b.takeSent();
            c.takeSent();
            java.util.Random r = new java.util.Random(9);
            int frames = 20_000;
            for (int i = 0; i < frames; i++) {
                long src = (r.nextLong() & 0xfeff_ffff_ffffL) | 0x0200_0000_0000L; // unicast, locally administered
                spray.inject(Frames.ethernet(B, Mac.toString(src), 60)); // also claims to talk to b
                if (i % 1000 == 0) {
                    s.tick(i / 1000); // the clock moves on (well inside the aging time)
                }
            }
            assertEquals(8, s.macTable().size(spray.index()), "the sprayer holds its share, no more");
            assertEquals(
                    frames - 8, spray.stats().get(PortStat.RX_UNLEARNED), "every address beyond the share is counted");
            assertEquals(frames, spray.stats().rxPackets(), "the frames were still forwarded");
            assertEquals(frames, b.takeSent().size(), "b got each one, not flooded: its entry stayed");
            assertEquals(0, c.takeSent().size());
            assertEquals(10, s.macTable().size());
            // The others keep being reached, and learn as usual.
            c.inject(Frames.ethernet(B, C, 60));
            assertEquals(1, b.takeSent().size());
            assertEquals(0, spray.takeSent().size(), "c to b is not flooded to the sprayer");
            TestPort d = assertDoesNotThrowAdd(s, new TestPort("d"));
            d.inject(Frames.ethernet(C, "52:54:00:00:00:0d", 60));
            assertEquals(1, c.takeSent().size());
            assertEquals(d.index(), s.macTable().lookup(Mac.parse("52:54:00:00:00:0d"), s.now()));
            assertEquals(0, d.stats().get(PortStat.RX_UNLEARNED));
            // A sprayer at its share cannot take over another port's address either.
            spray.inject(Frames.ethernet(BCAST, C, 60));
            assertEquals(c.index(), s.macTable().lookup(Mac.parse(C), s.now()));
        } finally {
            s.close();
        }
    }

    @Test
    void portNamesAreUnique() {
        assertThrows(IllegalArgumentException.class, () -> sw.addPort(new TestPort("a")));
    }

    /**
     * Frames the switch drops for their source (a pinned port's spoofed frames, or another port's pinned address)
     * and frames whose source it cannot learn (the port's share or the table full: every frame of an honest port
     * then) allocate nothing per frame: their warning is rate-limited, and its message — a lambda capturing the
     * port and the address, 24-32 bytes a frame before — is built only when it is logged.
     */
    @Test
    void droppedAndUnlearnedFramesAllocateNothingPerFrame() throws Exception {
        Switch s = new Switch(Switch.Config.defaults().withMacTable(8192, 1));
        try {
            TestPort in = s.addPort(new TestPort("in", false));
            TestPort pinnedIn = new TestPort("pinned-in", false);
            pinnedIn.pin = Mac.parse(A);
            s.addPort(pinnedIn);
            TestPort owner = new TestPort("owner", false);
            owner.pin = Mac.parse("52:54:00:00:00:0d");
            s.addPort(owner);
            in.inject(Frames.ethernet(BCAST, "52:54:00:00:00:01", 60)); // in's one address (macs-per-port 1)
            com.sun.management.ThreadMXBean mx = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
            long tid = Thread.currentThread().threadId();
            record Case(TestPort port, String src, PortStat counted) {}
            for (Case c : List.of(
                    new Case(pinnedIn, B, PortStat.RX_DROPPED_BAD_SOURCE), // spoofed by a pinned port
                    new Case(in, "52:54:00:00:00:0d", PortStat.RX_DROPPED_BAD_SOURCE), // another's pinned address
                    new Case(in, "52:54:00:00:00:02", PortStat.RX_UNLEARNED))) { // over the port's share
                byte[] f = Frames.ethernet(B, c.src(), 60);
                java.lang.foreign.MemorySegment.copy(
                        java.lang.foreign.MemorySegment.ofArray(f), 0, c.port().buffer(), 0, f.length);
                for (int i = 0; i < 300_000; i++) { // warm up: let the JIT compile the path
                    c.port().injectInPlace(f.length);
                }
                long counted = c.port().stats().get(c.counted());
                long before = mx.getThreadAllocatedBytes(tid);
                int frames = 200_000;
                for (int i = 0; i < frames; i++) {
                    c.port().injectInPlace(f.length);
                }
                long allocated = mx.getThreadAllocatedBytes(tid) - before;
                assertTrue(
                        allocated < frames / 10,
                        allocated + " bytes allocated for " + frames + " frames from " + c.src() + " on " + c.port());
                assertEquals(counted + frames, c.port().stats().get(c.counted()));
            }
        } finally {
            s.close();
        }
    }

    @Test
    void forwardingAllocatesNothingPerFrame() {
        Switch s = new Switch(Switch.Config.defaults());
        try {
            TestPort in = assertDoesNotThrowAdd(s, new TestPort("in", false));
            TestPort out = assertDoesNotThrowAdd(s, new TestPort("out", false));
            TestPort other = assertDoesNotThrowAdd(s, new TestPort("other", false));
            byte[] known = Frames.ethernet(B, A, 1514);
            out.inject(Frames.ethernet(BCAST, B, 60));
            java.lang.foreign.MemorySegment.copy(
                    java.lang.foreign.MemorySegment.ofArray(known), 0, in.buffer(), 0, known.length);
            com.sun.management.ThreadMXBean mx = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
            long tid = Thread.currentThread().threadId();
            for (int i = 0; i < 300_000; i++) { // warm up: let the JIT compile the path
                in.injectInPlace(known.length);
            }
            long before = mx.getThreadAllocatedBytes(tid);
            int frames = 200_000;
            for (int i = 0; i < frames; i++) {
                in.injectInPlace(known.length);
            }
            long allocated = mx.getThreadAllocatedBytes(tid) - before;
            assertTrue(allocated < frames / 10, allocated + " bytes allocated for " + frames + " frames");
            assertEquals(300_000 + frames, out.stats().txPackets());
            assertEquals(1, other.stats().txPackets());
        } finally {
            s.close();
        }
    }

    private static TestPort assertDoesNotThrowAdd(Switch s, TestPort p) {
        try {
            return s.addPort(p);
        } catch (Exception e) {
            throw new AssertionError(e);
        }
    }
}
