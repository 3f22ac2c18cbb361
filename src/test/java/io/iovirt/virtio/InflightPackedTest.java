// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.GuestFixture;
import io.iovirt.virtio.VirtqueueException.Reason;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * Crash recovery through the in-flight record in the packed layout (vhost-user INFLIGHT_SHMFD): a packed queue that
 * "dies" with buffers in flight, completed out of order (so used descriptors overwrote ring slots of buffers still
 * in flight), is replaced by a new one on the same region with the stale base QEMU sends after a crash (it cannot
 * restore a packed ring's position); the new queue hands out exactly the buffers still in flight, oldest first, from
 * the descriptors the record kept, and resumes the ring after them.
 */
class InflightPackedTest {
    private static final int SIZE = 8;
    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED;
    private final GuestFixture g = new GuestFixture();
    private final Arena arena = Arena.ofConfined();
    private final MemorySegment region = arena.allocate(InflightPacked.bytes(SIZE), 64);

    @AfterEach
    void close() {
        assertTrue(g.guardsIntact());
        g.close();
        arena.close();
    }

    private PackedDriverRing driver() {
        return PackedDriverRing.create(g.memory, g.alloc(PackedDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
    }

    /** A device process starting on the ring: QEMU's base for a packed ring after a crash is the one it last knew. */
    private Virtqueue device(PackedDriverRing d) throws VirtqueueException {
        return Virtqueue.create(d.queueConfig(0, true), g.holder, region);
    }

    /** One request whose first (readable) buffer holds {@code token}; {@code descriptors} in the ring (0: indirect). */
    private int add(PackedDriverRing d, long token, int descriptors) {
        int n = Math.max(descriptors, 2);
        long[] addrs = new long[n];
        int[] lens = new int[n];
        boolean[] w = new boolean[n];
        for (int i = 0; i < n; i++) {
            addrs[i] = g.alloc(16, 16);
            lens[i] = 16;
            w[i] = i > 0;
        }
        g.at(addrs[0], 8).set(ValueLayout.JAVA_LONG_UNALIGNED, 0, token);
        long indirect = descriptors == 0 ? g.alloc(16L * n, 16) : DriverRing.NO_INDIRECT;
        int id = d.add(addrs, lens, w, descriptors == 0 ? n : descriptors, indirect);
        d.kickNeeded();
        return id;
    }

    private static long token(DescriptorChain c) {
        return c.segment(0).get(ValueLayout.JAVA_LONG_UNALIGNED, 0);
    }

    @Test
    void outOfOrderCompletionThenCrashResubmitsExactlyTheBuffersInFlight() throws Exception {
        PackedDriverRing d = driver();
        Virtqueue q = device(d);
        int a = add(d, 1, 2), b = add(d, 2, 1), c = add(d, 3, 3);
        DescriptorChain ca = q.newChain(), cb = q.newChain(), cc = q.newChain();
        assertTrue(q.pop(ca) && q.pop(cb) && q.pop(cc));
        assertEquals(3, InflightPacked.inFlight(region), "what an observer of the shared memory sees");
        q.push(
                cc,
                cc.writableBytes); // out of order: c's used descriptor overwrites the slot a's first descriptor was in
        assertEquals(c, DriverRing.usedId(d.pollUsed()));
        assertEquals(2, InflightPacked.inFlight(region));

        Virtqueue again = device(d);
        assertEquals(2, again.resubmitted());
        DescriptorChain r = again.newChain();
        assertTrue(again.pop(r));
        assertEquals(a, r.id(), "the oldest first");
        assertEquals(1, token(r), "from the descriptors the record kept (the ring slot was overwritten)");
        assertEquals(2, r.count());
        again.push(r, r.writableBytes);
        assertTrue(again.pop(r));
        assertEquals(b, r.id());
        assertEquals(2, token(r));
        again.push(r, r.writableBytes);
        assertFalse(again.pop(r), "c was returned before the crash");
        int e = add(d, 4, 2);
        assertTrue(again.pop(r));
        assertEquals(e, r.id(), "then the ring, after the buffers taken before the crash");
        assertEquals(4, token(r));
        again.push(r, r.writableBytes);
        assertEquals(a, DriverRing.usedId(d.pollUsed()));
        assertEquals(b, DriverRing.usedId(d.pollUsed()));
        assertEquals(e, DriverRing.usedId(d.pollUsed()));
        assertEquals(-1, d.pollUsed(), "nothing completed twice");
        assertEquals(0, d.inFlight());
        assertEquals(0, InflightPacked.inFlight(region));
    }

    @Test
    void anUninitialisedOrLoopingRecordShowsNoMoreThanItHolds() throws Exception {
        assertEquals(0, InflightPacked.inFlight(region));
        PackedDriverRing d = driver();
        device(d);
        region.set(U16, 14, (short) 0); // old_free_head
        region.set(U16, InflightPacked.HEADER + 2, (short) 0); // entry 0 links to itself
        for (int i = 0; i < SIZE; i++) {
            region.set(ValueLayout.JAVA_BYTE, InflightPacked.HEADER + (long) InflightPacked.DESC * i, (byte) 1);
        }
        assertEquals(SIZE - 1, InflightPacked.inFlight(region), "the loop is cut off, the count bounded");
    }

    /**
     * Many laps of the ring with random list lengths (indirect ones too), random out-of-order completion and a crash
     * at random points: every request completes exactly once (the driver side throws on a duplicate) with the data
     * it was made available with, and nothing is lost.
     */
    @Test
    void randomCrashesAcrossManyLapsLoseAndDuplicateNothing() throws Exception {
        int resubmitted = 0;
        for (int seed = 1; seed <= 20; seed++) {
            Random rnd = new Random(seed);
            region.fill((byte) 0);
            PackedDriverRing d = driver();
            Virtqueue q = device(d);
            Map<Integer, Long> tokenById = new HashMap<>();
            List<DescriptorChain> held = new ArrayList<>();
            ArrayDeque<DescriptorChain> spare = new ArrayDeque<>();
            long nextToken = 1;
            long completed = 0;
            int crashes = 0;
            for (int step = 0; step < 400; step++) {
                int action = rnd.nextInt(10);
                if (action < 4) {
                    int id = add(d, nextToken, rnd.nextInt(4));
                    if (id >= 0) {
                        tokenById.put(id, nextToken++);
                    }
                } else if (action < 7) {
                    DescriptorChain c = spare.isEmpty() ? q.newChain() : spare.poll();
                    if (q.pop(c)) {
                        assertEquals(tokenById.get(c.id()), token(c), "seed " + seed + " step " + step);
                        held.add(c);
                    } else {
                        spare.add(c);
                    }
                } else if (action < 9 && !held.isEmpty()) {
                    DescriptorChain c = held.remove(rnd.nextInt(held.size()));
                    q.push(c, c.writableBytes);
                    spare.add(c);
                } else if (action == 9) {
                    q = device(d); // SIGKILL: whatever the old process held is gone
                    resubmitted += q.resubmitted();
                    held.clear();
                    spare.clear();
                    crashes++;
                }
                long u;
                while ((u = d.pollUsed()) != -1) {
                    assertTrue(tokenById.remove(DriverRing.usedId(u)) != null);
                    completed++;
                }
            }
            // Drain: everything still made available completes exactly once.
            for (DescriptorChain c : held) {
                q.push(c, c.writableBytes);
            }
            DescriptorChain c = q.newChain();
            while (q.pop(c)) {
                assertEquals(tokenById.get(c.id()), token(c));
                q.push(c, c.writableBytes);
            }
            long u;
            while ((u = d.pollUsed()) != -1) {
                assertTrue(tokenById.remove(DriverRing.usedId(u)) != null);
                completed++;
            }
            assertEquals(0, d.inFlight(), "seed " + seed + ": requests lost");
            assertTrue(tokenById.isEmpty());
            assertTrue(completed > 20 && crashes > 2, "seed " + seed + ": the run exercised little");
        }
        assertTrue(resubmitted > 20, "crashes with buffers in flight: " + resubmitted);
    }

    /** Two requests taken by the device: a (two descriptors) and b (one); the record as it was then. */
    private record TwoInFlight(
            PackedDriverRing d, Virtqueue q, DescriptorChain ca, int a, int b, MemorySegment before) {}

    private TwoInFlight twoInFlight() throws VirtqueueException {
        PackedDriverRing d = driver();
        Virtqueue q = device(d);
        int a = add(d, 1, 2), b = add(d, 2, 1);
        DescriptorChain ca = q.newChain(), cb = q.newChain();
        assertTrue(q.pop(ca) && q.pop(cb));
        MemorySegment before = arena.allocate(region.byteSize());
        before.copyFrom(region);
        return new TwoInFlight(d, q, ca, a, b, before);
    }

    /** A restarted device hands out {@code expected} again, in that order, and nothing completes twice. */
    private void resubmitsThenCompletes(PackedDriverRing d, int[] expected, int... completed)
            throws VirtqueueException {
        Virtqueue again = device(d);
        assertEquals(expected.length, again.resubmitted());
        DescriptorChain r = again.newChain();
        for (int id : expected) {
            assertTrue(again.pop(r));
            assertEquals(id, r.id());
            again.push(r, r.writableBytes);
        }
        for (int id : completed) {
            assertEquals(id, DriverRing.usedId(d.pollUsed()));
        }
        assertEquals(-1, d.pollUsed(), "nothing completed twice");
    }

    @Test
    void anUpdateInterruptedAfterTheUsedDescriptorReachedTheRingIsCommitted() throws Exception {
        TwoInFlight t = twoInFlight();
        t.q().push(t.ca(), t.ca().writableBytes);
        // Died after the ring write, before the in-flight flag and the old_* fields: put those back.
        region.asSlice(14, 2).copyFrom(t.before().asSlice(14, 2)); // old_free_head
        region.asSlice(18, 2).copyFrom(t.before().asSlice(18, 2)); // old_used_idx
        region.asSlice(21, 1).copyFrom(t.before().asSlice(21, 1)); // old_used_wrap_counter
        region.set(ValueLayout.JAVA_BYTE, InflightPacked.HEADER, (byte) 1); // a's head entry (the first one) in flight
        resubmitsThenCompletes(t.d(), new int[] {t.b()}, t.a(), t.b());
    }

    @Test
    void anUpdateInterruptedBeforeTheUsedDescriptorReachedTheRingIsRolledBack() throws Exception {
        TwoInFlight t = twoInFlight();
        // Died after the free list and used_idx moved, before the ring write: what beforeUsed leaves.
        ((PackedQueue) t.q()).inflightForTest().beforeUsed(t.a(), 2);
        assertTrue(region.get(U16, 16) != t.before().get(U16, 16), "used_idx moved");
        resubmitsThenCompletes(t.d(), new int[] {t.a(), t.b()}, t.a(), t.b());
    }

    @Test
    void aRecordWithAFreeListLoopFailsTheQueueInsteadOfResubmittingGarbage() throws Exception {
        PackedDriverRing d = driver();
        Virtqueue q = device(d);
        add(d, 1, 1);
        assertTrue(q.pop() != null);
        region.set(U16, InflightPacked.HEADER + 3L * InflightPacked.DESC + 2, (short) 2); // entry 3 -> 2 -> 3 ...
        region.set(U16, InflightPacked.HEADER + 2L * InflightPacked.DESC + 2, (short) 3);
        VirtqueueException e = assertThrows(VirtqueueException.class, () -> device(d));
        assertEquals(Reason.BAD_CONFIG, e.reason());
    }

    /**
     * The record is shared with the frontend: whatever bytes it holds (here random ones over a valid record, 3000
     * times), attaching either fails the queue with BAD_CONFIG or resumes with buffers whose IDs are distinct and in
     * range; nothing else is thrown and no access leaves the record or guest memory.
     */
    @Test
    void arbitraryRecordContentsNeverCrashTheQueue() throws Exception {
        Random rnd = new Random(7);
        PackedDriverRing d = driver();
        Virtqueue q = device(d);
        for (int i = 0; i < 5; i++) {
            add(d, i, 1 + i % 3);
        }
        DescriptorChain c = q.newChain();
        assertTrue(q.pop(c));
        MemorySegment valid = arena.allocate(region.byteSize());
        valid.copyFrom(region);
        int failed = 0;
        for (int iter = 0; iter < 3000; iter++) {
            region.copyFrom(valid);
            int flips = 1 + rnd.nextInt(8);
            for (int f = 0; f < flips; f++) {
                long off = 8 + rnd.nextInt((int) region.byteSize() - 8); // version stays 1: a record to recover
                region.set(ValueLayout.JAVA_BYTE, off, (byte) rnd.nextInt(256));
            }
            Virtqueue again;
            try {
                again = device(d);
            } catch (VirtqueueException e) {
                assertTrue(e.reason() == Reason.BAD_CONFIG || e.reason() == Reason.RING_OUTSIDE_MEMORY, e.toString());
                failed++;
                continue;
            }
            java.util.Set<Integer> ids = new java.util.HashSet<>();
            DescriptorChain r = again.newChain();
            for (int k = 0; k < again.resubmitted(); k++) {
                try {
                    if (!again.pop(r)) {
                        break;
                    }
                } catch (VirtqueueException e) {
                    break; // a resubmitted descriptor outside guest memory or a bad indirect table fails the queue
                }
                assertTrue(r.id() >= 0 && r.id() < SIZE && ids.add(r.id()), "buffer ID " + r.id());
            }
            again.releaseMemory();
        }
        assertTrue(failed > 0, "some corruptions must be detected");
    }

    /**
     * The record is shared with the frontend, which can rewrite it while a backend attaches: here a thread flips an
     * in-flight buffer's ID between its own value and one beyond the queue. Attaching uses the values it checked,
     * never one read again: it fails the queue with BAD_CONFIG or resumes the buffer under its own ID, and nothing
     * else is thrown (before, the ID was read a second time and indexed a table with it). It runs until 2000
     * attaches overlapped the flipping (the flipper's count moved during them: both threads were on a core), so a
     * busy machine that runs the two in turn does not make it pass without ever racing; at most a million attaches.
     */
    @Test
    void aRecordRewrittenWhileAttachingIsUsedAsChecked() throws Exception {
        try (Arena shared = Arena.ofShared()) {
            MemorySegment live = shared.allocate(InflightPacked.bytes(SIZE), 64);
            PackedDriverRing d = driver();
            Virtqueue q = Virtqueue.create(d.queueConfig(0, true), g.holder, live);
            int id = add(d, 1, 1);
            assertTrue(q.pop() != null);
            long idOff = -1;
            for (int e = 0; e < SIZE; e++) {
                long at = InflightPacked.HEADER + (long) e * InflightPacked.DESC;
                if (live.get(ValueLayout.JAVA_BYTE, at) != 0 && live.get(U16, at + 16) == id) {
                    idOff = at + 16;
                }
            }
            assertTrue(idOff > 0, "the in-flight entry of buffer " + id);
            MemorySegment valid = arena.allocate(live.byteSize());
            valid.copyFrom(live);
            long flipAt = idOff;
            AtomicBoolean stop = new AtomicBoolean();
            java.util.concurrent.atomic.AtomicLong flips = new java.util.concurrent.atomic.AtomicLong();
            Thread flipper = Thread.ofPlatform().daemon().start(() -> {
                while (!stop.get()) {
                    live.set(U16, flipAt, (short) 0xffff);
                    live.set(U16, flipAt, (short) id);
                    flips.lazySet(flips.get() + 1); // one writer
                }
            });
            try {
                int overlapped = 0;
                for (int i = 0; i < 1_000_000 && overlapped < 2000; i++) {
                    live.copyFrom(valid);
                    long before = flips.get();
                    Virtqueue again;
                    try {
                        again = Virtqueue.create(d.queueConfig(0, true), g.holder, live);
                    } catch (VirtqueueException e) {
                        assertEquals(Reason.BAD_CONFIG, e.reason(), e.toString());
                        continue;
                    } finally {
                        overlapped += flips.get() - before >= 2 ? 1 : 0;
                    }
                    DescriptorChain r = again.newChain();
                    assertTrue(again.pop(r));
                    assertEquals(id, r.id(), "the ID attach checked");
                    again.releaseMemory();
                }
            } finally {
                stop.set(true);
                flipper.join();
            }
        }
    }

    @Test
    void aFreshRegionStartsFromTheFrontendsBase() throws Exception {
        PackedDriverRing d = driver();
        Virtqueue q = device(d);
        assertEquals(0, q.resubmitted());
        assertEquals(1, region.get(U16, 8), "version written");
        assertEquals(SIZE, region.get(U16, 10), "desc_num written");
        add(d, 1, 1);
        DescriptorChain r = q.newChain();
        assertTrue(q.pop(r));
        q.push(r, r.writableBytes);
        assertNull(q.pop());
        Virtqueue clean = device(d); // a restart with nothing in flight
        assertEquals(0, clean.resubmitted());
        assertEquals(q.vringBase(), clean.vringBase(), "the record's position, not the stale base");
    }
}
