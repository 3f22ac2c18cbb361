// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * Region and IOMMU info buffers laid out byte for byte as the kernel fills them (vfio.h: info struct, then the
 * capability chain with offsets from the start of the struct), parsed back.
 */
class VfioInfoParsingTest {
    private static void header(MemorySegment s, long at, int id, int version, long next) {
        s.set(JAVA_SHORT, at, (short) id);
        s.set(JAVA_SHORT, at + 2, (short) version);
        s.set(JAVA_INT, at + 4, (int) next);
    }

    /** A BAR0 the way vfio-pci reports an MSI-X BAR without IRQ remapping: sparse areas around the table, plus a type. */
    private static MemorySegment regionWithCaps(Arena a) {
        MemorySegment s = a.allocate(32 + 48 + 16, 8);
        s.set(JAVA_INT, 0, (int) s.byteSize());
        s.set(
                JAVA_INT,
                4,
                VfioAbi.REGION_INFO_FLAG_READ
                        | VfioAbi.REGION_INFO_FLAG_WRITE
                        | VfioAbi.REGION_INFO_FLAG_MMAP
                        | VfioAbi.REGION_INFO_FLAG_CAPS);
        s.set(JAVA_INT, 8, 0);
        s.set(JAVA_INT, 12, 32); // cap_offset
        s.set(JAVA_LONG, 16, 0x4000);
        s.set(JAVA_LONG, 24, 0x10000000000L);
        header(s, 32, VfioAbi.REGION_INFO_CAP_SPARSE_MMAP, 1, 80);
        s.set(JAVA_INT, 40, 2);
        s.set(JAVA_LONG, 48, 0);
        s.set(JAVA_LONG, 56, 0x2000);
        s.set(JAVA_LONG, 64, 0x3000);
        s.set(JAVA_LONG, 72, 0x1000);
        header(s, 80, VfioAbi.REGION_INFO_CAP_TYPE, 1, 0);
        s.set(JAVA_INT, 88, 0x80008086);
        s.set(JAVA_INT, 92, 3);
        return s;
    }

    @Test
    void regionInfoWithSparseMmapAndTypeCapabilities() throws Exception {
        try (Arena a = Arena.ofConfined()) {
            RegionInfo r = VfioDevice.parseRegionInfo(regionWithCaps(a), 0, "BAR0");
            assertEquals(0x4000, r.size());
            assertEquals(0x10000000000L, r.offset());
            assertTrue(r.readable() && r.writable() && r.mmappable());
            assertEquals(2, r.caps().size());
            RegionInfo.SparseMmap sparse =
                    assertInstanceOf(RegionInfo.SparseMmap.class, r.caps().get(0));
            assertEquals(List.of(new RegionInfo.Area(0, 0x2000), new RegionInfo.Area(0x3000, 0x1000)), sparse.areas());
            assertEquals(sparse.areas(), r.mmapAreas());
            assertEquals(new RegionInfo.Type(0x80008086, 3), r.caps().get(1));
            assertEquals("rw mmap", r.flagsText());
            assertEquals("sparse-mmap[0x0+8K,0x3000+4K] type 0x80008086/3", r.capsText());
        }
    }

    @Test
    void aRegionWithoutCapsMapsWhole() throws Exception {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment s = a.allocate(VfioAbi.REGION_INFO);
            s.set(JAVA_INT, 4, VfioAbi.REGION_INFO_FLAG_READ | VfioAbi.REGION_INFO_FLAG_MMAP);
            s.set(JAVA_LONG, 16, 0x1000);
            RegionInfo r = VfioDevice.parseRegionInfo(s, 2, "BAR2");
            assertEquals(List.of(new RegionInfo.Area(0, 0x1000)), r.mmapAreas());
            assertEquals("r mmap", r.flagsText());
            assertEquals("-", r.capsText());
        }
    }

    @Test
    void aCapabilityChainThatLoopsOrLeavesTheBufferIsRefused() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment loop = regionWithCaps(a);
            header(loop, 80, VfioAbi.REGION_INFO_CAP_TYPE, 1, 32); // type → sparse → type → ...
            VfioException e = assertThrows(VfioException.class, () -> VfioDevice.parseRegionInfo(loop, 0, "BAR0"));
            assertTrue(e.getMessage().contains("loop"), e.getMessage());

            MemorySegment outside = regionWithCaps(a);
            header(outside, 80, VfioAbi.REGION_INFO_CAP_TYPE, 1, 4096);
            e = assertThrows(VfioException.class, () -> VfioDevice.parseRegionInfo(outside, 0, "BAR0"));
            assertTrue(e.getMessage().contains("outside"), e.getMessage());

            MemorySegment intoFixedPart = regionWithCaps(a);
            intoFixedPart.set(JAVA_INT, 12, 8);
            assertThrows(VfioException.class, () -> VfioDevice.parseRegionInfo(intoFixedPart, 0, "BAR0"));

            MemorySegment tooManyAreas = regionWithCaps(a);
            tooManyAreas.set(JAVA_INT, 40, 1000);
            assertThrows(VfioException.class, () -> VfioDevice.parseRegionInfo(tooManyAreas, 0, "BAR0"));

            MemorySegment areaPastRegion = regionWithCaps(a);
            areaPastRegion.set(JAVA_LONG, 64, 0x3800);
            e = assertThrows(VfioException.class, () -> VfioDevice.parseRegionInfo(areaPastRegion, 0, "BAR0"));
            assertTrue(e.getMessage().contains("sparse mmap area"), e.getMessage());
        }
    }

    @Test
    void iommuInfoWithIovaRangesAndDmaAvail() throws Exception {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment s = a.allocate(24 + 16 + 32 + 12 + 4, 8);
            s.set(JAVA_INT, 0, (int) s.byteSize());
            int flags = VfioAbi.IOMMU_INFO_PGSIZES | VfioAbi.IOMMU_INFO_CAPS;
            s.set(JAVA_INT, 4, flags);
            s.set(JAVA_LONG, 8, 0x40201000L); // 4K 2M 1G
            s.set(JAVA_INT, 16, 24);
            header(s, 24, VfioAbi.IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 72);
            s.set(JAVA_INT, 32, 2);
            s.set(JAVA_LONG, 40, 0);
            s.set(JAVA_LONG, 48, 0xfedfffffL);
            s.set(JAVA_LONG, 56, 0xfef00000L);
            s.set(JAVA_LONG, 64, 0x7fffffffffL);
            header(s, 72, VfioAbi.IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 0);
            s.set(JAVA_INT, 80, 65535);
            IommuInfo info = VfioContainer.parseIommuInfo(s, flags);
            assertEquals("4K 2M 1G", info.pageSizesText());
            assertEquals(4096, info.minPageSize());
            assertEquals(
                    List.of(
                            new IommuInfo.IovaRange(0, 0xfedfffffL),
                            new IommuInfo.IovaRange(0xfef00000L, 0x7fffffffffL)),
                    info.iovaRanges());
            assertEquals(65535, info.dmaMappingsAvailable().getAsInt());
            assertTrue(info.iovaUsable(0x100000, 0x100000));
            assertFalse(info.iovaUsable(0xfee00000L, 0x1000), "the MSI window is not usable");
            assertFalse(info.iovaUsable(0xfed00000L, 0x200000), "a range straddling the hole is not usable");
            assertFalse(info.iovaUsable(0x7ffffff000L, 0x2000), "past the address width");
            assertTrue(info.iovaUsable(0x7ffffff000L, 0x1000));
        }
    }

    @Test
    void iovaRangeArithmeticDoesNotWrap() {
        IommuInfo.IovaRange all = new IommuInfo.IovaRange(0, -1L);
        assertTrue(all.contains(-4096L, 4096));
        assertFalse(all.contains(-4096L, 8192), "wraps past 2^64");
        assertFalse(all.contains(0, 0));
    }
}
