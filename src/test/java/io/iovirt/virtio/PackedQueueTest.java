// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static io.iovirt.virtio.QueueAssertions.assertCreateFails;
import static io.iovirt.virtio.QueueAssertions.assertPopFails;
import static io.iovirt.virtio.QueueAssertions.bytes;
import static io.iovirt.virtio.QueueAssertions.fill;
import static io.iovirt.virtio.VirtioRing.DESC_F_AVAIL;
import static io.iovirt.virtio.VirtioRing.DESC_F_INDIRECT;
import static io.iovirt.virtio.VirtioRing.DESC_F_NEXT;
import static io.iovirt.virtio.VirtioRing.DESC_F_USED;
import static io.iovirt.virtio.VirtioRing.DESC_F_WRITE;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.GuestFixture;
import io.iovirt.virtio.VirtqueueException.Reason;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

class PackedQueueTest {
    private static final int SIZE = 8;
    private final GuestFixture g = new GuestFixture();

    @AfterEach
    void guardsIntactAndClose() {
        assertTrue(g.guardsIntact(), "a device access escaped guest memory");
        g.close();
    }

    private PackedDriverRing driver(boolean eventIdx) {
        return PackedDriverRing.create(g.memory, g.alloc(PackedDriverRing.bytesNeeded(SIZE), 16), SIZE, eventIdx);
    }

    private PackedDriverRing driverAt(int pos, boolean wrap, boolean eventIdx) {
        long base = g.alloc(PackedDriverRing.bytesNeeded(SIZE), 16);
        return new PackedDriverRing(g.memory, SIZE, base, base + 16 * SIZE, base + 16 * SIZE + 4, eventIdx, pos, wrap);
    }

    private Virtqueue device(DriverRing d) throws VirtqueueException {
        return Virtqueue.create(d.queueConfig(1, true), g.holder);
    }

    private static long[] addrs(long... a) {
        return a;
    }

    @Test
    void listsCrossingTheRingEndRoundTrip() throws Exception {
        for (boolean wrap : new boolean[] {true, false}) {
            PackedDriverRing d = driverAt(SIZE - 2, wrap, false);
            Virtqueue q = device(d);
            long r = g.alloc(8, 8), w1 = g.alloc(8, 8), w2 = g.alloc(8, 8), w3 = g.alloc(8, 8);
            fill(g.at(r, 8), 7);
            int id = d.add(
                    addrs(r, w1, w2, w3),
                    new int[] {8, 8, 8, 8},
                    new boolean[] {false, true, true, true},
                    4,
                    DriverRing.NO_INDIRECT);
            assertTrue(d.kickNeeded());
            DescriptorChain c = q.pop();
            assertEquals(id, c.id());
            assertEquals(4, c.count());
            assertEquals(w3, c.guestAddress(3));
            assertArrayEquals(bytes(g.at(r, 8)), bytes(c.segment(0)));
            assertEquals(4, c.copyToWritable(0, g.at(r, 4)));
            assertArrayEquals(bytes(g.at(r, 4)), bytes(g.at(w1, 4)));
            q.push(c, 4);
            assertNull(q.pop());
            assertTrue(q.needsNotification());
            long used = d.pollUsed();
            assertEquals(id, DriverRing.usedId(used));
            assertEquals(4, DriverRing.usedLen(used));
            // The next list starts after the wrap, with the flipped counter on both sides.
            int id2 = d.add(addrs(w1), new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
            DescriptorChain c2 = q.pop();
            assertEquals(id2, c2.id());
            q.push(c2, 0);
            assertEquals(0, DriverRing.usedLen(d.pollUsed()));
            assertEquals(((2 + 1) | (wrap ? 0 : 0x8000)) * 0x10001, q.vringBase(), "avail and used at position 3");
        }
    }

    @Test
    void outOfOrderCompletionSkipsEachListsSlots() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        int a = d.add(
                addrs(buf, buf, buf),
                new int[] {8, 8, 8},
                new boolean[] {false, true, true},
                3,
                DriverRing.NO_INDIRECT);
        int b = d.add(addrs(buf), new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        int c = d.add(addrs(buf, buf), new int[] {8, 8}, new boolean[] {false, true}, 2, DriverRing.NO_INDIRECT);
        DescriptorChain ca = q.newChain(), cb = q.newChain(), cc = q.newChain();
        assertTrue(q.pop(ca));
        assertTrue(q.pop(cb));
        assertTrue(q.pop(cc));
        assertEquals(3, q.inFlight());
        q.push(cb, 1);
        q.push(cc, 2);
        q.push(ca, 3);
        assertEquals(b, DriverRing.usedId(d.pollUsed()));
        assertEquals(c, DriverRing.usedId(d.pollUsed()));
        assertEquals(a, DriverRing.usedId(d.pollUsed()));
        assertEquals(-1, d.pollUsed());
        // Several more laps stay in step.
        for (int i = 0; i < 5 * SIZE; i++) {
            int n = 1 + i % 3;
            int id = d.add(
                    addrs(buf, buf, buf),
                    new int[] {8, 8, 8},
                    new boolean[] {true, true, true},
                    n,
                    DriverRing.NO_INDIRECT);
            DescriptorChain ch = q.pop();
            assertEquals(id, ch.id());
            assertEquals(n, ch.count());
            q.push(ch, n);
            long used = d.pollUsed();
            assertEquals(id, DriverRing.usedId(used));
            assertEquals(n, DriverRing.usedLen(used));
        }
    }

    @Test
    void indirectTablesAreExpanded() throws Exception {
        PackedDriverRing d = driver(true);
        Virtqueue q = device(d);
        long t = g.alloc(16 * SIZE, 16), a = g.alloc(32, 8), b = g.allocHigh(32, 8);
        int id = d.add(addrs(a, b, a), new int[] {32, 32, 1}, new boolean[] {false, true, true}, 3, t);
        DescriptorChain c = q.pop();
        assertEquals(id, c.id());
        assertEquals(3, c.count());
        assertEquals(1, c.readableCount());
        assertEquals(33, c.writableBytes());
        assertEquals(b, c.guestAddress(1));
        q.push(c, 33);
        assertEquals(33, DriverRing.usedLen(d.pollUsed()));
    }

    @Test
    void usedDescriptorsSayWhetherDataWasWritten() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        d.add(addrs(buf), new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        d.add(addrs(buf), new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        DescriptorChain c0 = q.newChain(), c1 = q.newChain();
        q.pop(c0);
        q.pop(c1);
        q.push(c0, 0);
        q.push(c1, 5);
        int f0 = d.descRing().get(VirtioRing.LE16, 14) & 0xffff;
        int f1 = d.descRing().get(VirtioRing.LE16, 16 + 14) & 0xffff;
        assertEquals(DESC_F_AVAIL | DESC_F_USED, f0);
        assertEquals(DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE, f1);
    }

    // ---- hostile drivers ----

    @Test
    void descriptorsNotMarkedAvailableAreNotConsumed() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        d.writeDescriptor(0, buf, 8, 0, DESC_F_AVAIL | DESC_F_USED); // looks used, not available
        assertNull(q.pop());
        d.writeDescriptor(0, buf, 8, 0, DESC_F_USED); // available for the wrap-0 lap, not this one
        assertNull(q.pop());
        assertNull(q.failure());
        d.writeDescriptor(0, buf, 8, 0, DESC_F_AVAIL);
        assertEquals(0, q.pop().id());
    }

    @Test
    void listWhoseContinuationIsNotAvailableIsRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        d.writeDescriptor(1, buf, 8, 0, DESC_F_USED); // wrong lap
        d.writeDescriptor(0, buf, 8, 0, DESC_F_AVAIL | DESC_F_NEXT);
        assertPopFails(q, Reason.CHAIN_INCOMPLETE);
    }

    @Test
    void bufferIdsBeyondQueueSizeAreRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        d.writeDescriptor(1, buf, 8, SIZE, DESC_F_AVAIL); // the ID of the last descriptor counts
        d.writeDescriptor(0, buf, 8, 0, DESC_F_AVAIL | DESC_F_NEXT);
        assertPopFails(q, Reason.ID_OUT_OF_RANGE);
    }

    @Test
    void bufferIdReusedWhileInFlightIsRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        d.writeDescriptor(0, buf, 8, 5, DESC_F_AVAIL);
        d.writeDescriptor(1, buf, 8, 5, DESC_F_AVAIL);
        DescriptorChain first = q.newChain();
        assertTrue(q.pop(first));
        assertEquals(5, first.id());
        assertPopFails(q, Reason.ID_IN_USE);
    }

    @Test
    void indirectDescriptorsInsideListsAreRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long t = g.alloc(16, 16), buf = g.alloc(8, 8);
        d.writeIndirect(t, 0, buf, 8, 0, 0);
        d.writeDescriptor(1, t, 16, 0, DESC_F_AVAIL | DESC_F_INDIRECT);
        d.writeDescriptor(0, buf, 8, 0, DESC_F_AVAIL | DESC_F_NEXT);
        assertPopFails(q, Reason.INDIRECT_MISPLACED);

        PackedDriverRing d2 = driver(false);
        Virtqueue q2 = device(d2);
        d2.writeDescriptor(1, buf, 8, 0, DESC_F_AVAIL);
        d2.writeDescriptor(0, t, 16, 0, DESC_F_AVAIL | DESC_F_INDIRECT | DESC_F_NEXT);
        assertPopFails(q2, Reason.INDIRECT_MISPLACED);
    }

    @Test
    void nestedIndirectIsRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long t = g.alloc(32, 16), inner = g.alloc(16, 16);
        d.writeIndirect(inner, 0, g.alloc(8, 8), 8, 0, 0);
        d.writeIndirect(t, 0, g.alloc(8, 8), 8, 0, 0);
        d.writeIndirect(t, 1, inner, 16, 0, DESC_F_INDIRECT);
        d.writeDescriptor(0, t, 32, 0, DESC_F_AVAIL | DESC_F_INDIRECT);
        assertPopFails(q, Reason.NESTED_INDIRECT);
    }

    @Test
    void indirectWithoutTheFeatureIsRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder);
        d.add(addrs(g.alloc(8, 8)), new int[] {8}, new boolean[] {false}, 1, g.alloc(16, 16));
        assertPopFails(q, Reason.INDIRECT_NOT_NEGOTIATED);
    }

    @Test
    void indirectTableLengthsAndPlacementAreChecked() throws Exception {
        int tooMany = VirtioRing.MAX_INDIRECT_DESCRIPTORS + 1;
        for (int len : new int[] {0, 40, 16 * tooMany}) {
            try (GuestFixture f = new GuestFixture()) {
                PackedDriverRing d =
                        PackedDriverRing.create(f.memory, f.alloc(PackedDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
                Virtqueue q = Virtqueue.create(d.queueConfig(0, true), f.holder);
                d.writeDescriptor(0, f.alloc(16 * tooMany, 16), len, 0, DESC_F_AVAIL | DESC_F_INDIRECT);
                assertPopFails(q, Reason.BAD_INDIRECT_TABLE);
            }
        }
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        d.writeDescriptor(0, GuestFixture.LOW_GPA + g.lowSize - 16, 32, 0, DESC_F_AVAIL | DESC_F_INDIRECT);
        assertPopFails(q, Reason.INDIRECT_TABLE_OUTSIDE_MEMORY);
    }

    @Test
    void listsCoveringTheWholeRingAndMoreAreRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        for (int i = SIZE - 1; i >= 0; i--) {
            d.writeDescriptor(
                    i, buf, 8, 0, DESC_F_AVAIL | DESC_F_NEXT); // NEXT everywhere: the list would wrap onto itself
        }
        assertPopFails(q, Reason.CHAIN_TOO_LONG);
    }

    @Test
    void moreDescriptorsInFlightThanTheRingHoldsIsRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        int id = d.add(
                addrs(buf, buf, buf, buf, buf, buf, buf, buf),
                new int[] {8, 8, 8, 8, 8, 8, 8, 8},
                new boolean[8],
                SIZE,
                DriverRing.NO_INDIRECT);
        DescriptorChain whole = q.newChain();
        assertTrue(q.pop(whole));
        assertEquals(id, whole.id());
        // The device has not used anything, yet the driver re-marks slot 0 available for the next lap.
        d.writeDescriptor(0, buf, 8, id + 1, DESC_F_USED);
        assertPopFails(q, Reason.RING_OVERRUN);
    }

    @Test
    void buffersOutsideMemoryAndWrongDirectionsAreRefused() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        d.writeDescriptor(0, GuestFixture.HIGH_GPA - 4, 8, 0, DESC_F_AVAIL);
        assertPopFails(q, Reason.BUFFER_OUTSIDE_MEMORY);

        PackedDriverRing d2 = driver(false);
        Virtqueue q2 = device(d2);
        long buf = g.alloc(8, 8);
        d2.writeDescriptor(1, buf, 8, 0, DESC_F_AVAIL);
        d2.writeDescriptor(0, buf, 8, 0, DESC_F_AVAIL | DESC_F_WRITE | DESC_F_NEXT);
        assertPopFails(q2, Reason.READABLE_AFTER_WRITABLE);
    }

    @Test
    void configurationIsChecked() throws Exception {
        long base = g.alloc(PackedDriverRing.bytesNeeded(SIZE), 16);
        long drv = base + 16 * SIZE, dev = drv + 4;
        assertCreateFails(
                QueueConfig.packed(0, SIZE, base, drv, dev, false, false, SIZE, true, 0, true), g, Reason.BAD_CONFIG);
        assertCreateFails(
                QueueConfig.packed(0, SIZE, base, drv, dev, false, false, 0, true, -1, true), g, Reason.BAD_CONFIG);
        assertCreateFails(
                QueueConfig.packed(0, SIZE, base + 4, drv, dev, false, false, 0, true, 0, true), g, Reason.BAD_CONFIG);
        assertCreateFails(
                QueueConfig.packed(0, SIZE, base, drv + 2, dev, false, false, 0, true, 0, true), g, Reason.BAD_CONFIG);
        assertCreateFails(
                QueueConfig.packed(0, 32769, base, drv, dev, false, false, 0, true, 0, true), g, Reason.BAD_CONFIG);
        assertCreateFails(
                QueueConfig.packed(
                        0, SIZE, base, drv, GuestFixture.HIGH_GPA + g.highSize, false, false, 0, true, 0, true),
                g,
                Reason.RING_OUTSIDE_MEMORY);
        // Packed sizes need not be powers of two.
        long b6 = g.alloc(PackedDriverRing.bytesNeeded(6), 16);
        Virtqueue.create(QueueConfig.packed(0, 6, b6, b6 + 96, b6 + 100, false, false, 5, false, 5, false), g.holder);
    }

    @Test
    void vringBaseRoundTripsThroughTheVhostUserEncoding() throws Exception {
        PackedDriverRing d = driverAt(5, false, true);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        d.add(addrs(buf, buf, buf, buf), new int[] {8, 8, 8, 8}, new boolean[4], 4, DriverRing.NO_INDIRECT);
        DescriptorChain c = q.pop();
        int base = q.vringBase();
        assertEquals(1 | 0x8000 | (5 << 16), base, "avail at 1 after the wrap, used still at 5 on the old lap");
        QueueConfig back = q.config().withVringBase(base);
        assertEquals(1, back.availIndex());
        assertTrue(back.availWrap());
        assertEquals(5, back.usedIndex());
        assertFalse(back.usedWrap());
        QueueConfig availOnly = q.config().withVringBase(3 | 0x8000);
        assertEquals(3, availOnly.usedIndex());
        assertTrue(availOnly.usedWrap());
        q.push(c, 0);
    }

    /**
     * SET_VRING_BASE values for a packed ring and the positions they start at: {num, avail, availWrap, used, usedWrap}
     * (wraps as 0/1). A zero upper half is used position 0 on wrap counter 0 unless the available wrap counter is set
     * (then it is what a frontend sending only the available half sends, and the used side starts there too).
     */
    private static final int[][] VRING_BASES = {
        {0x8000_8000, 0, 1, 0, 1}, // QEMU, a fresh ring
        {0x0000_8000, 0, 1, 0, 1}, // DPDK virtio-user, a fresh ring: the available half only
        {0x0000_8003, 3, 1, 3, 1}, // the available half only, later: used 0 on wrap 0 would put 11 of 8 in flight
        {0x0000_0000, 0, 0, 0, 0}, // after a lap, nothing in flight
        {0x0000_0003, 3, 0, 0, 0}, // after a lap, 3 in flight: the used side must stay at 0
        {0x0000_0007, 7, 0, 0, 0}, // after a lap, 7 in flight
        {0x8006_0002, 2, 0, 6, 1}, // used still on the first lap, available past the end: 4 in flight
        {0x0005_8001, 1, 1, 5, 0}, // used on wrap 0, available on the next lap: 4 in flight
        {0x8005_8005, 5, 1, 5, 1}, // nothing in flight
    };

    @Test
    void vringBaseValuesStartTheRingWhereTheySay() throws Exception {
        PackedDriverRing d = driver(false);
        for (int[] row : VRING_BASES) {
            String what = "SET_VRING_BASE 0x" + Integer.toHexString(row[0]);
            QueueConfig c = d.queueConfig(0, false).withVringBase(row[0]);
            assertEquals(row[1], c.availIndex(), what + ": available position");
            assertEquals(row[2] == 1, c.availWrap(), what + ": available wrap counter");
            assertEquals(row[3], c.usedIndex(), what + ": used position");
            assertEquals(row[4] == 1, c.usedWrap(), what + ": used wrap counter");
        }
    }

    /**
     * SET_VRING_BASE values no ring can be in: the used side more than a ring behind the available side (equivalently,
     * ahead of it). Each fails the queue as bad configuration; the device writes nothing. Before, the queue started,
     * and its used descriptors went to slots ahead of the available side: over buffers the driver had made available
     * and the device had not read yet.
     */
    private static final int[] IMPOSSIBLE_VRING_BASES = {
        0x0003_8005, // available at 5 on wrap 1, used at 3 on wrap 0: 10 of 8 in flight
        0x8005_8003, // available at 3, used at 5, both on wrap 1: the used side ahead (14 of 8 in flight)
        0x0007_0002, // available at 2, used at 7, both on wrap 0: the used side ahead (11 of 8 in flight)
        0x8001_8000, // available at 0, used at 1, both on wrap 1: the used side ahead (15 of 8 in flight)
    };

    @Test
    void vringBasesWithTheUsedSideMoreThanARingBehindAreRefused() throws Exception {
        PackedDriverRing d = driver(false);
        for (int num : IMPOSSIBLE_VRING_BASES) {
            QueueConfig c = d.queueConfig(0, false).withVringBase(num);
            VirtqueueException e = assertCreateFails(c, g, Reason.BAD_CONFIG);
            assertTrue(e.getMessage().contains("slots behind the available side"), e.getMessage());
        }
        for (int[] row : VRING_BASES) { // every state a ring can be in starts
            Virtqueue.create(d.queueConfig(0, false).withVringBase(row[0]), g.holder);
        }
        // A full ring in flight (available at 3 on wrap 1, used at 3 on wrap 0) and 7 in flight across the end are
        // states a ring can be in.
        Virtqueue.create(d.queueConfig(0, false).withVringBase(0x0003_8003), g.holder);
        Virtqueue.create(d.queueConfig(0, false).withVringBase(0x8001_0000), g.holder);
    }

    @Test
    void requestsInFlightAfterALapSurviveGetAndSetVringBase() throws Exception {
        PackedDriverRing d = driverAt(0, false, false); // both sides at 0 after one lap: wrap counters 0
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        for (int i = 0; i < 3; i++) {
            d.add(addrs(buf), new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        }
        for (int i = 0; i < 3; i++) {
            assertTrue(q.pop() != null, "request " + i);
        }
        int base = q.vringBase();
        assertEquals(3, base, "available at 3 and used at 0, both on wrap counter 0: a zero upper half");
        QueueConfig back = q.config().withVringBase(base);
        assertEquals(0, back.usedIndex(), "the used side stays before the 3 requests in flight");
        assertFalse(back.usedWrap());
        assertEquals(base, Virtqueue.create(back, g.holder).vringBase(), "the ring resumes in the state it stopped");
    }

    // ---- notification suppression ----

    @Test
    void enableAndDisableFlagsWithoutEventIdx() throws Exception {
        PackedDriverRing d = driver(false);
        Virtqueue q = device(d);
        long[] a = {g.alloc(8, 8)};
        int[] l = {8};
        boolean[] w = {true};
        d.disableInterrupts();
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertTrue(d.kickNeeded(), "device event flags start at ENABLE");
        q.push(q.pop(), 1);
        assertFalse(q.needsNotification(), "driver event flags DISABLE");
        assertTrue(d.enableInterrupts());
        d.pollUsed();
        q.disableNotifications();
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertFalse(d.kickNeeded(), "device event flags DISABLE");
        assertTrue(q.enableNotifications(), "re-check after enabling finds the buffer");
        q.push(q.pop(), 1);
        assertTrue(q.needsNotification());
        assertFalse(q.needsNotification(), "nothing new since the last decision");
    }

    @Test
    void descriptorEventsSuppressNotifications() throws Exception {
        PackedDriverRing d = driverAt(SIZE - 1, true, true);
        Virtqueue q = device(d);
        long[] a = {g.alloc(8, 8)};
        int[] l = {8};
        boolean[] w = {true};
        q.disableNotifications();
        assertFalse(q.enableNotifications());
        assertEquals(VirtioRing.EVENT_FLAGS_DESC, d.deviceEventArea().get(VirtioRing.LE16, 2));
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertTrue(d.kickNeeded(), "the device asked for position 7, lap 1");
        q.disableNotifications(); // DISABLE
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertFalse(d.kickNeeded());
        DescriptorChain c0 = q.newChain(), c1 = q.newChain();
        assertTrue(q.pop(c0));
        assertTrue(q.pop(c1));
        assertFalse(q.enableNotifications()); // event at position 1, lap 0
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertTrue(d.kickNeeded());

        assertFalse(d.enableInterrupts()); // DESC mode, event at position 7, lap 1
        q.push(c0, 0);
        assertTrue(q.needsNotification(), "first decision after attaching always notifies");
        d.pollUsed(); // event follows to position 0, lap 0
        q.push(c1, 0);
        assertTrue(q.needsNotification(), "used position 0 -> 1 crosses the event at 0");
        DescriptorChain c2 = q.pop();
        q.push(c2, 0);
        assertFalse(q.needsNotification(), "the driver has not read position 1 yet: event still at 0");
    }

    /**
     * A batch reaches the driver whole, as on a split ring: the first used descriptor's flags are stored last, at
     * publication, and the driver, which reads used descriptors in ring order, sees none of the batch before them —
     * across the ring's end too. This is what keeps the buffers of one multi-buffer receive frame (MRG_RXBUF) together:
     * published one by one, a driver polling meanwhile found a frame's first buffer and not the rest. A push that
     * publishes (or the notification decision) publishes the batch before it too, and nothing is stored twice.
     */
    @Test
    void batchedPushesBecomeVisibleTogether() throws Exception {
        for (boolean acrossTheEnd : new boolean[] {false, true}) {
            PackedDriverRing d = acrossTheEnd ? driverAt(SIZE - 1, true, true) : driver(true);
            Virtqueue q = device(d);
            int[] ids = new int[4];
            DescriptorChain[] cs = new DescriptorChain[ids.length];
            for (int i = 0; i < ids.length; i++) {
                ids[i] = d.add(addrs(g.alloc(16, 8)), new int[] {16}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
                cs[i] = q.newChain();
            }
            assertEquals(ids.length, q.pop(cs, ids.length));
            q.pushBatched(cs[0], 16); // a frame's first buffer (num_buffers 2) ...
            assertEquals(-1, d.pollUsed(), "the first buffer is not visible before the batch is published");
            q.pushBatched(cs[1], 7); // ... and its last
            assertEquals(-1, d.pollUsed(), "nor with the second written");
            q.publishUsed();
            q.publishUsed(); // nothing new
            long u0 = d.pollUsed();
            long u1 = d.pollUsed();
            assertEquals(ids[0], DriverRing.usedId(u0));
            assertEquals(16, DriverRing.usedLen(u0));
            assertEquals(ids[1], DriverRing.usedId(u1));
            assertEquals(7, DriverRing.usedLen(u1));
            assertEquals(-1, d.pollUsed());
            q.pushBatched(new DescriptorChain[] {cs[2]}, new long[] {3}, 1);
            assertEquals(-1, d.pollUsed(), "the array form defers too");
            q.push(cs[3], 4); // publishes itself and the batched one before it
            assertEquals(ids[2], DriverRing.usedId(d.pollUsed()));
            assertEquals(ids[3], DriverRing.usedId(d.pollUsed()));
            assertEquals(0, q.inFlight());
            assertTrue(q.needsNotification());
        }
    }
}
