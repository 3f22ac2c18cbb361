// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import io.iovirt.linux.Mmap;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryFault;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;

/**
 * One connection's guest memory as the frontend describes it (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG): checks and
 * maps each region, counts how many of the frontend's vhost devices added it, caps the total mapped, keeps the
 * frontend-VA → GPA index ring addresses are translated through, and publishes each new table to the devices'
 * {@link GuestMemoryHolder}. Control thread only.
 *
 * <p>Reclamation is the holder's: a region that leaves is unmapped by whichever thread drops the last reference to
 * a snapshot containing it (a queue pins the snapshot it works from), so nothing here waits for the queues.
 */
final class MemoryTable implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.vhostuser");

    /** GET_MAX_MEM_SLOTS: as many regions as {@link GuestMemory} holds (libvhost-user and rust-vmm offer the same). */
    static final int MAX_SLOTS = GuestMemory.MAX_REGIONS;

    /**
     * Most guest memory one connection may have mapped: the host's RAM. A frontend cannot make a guest larger than
     * that useful, and sparse memory files with MAP_NORESERVE would otherwise let it reserve address space and page
     * tables without bound.
     */
    static final long MAX_MAPPED_BYTES = hostMemory();

    private final String name;
    private final PeerFile.Quota checks;
    private final Consumer<GuestMemory> onChange;
    private final GuestMemoryHolder holder = new GuestMemoryHolder();
    private FrontendAddressIndex addresses = FrontendAddressIndex.EMPTY;

    /**
     * How many times each region (GPA, size, UVA) was added. QEMU's vhost-user-net with several queue pairs runs one
     * vhost device per pair over the same connection, and each sends ADD_MEM_REG (and later REM_MEM_REG) for the same
     * regions: a region is mapped once and unmapped when the last of them removes it, as libvhost-user does.
     */
    private final Map<List<Long>, Integer> regionRefs = new HashMap<>();

    /**
     * @param name     the connection, for log lines
     * @param checks   the device's share of descriptor checks that may wait at once ({@link PeerFile})
     * @param onChange told of every table installed (the device's {@link VhostUserBackend#memoryChanged})
     */
    MemoryTable(String name, PeerFile.Quota checks, Consumer<GuestMemory> onChange) {
        this.name = name;
        this.checks = checks;
        this.onChange = onChange;
    }

    /** What devices translate through (and mark dirty pages through). */
    GuestMemoryHolder holder() {
        return holder;
    }

    GuestMemory current() {
        return holder.get();
    }

    /**
     * The guest physical address of the frontend virtual range [uva, uva+len) in the current table.
     *
     * @throws GuestMemoryFault when the range is not inside one region
     */
    long toGuestPhys(long uva, long len) throws GuestMemoryFault {
        return addresses.toGuestPhys(uva, len);
    }

    private static long hostMemory() {
        long total = io.iovirt.linux.Mmap.physicalMemory();
        return total > 0 ? total : 1L << 40;
    }

    private static void checkMappedTotal(String what, long total) throws ProtocolException {
        if (total < 0 || total > MAX_MAPPED_BYTES) {
            throw new ProtocolException(what + ": "
                    + (total < 0 ? "overflowing sizes" : Long.toUnsignedString(total) + " bytes of guest memory")
                    + " exceed the " + MAX_MAPPED_BYTES + " bytes this host has");
        }
    }

    private static List<Long> regionKey(long gpa, long size, long uva) {
        return List.of(gpa, size, uva);
    }

    /** SET_MEM_TABLE: replaces the whole table. */
    void set(Message m) throws ProtocolException {
        MemorySegment p = m.payload();
        int n = Payloads.MemoryTable.count(p);
        long total = 0;
        for (int i = 0; i < n; i++) {
            long size = Payloads.Region.size(Payloads.MemoryTable.region(p, i));
            total = size < 0 || total + size < 0 ? -1 : total + size;
            checkMappedTotal("SET_MEM_TABLE", total);
        }
        List<MemoryRegion> mapped = new ArrayList<>(n);
        GuestMemory next;
        FrontendAddressIndex index;
        try {
            for (int i = 0; i < n; i++) {
                mapped.add(mapRegion(Payloads.MemoryTable.region(p, i), m.takeFd(i), "SET_MEM_TABLE region " + i));
            }
            index = FrontendAddressIndex.of(mapped);
            next = GuestMemory.of(mapped);
        } catch (ProtocolException | IllegalArgumentException e) {
            for (MemoryRegion r : mapped) {
                release(r);
            }
            throw e instanceof ProtocolException pe ? pe : new ProtocolException("SET_MEM_TABLE: " + e.getMessage());
        }
        install(next, index);
        regionRefs.clear();
        for (MemoryRegion r : mapped) {
            regionRefs.put(regionKey(r.guestPhysAddr(), r.size(), r.userAddr()), 1);
        }
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": memory table " + next);
    }

    /** ADD_MEM_REG: one more region, or one more reference to a region already mapped. */
    void add(Message m) throws ProtocolException {
        MemorySegment region = Payloads.SingleRegion.region(m.payload());
        List<Long> key = regionKey(
                Payloads.Region.guestPhysAddr(region), Payloads.Region.size(region), Payloads.Region.userAddr(region));
        GuestMemory current = holder.get();
        MemoryRegion same = current.find(key.get(0), key.get(1), key.get(2));
        if (same != null && same.mmapOffset() == Payloads.Region.mmapOffset(region)) {
            m.takeFd(0).close(); // already mapped for another of the frontend's vhost devices
            regionRefs.merge(key, 1, Integer::sum);
            return;
        }
        long size = Payloads.Region.size(region);
        long total = current.totalBytes() + size;
        checkMappedTotal("ADD_MEM_REG", size < 0 || total < 0 ? -1 : total);
        MemoryRegion r = mapRegion(region, m.takeFd(0), "ADD_MEM_REG");
        GuestMemory next;
        FrontendAddressIndex index;
        try {
            // the frontend-address check first: a snapshot, once built, holds a reference to every region in it
            List<MemoryRegion> all = new ArrayList<>(current.regions());
            all.add(r);
            index = FrontendAddressIndex.of(all);
            next = current.with(r);
        } catch (IllegalArgumentException e) {
            release(r);
            throw new ProtocolException("ADD_MEM_REG: " + e.getMessage());
        }
        install(next, index);
        regionRefs.put(key, 1);
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": added " + r);
    }

    /** REM_MEM_REG: drops one reference; the last one takes the region out of the table. */
    void remove(MemorySegment region) throws ProtocolException {
        long gpa = Payloads.Region.guestPhysAddr(region);
        long size = Payloads.Region.size(region);
        long uva = Payloads.Region.userAddr(region);
        GuestMemory current = holder.get();
        if (current.find(gpa, size, uva) == null) {
            throw new ProtocolException(String.format(
                    "REM_MEM_REG of a region that is not mapped: GPA 0x%x size 0x%x UVA 0x%x", gpa, size, uva));
        }
        List<Long> key = regionKey(gpa, size, uva);
        int refs = regionRefs.getOrDefault(key, 1);
        if (refs > 1) {
            regionRefs.put(key, refs - 1); // another vhost device of the frontend still uses it
            return;
        }
        regionRefs.remove(key);
        GuestMemory next = current.without(gpa, size, uva);
        install(next, FrontendAddressIndex.of(next.regions()));
    }

    /**
     * Installs {@code next} and drops our reference to the snapshot it replaces: regions that left are unmapped as
     * soon as no queue pins that snapshot any more (queues let go before they sleep), without waiting here.
     */
    private void install(GuestMemory next, FrontendAddressIndex index) {
        addresses = index;
        holder.swap(next);
        onChange.accept(next);
    }

    /**
     * Checks one region and maps it. The descriptor is consumed (closed once mapped: the mapping keeps the file).
     * A region must lie inside its file: mapping past the end would turn guest accesses into SIGBUS.
     */
    private MemoryRegion mapRegion(MemorySegment region, Fd fd, String what) throws ProtocolException {
        try (fd) {
            long gpa = Payloads.Region.guestPhysAddr(region);
            long size = Payloads.Region.size(region);
            long uva = Payloads.Region.userAddr(region);
            long offset = Payloads.Region.mmapOffset(region);
            String desc = String.format("%s (GPA 0x%x size 0x%x UVA 0x%x offset 0x%x)", what, gpa, size, uva, offset);
            if (size <= 0) {
                throw new ProtocolException(desc + ": size must be positive");
            }
            if (Long.compareUnsigned(gpa + size - 1, gpa) < 0) {
                throw new ProtocolException(desc + ": guest physical range wraps around");
            }
            if (Long.compareUnsigned(uva + size - 1, uva) < 0) {
                throw new ProtocolException(desc + ": frontend address range wraps around");
            }
            if (offset < 0 || offset > Long.MAX_VALUE - size) {
                throw new ProtocolException(desc + ": file offset overflows");
            }
            // A file on a disk file system could be truncated by anyone with access to it, and its pages written back
            // to disk; one on FUSE would stall the queue threads on its daemon (PeerFile).
            PeerFile.requireSharedMemory(
                    checks,
                    fd,
                    desc,
                    offset,
                    size,
                    "guest memory must be a memfd, or a file on tmpfs or hugetlbfs (QEMU: memory-backend-memfd"
                            + " or memory-backend-file with mem-path on /dev/shm or /dev/hugepages)");
            Mmap.Mapping mapping = PeerFile.mapShared(fd, desc, offset, size, Mmap.MAP_NORESERVE);
            return new MemoryRegion(gpa, size, uva, offset, mapping.segment(), () -> unmap(mapping));
        }
    }

    /**
     * Unmaps a region whose last snapshot was released, on whichever thread released it. No queue pins it, so no
     * access is in progress; should the JDK still refuse (a native call holding the segment), the mapping is left
     * in place and reported rather than retried.
     */
    private void unmap(Mmap.Mapping mapping) {
        try {
            mapping.close();
        } catch (IllegalStateException inUse) {
            LOG.log(
                    System.Logger.Level.ERROR,
                    name + ": a guest memory mapping is still in use after its region was"
                            + " released; leaving it mapped");
        }
    }

    /** Unmaps a region that never made it into a snapshot. */
    private void release(MemoryRegion r) {
        try {
            r.owner().close();
        } catch (Exception e) {
            LOG.log(System.Logger.Level.WARNING, name + ": unmapping " + r + " failed: " + e);
        }
    }

    /** The connection ended: an empty table; regions are unmapped as the queues (all stopped) let go. */
    @Override
    public void close() {
        regionRefs.clear();
        install(GuestMemory.empty(), FrontendAddressIndex.EMPTY);
    }
}
