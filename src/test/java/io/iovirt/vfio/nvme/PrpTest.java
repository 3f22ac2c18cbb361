// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;
import net.jqwik.api.constraints.LongRange;
import org.junit.jupiter.api.Test;

/** PRP entries per NVMe Base 2.0 §4.1.1, including the rule that PRP1 alone may carry a page offset. */
class PrpTest {
    private static final long PAGE = 4096;
    private static final long LIST = 0x900000;

    private static long[] build(long iova, long len, MemorySegment list) {
        long[] out = new long[2];
        Prp.build(iova, len, PAGE, list, LIST, out);
        return out;
    }

    @Test
    void onePageNeedsOnlyPrp1() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment list = a.allocate(PAGE);
            assertArrayEquals(new long[] {0x100000, 0}, build(0x100000, 4096, list));
            assertArrayEquals(new long[] {0x100200, 0}, build(0x100200, 512, list));
        }
    }

    @Test
    void twoPagesUsePrp2AsThePage() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment list = a.allocate(PAGE);
            assertArrayEquals(new long[] {0x100000, 0x101000}, build(0x100000, 8192, list));
            // an offset buffer crossing one page boundary
            assertArrayEquals(new long[] {0x100e00, 0x101000}, build(0x100e00, 4096, list));
        }
    }

    @Test
    void moreThanTwoPagesUseAList() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment list = a.allocate(PAGE);
            long[] out = new long[2];
            assertEquals(3, Prp.build(0x100000, 16384, PAGE, list, LIST, out));
            assertArrayEquals(new long[] {0x100000, LIST}, out);
            assertArrayEquals(
                    new long[] {0x101000, 0x102000, 0x103000},
                    list.asSlice(0, 24).toArray(JAVA_LONG));
            // offset start: 0x100800..0x103800 spans pages 0x100000 (partial), 0x101000, 0x102000, 0x103000 (partial)
            assertEquals(3, Prp.build(0x100800, 12288, PAGE, list, LIST, out));
            assertArrayEquals(new long[] {0x100800, LIST}, out);
        }
    }

    @Test
    void badTransfersAreRefused() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment list = a.allocate(PAGE);
            assertThrows(IllegalArgumentException.class, () -> build(0x100002, 512, list)); // not dword aligned
            assertThrows(IllegalArgumentException.class, () -> build(0x100000, 0, list));
            assertThrows(IllegalArgumentException.class, () -> build(0x100000, Prp.maxTransfer(PAGE) + PAGE, list));
            long[] out = new long[2];
            assertThrows(IllegalArgumentException.class, () -> Prp.build(0x100000, 16384, PAGE, list, LIST + 8, out));
            assertEquals(2 * 1024 * 1024 + 4096, Prp.maxTransfer(PAGE));
        }
    }

    /** Walking the PRPs back yields exactly the bytes of the buffer, in order, whatever its offset and length. */
    @Property(tries = 300)
    void prpsCoverTheTransferExactly(
            @ForAll @IntRange(min = 0, max = 1023) int dwordOffset,
            @ForAll @LongRange(min = 1, max = 600_000) long length) {
        long iova = 0x4000_0000L + dwordOffset * 4L;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment list = a.allocate(PAGE);
            long[] out = new long[2];
            int entries = Prp.build(iova, length, PAGE, list, LIST, out);
            long covered = 0;
            long expect = iova;
            long first = Math.min(length, PAGE - (iova % PAGE));
            assertEquals(expect, out[0]);
            covered += first;
            expect += first;
            if (covered < length) {
                long[] pages = entries == 0
                        ? new long[] {out[1]}
                        : list.asSlice(0, entries * 8L).toArray(JAVA_LONG);
                if (entries > 0) {
                    assertEquals(LIST, out[1]);
                }
                for (long p : pages) {
                    assertEquals(expect, p);
                    assertEquals(0, p % PAGE);
                    long n = Math.min(PAGE, length - covered);
                    covered += n;
                    expect += n;
                }
            } else {
                assertEquals(0, out[1]);
            }
            assertEquals(length, covered);
        }
    }
}
