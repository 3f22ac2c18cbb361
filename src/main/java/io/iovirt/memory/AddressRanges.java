// SPDX-License-Identifier: Apache-2.0
package io.iovirt.memory;

/**
 * Lookups over sorted, non-overlapping address ranges, unsigned throughout (guest and frontend addresses may use the
 * top bit): shared by {@link GuestMemory} (guest physical) and the vhost-user frontend-address index. Allocates
 * nothing.
 */
public final class AddressRanges {
    private AddressRanges() {}

    /** The index of the last range whose start is at or below {@code addr} (unsigned), or -1. */
    public static int floor(long[] sortedStarts, long addr) {
        int lo = 0;
        int hi = sortedStarts.length - 1;
        int found = -1;
        while (lo <= hi) {
            int mid = (lo + hi) >>> 1;
            if (Long.compareUnsigned(sortedStarts[mid], addr) <= 0) {
                found = mid;
                lo = mid + 1;
            } else {
                hi = mid - 1;
            }
        }
        return found;
    }

    /** True when [addr, addr+len) lies inside [start, start+size), given {@code addr >= start} (unsigned). */
    public static boolean fits(long start, long size, long addr, long len) {
        long off = addr - start;
        return len >= 0 && Long.compareUnsigned(off, size) < 0 && Long.compareUnsigned(len, size - off) <= 0;
    }
}
