// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A block of page-aligned, zeroed memory mapped for DMA at a chosen IOVA, carved into buffers (queues, data pages)
 * by a bump allocator. Everything a driver hands to its device comes from here, so every address the device is told
 * lies inside one known mapping, and closing the arena revokes the device's access before the memory is freed.
 *
 * <p>The memory is anonymous (never swapped while pinned by the IOMMU) and excluded from fork (MADV_DONTFORK), so a
 * child process cannot make the pinned pages copy-on-write behind the device's back.
 */
public final class DmaArena implements AutoCloseable {
    private final Arena arena;
    private final MemorySegment memory;
    private final DmaMapping mapping;
    private long next;
    private boolean closed;

    private DmaArena(Arena arena, MemorySegment memory, DmaMapping mapping) {
        this.arena = arena;
        this.memory = memory;
        this.mapping = mapping;
    }

    /**
     * Allocates {@code size} bytes (rounded up to the IOMMU page size) and maps them read/write for the device at
     * {@code iova}.
     */
    public static DmaArena create(IommuBackend iommu, long iova, long size) throws VfioException {
        IommuInfo info = iommu.info();
        long page = Math.max(info.minPageSize(), Mmap.pageSize());
        if (size <= 0 || size > (1L << 40)) {
            throw new IllegalArgumentException("DMA arena size out of range: " + size);
        }
        long rounded = (size + page - 1) & -page;
        if ((iova & (page - 1)) != 0) {
            throw new IllegalArgumentException(
                    String.format("IOVA 0x%x is not aligned to the IOMMU page size %d", iova, page));
        }
        if (!info.iovaUsable(iova, rounded)) {
            throw new VfioException(String.format(
                    "IOVA range 0x%x+0x%x lies outside the IOMMU's usable ranges %s",
                    iova, rounded, info.iovaRanges()));
        }
        Arena arena = Arena.ofShared();
        try {
            MemorySegment mem = Mmap.anonymous(rounded, arena);
            Mmap.advise(mem, Mmap.MADV_DONTFORK);
            return new DmaArena(arena, mem, DmaMapping.map(iommu, mem, iova, true));
        } catch (LinuxException e) {
            arena.close();
            throw new VfioException("cannot allocate " + rounded + " bytes for a DMA arena: " + e.getMessage(), e);
        } catch (VfioException | RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    public MemorySegment memory() {
        return memory;
    }

    public long iova() {
        return mapping.iova();
    }

    public long size() {
        return memory.byteSize();
    }

    /** Bytes not yet handed out. */
    public synchronized long remaining() {
        return memory.byteSize() - next;
    }

    /** A zeroed buffer of {@code size} bytes aligned to {@code align} (a power of two) in IOVA and virtual space. */
    public synchronized DmaBuffer allocate(long size, long align) throws VfioException {
        if (closed) {
            throw new IllegalStateException("DMA arena is closed");
        }
        if (size <= 0 || align <= 0 || Long.bitCount(align) != 1 || align > Mmap.pageSize() * 512) {
            throw new IllegalArgumentException("bad DMA allocation: size " + size + ", alignment " + align);
        }
        long start = (next + align - 1) & -align;
        if (start > memory.byteSize() || size > memory.byteSize() - start) {
            throw new VfioException(String.format(
                    "DMA arena of %d bytes is exhausted (%d used, %d more asked)", memory.byteSize(), next, size));
        }
        next = start + size;
        MemorySegment seg = memory.asSlice(start, size);
        seg.fill((byte) 0);
        return new DmaBuffer(seg, mapping.iova() + start);
    }

    /** The IOVA of {@code segment}, which must lie inside this arena. */
    public long iovaOf(MemorySegment segment) {
        long off = segment.address() - memory.address();
        if (off < 0 || off > memory.byteSize() || segment.byteSize() > memory.byteSize() - off) {
            throw new IllegalArgumentException("segment is not inside this DMA arena");
        }
        return mapping.iova() + off;
    }

    /** Whether {@code [iova, iova+length)} lies inside the arena's mapping. */
    public boolean containsIova(long iova, long length) {
        long off = iova - mapping.iova();
        return length >= 0 && off >= 0 && off <= memory.byteSize() && length <= memory.byteSize() - off;
    }

    /**
     * Revokes the device's access, then frees the memory. If the kernel refuses the unmap, the memory is deliberately
     * left allocated (the device might still write to it) and the failure is thrown.
     */
    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        closed = true;
        mapping.close(); // throws on refusal, before the memory is freed
        arena.close();
    }

    @Override
    public String toString() {
        return String.format("DMA arena iova 0x%x size %d", mapping.iova(), memory.byteSize());
    }
}
