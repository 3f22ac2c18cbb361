// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.memory.GuestWriteLog;
import io.iovirt.testing.GuestFixture;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * Migration's dirty logging at the queue (issue 11): every byte the device writes into guest memory - data it
 * reports in the used length, bytes it copies in, used-ring entries and index, packed descriptors written back -
 * reaches the {@link WriteLog} installed in the memory holder, and nothing does when none is installed.
 */
class DirtyLoggingQueueTest {
    private static final int SIZE = 8;
    private final GuestFixture g = new GuestFixture();
    private final Recorder log = new Recorder();

    /** What a device reported: guest ranges and used-ring ranges. */
    static final class Recorder implements GuestWriteLog {
        final List<long[]> written = new ArrayList<>();

        @Override
        public void written(long gpa, long len) {
            written.add(new long[] {gpa, len});
        }

        boolean coversWritten(long gpa, long len) {
            return covers(written, 0, gpa, len);
        }

        private static boolean covers(List<long[]> ranges, int from, long start, long len) {
            for (long b = start; b < start + len; b++) {
                long x = b;
                if (ranges.stream().noneMatch(r -> r[from] <= x && x < r[from] + r[from + 1])) {
                    return false;
                }
            }
            return true;
        }
    }

    @AfterEach
    void guardsIntactAndClose() {
        assertTrue(g.guardsIntact(), "a device access escaped guest memory");
        g.close();
    }

    @Test
    void splitRingReportsDataUsedEntryAndIndex() throws Exception {
        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, true);
        Virtqueue q = Virtqueue.create(d.queueConfig(3, true), g.holder);
        long hdr = g.alloc(16, 16), w1 = g.alloc(100, 1), w2 = g.allocHigh(8192, 4096), status = g.alloc(1, 1);
        d.add(
                new long[] {hdr, w1, w2, status},
                new int[] {16, 100, 8192, 1},
                new boolean[] {false, true, true, true},
                4,
                DriverRing.NO_INDIRECT);
        DescriptorChain c = q.pop();
        // logging off: nothing is reported
        c.copyToWritable(0, MemorySegment.ofArray(new byte[10]));
        assertTrue(log.written.isEmpty());

        g.holder.writeLog(log);
        assertEquals(1, c.copyToWritable(100 + 8192, MemorySegment.ofArray(new byte[] {0})), "status byte");
        q.push(c, 100 + 4097); // every writable buffer is reported at push, whatever the used length says
        assertTrue(log.coversWritten(status, 1), "the status byte copied in");
        assertTrue(log.coversWritten(w1, 100));
        assertTrue(log.coversWritten(w2, 8192));
        long used = d.queueConfig(3, true).deviceArea();
        assertTrue(log.coversWritten(used + 4, 8), "used element");
        assertTrue(log.coversWritten(used + 2, 2), "used idx");
        q.enableNotifications();
        assertTrue(log.coversWritten(used + 4 + 8L * SIZE, 2), "avail_event");

        g.holder.writeLog(null);
        int before = log.written.size();
        d.add(new long[] {status}, new int[] {1}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        DescriptorChain c2 = q.pop();
        q.push(c2, 1);
        assertEquals(before, log.written.size(), "logging off: nothing is reported");
    }

    @Test
    void aBatchReportsEveryBufferAndUsedEntryAcrossTheRingsEnd() throws Exception {
        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, true);
        Virtqueue q = Virtqueue.create(d.queueConfig(3, true), g.holder);
        long used = d.queueConfig(3, true).deviceArea();
        DescriptorChain[] cs = sixRoundTripsUnlogged(d, q); // the batch's used entries are 6, 7, 0, 1, 2

        long[] bufs = new long[5];
        for (int i = 0; i < bufs.length; i++) {
            bufs[i] = g.alloc(64 + i, 1);
            d.add(new long[] {bufs[i]}, new int[] {64 + i}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        }
        assertEquals(5, q.pop(cs, SIZE));
        g.holder.writeLog(log); // on after the pop, before the push: what the push writes is reported
        q.pushBatched(cs, new long[] {1, 0, 64, 0, 0}, 5);
        for (int i = 0; i < bufs.length; i++) {
            assertTrue(log.coversWritten(bufs[i], 64 + i), "every writable buffer, whatever the used length");
        }
        assertTrue(log.coversWritten(used + 4 + 8L * 6, 16), "used entries 6 and 7");
        assertTrue(log.coversWritten(used + 4, 24), "used entries 0 to 2");
        assertFalse(log.coversWritten(used + 4 + 8L * 3, 1), "and not the entries the batch did not write");
        q.publishUsed();
        assertTrue(log.coversWritten(used + 2, 2), "used idx");
        for (int i = 0; i < 5; i++) {
            assertTrue(d.pollUsed() != -1);
        }
    }

    /** Chain holders for a batch, after six requests went round with logging off (nothing reported). */
    private DescriptorChain[] sixRoundTripsUnlogged(DriverRing d, Virtqueue q) throws Exception {
        DescriptorChain[] cs = new DescriptorChain[SIZE];
        for (int i = 0; i < cs.length; i++) {
            cs[i] = q.newChain();
        }
        for (int i = 0; i < 6; i++) {
            d.add(new long[] {g.alloc(8, 8)}, new int[] {8}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        }
        assertEquals(6, q.pop(cs, SIZE));
        q.pushBatched(cs, new long[SIZE], 6);
        q.publishUsed();
        while (d.pollUsed() != -1) {}
        assertTrue(log.written.isEmpty());
        return cs;
    }

    @Test
    void aPackedBatchReportsTheDescriptorsWrittenBackAcrossTheRingsEnd() throws Exception {
        long base = g.alloc(PackedDriverRing.bytesNeeded(SIZE), 16);
        PackedDriverRing d = PackedDriverRing.create(g.memory, base, SIZE, true);
        QueueConfig qc = d.queueConfig(1, true);
        Virtqueue q = Virtqueue.create(qc, g.holder);
        DescriptorChain[] cs = sixRoundTripsUnlogged(d, q); // the batch's descriptors are 6, 7, 0, 1
        long[] bufs = new long[4];
        for (int i = 0; i < bufs.length; i++) {
            bufs[i] = g.alloc(32, 1);
            d.add(new long[] {bufs[i]}, new int[] {32}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        }
        assertEquals(4, q.pop(cs, SIZE));
        g.holder.writeLog(log);
        q.pushBatched(cs, new long[] {32, 32, 32, 32}, 4);
        for (long b : bufs) {
            assertTrue(log.coversWritten(b, 32), "data");
        }
        assertTrue(log.coversWritten(qc.descAddr() + 16L * 6, 32), "descriptors 6 and 7 written back");
        assertTrue(log.coversWritten(qc.descAddr(), 32), "descriptors 0 and 1 written back");
        log.written.clear();
        q.publishUsed(); // the first descriptor's flags, stored last: reported again after the store
        assertTrue(log.coversWritten(qc.descAddr() + 16L * 6 + 14, 2), "descriptor 6's flags");
        for (int i = 0; i < 4; i++) {
            assertTrue(d.pollUsed() != -1);
        }
    }

    @Test
    void packedRingReportsTheDescriptorWrittenBack() throws Exception {
        long base = g.alloc(PackedDriverRing.bytesNeeded(SIZE), 16);
        PackedDriverRing d = PackedDriverRing.create(g.memory, base, SIZE, true);
        QueueConfig qc = d.queueConfig(1, true);
        Virtqueue q = Virtqueue.create(qc, g.holder);
        long w = g.alloc(512, 1);
        d.add(new long[] {w}, new int[] {512}, new boolean[] {true}, 1, DriverRing.NO_INDIRECT);
        g.holder.writeLog(log);
        DescriptorChain c = q.pop();
        q.push(c, 512);
        assertTrue(log.coversWritten(w, 512), "data");
        assertTrue(log.coversWritten(qc.descAddr(), 16), "descriptor 0 written back as used");
        q.enableNotifications();
        assertTrue(log.coversWritten(qc.deviceArea(), 4), "device event suppression area");
    }
}
