// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.GuestFixture;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * Crash recovery through the in-flight record (vhost-user INFLIGHT_SHMFD, split layout): a queue that "dies" with
 * requests in flight and completed out of order is replaced by a new one on the same region, as a restarted
 * backend would be; it hands out exactly the requests still in flight, oldest first, never one already returned,
 * and then continues with the available ring.
 */
class InflightQueueTest {
    private static final int SIZE = 8;
    private final GuestFixture g = new GuestFixture();
    private final Arena arena = Arena.ofConfined();
    private final MemorySegment region = arena.allocate(InflightQueue.splitBytes(SIZE), 64);

    @AfterEach
    void close() {
        assertTrue(g.guardsIntact());
        g.close();
        arena.close();
    }

    private int add(SplitDriverRing d) {
        long buf = g.alloc(16, 16);
        int id = d.add(new long[] {buf}, new int[] {16}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        d.kickNeeded(); // publishes the available index
        return id;
    }

    @Test
    void inFlightRequestsAreResubmittedInOrderAndCompletedOnesAreNot() throws Exception {
        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder, region);
        int a = add(d), b = add(d), c = add(d);
        DescriptorChain ca = q.newChain(), cb = q.newChain(), cc = q.newChain();
        assertTrue(q.pop(ca) && q.pop(cb) && q.pop(cc));
        assertEquals(3, InflightQueue.inFlight(region), "what an observer of the shared memory sees");
        q.push(cb, 16); // out of order: b completes, a and c are in flight when the backend dies
        assertEquals(2, InflightQueue.inFlight(region));
        int usedIdx = 1;

        // A new backend process: the frontend restores the base from the used index, as QEMU does.
        Virtqueue again = Virtqueue.create(d.queueConfig(0, false).withVringBase(usedIdx), g.holder, region);
        assertEquals(2, again.resubmitted());
        DescriptorChain r = again.newChain();
        assertTrue(again.pop(r));
        assertEquals(a, r.id(), "the oldest request first");
        again.push(r, 16);
        assertTrue(again.pop(r));
        assertEquals(c, r.id());
        again.push(r, 16);
        assertTrue(!again.pop(r), "b was returned before the crash: not handed out again");
        int e = add(d);
        assertTrue(again.pop(r));
        assertEquals(e, r.id(), "then the available ring, after what was taken before");
        again.push(r, 16);
        assertEquals(b, DriverRing.usedId(d.pollUsed()), "first used entry is b");
        assertEquals(a, DriverRing.usedId(d.pollUsed()));
        assertEquals(c, DriverRing.usedId(d.pollUsed()));
        assertEquals(e, DriverRing.usedId(d.pollUsed()));
        assertEquals(-1, d.pollUsed(), "nothing completed twice");
        assertEquals(0, InflightQueue.inFlight(region));
    }

    @Test
    void aUsedEntryWrittenJustBeforeTheCrashIsNotResubmitted() throws Exception {
        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder, region);
        int a = add(d), b = add(d);
        DescriptorChain ca = q.newChain(), cb = q.newChain();
        assertTrue(q.pop(ca) && q.pop(cb));
        q.push(ca, 16);
        // The process died between publishing a's used entry and clearing its record: a still looks in flight and
        // the record's used_idx lags the ring's.
        long descA = InflightQueue.SPLIT_HEADER + (long) InflightQueue.SPLIT_DESC * a;
        region.set(ValueLayout.JAVA_BYTE, descA, (byte) 1);
        region.set(ValueLayout.JAVA_SHORT_UNALIGNED, 14, (short) 0);

        Virtqueue again = Virtqueue.create(d.queueConfig(0, false).withVringBase(1), g.holder, region);
        assertEquals(1, again.resubmitted(), "only b");
        DescriptorChain r = again.newChain();
        assertTrue(again.pop(r));
        assertEquals(b, r.id());
        assertTrue(!again.pop(r));
    }

    @Test
    void anUninitialisedRegionShowsNothingInFlight() {
        assertEquals(0, InflightQueue.inFlight(region));
        assertEquals(0, InflightQueue.inFlight(region.asSlice(0, 4)), "shorter than the header");
    }

    @Test
    void aFreshRegionStartsFromTheFrontendsBase() throws Exception {
        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder, region);
        add(d);
        assertEquals(0, q.resubmitted());
        assertEquals(1, region.get(ValueLayout.JAVA_SHORT_UNALIGNED, 8), "version written");
        assertEquals(SIZE, region.get(ValueLayout.JAVA_SHORT_UNALIGNED, 10), "desc_num written");
        DescriptorChain r = q.newChain();
        assertTrue(q.pop(r));
        assertNull(q.pop());
    }
}
