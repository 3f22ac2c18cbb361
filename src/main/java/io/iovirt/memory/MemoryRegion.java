package io.iovirt.memory;

import java.lang.foreign.MemorySegment;
import java.util.Objects;

/**
 * One region of guest RAM as the frontend described it: guest physical address, size, the frontend's own virtual
 * address for it (vhost-user ring addresses are frontend virtual addresses), the offset into the shared fd, and our
 * mapping of it. {@code mapping} must be exactly {@code size} bytes.
 *
 * @param owner released when the region leaves guest memory for good (typically the mapping's arena); may be null
 */
public record MemoryRegion(long guestPhysAddr, long size, long userAddr, long mmapOffset, MemorySegment mapping,
                           AutoCloseable owner) {
    public MemoryRegion {
        Objects.requireNonNull(mapping, "mapping");
        if (size <= 0) {
            throw new IllegalArgumentException("region size must be positive: " + size);
        }
        if (mapping.byteSize() != size) {
            throw new IllegalArgumentException("mapping is " + mapping.byteSize() + " bytes, region " + size);
        }
        if (Long.compareUnsigned(guestPhysAddr, guestPhysAddr + size - 1) > 0) {
            throw new IllegalArgumentException(String.format("region at GPA 0x%x size 0x%x wraps around", guestPhysAddr, size));
        }
        if (Long.compareUnsigned(userAddr, userAddr + size - 1) > 0) {
            throw new IllegalArgumentException(String.format("region at UVA 0x%x size 0x%x wraps around", userAddr, size));
        }
    }

    /** Last guest physical address inside the region (inclusive, unsigned). */
    public long guestPhysLast() {
        return guestPhysAddr + size - 1;
    }

    public long userLast() {
        return userAddr + size - 1;
    }

    void release() {
        if (owner != null) {
            try {
                owner.close();
            } catch (Exception e) {
                // Unmapping a region we own cannot usefully fail; nothing to do for the guest.
            }
        }
    }

    @Override
    public String toString() {
        return String.format("region[gpa=0x%x size=0x%x uva=0x%x off=0x%x]", guestPhysAddr, size, userAddr, mmapOffset);
    }
}
