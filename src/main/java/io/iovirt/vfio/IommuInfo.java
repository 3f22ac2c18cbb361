// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import io.iovirt.util.ByteSizes;
import java.util.List;
import java.util.OptionalInt;

/**
 * What the IOMMU backend reports: the page sizes it can map (a bitmap: bit n set means 2^n bytes), the IOVA ranges a
 * mapping may use (empty when the kernel does not say), and how many more DMA mappings it accepts (the type1
 * {@code dma_entry_limit}, when reported).
 */
public record IommuInfo(long pageSizes, List<IovaRange> iovaRanges, OptionalInt dmaMappingsAvailable) {
    public IommuInfo {
        iovaRanges = List.copyOf(iovaRanges);
    }

    /** An inclusive range of usable I/O virtual addresses. */
    public record IovaRange(long start, long end) {
        public boolean contains(long iova, long size) {
            long last = iova + size - 1;
            return size > 0
                    && Long.compareUnsigned(iova, start) >= 0
                    && Long.compareUnsigned(last, end) <= 0
                    && Long.compareUnsigned(last, iova) >= 0;
        }

        @Override
        public String toString() {
            return String.format("0x%x-0x%x", start, end);
        }
    }

    /** The smallest page size the IOMMU maps; mappings must be aligned to it. */
    public long minPageSize() {
        return pageSizes == 0 ? 4096 : Long.lowestOneBit(pageSizes);
    }

    /** Whether {@code [iova, iova+size)} lies inside one usable range (true when the ranges are unknown). */
    public boolean iovaUsable(long iova, long size) {
        return iovaRanges.isEmpty() || iovaRanges.stream().anyMatch(r -> r.contains(iova, size));
    }

    /** Page sizes in human units: "4K 2M 1G". */
    public String pageSizesText() {
        StringBuilder sb = new StringBuilder();
        for (int bit = 0; bit < 64; bit++) {
            if ((pageSizes & (1L << bit)) != 0) {
                if (!sb.isEmpty()) {
                    sb.append(' ');
                }
                sb.append(ByteSizes.binary(1L << bit));
            }
        }
        return sb.isEmpty() ? "none reported" : sb.toString();
    }
}
