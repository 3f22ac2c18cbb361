// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.MemorySegment;

/**
 * Physical Region Page entries for one transfer (NVMe Base 2.0, section 4.1.1). PRP1 addresses the first byte and
 * may carry an offset into its page (dword aligned); the rest of the transfer is whole pages. If it ends in the second
 * page, PRP2 is that page; if it needs more, PRP2 points to a PRP list: one page of 8-byte page addresses. One list
 * page covers {@code pageSize / 8} pages (2 MiB with 4 KiB pages), which bounds a transfer here; chained lists are
 * not built.
 */
final class Prp {
    private Prp() {}

    /** The largest transfer that fits PRP1 plus one list page, for a page-aligned buffer. */
    static long maxTransfer(long pageSize) {
        return pageSize * (pageSize / 8 + 1);
    }

    /**
     * Computes PRP1/PRP2 for {@code [iova, iova + length)} into {@code out[0..1]}, writing a PRP list into
     * {@code list} (whose device address is {@code listIova}) when one is needed.
     *
     * @return the number of list entries written (0 when no list was needed)
     */
    static int build(long iova, long length, long pageSize, MemorySegment list, long listIova, long[] out) {
        if (length <= 0) {
            throw new IllegalArgumentException("transfer length must be positive: " + length);
        }
        if ((iova & 3) != 0) {
            throw new IllegalArgumentException(String.format("PRP1 0x%x is not dword aligned", iova));
        }
        if (Long.bitCount(pageSize) != 1 || pageSize < 4096) {
            throw new IllegalArgumentException("memory page size must be a power of two ≥ 4096: " + pageSize);
        }
        long mask = pageSize - 1;
        long firstChunk = pageSize - (iova & mask);
        out[0] = iova;
        if (length <= firstChunk) {
            out[1] = 0;
            return 0;
        }
        long rest = length - firstChunk;
        long nextPage = iova + firstChunk; // page aligned
        if (rest <= pageSize) {
            out[1] = nextPage;
            return 0;
        }
        long entries = (rest + mask) / pageSize;
        if (entries > pageSize / 8) {
            throw new IllegalArgumentException("transfer of " + length + " bytes needs " + entries
                    + " PRP list entries; one list page holds " + pageSize / 8);
        }
        if ((listIova & mask) != 0 || list.byteSize() < entries * 8) {
            throw new IllegalArgumentException(
                    String.format("PRP list at 0x%x must be page aligned and hold %d entries", listIova, entries));
        }
        for (int i = 0; i < entries; i++) {
            list.setAtIndex(JAVA_LONG, i, nextPage + i * pageSize);
        }
        out[1] = listIova;
        return (int) entries;
    }
}
