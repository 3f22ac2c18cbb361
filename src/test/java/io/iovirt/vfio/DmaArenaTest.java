// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.OptionalInt;
import org.junit.jupiter.api.Test;

/**
 * The arena's own logic — rounding, alignment, IOVA bookkeeping, unmap-before-free — against a backend that records
 * the calls (this machine has no IOMMU; the guest tests run the same code against the kernel's type1 IOMMU).
 */
class DmaArenaTest {
    /** Records map/unmap calls; asserts the memory is still alive when it is unmapped. */
    static final class RecordingIommu implements IommuBackend {
        final List<String> calls = new ArrayList<>();
        MemorySegment mapped;
        boolean refuseUnmap;

        @Override
        public void mapDma(MemorySegment memory, long iova, boolean deviceWrites) {
            assertEquals(0, memory.address() % 4096);
            assertEquals(0, memory.byteSize() % 4096);
            mapped = memory;
            calls.add(String.format("map 0x%x+0x%x %s", iova, memory.byteSize(), deviceWrites ? "rw" : "r"));
        }

        @Override
        public void unmapDma(long iova, long size) throws VfioException {
            assertTrue(mapped.scope().isAlive(), "memory freed before its DMA mapping was removed");
            mapped.get(java.lang.foreign.ValueLayout.JAVA_BYTE, 0); // still accessible
            if (refuseUnmap) {
                throw new VfioException("refused");
            }
            calls.add(String.format("unmap 0x%x+0x%x", iova, size));
        }

        @Override
        public IommuInfo info() {
            return new IommuInfo(0x40201000L, List.of(new IommuInfo.IovaRange(0, 0xfedfffffL)), OptionalInt.empty());
        }

        @Override
        public String describe() {
            return "recording";
        }
    }

    @Test
    void buffersAreAlignedZeroedAndCarryTheirIova() throws Exception {
        RecordingIommu iommu = new RecordingIommu();
        try (DmaArena a = DmaArena.create(iommu, 0x100000, 10000)) {
            assertEquals(12288, a.size());
            assertEquals(List.of("map 0x100000+0x3000 rw"), iommu.calls);
            DmaBuffer b1 = a.allocate(100, 64);
            DmaBuffer b2 = a.allocate(4096, 4096);
            assertEquals(0x100000, b1.iova());
            assertEquals(0x101000, b2.iova());
            assertEquals(0, b2.segment().address() % 4096);
            assertEquals(b2.iova(), a.iovaOf(b2.segment()));
            assertEquals(b2.iova() + 8, a.iovaOf(b2.segment().asSlice(8, 8)));
            assertTrue(a.containsIova(0x102fff, 1));
            assertFalse(a.containsIova(0x102fff, 2));
            assertFalse(a.containsIova(0xfffff, 1));
            b2.segment().fill((byte) 7);
            assertThrows(VfioException.class, () -> a.allocate(8192, 4096), "exhausted");
            assertThrows(IllegalArgumentException.class, () -> a.iovaOf(MemorySegment.ofArray(new byte[8])));
            assertEquals(new DmaBuffer(b2.segment().asSlice(16, 32), b2.iova() + 16), b2.slice(16, 32));
        }
        assertEquals("unmap 0x100000+0x3000", iommu.calls.get(1));
    }

    @Test
    void anIovaOutsideTheUsableRangesOrUnalignedIsRefused() {
        RecordingIommu iommu = new RecordingIommu();
        assertThrows(VfioException.class, () -> DmaArena.create(iommu, 0xfee00000L, 4096));
        assertThrows(IllegalArgumentException.class, () -> DmaArena.create(iommu, 0x100800, 4096));
        assertTrue(iommu.calls.isEmpty());
    }

    @Test
    void whenTheKernelRefusesTheUnmapTheMemoryStaysAllocated() throws Exception {
        RecordingIommu iommu = new RecordingIommu();
        DmaArena a = DmaArena.create(iommu, 0x200000, 4096);
        iommu.refuseUnmap = true;
        assertThrows(IllegalStateException.class, a::close);
        assertTrue(a.memory().scope().isAlive(), "the device may still reach it: it must not be freed");
    }
}
