// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * 64-bit register accesses to the parts of a BAR reached through the device descriptor: two 32-bit accesses, low half
 * first. The descriptor here is a register file in memory that records each access; QEMU's NVMe BAR0, the real device
 * the guest tests drive, is mmap'able whole and never takes this path.
 */
class MmioRegionTest {
    /** A descriptor over {@code registers} that notes "read/write OFFSET WIDTH [VALUE]" for each access. */
    private static MmioRegion.Descriptor recording(MemorySegment registers, List<String> accesses) {
        return new MmioRegion.Descriptor() {
            @Override
            public long read(long offset, int width) {
                accesses.add(String.format("read 0x%x %d", offset, width));
                return width == 4
                        ? Integer.toUnsignedLong(registers.get(JAVA_INT, offset))
                        : registers.get(JAVA_LONG, offset);
            }

            @Override
            public void write(long offset, int width, long value) {
                accesses.add(String.format("write 0x%x %d 0x%x", offset, width, value));
                if (width == 4) {
                    registers.set(JAVA_INT, offset, (int) value);
                } else {
                    registers.set(JAVA_LONG, offset, value);
                }
            }
        };
    }

    private static RegionInfo bar(long size) {
        return new RegionInfo(
                0, "BAR0", VfioAbi.REGION_INFO_FLAG_READ | VfioAbi.REGION_INFO_FLAG_WRITE, size, 0, List.of());
    }

    @Test
    void aSixtyFourBitAccessThroughTheDescriptorIsTwoThirtyTwoBitAccessesLowHalfFirst() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment registers = a.allocate(0x4000, 8);
            List<String> accesses = new ArrayList<>();
            // nothing mapped: every register goes through the descriptor
            MmioRegion r = new MmioRegion(null, bar(0x4000), a, List.of(), List.of(), recording(registers, accesses));

            r.write64(0x28, 0x0000_0001_2345_6000L); // NVMe ASQ
            assertEquals(List.of("write 0x28 4 0x23456000", "write 0x2c 4 0x1"), accesses);
            assertEquals(0x0000_0001_2345_6000L, registers.get(JAVA_LONG, 0x28));

            accesses.clear();
            registers.set(JAVA_LONG, 0, 0x8040_0020_0f01_07ffL); // NVMe CAP, both halves with the top bit set
            assertEquals(0x8040_0020_0f01_07ffL, r.read64(0));
            assertEquals(List.of("read 0x0 4", "read 0x4 4"), accesses);

            accesses.clear();
            r.write32(0x14, 0x460001);
            assertEquals(0x460001, r.read32(0x14));
            assertEquals(List.of("write 0x14 4 0x460001", "read 0x14 4"), accesses);
        }
    }

    @Test
    void aSixtyFourBitAccessToAMappedPartIsOneAccessWithoutTheDescriptor() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment registers = a.allocate(0x4000, 8);
            MemorySegment mapped = a.allocate(0x1000, 4096);
            List<String> accesses = new ArrayList<>();
            // the first page mapped, the rest reached through the descriptor
            MmioRegion r =
                    new MmioRegion(null, bar(0x4000), a, List.of(mapped), List.of(0L), recording(registers, accesses));
            r.write64(0x30, 0x7000_0000_0000_1000L);
            assertEquals(0x7000_0000_0000_1000L, mapped.get(JAVA_LONG, 0x30));
            assertEquals(0x7000_0000_0000_1000L, r.read64(0x30));
            assertEquals(List.of(), accesses);

            r.write64(0x2000, -2L);
            assertEquals(-2L, r.read64(0x2000));
            assertEquals(
                    List.of("write 0x2000 4 0xfffffffe", "write 0x2004 4 0xffffffff", "read 0x2000 4", "read 0x2004 4"),
                    accesses);
        }
    }
}
