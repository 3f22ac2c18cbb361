// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import java.lang.foreign.MemorySegment;

/**
 * One IOMMU mapping of caller-owned memory: the device may access {@code [iova, iova+size)}, which is
 * {@code memory}. Closing it removes the mapping; the memory must outlive it (free it only after close).
 */
public final class DmaMapping implements AutoCloseable {
    private final IommuBackend iommu;
    private final MemorySegment memory;
    private final long iova;
    private boolean mapped;

    private DmaMapping(IommuBackend iommu, MemorySegment memory, long iova) {
        this.iommu = iommu;
        this.memory = memory;
        this.iova = iova;
    }

    /** Maps {@code memory} (page aligned, whole pages) at {@code iova}. */
    public static DmaMapping map(IommuBackend iommu, MemorySegment memory, long iova, boolean deviceWrites)
            throws VfioException {
        DmaMapping m = new DmaMapping(iommu, memory, iova);
        iommu.mapDma(memory, iova, deviceWrites);
        m.mapped = true;
        return m;
    }

    public MemorySegment memory() {
        return memory;
    }

    public long iova() {
        return iova;
    }

    public long size() {
        return memory.byteSize();
    }

    /** Unmaps; throws when the kernel refused, in which case the memory must not be freed. */
    public synchronized void unmap() throws VfioException {
        if (mapped) {
            iommu.unmapDma(iova, memory.byteSize());
            mapped = false;
        }
    }

    /**
     * Unmaps, reporting a refusal as IllegalStateException. (A refusal means the device may still reach the memory;
     * the owner then keeps it allocated.)
     */
    @Override
    public void close() {
        try {
            unmap();
        } catch (VfioException e) {
            throw new IllegalStateException(e.getMessage(), e);
        }
    }

    @Override
    public String toString() {
        return String.format("DMA mapping iova 0x%x size %d", iova, memory.byteSize());
    }
}
