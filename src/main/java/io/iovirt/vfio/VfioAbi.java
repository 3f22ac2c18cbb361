// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static java.lang.foreign.MemoryLayout.PathElement.groupElement;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import io.iovirt.linux.Ioctl;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.StructLayout;

/**
 * The kernel's VFIO user ABI ({@code include/uapi/linux/vfio.h}, Linux 6.1): ioctl request numbers, flags, and the
 * structs as MemoryLayouts. Field offsets are derived from the layouts, and tests pin them to the values the C
 * compiler gives for the kernel header.
 *
 * <p>Every VFIO request is {@code _IO(';', 100 + n)}: the header documents a direction and size for each, but the
 * encoded number carries neither, and the kernel validates {@code argsz} instead.
 */
final class VfioAbi {
    private VfioAbi() {}

    static final int TYPE = ';';
    static final int BASE = 100;

    // ---- request numbers ----------------------------------------------------------------------------------------
    static final long GET_API_VERSION = Ioctl.io(TYPE, BASE);
    static final long CHECK_EXTENSION = Ioctl.io(TYPE, BASE + 1);
    static final long SET_IOMMU = Ioctl.io(TYPE, BASE + 2);
    static final long GROUP_GET_STATUS = Ioctl.io(TYPE, BASE + 3);
    static final long GROUP_SET_CONTAINER = Ioctl.io(TYPE, BASE + 4);
    static final long GROUP_UNSET_CONTAINER = Ioctl.io(TYPE, BASE + 5);
    static final long GROUP_GET_DEVICE_FD = Ioctl.io(TYPE, BASE + 6);
    static final long DEVICE_GET_INFO = Ioctl.io(TYPE, BASE + 7);
    static final long DEVICE_GET_REGION_INFO = Ioctl.io(TYPE, BASE + 8);
    static final long DEVICE_GET_IRQ_INFO = Ioctl.io(TYPE, BASE + 9);
    static final long DEVICE_SET_IRQS = Ioctl.io(TYPE, BASE + 10);
    static final long DEVICE_RESET = Ioctl.io(TYPE, BASE + 11);
    static final long IOMMU_GET_INFO = Ioctl.io(TYPE, BASE + 12);
    static final long IOMMU_MAP_DMA = Ioctl.io(TYPE, BASE + 13);
    static final long IOMMU_UNMAP_DMA = Ioctl.io(TYPE, BASE + 14);

    static final int API_VERSION = 0;

    // ---- extensions (VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU arguments) -------------------------------------------
    static final int TYPE1_IOMMU = 1;
    static final int SPAPR_TCE_IOMMU = 2;
    static final int TYPE1V2_IOMMU = 3;
    static final int DMA_CC_IOMMU = 4;
    static final int EEH = 5;
    static final int TYPE1_NESTING_IOMMU = 6;
    static final int SPAPR_TCE_V2_IOMMU = 7;
    static final int NOIOMMU_IOMMU = 8;
    static final int UNMAP_ALL = 9;
    static final int UPDATE_VADDR = 10;

    // ---- flags --------------------------------------------------------------------------------------------------
    static final int GROUP_FLAGS_VIABLE = 1;
    static final int GROUP_FLAGS_CONTAINER_SET = 1 << 1;

    static final int DEVICE_FLAGS_RESET = 1;
    static final int DEVICE_FLAGS_PCI = 1 << 1;
    static final int DEVICE_FLAGS_PLATFORM = 1 << 2;
    static final int DEVICE_FLAGS_CAPS = 1 << 7;

    static final int REGION_INFO_FLAG_READ = 1;
    static final int REGION_INFO_FLAG_WRITE = 1 << 1;
    static final int REGION_INFO_FLAG_MMAP = 1 << 2;
    static final int REGION_INFO_FLAG_CAPS = 1 << 3;

    static final int REGION_INFO_CAP_SPARSE_MMAP = 1;
    static final int REGION_INFO_CAP_TYPE = 2;
    static final int REGION_INFO_CAP_MSIX_MAPPABLE = 3;

    static final int IRQ_INFO_EVENTFD = 1;
    static final int IRQ_INFO_MASKABLE = 1 << 1;
    static final int IRQ_INFO_AUTOMASKED = 1 << 2;
    static final int IRQ_INFO_NORESIZE = 1 << 3;

    static final int IRQ_SET_DATA_NONE = 1;
    static final int IRQ_SET_DATA_BOOL = 1 << 1;
    static final int IRQ_SET_DATA_EVENTFD = 1 << 2;
    static final int IRQ_SET_ACTION_MASK = 1 << 3;
    static final int IRQ_SET_ACTION_UNMASK = 1 << 4;
    static final int IRQ_SET_ACTION_TRIGGER = 1 << 5;

    static final int IOMMU_INFO_PGSIZES = 1;
    static final int IOMMU_INFO_CAPS = 1 << 1;
    static final int IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
    static final int IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
    static final int IOMMU_TYPE1_INFO_DMA_AVAIL = 3;

    static final int DMA_MAP_FLAG_READ = 1;
    static final int DMA_MAP_FLAG_WRITE = 1 << 1;

    // vfio-pci's fixed region and IRQ indexes
    static final int PCI_BAR0_REGION_INDEX = 0;
    static final int PCI_ROM_REGION_INDEX = 6;
    static final int PCI_CONFIG_REGION_INDEX = 7;
    static final int PCI_VGA_REGION_INDEX = 8;
    static final int PCI_NUM_REGIONS = 9;
    static final int PCI_INTX_IRQ_INDEX = 0;
    static final int PCI_MSI_IRQ_INDEX = 1;
    static final int PCI_MSIX_IRQ_INDEX = 2;
    static final int PCI_ERR_IRQ_INDEX = 3;
    static final int PCI_REQ_IRQ_INDEX = 4;

    // ---- structs --------------------------------------------------------------------------------------------------
    static final StructLayout GROUP_STATUS = MemoryLayout.structLayout(
                    JAVA_INT.withName("argsz"), JAVA_INT.withName("flags"))
            .withName("vfio_group_status");

    /** 20 bytes in 6.1; later kernels append a 4-byte pad. The kernel accepts any argsz of at least 20. */
    static final StructLayout DEVICE_INFO = MemoryLayout.structLayout(
                    JAVA_INT.withName("argsz"),
                    JAVA_INT.withName("flags"),
                    JAVA_INT.withName("num_regions"),
                    JAVA_INT.withName("num_irqs"),
                    JAVA_INT.withName("cap_offset"))
            .withName("vfio_device_info");

    static final StructLayout REGION_INFO = MemoryLayout.structLayout(
                    JAVA_INT.withName("argsz"),
                    JAVA_INT.withName("flags"),
                    JAVA_INT.withName("index"),
                    JAVA_INT.withName("cap_offset"),
                    JAVA_LONG.withName("size"),
                    JAVA_LONG.withName("offset"))
            .withName("vfio_region_info");

    static final StructLayout INFO_CAP_HEADER = MemoryLayout.structLayout(
                    JAVA_SHORT.withName("id"), JAVA_SHORT.withName("version"), JAVA_INT.withName("next"))
            .withName("vfio_info_cap_header");

    static final StructLayout SPARSE_MMAP_AREA = MemoryLayout.structLayout(
                    JAVA_LONG.withName("offset"), JAVA_LONG.withName("size"))
            .withName("vfio_region_sparse_mmap_area");

    /** Followed by {@code nr_areas} {@link #SPARSE_MMAP_AREA}s. */
    static final StructLayout CAP_SPARSE_MMAP = MemoryLayout.structLayout(
                    INFO_CAP_HEADER.withName("header"), JAVA_INT.withName("nr_areas"), JAVA_INT.withName("reserved"))
            .withName("vfio_region_info_cap_sparse_mmap");

    static final StructLayout CAP_TYPE = MemoryLayout.structLayout(
                    INFO_CAP_HEADER.withName("header"), JAVA_INT.withName("type"), JAVA_INT.withName("subtype"))
            .withName("vfio_region_info_cap_type");

    static final StructLayout IRQ_INFO = MemoryLayout.structLayout(
                    JAVA_INT.withName("argsz"),
                    JAVA_INT.withName("flags"),
                    JAVA_INT.withName("index"),
                    JAVA_INT.withName("count"))
            .withName("vfio_irq_info");

    /** Followed by {@code count} elements of data (s32 eventfds, or u8 bools). */
    static final StructLayout IRQ_SET = MemoryLayout.structLayout(
                    JAVA_INT.withName("argsz"),
                    JAVA_INT.withName("flags"),
                    JAVA_INT.withName("index"),
                    JAVA_INT.withName("start"),
                    JAVA_INT.withName("count"))
            .withName("vfio_irq_set");

    static final StructLayout IOMMU_TYPE1_INFO = MemoryLayout.structLayout(
                    JAVA_INT.withName("argsz"),
                    JAVA_INT.withName("flags"),
                    JAVA_LONG.withName("iova_pgsizes"),
                    JAVA_INT.withName("cap_offset"),
                    MemoryLayout.paddingLayout(4))
            .withName("vfio_iommu_type1_info");

    static final StructLayout IOVA_RANGE = MemoryLayout.structLayout(
                    JAVA_LONG.withName("start"), JAVA_LONG.withName("end"))
            .withName("vfio_iova_range");

    /** Followed by {@code nr_iovas} {@link #IOVA_RANGE}s. */
    static final StructLayout CAP_IOVA_RANGE = MemoryLayout.structLayout(
                    INFO_CAP_HEADER.withName("header"), JAVA_INT.withName("nr_iovas"), JAVA_INT.withName("reserved"))
            .withName("vfio_iommu_type1_info_cap_iova_range");

    static final StructLayout CAP_DMA_AVAIL = MemoryLayout.structLayout(
                    INFO_CAP_HEADER.withName("header"), JAVA_INT.withName("avail"))
            .withName("vfio_iommu_type1_info_dma_avail");

    static final StructLayout DMA_MAP = MemoryLayout.structLayout(
                    JAVA_INT.withName("argsz"),
                    JAVA_INT.withName("flags"),
                    JAVA_LONG.withName("vaddr"),
                    JAVA_LONG.withName("iova"),
                    JAVA_LONG.withName("size"))
            .withName("vfio_iommu_type1_dma_map");

    static final StructLayout DMA_UNMAP = MemoryLayout.structLayout(
                    JAVA_INT.withName("argsz"),
                    JAVA_INT.withName("flags"),
                    JAVA_LONG.withName("iova"),
                    JAVA_LONG.withName("size"))
            .withName("vfio_iommu_type1_dma_unmap");

    /** Byte offset of {@code field} in {@code layout} (nested fields by path: "header", "next"). */
    static long offset(StructLayout layout, String... path) {
        MemoryLayout.PathElement[] p = new MemoryLayout.PathElement[path.length];
        for (int i = 0; i < path.length; i++) {
            p[i] = groupElement(path[i]);
        }
        return layout.byteOffset(p);
    }

    // Offsets used by the accessors (argsz and flags are at 0 and 4 in every struct).
    static final long ARGSZ = 0;
    static final long FLAGS = 4;
    static final long DEVICE_INFO_NUM_REGIONS = offset(DEVICE_INFO, "num_regions");
    static final long DEVICE_INFO_NUM_IRQS = offset(DEVICE_INFO, "num_irqs");
    static final long DEVICE_INFO_CAP_OFFSET = offset(DEVICE_INFO, "cap_offset");
    static final long REGION_INFO_INDEX = offset(REGION_INFO, "index");
    static final long REGION_INFO_CAP_OFFSET = offset(REGION_INFO, "cap_offset");
    static final long REGION_INFO_SIZE = offset(REGION_INFO, "size");
    static final long REGION_INFO_OFFSET = offset(REGION_INFO, "offset");
    static final long CAP_ID = offset(INFO_CAP_HEADER, "id");
    static final long CAP_VERSION = offset(INFO_CAP_HEADER, "version");
    static final long CAP_NEXT = offset(INFO_CAP_HEADER, "next");
    static final long SPARSE_NR_AREAS = offset(CAP_SPARSE_MMAP, "nr_areas");
    static final long CAP_TYPE_TYPE = offset(CAP_TYPE, "type");
    static final long CAP_TYPE_SUBTYPE = offset(CAP_TYPE, "subtype");
    static final long IRQ_INFO_INDEX = offset(IRQ_INFO, "index");
    static final long IRQ_INFO_COUNT = offset(IRQ_INFO, "count");
    static final long IRQ_SET_INDEX = offset(IRQ_SET, "index");
    static final long IRQ_SET_START = offset(IRQ_SET, "start");
    static final long IRQ_SET_COUNT = offset(IRQ_SET, "count");
    static final long IOMMU_INFO_PGSIZES_OFF = offset(IOMMU_TYPE1_INFO, "iova_pgsizes");
    static final long IOMMU_INFO_CAP_OFFSET = offset(IOMMU_TYPE1_INFO, "cap_offset");
    static final long IOVA_NR = offset(CAP_IOVA_RANGE, "nr_iovas");
    static final long DMA_AVAIL_AVAIL = offset(CAP_DMA_AVAIL, "avail");
    static final long DMA_MAP_VADDR = offset(DMA_MAP, "vaddr");
    static final long DMA_MAP_IOVA = offset(DMA_MAP, "iova");
    static final long DMA_MAP_SIZE = offset(DMA_MAP, "size");
    static final long DMA_UNMAP_IOVA = offset(DMA_UNMAP, "iova");
    static final long DMA_UNMAP_SIZE = offset(DMA_UNMAP, "size");
}
