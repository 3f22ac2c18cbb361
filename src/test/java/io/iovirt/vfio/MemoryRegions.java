// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;

/** {@link MmioRegion}s over ordinary memory, for tests of register access without a device. */
public final class MemoryRegions {
    private MemoryRegions() {}

    /**
     * A BAR of {@code size} bytes, all of it "mapped" onto {@code memory}. An access outside it fails as it does on a
     * device's BAR, before any descriptor is used (there is none). Not to be closed: {@code arena} owns the memory.
     */
    public static MmioRegion overMemory(Arena arena, long size) {
        MemorySegment memory = arena.allocate(size, 4096);
        RegionInfo bar = new RegionInfo(
                0, "BAR0", VfioAbi.REGION_INFO_FLAG_READ | VfioAbi.REGION_INFO_FLAG_WRITE, size, 0, List.of());
        return new MmioRegion(null, bar, arena, List.of(memory), List.of(0L));
    }
}
