// SPDX-License-Identifier: Apache-2.0
package io.iovirt.memory;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * An immutable snapshot of guest RAM: the only place where a guest address becomes host memory. Every translation
 * is bounds-checked against the regions; a range must lie inside one region (QEMU never splits a descriptor across
 * regions that are not host-contiguous, and we do not try to join them).
 *
 * <p>Replacing the memory table builds a new snapshot ({@link #with}, {@link #without}); holders swap the reference
 * atomically (see {@link GuestMemoryHolder}). Lookups are a binary search over a few regions; {@link #find} and
 * {@link #mapping}/{@link #offset} allocate nothing and are what the per-request path uses (descriptor buffers and
 * indirect tables); {@link #translate} allocates the returned slice and is for set-up (ring areas, config).
 *
 * <p>Reclamation is by reference count, as vm-memory's GuestMemoryAtomic does with Arc: the holder owns one reference
 * to its current snapshot, each queue thread pins the snapshot it is working from ({@link GuestMemoryHolder.Reader}),
 * and a region's mapping is closed when the last snapshot containing it is released. Nobody waits or retries: the
 * thread that drops the last reference unmaps.
 */
public final class GuestMemory {
    /** Upper bound on regions, matching what we advertise in VHOST_USER_GET_MAX_MEM_SLOTS. */
    public static final int MAX_REGIONS = 509;

    private static final GuestMemory EMPTY = new GuestMemory(new MemoryRegion[0]);

    private final MemoryRegion[] byGpa;
    private final long[] gpaStarts;

    /** References: the holder's, plus one per reader pinning it; at 0 the snapshot is dead (its regions unretained). */
    private final AtomicInteger refs = new AtomicInteger(1);

    private GuestMemory(MemoryRegion[] regions) {
        this.byGpa = regions.clone();
        Arrays.sort(byGpa, (a, b) -> Long.compareUnsigned(a.guestPhysAddr(), b.guestPhysAddr()));
        for (int i = 1; i < byGpa.length; i++) {
            if (Long.compareUnsigned(byGpa[i - 1].guestPhysLast(), byGpa[i].guestPhysAddr()) >= 0) {
                throw new IllegalArgumentException(
                        "regions overlap in guest physical space: " + byGpa[i - 1] + " and " + byGpa[i]);
            }
        }
        this.gpaStarts =
                Arrays.stream(byGpa).mapToLong(MemoryRegion::guestPhysAddr).toArray();
        long total = 0;
        for (MemoryRegion r : byGpa) {
            total += r.size();
        }
        this.totalBytes = total;
        for (MemoryRegion r : byGpa) {
            r.retain();
        }
    }

    private final long totalBytes;

    /** Bytes of guest memory mapped in this snapshot. */
    public long totalBytes() {
        return totalBytes;
    }

    /**
     * Takes a reference unless the snapshot is already dead (its last reference gone).
     *
     * @return false when it is dead: read the holder's current snapshot again
     */
    public boolean tryAcquire() {
        if (this == EMPTY) {
            return true;
        }
        for (; ; ) {
            int n = refs.get();
            if (n == 0) {
                return false;
            }
            if (refs.compareAndSet(n, n + 1)) {
                return true;
            }
        }
    }

    /** Drops a reference; the last one releases the regions no other live snapshot contains. */
    public void release() {
        if (this == EMPTY) {
            return;
        }
        int n = refs.decrementAndGet();
        if (n == 0) {
            for (MemoryRegion r : byGpa) {
                r.unretain();
            }
        } else if (n < 0) {
            throw new IllegalStateException("guest memory snapshot released more often than acquired");
        }
    }

    /** True while some holder or reader still references this snapshot. */
    public boolean live() {
        return this == EMPTY || refs.get() > 0;
    }

    public static GuestMemory empty() {
        return EMPTY;
    }

    /**
     * A snapshot of exactly these regions.
     *
     * @throws IllegalArgumentException when regions overlap in guest physical space or are too many
     */
    public static GuestMemory of(List<MemoryRegion> regions) {
        if (regions.size() > MAX_REGIONS) {
            throw new IllegalArgumentException("too many memory regions: " + regions.size() + " > " + MAX_REGIONS);
        }
        return new GuestMemory(regions.toArray(MemoryRegion[]::new));
    }

    /** This snapshot plus one region (VHOST_USER_ADD_MEM_REG). */
    public GuestMemory with(MemoryRegion region) {
        List<MemoryRegion> all = new ArrayList<>(Arrays.asList(byGpa));
        all.add(region);
        return of(all);
    }

    /**
     * This snapshot without the region matching {@code gpa}, {@code size} and {@code userAddr}
     * (VHOST_USER_REM_MEM_REG identifies a region by those).
     *
     * @throws IllegalArgumentException when no such region exists
     */
    public GuestMemory without(long gpa, long size, long userAddr) {
        List<MemoryRegion> rest = new ArrayList<>(byGpa.length);
        boolean found = false;
        for (MemoryRegion r : byGpa) {
            if (!found && r.guestPhysAddr() == gpa && r.size() == size && r.userAddr() == userAddr) {
                found = true;
            } else {
                rest.add(r);
            }
        }
        if (!found) {
            throw new IllegalArgumentException(
                    String.format("no region at GPA 0x%x size 0x%x UVA 0x%x", gpa, size, userAddr));
        }
        return of(rest);
    }

    /** The region removed by {@link #without}, for the caller to release once no queue uses the old snapshot. */
    public MemoryRegion find(long gpa, long size, long userAddr) {
        for (MemoryRegion r : byGpa) {
            if (r.guestPhysAddr() == gpa && r.size() == size && r.userAddr() == userAddr) {
                return r;
            }
        }
        return null;
    }

    public List<MemoryRegion> regions() {
        return List.of(byGpa);
    }

    public int regionCount() {
        return byGpa.length;
    }

    /**
     * Host memory for guest physical range [gpa, gpa+len).
     *
     * @throws GuestMemoryFault when the range is empty-wrapped, negative, or not inside a single region
     */
    public MemorySegment translate(long gpa, long len) throws GuestMemoryFault {
        int i = find(gpa, len);
        if (i < 0) {
            throw new GuestMemoryFault(
                    String.format("guest address range 0x%x+0x%x is outside guest memory", gpa, len));
        }
        return byGpa[i].mapping().asSlice(offset(i, gpa), len);
    }

    /**
     * The index of the region holding all of [gpa, gpa+len), or -1; allocates nothing. Use with {@link #mapping} and
     * {@link #offset}.
     */
    public int find(long gpa, long len) { // the one range check: translate and contains use it too
        int i = AddressRanges.floor(gpaStarts, gpa);
        if (i < 0 || len < 0) {
            return -1;
        }
        MemoryRegion r = byGpa[i];
        return AddressRanges.fits(r.guestPhysAddr(), r.size(), gpa, len) ? i : -1;
    }

    /** The whole mapping of region {@code i} (from {@link #find}). */
    public MemorySegment mapping(int i) {
        return byGpa[i].mapping();
    }

    /** The guest physical address where region {@code i} starts. */
    public long start(int i) {
        return byGpa[i].guestPhysAddr();
    }

    /** The size of region {@code i} in bytes. */
    public long size(int i) {
        return byGpa[i].size();
    }

    /** The offset of {@code gpa} in region {@code i}'s mapping. */
    public long offset(int i, long gpa) {
        return gpa - byGpa[i].guestPhysAddr();
    }

    /** True when [gpa, gpa+len) lies inside one region. */
    public boolean contains(long gpa, long len) {
        return find(gpa, len) >= 0;
    }

    @Override
    public String toString() {
        return "GuestMemory" + Arrays.toString(byGpa);
    }
}
