// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.memory.AddressRanges;
import io.iovirt.memory.GuestMemoryFault;
import io.iovirt.memory.MemoryRegion;
import java.util.Arrays;
import java.util.List;

/**
 * The frontend-virtual-address → guest-physical-address index of one memory table. vhost-user names ring addresses
 * (SET_VRING_ADDR) in the frontend's address space; only the control thread translates them, once, and the device
 * sees guest physical addresses only. Immutable; {@link MemoryTable} builds one per table it installs.
 */
final class FrontendAddressIndex {
    static final FrontendAddressIndex EMPTY = new FrontendAddressIndex(new long[0], new long[0], new long[0]);

    /** Sorted by frontend address (unsigned). */
    private final long[] uvaStarts;

    private final long[] sizes;
    private final long[] gpaStarts;

    private FrontendAddressIndex(long[] uvaStarts, long[] sizes, long[] gpaStarts) {
        this.uvaStarts = uvaStarts;
        this.sizes = sizes;
        this.gpaStarts = gpaStarts;
    }

    /**
     * The index of these regions.
     *
     * @throws IllegalArgumentException when two regions overlap in the frontend's address space
     */
    static FrontendAddressIndex of(List<MemoryRegion> regions) {
        MemoryRegion[] byUva = regions.toArray(MemoryRegion[]::new);
        Arrays.sort(byUva, (a, b) -> Long.compareUnsigned(a.userAddr(), b.userAddr()));
        for (int i = 1; i < byUva.length; i++) {
            if (Long.compareUnsigned(byUva[i - 1].userLast(), byUva[i].userAddr()) >= 0) {
                throw new IllegalArgumentException(
                        "regions overlap in frontend address space: " + byUva[i - 1] + " and " + byUva[i]);
            }
        }
        return new FrontendAddressIndex(
                Arrays.stream(byUva).mapToLong(MemoryRegion::userAddr).toArray(),
                Arrays.stream(byUva).mapToLong(MemoryRegion::size).toArray(),
                Arrays.stream(byUva).mapToLong(MemoryRegion::guestPhysAddr).toArray());
    }

    /**
     * Guest physical address of the frontend virtual range [uva, uva+len).
     *
     * @throws GuestMemoryFault when the range is not inside a single region
     */
    long toGuestPhys(long uva, long len) throws GuestMemoryFault {
        int i = AddressRanges.floor(uvaStarts, uva);
        if (i < 0 || !AddressRanges.fits(uvaStarts[i], sizes[i], uva, len)) {
            throw new GuestMemoryFault(
                    String.format("frontend address range 0x%x+0x%x is outside guest memory", uva, len));
        }
        long off = uva - uvaStarts[i];
        return gpaStarts[i] + off;
    }
}
