// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static io.iovirt.virtio.QueueAssertions.assertCreateFails;
import static io.iovirt.virtio.QueueAssertions.assertPopFails;
import static io.iovirt.virtio.QueueAssertions.bytes;
import static io.iovirt.virtio.QueueAssertions.fill;
import static io.iovirt.virtio.VirtioRing.DESC_F_INDIRECT;
import static io.iovirt.virtio.VirtioRing.DESC_F_NEXT;
import static io.iovirt.virtio.VirtioRing.DESC_F_WRITE;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.testing.GuestFixture;
import io.iovirt.virtio.VirtqueueException.Reason;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class SplitQueueTest {
    private static final int SIZE = 8;
    private final GuestFixture g = new GuestFixture();

    @AfterEach
    void guardsIntactAndClose() {
        assertTrue(g.guardsIntact(), "a device access escaped guest memory");
        g.close();
    }

    private SplitDriverRing driver(boolean eventIdx) {
        return SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, eventIdx);
    }

    private Virtqueue device(DriverRing d) throws VirtqueueException {
        return Virtqueue.create(d.queueConfig(3, true), g.holder);
    }

    @Test
    void requestRoundTripsAndDataCrossesDescriptorBoundaries() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long r1 = g.alloc(3, 1), r2 = g.allocHigh(5, 1), w1 = g.alloc(4, 1), w2 = g.allocHigh(6, 1);
        g.at(r1, 3).copyFrom(MemorySegment.ofArray("abc".getBytes()));
        g.at(r2, 5).copyFrom(MemorySegment.ofArray("defgh".getBytes()));
        int id = d.add(
                new long[] {r1, r2, w1, w2},
                new int[] {3, 5, 4, 6},
                new boolean[] {false, false, true, true},
                4,
                DriverRing.NO_INDIRECT);
        assertTrue(d.kickNeeded());

        assertTrue(q.hasAvailable());
        DescriptorChain c = q.pop();
        assertNotNull(c);
        assertEquals(id, c.id());
        assertEquals(4, c.count());
        assertEquals(2, c.readableCount());
        assertEquals(2, c.writableCount());
        assertEquals(8, c.readableBytes());
        assertEquals(10, c.writableBytes());
        assertFalse(c.isWritable(1));
        assertTrue(c.isWritable(2));
        assertEquals(w2, c.guestAddress(3));
        assertEquals(6, c.segment(3).byteSize());
        for (int i = 0; i < c.count(); i++) {
            assertTrue(g.insideGuest(c.segment(i)));
        }
        MemorySegment all = Arena.ofAuto().allocate(8);
        assertEquals(8, c.copyFromReadable(0, all));
        assertEquals("abcdefgh", new String(bytes(all)));
        MemorySegment mid = Arena.ofAuto().allocate(4);
        assertEquals(4, c.copyFromReadable(2, mid));
        assertEquals("cdef", new String(bytes(mid)));
        assertEquals(1, c.copyFromReadable(7, mid), "only one readable byte left at offset 7");
        assertEquals(9, c.copyToWritable(1, MemorySegment.ofArray("012345678".getBytes())));
        assertEquals(0, c.copyToWritable(10, MemorySegment.ofArray(new byte[1])));
        assertThrows(IllegalArgumentException.class, () -> q.push(c, 11), "more than the writable bytes");
        q.push(c, 10);
        assertNull(q.pop());
        assertEquals(0, q.inFlight());

        assertTrue(q.needsNotification());
        long used = d.pollUsed();
        assertEquals(id, DriverRing.usedId(used));
        assertEquals(10, DriverRing.usedLen(used));
        assertEquals(-1, d.pollUsed());
        assertArrayEquals(new byte[] {0, '0', '1', '2'}, bytes(g.at(w1, 4)));
        assertArrayEquals("345678".getBytes(), bytes(g.at(w2, 6)));
        assertThrows(IllegalArgumentException.class, () -> q.addUsed(id, 0), "id no longer in flight");
    }

    @Test
    void batchedPushesBecomeVisibleTogetherWithOneIndexUpdate() throws Exception {
        SplitDriverRing d = driver(true);
        Virtqueue q = device(d);
        int[] ids = new int[3];
        for (int i = 0; i < ids.length; i++) {
            ids[i] =
                    d.add(new long[] {g.alloc(16, 8)}, new int[] {16}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        }
        DescriptorChain[] cs = {q.newChain(), q.newChain(), q.newChain()};
        for (DescriptorChain c : cs) {
            assertTrue(q.pop(c));
        }
        q.pushBatched(cs[0], 1);
        q.pushBatched(cs[1], 2);
        assertEquals(-1, d.pollUsed(), "a batched entry is not visible before it is published");
        assertEquals(1, q.inFlight());
        q.publishUsed();
        q.publishUsed(); // nothing new: no second store, nothing changes
        assertEquals(ids[0], DriverRing.usedId(d.pollUsed()));
        assertEquals(ids[1], DriverRing.usedId(d.pollUsed()));
        assertEquals(-1, d.pollUsed());
        q.pushBatched(cs[2], 3);
        assertTrue(q.needsNotification(), "the notification decision publishes first and counts the batch");
        long last = d.pollUsed();
        assertEquals(ids[2], DriverRing.usedId(last));
        assertEquals(3, DriverRing.usedLen(last));
        assertEquals(0, q.inFlight());
    }

    @Test
    void aBatchPopsAndPushesWhatOneByOneWould() throws Exception {
        SplitDriverRing d = driver(true);
        Virtqueue q = device(d);
        int[] ids = new int[5];
        long[] bufs = new long[5];
        for (int i = 0; i < ids.length; i++) {
            bufs[i] = g.alloc(16, 8);
            ids[i] = d.add(new long[] {bufs[i]}, new int[] {16}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        }
        DescriptorChain[] cs = new DescriptorChain[SIZE];
        for (int i = 0; i < cs.length; i++) {
            cs[i] = q.newChain();
        }
        assertEquals(3, q.pop(cs, 3), "at most max");
        DescriptorChain[] rest = {cs[3], cs[4], cs[5], cs[6]};
        assertEquals(2, q.pop(rest, 4), "what the driver made available");
        assertEquals(0, q.pop(rest, 4));
        assertEquals(5, q.inFlight());
        for (int i = 0; i < 3; i++) {
            assertEquals(ids[i], cs[i].id());
            assertEquals(bufs[i], cs[i].guestAddress(0));
        }
        assertEquals(ids[3], rest[0].id());
        assertEquals(ids[4], rest[1].id());

        q.pushBatched(cs, new long[] {1, 2, 3}, 3);
        assertEquals(2, q.inFlight());
        assertEquals(-1, d.pollUsed(), "not visible before it is published");
        q.publishUsed();
        for (int i = 0; i < 3; i++) {
            long used = d.pollUsed();
            assertEquals(ids[i], DriverRing.usedId(used));
            assertEquals(i + 1, DriverRing.usedLen(used));
        }
        assertEquals(-1, d.pollUsed());

        // misuse is the device's bug: the chains before the wrong one are returned, the rest stay in flight
        assertThrows(IllegalArgumentException.class, () -> q.pushBatched(rest, new long[] {16, 17}, 2));
        assertEquals(1, q.inFlight(), "the first chain was returned, the one with 17 bytes of 16 was not");
        assertThrows(IllegalArgumentException.class, () -> q.pushBatched(rest, new long[] {0, 0}, 2), "twice");
        assertThrows(IndexOutOfBoundsException.class, () -> q.pushBatched(rest, new long[] {0}, 3), "n > length");
        Virtqueue other = device(driver(false));
        assertThrows(IllegalArgumentException.class, () -> q.pop(new DescriptorChain[] {other.newChain()}, 1));
        q.pushBatched(new DescriptorChain[] {rest[1]}, new long[] {16}, 1);
        q.publishUsed();
        assertEquals(ids[3], DriverRing.usedId(d.pollUsed()));
        assertEquals(ids[4], DriverRing.usedId(d.pollUsed()));
        assertEquals(0, q.inFlight());
        assertNull(q.failure());
    }

    @Test
    void indirectTablesAndDirectDescriptorsBeforeThemAreExpanded() throws Exception {
        SplitDriverRing d = driver(true);
        Virtqueue q = device(d);
        long table = g.alloc(16 * 3, 16);
        long a = g.alloc(64, 8), b = g.alloc(64, 8), c = g.alloc(64, 8), h = g.alloc(16, 8);
        fill(g.at(a, 64), 1);
        int id = d.add(new long[] {a, b, c}, new int[] {64, 32, 16}, new boolean[] {false, true, true}, 3, table);
        DescriptorChain chain = q.pop();
        assertEquals(id, chain.id());
        assertEquals(3, chain.count());
        assertEquals(1, chain.readableCount());
        assertEquals(48, chain.writableBytes());
        assertArrayEquals(bytes(g.at(a, 64)), bytes(chain.segment(0)));
        q.push(chain, 48);
        assertEquals(id, DriverRing.usedId(d.pollUsed()));

        // §2.7.5.3.2: zero or more direct descriptors followed by one indirect descriptor.
        long t2 = g.alloc(32, 16);
        d.writeIndirect(t2, 0, b, 8, DESC_F_WRITE | DESC_F_NEXT, 1);
        d.writeIndirect(t2, 1, c, 8, DESC_F_WRITE, 0);
        d.writeDescriptor(5, h, 16, DESC_F_NEXT, 6);
        d.writeDescriptor(6, t2, 32, DESC_F_INDIRECT | DESC_F_WRITE, 0); // WRITE on the indirect descriptor is ignored
        d.exposeHead(5);
        DescriptorChain mixed = q.pop();
        assertEquals(5, mixed.id());
        assertEquals(3, mixed.count());
        assertEquals(1, mixed.readableCount());
        assertEquals(c, mixed.guestAddress(2));
    }

    @Test
    void zeroLengthBuffersNeedNoValidAddress() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long w = g.alloc(4, 1);
        d.writeDescriptor(0, 0xdead_beef_0000L, 0, DESC_F_NEXT, 1);
        d.writeDescriptor(1, w, 4, DESC_F_WRITE, 0);
        d.exposeHead(0);
        DescriptorChain c = q.pop();
        assertEquals(2, c.count());
        assertEquals(0, c.segment(0).byteSize());
        assertEquals(0, c.readableBytes());
    }

    @Test
    void availableIndexWrapsAt16Bits() throws Exception {
        long base = g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16);
        SplitDriverRing d = new SplitDriverRing(
                g.memory, SIZE, base, base + 16 * SIZE, (base + 16 * SIZE + 6 + 2 * SIZE + 3) & -4, true, 0xfffa);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder);
        long buf = g.alloc(8, 8);
        for (int i = 0; i < 3 * SIZE; i++) {
            int id = d.add(new long[] {buf}, new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
            DescriptorChain c = q.pop();
            assertEquals(id, c.id());
            q.push(c, i % 9);
            long used = d.pollUsed();
            assertEquals(id, DriverRing.usedId(used));
            assertEquals(i % 9, DriverRing.usedLen(used));
        }
        assertEquals((0xfffa + 3 * SIZE) & 0xffff, q.vringBase());
    }

    // ---- hostile drivers ----

    @Test
    void loopsAreDetected() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(16, 8);
        d.writeDescriptor(0, buf, 16, DESC_F_NEXT, 1);
        d.writeDescriptor(1, buf, 16, DESC_F_NEXT, 2);
        d.writeDescriptor(2, buf, 16, DESC_F_NEXT, 0);
        d.exposeHead(1);
        assertPopFails(q, Reason.LOOP);
    }

    @Test
    void selfLoopIsDetected() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        d.writeDescriptor(7, g.alloc(16, 8), 16, DESC_F_NEXT, 7);
        d.exposeHead(7);
        assertPopFails(q, Reason.LOOP);
    }

    @Test
    void loopInsideIndirectTableIsDetected() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long t = g.alloc(16 * 4, 16), buf = g.alloc(16, 8);
        d.writeIndirect(t, 0, buf, 16, DESC_F_NEXT, 1);
        d.writeIndirect(t, 1, buf, 16, DESC_F_NEXT, 3);
        d.writeIndirect(t, 3, buf, 16, DESC_F_NEXT, 1);
        d.writeDescriptor(0, t, 64, DESC_F_INDIRECT, 0);
        d.exposeHead(0);
        assertPopFails(q, Reason.LOOP);
    }

    @Test
    void nextBeyondTheTableIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        d.writeDescriptor(0, g.alloc(16, 8), 16, DESC_F_NEXT, SIZE);
        d.exposeHead(0);
        assertPopFails(q, Reason.NEXT_OUT_OF_RANGE);
    }

    @Test
    void nextBeyondTheIndirectTableIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long t = g.alloc(32, 16);
        d.writeIndirect(t, 0, g.alloc(16, 8), 16, DESC_F_NEXT, 2); // the table has entries 0 and 1
        d.writeDescriptor(0, t, 32, DESC_F_INDIRECT, 0);
        d.exposeHead(0);
        assertPopFails(q, Reason.NEXT_OUT_OF_RANGE);
    }

    @Test
    void headIndexBeyondQueueSizeIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        d.exposeHead(0xffff);
        assertPopFails(q, Reason.ID_OUT_OF_RANGE);
    }

    @Test
    void headMadeAvailableTwiceWhileInFlightIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        int id = d.add(new long[] {g.alloc(8, 8)}, new int[] {8}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
        assertNotNull(q.pop());
        d.exposeHead(id);
        assertPopFails(q, Reason.ID_IN_USE);
    }

    @Test
    void availableIndexRunningTooFarAheadIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        d.setAvailIndex(SIZE + 1);
        assertPopFails(q, Reason.AVAIL_INDEX_OUT_OF_RANGE);
    }

    @Test
    void availableIndexMovingBackwardsIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        d.setAvailIndex(0xffff);
        VirtqueueException e = assertThrows(VirtqueueException.class, q::enableNotifications);
        assertEquals(Reason.AVAIL_INDEX_OUT_OF_RANGE, e.reason());
    }

    @Test
    void buffersOutsideGuestMemoryAreRefused() throws Exception {
        long[] bad = {
            GuestFixture.LOW_GPA + g.lowSize, // the hole between the regions
            GuestFixture.LOW_GPA + g.lowSize - 8, // runs 8 bytes past the low region
            GuestFixture.HIGH_GPA + g.highSize - 4, // runs past the high region
            -8L, // wraps around the top of the address space
        };
        for (long addr : bad) {
            try (GuestFixture f = new GuestFixture()) {
                SplitDriverRing d =
                        SplitDriverRing.create(f.memory, f.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
                Virtqueue q = Virtqueue.create(d.queueConfig(0, true), f.holder);
                d.writeDescriptor(0, addr, 16, 0, 0);
                d.exposeHead(0);
                assertPopFails(q, Reason.BUFFER_OUTSIDE_MEMORY);
                assertTrue(f.guardsIntact());
            }
        }
    }

    /**
     * The queue tries the region of its previous buffer first (Virtqueue's region hint): a buffer that runs past
     * that region, or lies in the hole after it, is still refused; buffers alternating between regions each land in
     * their own; and a memory table change that drops the hinted region makes a buffer there outside guest memory.
     */
    @Test
    void theRegionHintNeverLetsABufferOutOfItsRegion() throws Exception {
        long[] badAfterLow = {g.lowSize, g.lowSize - 8, -8L}; // the hole after low, runs 8 bytes past it, wraps
        for (long addr : badAfterLow) {
            try (GuestFixture h = new GuestFixture()) {
                SplitDriverRing d = SplitDriverRing.create(
                        h.memory, h.allocHigh(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
                Virtqueue q = Virtqueue.create(d.queueConfig(0, true), h.holder);
                d.add(new long[] {h.alloc(16, 8)}, new int[] {16}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
                q.push(q.pop(), 0); // the hint is now the low region
                d.writeDescriptor(1, GuestFixture.LOW_GPA + addr, 16, 0, 0);
                d.exposeHead(1);
                assertPopFails(q, Reason.BUFFER_OUTSIDE_MEMORY);
                assertTrue(h.guardsIntact());
            }
        }

        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.allocHigh(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, true), g.holder);
        long low = g.alloc(16, 8);
        long high = g.allocHigh(16, 8);
        g.at(low, 16).fill((byte) 1);
        g.at(high, 16).fill((byte) 2);
        for (int i = 0; i < 4; i++) { // low, high, low, high: the hint is always the other region
            long buf = i % 2 == 0 ? low : high;
            d.add(new long[] {buf}, new int[] {16}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
            DescriptorChain c = q.pop();
            assertEquals(buf, c.guestAddress(0));
            assertEquals(i % 2 == 0 ? 1 : 2, c.segment(0).get(java.lang.foreign.ValueLayout.JAVA_BYTE, 15));
            q.push(c, 0);
            d.pollUsed();
        }
        // the low region leaves the memory table (the rings are in the high one): the hint of the old snapshot is
        // not used for the new one
        d.add(new long[] {low}, new int[] {16}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
        q.push(q.pop(), 0);
        d.pollUsed();
        g.holder.swap(GuestMemory.of(List.of(g.memory.regions().get(1))));
        d.add(new long[] {low}, new int[] {16}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
        assertPopFails(q, Reason.BUFFER_OUTSIDE_MEMORY);
    }

    @Test
    void readableAfterWritableIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(16, 8);
        d.writeDescriptor(0, buf, 8, DESC_F_WRITE | DESC_F_NEXT, 1);
        d.writeDescriptor(1, buf, 8, 0, 0);
        d.exposeHead(0);
        assertPopFails(q, Reason.READABLE_AFTER_WRITABLE);
    }

    @Test
    void readableInIndirectTableAfterDirectWritableIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(16, 8), t = g.alloc(16, 16);
        d.writeIndirect(t, 0, buf, 8, 0, 0);
        d.writeDescriptor(0, buf, 8, DESC_F_WRITE | DESC_F_NEXT, 1);
        d.writeDescriptor(1, t, 16, DESC_F_INDIRECT, 0);
        d.exposeHead(0);
        assertPopFails(q, Reason.READABLE_AFTER_WRITABLE);
    }

    @Test
    void indirectWithNextIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long t = g.alloc(16, 16);
        d.writeIndirect(t, 0, g.alloc(8, 8), 8, 0, 0);
        d.writeDescriptor(0, t, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1);
        d.writeDescriptor(1, g.alloc(8, 8), 8, 0, 0);
        d.exposeHead(0);
        assertPopFails(q, Reason.INDIRECT_MISPLACED);
    }

    @Test
    void nestedIndirectIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long inner = g.alloc(16, 16), outer = g.alloc(16, 16);
        d.writeIndirect(inner, 0, g.alloc(8, 8), 8, 0, 0);
        d.writeIndirect(outer, 0, inner, 16, DESC_F_INDIRECT, 0);
        d.writeDescriptor(0, outer, 16, DESC_F_INDIRECT, 0);
        d.exposeHead(0);
        assertPopFails(q, Reason.NESTED_INDIRECT);
    }

    @Test
    void indirectWithoutTheFeatureIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder);
        long t = g.alloc(16, 16);
        d.add(new long[] {g.alloc(8, 8)}, new int[] {8}, new boolean[] {false}, 1, t);
        assertPopFails(q, Reason.INDIRECT_NOT_NEGOTIATED);
    }

    @Test
    void indirectTableLengthsAreChecked() throws Exception {
        int tooMany = VirtioRing.MAX_INDIRECT_DESCRIPTORS + 1;
        for (int len : new int[] {0, 24, 16 * tooMany}) {
            try (GuestFixture f = new GuestFixture()) {
                SplitDriverRing d =
                        SplitDriverRing.create(f.memory, f.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
                Virtqueue q = Virtqueue.create(d.queueConfig(0, true), f.holder);
                d.writeDescriptor(0, f.alloc(16 * tooMany, 16), len, DESC_F_INDIRECT, 0);
                d.exposeHead(0);
                assertPopFails(q, Reason.BAD_INDIRECT_TABLE);
            }
        }
    }

    @Test
    void indirectTableOutsideGuestMemoryIsRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        d.writeDescriptor(0, GuestFixture.HIGH_GPA + g.highSize - 16, 32, DESC_F_INDIRECT, 0);
        d.exposeHead(0);
        assertPopFails(q, Reason.INDIRECT_TABLE_OUTSIDE_MEMORY);
    }

    @Test
    void chainsLongerThanTheBoundAreRefused() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        int table = VirtioRing.MAX_INDIRECT_DESCRIPTORS;
        long buf = g.alloc(8, 8), t = g.alloc(16L * table, 16);
        for (int i = 0; i < table; i++) {
            d.writeIndirect(t, i, buf, 8, i + 1 < table ? DESC_F_NEXT : 0, i + 1);
        }
        d.writeDescriptor(0, buf, 8, DESC_F_NEXT, 1);
        d.writeDescriptor(1, t, 16 * table, DESC_F_INDIRECT, 0); // 1 direct + a full indirect table: one too many
        d.exposeHead(0);
        assertPopFails(q, Reason.CHAIN_TOO_LONG);
    }

    @Test
    void indirectTablesLargerThanTheQueueAreAccepted() throws Exception {
        SplitDriverRing d = driver(false); // Linux sizes tables by seg_max, not by the queue size
        Virtqueue q = device(d);
        int table = 4 * SIZE;
        long buf = g.alloc(8, 8), t = g.alloc(16L * table, 16);
        for (int i = 0; i < table; i++) {
            d.writeIndirect(t, i, buf, 8, i + 1 < table ? DESC_F_NEXT : 0, i + 1);
        }
        d.writeDescriptor(0, t, 16 * table, DESC_F_INDIRECT, 0);
        d.exposeHead(0);
        assertEquals(table, q.pop().count());
    }

    @Test
    void chainsOfMoreThan4GiBAreRefused(@TempDir Path dir) throws Exception {
        long regionSize = 5L << 30; // sparse: only the pages we touch get memory
        try (Arena arena = Arena.ofShared();
                FileChannel ch = FileChannel.open(
                        dir.resolve("ram"),
                        StandardOpenOption.CREATE_NEW,
                        StandardOpenOption.READ,
                        StandardOpenOption.WRITE,
                        StandardOpenOption.SPARSE)) {
            MemorySegment ram = ch.map(FileChannel.MapMode.READ_WRITE, 0, regionSize, arena);
            GuestMemory mem = GuestMemory.of(List.of(new MemoryRegion(0, regionSize, 0x7000_0000_0000L, 0, ram, null)));
            io.iovirt.memory.GuestMemoryHolder holder = new io.iovirt.memory.GuestMemoryHolder();
            holder.swap(mem);
            SplitDriverRing d = SplitDriverRing.create(mem, 0x1_2000_0000L, SIZE, false);
            Virtqueue q = Virtqueue.create(d.queueConfig(0, false), holder);
            d.writeDescriptor(0, 0, -1, DESC_F_NEXT, 1); // 2^32 - 1 bytes
            d.writeDescriptor(1, 0x1_0000_0000L, 2, 0, 0);
            d.exposeHead(0);
            assertPopFails(q, Reason.CHAIN_TOO_LARGE);
        }
    }

    @Test
    void ringsMustBeInsideGuestMemoryAndAligned() throws Exception {
        long base = g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16);
        long avail = base + 16 * SIZE;
        long used = base + 1024;
        long hole = GuestFixture.LOW_GPA + g.lowSize + 0x1000;
        assertCreateFails(
                QueueConfig.split(0, SIZE, hole, avail, used, false, false, 0), g, Reason.RING_OUTSIDE_MEMORY);
        assertCreateFails(
                QueueConfig.split(0, SIZE, base, avail, GuestFixture.HIGH_GPA + g.highSize - 8, false, false, 0),
                g,
                Reason.RING_OUTSIDE_MEMORY);
        assertCreateFails(QueueConfig.split(0, SIZE, base + 8, avail, used, false, false, 0), g, Reason.BAD_CONFIG);
        assertCreateFails(QueueConfig.split(0, SIZE, base, avail + 1, used, false, false, 0), g, Reason.BAD_CONFIG);
        assertCreateFails(QueueConfig.split(0, SIZE, base, avail, used + 2, false, false, 0), g, Reason.BAD_CONFIG);
        assertCreateFails(QueueConfig.split(0, 6, base, avail, used, false, false, 0), g, Reason.BAD_CONFIG);
        assertCreateFails(QueueConfig.split(0, 0, base, avail, used, false, false, 0), g, Reason.BAD_CONFIG);
        assertCreateFails(QueueConfig.split(0, 65536, base, avail, used, false, false, 0), g, Reason.BAD_CONFIG);
        assertCreateFails(QueueConfig.split(0, SIZE, base, avail, used, false, false, 0x10000), g, Reason.BAD_CONFIG);
    }

    @Test
    void memoryTableChangesRemapTheRings() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        d.add(new long[] {buf}, new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        DescriptorChain c = q.pop();
        // Same RAM in a new snapshot (as after VHOST_USER_ADD_MEM_REG of an unrelated region): the queue carries on.
        g.holder.swap(GuestMemory.of(g.memory.regions()));
        q.push(c, 8);
        assertEquals(c.id(), DriverRing.usedId(d.pollUsed()));
        // The ring's region disappears: the queue fails instead of touching unmapped memory.
        g.holder.swap(GuestMemory.of(List.of(g.memory.regions().get(1))));
        assertPopFails(q, Reason.RING_OUTSIDE_MEMORY);
    }

    @Test
    void deviceMisuseIsAProgrammingErrorNotAGuestError() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        Virtqueue other = device(driver(false));
        assertThrows(IllegalArgumentException.class, () -> q.pop(other.newChain()));
        assertThrows(IllegalArgumentException.class, () -> q.addUsed(0, 0), "nothing in flight");
        d.add(new long[] {g.alloc(8, 8)}, new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        DescriptorChain c = q.newChain();
        assertTrue(q.pop(c));
        assertThrows(IllegalArgumentException.class, () -> q.addUsed(c.id(), 1L << 32));
        assertThrows(IllegalArgumentException.class, () -> q.push(c, -1));
        assertNull(q.failure());
    }

    // ---- notification suppression ----

    @Test
    void flagsSuppressNotificationsWithoutEventIdx() throws Exception {
        SplitDriverRing d = driver(false);
        Virtqueue q = device(d);
        long buf = g.alloc(8, 8);
        assertFalse(q.needsNotification(), "nothing pushed yet");

        d.disableInterrupts();
        d.add(new long[] {buf}, new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        q.push(q.pop(), 0);
        assertFalse(q.needsNotification(), "driver set VRING_AVAIL_F_NO_INTERRUPT");
        assertTrue(d.enableInterrupts(), "the used entry is waiting");
        d.pollUsed();
        d.add(new long[] {buf}, new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        q.push(q.pop(), 0);
        assertTrue(q.needsNotification());
        assertFalse(q.needsNotification(), "already decided for that entry");

        q.disableNotifications();
        assertEquals(VirtioRing.USED_F_NO_NOTIFY, d.usedRing().get(VirtioRing.LE16, 0));
        d.add(new long[] {buf}, new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        assertFalse(d.kickNeeded(), "device set VRING_USED_F_NO_NOTIFY");
        assertTrue(q.enableNotifications(), "re-check after enabling finds the buffer");
        d.add(new long[] {buf}, new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        assertTrue(d.kickNeeded());
    }

    @Test
    void eventIndicesSuppressNotifications() throws Exception {
        SplitDriverRing d = driver(true);
        Virtqueue q = device(d);
        long[] a = {g.alloc(8, 8)};
        int[] l = {8};
        boolean[] w = {true};
        // Driver→device: avail_event starts at 0, so publishing entry 0 crosses it.
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertTrue(d.kickNeeded());
        q.disableNotifications();
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertFalse(d.kickNeeded(), "entry 1 is past avail_event 0: the device has not caught up yet");
        DescriptorChain c0 = q.newChain(), c1 = q.newChain(), c2 = q.newChain();
        assertTrue(q.pop(c0));
        assertTrue(q.pop(c1));
        assertFalse(q.enableNotifications(), "ring empty after enabling");
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertTrue(d.kickNeeded(), "device asked for a kick at entry 2");
        assertTrue(q.pop(c2)); // notifications enabled: avail_event follows to 3
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertTrue(d.kickNeeded());
        d.add(a, l, w, 1, DriverRing.NO_INDIRECT);
        assertFalse(d.kickNeeded(), "entry 4 is past avail_event 3");

        // Device→driver: the first decision always notifies (the previous used_event may already have been crossed).
        q.push(c0, 0);
        assertTrue(q.needsNotification());
        assertTrue(d.pollUsed() >= 0); // used_event follows to 1
        q.push(c1, 0);
        q.push(c2, 0);
        assertTrue(q.needsNotification(), "used index moved 1 -> 3 across used_event 1");
        assertTrue(d.pollUsed() >= 0); // used_event 2; entry 2 is still unread
        DescriptorChain c3 = q.newChain();
        assertTrue(q.pop(c3));
        q.push(c3, 0);
        assertFalse(q.needsNotification(), "used index 3 -> 4 does not cross used_event 2");
        d.disableInterrupts();
        assertTrue(d.pollUsed() >= 0);
        assertTrue(d.pollUsed() >= 0);
        DescriptorChain c4 = q.newChain();
        assertTrue(q.pop(c4));
        q.push(c4, 0);
        assertFalse(q.needsNotification(), "interrupts disabled");
        assertTrue(d.enableInterrupts(), "entry 4 is waiting");
    }
}
