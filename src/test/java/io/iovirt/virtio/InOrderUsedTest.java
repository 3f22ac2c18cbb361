// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.GuestFixture;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * With VIRTIO_F_IN_ORDER a split queue's batch push covers each run of returned chains that have no device-writable
 * buffer with one used entry: written where the run's first entry would go, naming the run's last chain, the used
 * index moved past the whole run. The driver side ({@link SplitDriverRing#inOrder}) counts the run from the id.
 * Entries the device leaves alone are pre-filled with a marker here, so "not written" is checked, not assumed.
 */
class InOrderUsedTest {
    private static final int SIZE = 8;
    private static final long MARK = 0x5a5a_5a5a_5a5a_5a5aL;
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private final GuestFixture g = new GuestFixture();

    @AfterEach
    void guardsIntactAndClose() {
        assertTrue(g.guardsIntact(), "a device access escaped guest memory");
        g.close();
    }

    private SplitDriverRing driver(boolean inOrder) {
        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, true);
        d.inOrder(inOrder);
        for (int i = 0; i < SIZE; i++) {
            d.usedRing().set(LE64, 4 + 8L * i, MARK);
        }
        return d;
    }

    /** Makes one request available: a 16-byte buffer the device reads ({@code writable} false) or writes. */
    private int add(SplitDriverRing d, boolean writable) {
        long buf = g.alloc(16, 16);
        int id = d.add(new long[] {buf}, new int[] {16}, new boolean[] {writable}, 1, DriverRing.NO_INDIRECT);
        d.kickNeeded(); // publishes the available index
        return id;
    }

    private static DescriptorChain[] popAll(Virtqueue q, int n) throws VirtqueueException {
        DescriptorChain[] cs = new DescriptorChain[n];
        for (int i = 0; i < n; i++) {
            cs[i] = q.newChain();
        }
        assertEquals(n, q.pop(cs, n));
        return cs;
    }

    private static long entry(SplitDriverRing d, int i) {
        return d.usedRing().get(LE64, 4 + 8L * i);
    }

    private static long used(int id, int len) {
        return (id & 0xffff_ffffL) | (long) len << 32;
    }

    private static int usedIdx(SplitDriverRing d) {
        return Short.toUnsignedInt(d.usedRing().get(LE16, 2));
    }

    @Test
    void aRunOfRequestsWithNothingToWriteSharesOneUsedEntryAtItsFirstPlace() throws Exception {
        SplitDriverRing d = driver(true);
        Virtqueue q = Virtqueue.create(d.queueConfig(1, true), g.holder);
        int[] ids = new int[5];
        for (int i = 0; i < ids.length; i++) {
            ids[i] = add(d, false);
        }
        DescriptorChain[] cs = popAll(q, 5);
        q.pushBatched(cs, new long[5], 5);
        q.publishUsed();

        assertEquals(5, usedIdx(d), "the used index moved past the whole run");
        assertEquals(used(ids[4], 0), entry(d, 0), "one entry, at the run's first place, naming its last chain");
        for (int i = 1; i < 5; i++) {
            assertEquals(MARK, entry(d, i), "entry " + i + " not written");
        }
        assertEquals(0, q.inFlight());
        for (int i = 0; i < 5; i++) {
            long u = d.pollUsed();
            assertEquals(ids[i], DriverRing.usedId(u), "the driver gets every chain of the run, in order");
            assertEquals(0, DriverRing.usedLen(u));
        }
        assertEquals(-1, d.pollUsed());
        assertEquals(0, d.inFlight());

        // the next batch starts where the run ended, and the ring wraps as usual
        int[] more = new int[6];
        for (int i = 0; i < more.length; i++) {
            more[i] = add(d, false);
        }
        q.pushBatched(popAll(q, 6), new long[6], 6);
        q.publishUsed();
        assertEquals(11, usedIdx(d));
        assertEquals(used(more[5], 0), entry(d, 5));
        for (int i = 0; i < 6; i++) {
            assertEquals(more[i], DriverRing.usedId(d.pollUsed()));
        }
        assertEquals(-1, d.pollUsed());
    }

    @Test
    void requestsWithWritableBuffersKeepTheirOwnEntriesAndLengths() throws Exception {
        SplitDriverRing d = driver(true);
        Virtqueue q = Virtqueue.create(d.queueConfig(1, true), g.holder);
        boolean[] writable = {false, false, true, false, true, false};
        long[] written = {0, 0, 10, 0, 0, 0};
        int[] ids = new int[writable.length];
        for (int i = 0; i < ids.length; i++) {
            ids[i] = add(d, writable[i]);
        }
        q.pushBatched(popAll(q, 6), written, 6);
        q.publishUsed();

        assertEquals(6, usedIdx(d));
        assertEquals(used(ids[1], 0), entry(d, 0), "the run of the first two");
        assertEquals(MARK, entry(d, 1));
        assertEquals(used(ids[2], 10), entry(d, 2), "a written request: its own entry, its length");
        assertEquals(used(ids[3], 0), entry(d, 3), "a run of one");
        assertEquals(used(ids[4], 0), entry(d, 4), "writable, nothing written: still its own entry");
        assertEquals(used(ids[5], 0), entry(d, 5));
        for (int i = 0; i < ids.length; i++) {
            long u = d.pollUsed();
            assertEquals(ids[i], DriverRing.usedId(u));
            assertEquals(written[i], DriverRing.usedLen(u));
        }
        assertEquals(-1, d.pollUsed());
    }

    @Test
    void withoutInOrderEveryRequestHasItsEntry() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = Virtqueue.create(d.queueConfig(1, true), g.holder);
        int[] ids = {add(d, false), add(d, false), add(d, false)};
        q.pushBatched(popAll(q, 3), new long[3], 3);
        q.publishUsed();
        for (int i = 0; i < 3; i++) {
            assertEquals(used(ids[i], 0), entry(d, i));
        }
    }

    @Test
    void aQueueWithAnInFlightRecordWritesEveryEntry() throws Exception {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment region = arena.allocate(InflightQueue.splitBytes(SIZE), 64);
            SplitDriverRing d = driver(true);
            Virtqueue q = Virtqueue.create(d.queueConfig(1, true), g.holder, region);
            int[] ids = {add(d, false), add(d, false), add(d, false)};
            q.pushBatched(popAll(q, 3), new long[3], 3);
            for (int i = 0; i < 3; i++) {
                assertEquals(used(ids[i], 0), entry(d, i), "crash recovery records each used-index step");
            }
            assertEquals(0, InflightQueue.inFlight(region));
        }
    }

    @Test
    void aChainThatCannotBeReturnedEndsTheRunAndTheOnesBeforeItAreReturned() throws Exception {
        SplitDriverRing d = driver(true);
        Virtqueue q = Virtqueue.create(d.queueConfig(1, true), g.holder);
        int a = add(d, false);
        int b = add(d, false);
        add(d, false);
        DescriptorChain[] cs = popAll(q, 3);
        DescriptorChain[] twice = {cs[0], cs[1], cs[0]};
        assertThrows(IllegalArgumentException.class, () -> q.pushBatched(twice, new long[3], 3), "returned twice");
        q.publishUsed();
        assertEquals(1, q.inFlight(), "the third chain was never returned");
        assertEquals(2, usedIdx(d));
        assertEquals(used(b, 0), entry(d, 0));
        assertEquals(a, DriverRing.usedId(d.pollUsed()));
        assertEquals(b, DriverRing.usedId(d.pollUsed()));
        assertEquals(-1, d.pollUsed());
    }
}
