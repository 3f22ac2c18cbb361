// SPDX-License-Identifier: Apache-2.0
package io.iovirt.memory;

import java.lang.foreign.MemorySegment;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * One region of guest RAM as the frontend described it: guest physical address, size, the frontend's own virtual
 * address for it (vhost-user ring addresses are frontend virtual addresses), the offset into the shared fd, and our
 * mapping of it. {@code mapping} must be exactly {@code size} bytes.
 *
 * <p>{@code owner} (typically the mapping) is closed when the region leaves guest memory for good: when the last
 * snapshot containing it is released ({@link GuestMemory#release}), i.e. when no queue can still touch it.
 */
public final class MemoryRegion {
    private final long guestPhysAddr;
    private final long size;
    private final long userAddr;
    private final long mmapOffset;
    private final MemorySegment mapping;
    private final AutoCloseable owner;
    /** Snapshots that contain this region; the mapping is released when the last of them is released. */
    private final AtomicInteger snapshots = new AtomicInteger();

    private final AtomicBoolean released = new AtomicBoolean();

    public MemoryRegion(
            long guestPhysAddr, long size, long userAddr, long mmapOffset, MemorySegment mapping, AutoCloseable owner) {
        Objects.requireNonNull(mapping, "mapping");
        if (size <= 0) {
            throw new IllegalArgumentException("region size must be positive: " + size);
        }
        if (mapping.byteSize() != size) {
            throw new IllegalArgumentException("mapping is " + mapping.byteSize() + " bytes, region " + size);
        }
        if (Long.compareUnsigned(guestPhysAddr, guestPhysAddr + size - 1) > 0) {
            throw new IllegalArgumentException(
                    String.format("region at GPA 0x%x size 0x%x wraps around", guestPhysAddr, size));
        }
        if (Long.compareUnsigned(userAddr, userAddr + size - 1) > 0) {
            throw new IllegalArgumentException(
                    String.format("region at UVA 0x%x size 0x%x wraps around", userAddr, size));
        }
        this.guestPhysAddr = guestPhysAddr;
        this.size = size;
        this.userAddr = userAddr;
        this.mmapOffset = mmapOffset;
        this.mapping = mapping;
        this.owner = owner;
    }

    public long guestPhysAddr() {
        return guestPhysAddr;
    }

    public long size() {
        return size;
    }

    public long userAddr() {
        return userAddr;
    }

    public long mmapOffset() {
        return mmapOffset;
    }

    /** Our mapping of the region: exactly {@link #size()} bytes. */
    public MemorySegment mapping() {
        return mapping;
    }

    /** Releases the mapping (may be null: memory the region does not own). */
    public AutoCloseable owner() {
        return owner;
    }

    /** A snapshot now contains this region. */
    void retain() {
        snapshots.incrementAndGet();
    }

    /** A snapshot containing this region was released; the last one releases the mapping. */
    void unretain() {
        if (snapshots.decrementAndGet() == 0) {
            release();
        }
    }

    /** Last guest physical address inside the region (inclusive, unsigned). */
    public long guestPhysLast() {
        return guestPhysAddr + size - 1;
    }

    public long userLast() {
        return userAddr + size - 1;
    }

    /** Releases the mapping now, once; for a region that never made it into a snapshot, or the last one's. */
    public void release() {
        if (owner != null && released.compareAndSet(false, true)) {
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
