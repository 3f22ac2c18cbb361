// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import java.lang.foreign.MemorySegment;

/**
 * Where DMA mappings go: the IOMMU context that translates the device's I/O virtual addresses (IOVAs) to this
 * process's memory. Linux 6.1 offers one such context, the VFIO type1 container ({@link VfioContainer}); newer
 * kernels add iommufd ({@code /dev/iommu} with {@code IOMMU_IOAS_MAP}), which would be a second implementation of
 * this interface — {@link DmaArena} and the drivers above it only speak to this interface.
 */
public interface IommuBackend {
    /**
     * Maps {@code memory} (page aligned, a whole number of pages) at {@code iova}. The kernel pins the pages; they
     * must stay allocated until {@link #unmapDma} returns.
     *
     * @param deviceWrites whether the device may write (else the mapping is device-read-only)
     */
    void mapDma(MemorySegment memory, long iova, boolean deviceWrites) throws VfioException;

    /** Removes the mapping of exactly {@code [iova, iova+size)}; after it returns the device can no longer reach it. */
    void unmapDma(long iova, long size) throws VfioException;

    /** Page sizes, usable IOVA ranges and mapping limits, as the kernel reports them. */
    IommuInfo info() throws VfioException;

    /** A short name for messages: "VFIO type1v2". */
    String describe();
}
