// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import io.iovirt.testing.Require;
import java.io.IOException;
import java.lang.foreign.GroupLayout;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.StructLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * The VFIO ABI as iovirt encodes it, against the kernel's definitions: first against the values the C compiler gives
 * for Linux 6.1's include/uapi/linux/vfio.h (pinned here), then, where the machine has the header installed
 * (linux-libc-dev), against the header itself, parsed.
 */
class VfioAbiTest {
    private static final Path HEADER = Path.of("/usr/include/linux/vfio.h");

    @Test
    void ioctlNumbersAreTheKernels() {
        assertEquals(0x3b64L, VfioAbi.GET_API_VERSION);
        assertEquals(0x3b65L, VfioAbi.CHECK_EXTENSION);
        assertEquals(0x3b66L, VfioAbi.SET_IOMMU);
        assertEquals(0x3b67L, VfioAbi.GROUP_GET_STATUS);
        assertEquals(0x3b68L, VfioAbi.GROUP_SET_CONTAINER);
        assertEquals(0x3b69L, VfioAbi.GROUP_UNSET_CONTAINER);
        assertEquals(0x3b6aL, VfioAbi.GROUP_GET_DEVICE_FD);
        assertEquals(0x3b6bL, VfioAbi.DEVICE_GET_INFO);
        assertEquals(0x3b6cL, VfioAbi.DEVICE_GET_REGION_INFO);
        assertEquals(0x3b6dL, VfioAbi.DEVICE_GET_IRQ_INFO);
        assertEquals(0x3b6eL, VfioAbi.DEVICE_SET_IRQS);
        assertEquals(0x3b6fL, VfioAbi.DEVICE_RESET);
        assertEquals(0x3b70L, VfioAbi.IOMMU_GET_INFO);
        assertEquals(0x3b71L, VfioAbi.IOMMU_MAP_DMA);
        assertEquals(0x3b72L, VfioAbi.IOMMU_UNMAP_DMA);
    }

    @Test
    void structSizesAndOffsetsAreWhatGccComputesForTheHeader() {
        // sizeof/offsetof printed by gcc 12 for linux-libc-dev 6.1's <linux/vfio.h> on x86_64
        assertEquals(8, VfioAbi.GROUP_STATUS.byteSize());
        assertEquals(20, VfioAbi.DEVICE_INFO.byteSize()); // 6.1: no trailing pad (added later, making it 24)
        assertEquals(16, VfioAbi.DEVICE_INFO_CAP_OFFSET);
        assertEquals(32, VfioAbi.REGION_INFO.byteSize());
        assertEquals(12, VfioAbi.REGION_INFO_CAP_OFFSET);
        assertEquals(16, VfioAbi.REGION_INFO_SIZE);
        assertEquals(24, VfioAbi.REGION_INFO_OFFSET);
        assertEquals(8, VfioAbi.INFO_CAP_HEADER.byteSize());
        assertEquals(4, VfioAbi.CAP_NEXT);
        assertEquals(16, VfioAbi.CAP_SPARSE_MMAP.byteSize());
        assertEquals(8, VfioAbi.SPARSE_NR_AREAS);
        assertEquals(16, VfioAbi.SPARSE_MMAP_AREA.byteSize());
        assertEquals(16, VfioAbi.CAP_TYPE.byteSize());
        assertEquals(16, VfioAbi.IRQ_INFO.byteSize());
        assertEquals(20, VfioAbi.IRQ_SET.byteSize());
        assertEquals(24, VfioAbi.IOMMU_TYPE1_INFO.byteSize());
        assertEquals(8, VfioAbi.IOMMU_INFO_PGSIZES_OFF);
        assertEquals(16, VfioAbi.IOMMU_INFO_CAP_OFFSET);
        assertEquals(16, VfioAbi.CAP_IOVA_RANGE.byteSize());
        assertEquals(16, VfioAbi.IOVA_RANGE.byteSize());
        assertEquals(12, VfioAbi.CAP_DMA_AVAIL.byteSize());
        assertEquals(8, VfioAbi.DMA_AVAIL_AVAIL);
        assertEquals(32, VfioAbi.DMA_MAP.byteSize());
        assertEquals(8, VfioAbi.DMA_MAP_VADDR);
        assertEquals(16, VfioAbi.DMA_MAP_IOVA);
        assertEquals(24, VfioAbi.DMA_MAP_SIZE);
        assertEquals(24, VfioAbi.DMA_UNMAP.byteSize());
        assertEquals(8, VfioAbi.DMA_UNMAP_IOVA);
        assertEquals(16, VfioAbi.DMA_UNMAP_SIZE);
    }

    @Test
    void ioctlNumbersMatchTheInstalledHeader() throws IOException {
        Require.that(Files.isReadable(HEADER), HEADER + " is not installed (apt-get install linux-libc-dev)");
        String h = Files.readString(HEADER);
        Map<String, Long> ours = Map.ofEntries(
                Map.entry("VFIO_GET_API_VERSION", VfioAbi.GET_API_VERSION),
                Map.entry("VFIO_CHECK_EXTENSION", VfioAbi.CHECK_EXTENSION),
                Map.entry("VFIO_SET_IOMMU", VfioAbi.SET_IOMMU),
                Map.entry("VFIO_GROUP_GET_STATUS", VfioAbi.GROUP_GET_STATUS),
                Map.entry("VFIO_GROUP_SET_CONTAINER", VfioAbi.GROUP_SET_CONTAINER),
                Map.entry("VFIO_GROUP_UNSET_CONTAINER", VfioAbi.GROUP_UNSET_CONTAINER),
                Map.entry("VFIO_GROUP_GET_DEVICE_FD", VfioAbi.GROUP_GET_DEVICE_FD),
                Map.entry("VFIO_DEVICE_GET_INFO", VfioAbi.DEVICE_GET_INFO),
                Map.entry("VFIO_DEVICE_GET_REGION_INFO", VfioAbi.DEVICE_GET_REGION_INFO),
                Map.entry("VFIO_DEVICE_GET_IRQ_INFO", VfioAbi.DEVICE_GET_IRQ_INFO),
                Map.entry("VFIO_DEVICE_SET_IRQS", VfioAbi.DEVICE_SET_IRQS),
                Map.entry("VFIO_DEVICE_RESET", VfioAbi.DEVICE_RESET),
                Map.entry("VFIO_IOMMU_GET_INFO", VfioAbi.IOMMU_GET_INFO),
                Map.entry("VFIO_IOMMU_MAP_DMA", VfioAbi.IOMMU_MAP_DMA),
                Map.entry("VFIO_IOMMU_UNMAP_DMA", VfioAbi.IOMMU_UNMAP_DMA));
        for (var e : ours.entrySet()) {
            Matcher m = Pattern.compile(
                            "#define\\s+" + e.getKey() + "\\s+_IO\\(VFIO_TYPE,\\s*VFIO_BASE\\s*\\+\\s*(\\d+)\\)")
                    .matcher(h);
            assertTrue(m.find(), e.getKey() + " not found in " + HEADER);
            long n = 0x3b00 + 100 + Long.parseLong(m.group(1));
            assertEquals(n, (long) e.getValue(), e.getKey());
        }
    }

    @Test
    void structLayoutsMatchTheInstalledHeader() throws IOException {
        Require.that(Files.isReadable(HEADER), HEADER + " is not installed (apt-get install linux-libc-dev)");
        Map<String, CStruct> structs = CStruct.parseAll(Files.readString(HEADER));
        check(structs, "vfio_group_status", VfioAbi.GROUP_STATUS);
        check(structs, "vfio_device_info", VfioAbi.DEVICE_INFO);
        check(structs, "vfio_region_info", VfioAbi.REGION_INFO);
        check(structs, "vfio_info_cap_header", VfioAbi.INFO_CAP_HEADER);
        check(structs, "vfio_region_sparse_mmap_area", VfioAbi.SPARSE_MMAP_AREA);
        check(structs, "vfio_region_info_cap_sparse_mmap", VfioAbi.CAP_SPARSE_MMAP);
        check(structs, "vfio_region_info_cap_type", VfioAbi.CAP_TYPE);
        check(structs, "vfio_irq_info", VfioAbi.IRQ_INFO);
        check(structs, "vfio_irq_set", VfioAbi.IRQ_SET);
        check(structs, "vfio_iommu_type1_info", VfioAbi.IOMMU_TYPE1_INFO);
        check(structs, "vfio_iova_range", VfioAbi.IOVA_RANGE);
        check(structs, "vfio_iommu_type1_info_cap_iova_range", VfioAbi.CAP_IOVA_RANGE);
        check(structs, "vfio_iommu_type1_info_dma_avail", VfioAbi.CAP_DMA_AVAIL);
        check(structs, "vfio_iommu_type1_dma_map", VfioAbi.DMA_MAP);
        check(structs, "vfio_iommu_type1_dma_unmap", VfioAbi.DMA_UNMAP);
    }

    /** Every named field of ours sits at the header's offset, and the sizes agree. */
    private static void check(Map<String, CStruct> structs, String name, StructLayout ours) {
        CStruct c = structs.get(name);
        assertNotNull(c, "struct " + name + " not found in " + HEADER);
        for (MemoryLayout m : ours.memberLayouts()) {
            if (m.name().isEmpty()) {
                continue; // padding
            }
            Long off = c.offsets.get(m.name().get());
            assertNotNull(off, name + "." + m.name().get() + " is not a field of the header's struct");
            assertEquals(
                    (long) off,
                    ours.byteOffset(
                            MemoryLayout.PathElement.groupElement(m.name().get())),
                    name + "." + m.name().get());
            if (m instanceof GroupLayout g) {
                assertEquals(
                        structs.get(c.types.get(m.name().get())).size,
                        g.byteSize(),
                        name + "." + m.name().get());
            }
        }
        assertEquals(c.size, ours.byteSize(), "sizeof(struct " + name + ")");
        assertEquals(
                c.offsets.size(),
                ours.memberLayouts().stream().filter(l -> l.name().isPresent()).count() + c.flexibleArrays,
                "fields of struct " + name + " (flexible arrays excepted)");
    }

    /** A C struct laid out with natural alignment: enough of C for the fixed-width types VFIO's header uses. */
    static final class CStruct {
        final Map<String, Long> offsets = new LinkedHashMap<>();
        final Map<String, String> types = new LinkedHashMap<>();
        long size;
        long align = 1;
        int flexibleArrays;

        private static final Pattern STRUCT = Pattern.compile("struct\\s+(\\w+)\\s*\\{(.*?)\\};", Pattern.DOTALL);
        private static final Pattern FIELD = Pattern.compile(
                "^(?:(__u8|__u16|__u32|__u64|__s32|__aligned_u64)|struct\\s+(\\w+)|union)\\s*(\\w+)?\\s*(\\[(\\d*)\\])?\\s*;");

        static Map<String, CStruct> parseAll(String header) {
            String text = header.replaceAll("(?s)/\\*.*?\\*/", "").replaceAll("(?m)^#.*$", "");
            Map<String, CStruct> out = new LinkedHashMap<>();
            Matcher m = STRUCT.matcher(text);
            while (m.find()) {
                CStruct s = parse(m.group(2), out);
                if (s != null) {
                    out.put(m.group(1), s);
                }
            }
            return out;
        }

        /** Null for structs this small parser does not handle (unions, pointers). */
        private static CStruct parse(String body, Map<String, CStruct> known) {
            CStruct s = new CStruct();
            long off = 0;
            for (String raw : body.split(";")) {
                String line = raw.trim();
                if (line.isEmpty()) {
                    continue;
                }
                Matcher f = FIELD.matcher(line + ";");
                if (!f.find() || f.group(3) == null) {
                    return null;
                }
                long size;
                long align;
                if (f.group(1) != null) {
                    size = switch (f.group(1)) {
                        case "__u8" -> 1;
                        case "__u16" -> 2;
                        case "__u32", "__s32" -> 4;
                        default -> 8;
                    };
                    align = size;
                } else if (f.group(2) != null && known.containsKey(f.group(2))) {
                    size = known.get(f.group(2)).size;
                    align = known.get(f.group(2)).align;
                    s.types.put(f.group(3), f.group(2));
                } else {
                    return null;
                }
                off = (off + align - 1) / align * align;
                s.align = Math.max(s.align, align);
                if (f.group(4) != null) {
                    if (f.group(5).isEmpty()) {
                        s.flexibleArrays++;
                        s.offsets.put(f.group(3), off);
                        continue; // a flexible array adds alignment, not size
                    }
                    size *= Long.parseLong(f.group(5));
                }
                s.offsets.put(f.group(3), off);
                off += size;
            }
            s.size = (off + s.align - 1) / s.align * s.align;
            return s;
        }
    }

    @Test
    void theHeaderParserComputesCLayout() {
        Map<String, CStruct> s = CStruct.parseAll("""
                struct a { __u16 x; /* c */ __u64 y; __u8 z; };
                #define FOO 1
                struct b { struct a h; __u32 n; __u8 data[]; };
                """);
        assertEquals(24, s.get("a").size);
        assertEquals(8L, s.get("a").offsets.get("y"));
        assertEquals(16L, s.get("a").offsets.get("z"));
        assertEquals(32, s.get("b").size);
        assertEquals(28L, s.get("b").offsets.get("data"));
        assertFalse(s.containsKey("c"));
    }

    private static void assertTrue(boolean b, String message) {
        org.junit.jupiter.api.Assertions.assertTrue(b, message);
    }
}
