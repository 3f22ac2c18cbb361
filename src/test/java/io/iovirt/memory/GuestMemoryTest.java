// SPDX-License-Identifier: Apache-2.0
package io.iovirt.memory;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Accesses;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.Tuple.Tuple2;
import org.junit.jupiter.api.Test;

class GuestMemoryTest {
    private static MemoryRegion region(long gpa, long size, long uva) {
        return new MemoryRegion(gpa, size, uva, 0, Arena.ofAuto().allocate(size), null);
    }

    @Test
    void translatesInsideRegionsAndRejectsEverythingElse() throws Exception {
        GuestMemory mem = GuestMemory.of(
                List.of(region(0x0, 0x1000, 0x7f00_0000_0000L), region(0x10000, 0x2000, 0x7f00_0001_0000L)));
        MemorySegment s = mem.translate(0x10ff0, 0x10);
        s.set(ValueLayout.JAVA_BYTE, 0, (byte) 7);
        assertEquals(7, mem.translate(0x10ff0, 1).get(ValueLayout.JAVA_BYTE, 0));
        assertThrows(GuestMemoryFault.class, () -> mem.translate(0x0ff8, 0x10)); // runs past the first region
        assertThrows(GuestMemoryFault.class, () -> mem.translate(0x1000, 1)); // the hole
        assertThrows(GuestMemoryFault.class, () -> mem.translate(0x11000, 0x1001)); // past the end of the second
        assertThrows(GuestMemoryFault.class, () -> mem.translate(0x10000, -1));
        assertThrows(GuestMemoryFault.class, () -> mem.translate(-8, 4)); // top of the address space
        assertThrows(GuestMemoryFault.class, () -> mem.translate(0x10000, Long.MAX_VALUE));
        assertTrue(mem.contains(0x12000 - 8, 8));
        assertFalse(mem.contains(0x12000 - 8, 9));
    }

    @Test
    void overlappingOrWrappingRegionsAreRefused() {
        assertThrows(
                IllegalArgumentException.class,
                () -> GuestMemory.of(List.of(region(0x0, 0x2000, 0x10000), region(0x1000, 0x1000, 0x40000))));
        assertThrows(
                IllegalArgumentException.class,
                () -> new MemoryRegion(-0x800L, 0x1000, 0, 0, Arena.ofAuto().allocate(0x1000), null));
    }

    @Test
    void addAndRemoveRegionsBuildNewSnapshots() throws Exception {
        GuestMemory a = GuestMemory.of(List.of(region(0x0, 0x1000, 0x10000)));
        GuestMemory b = a.with(region(0x2000, 0x1000, 0x20000));
        assertEquals(1, a.regionCount());
        assertEquals(2, b.regionCount());
        b.translate(0x2000, 0x1000);
        GuestMemory c = b.without(0x0, 0x1000, 0x10000);
        assertThrows(GuestMemoryFault.class, () -> c.translate(0x0, 1));
        assertThrows(IllegalArgumentException.class, () -> c.without(0x0, 0x1000, 0x10000));
    }

    /** Through {@link Accesses}: ranges around the region and at its edges, so that translations happen too. */
    @Property(tries = 500)
    void translationNeverEscapesTheRegion(@ForAll("accesses") Tuple2<Long, Long> access) {
        GuestMemory mem = GuestMemory.of(List.of(region(0x4000, 0x4000, 0x100000)));
        long gpa = access.get1();
        long len = access.get2();
        boolean translated;
        try {
            MemorySegment s = mem.translate(gpa, len);
            assertTrue(Long.compareUnsigned(gpa, 0x4000) >= 0 && gpa + len <= 0x8000 && len >= 0);
            assertEquals(len, s.byteSize());
            if (len > 0) { // the segment starts at gpa: a byte written through it shows at gpa's offset in the region
                s.set(ValueLayout.JAVA_BYTE, 0, (byte) 0x5a);
                assertEquals((byte) 0x5a, mem.translate(0x4000, 0x4000).get(ValueLayout.JAVA_BYTE, gpa - 0x4000));
            }
            translated = true;
        } catch (GuestMemoryFault expected) {
            assertFalse(gpa >= 0x4000 && len >= 0 && gpa < 0x8000 && len <= 0x8000 - gpa);
            translated = false;
        }
        Accesses.record(translated);
    }

    @Provide
    Arbitrary<Tuple2<Long, Long>> accesses() {
        return Accesses.around(0x4000, 0x8000);
    }
}
