// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.memory.GuestMemoryFault;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.testing.Accesses;
import java.lang.foreign.Arena;
import java.util.List;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.Tuple.Tuple2;
import org.junit.jupiter.api.Test;

class FrontendAddressIndexTest {
    private static MemoryRegion region(long gpa, long size, long uva) {
        return new MemoryRegion(gpa, size, uva, 0, Arena.ofAuto().allocate(size), null);
    }

    @Test
    void translatesFrontendAddressesInsideOneRegionOnly() throws Exception {
        FrontendAddressIndex index = FrontendAddressIndex.of(
                List.of(region(0x10000, 0x2000, 0x7f00_0001_0000L), region(0x0, 0x1000, 0x7f00_0000_0000L)));
        assertEquals(0x10008, index.toGuestPhys(0x7f00_0001_0008L, 8));
        assertEquals(0x0, index.toGuestPhys(0x7f00_0000_0000L, 0x1000));
        assertThrows(GuestMemoryFault.class, () -> index.toGuestPhys(0x7f00_0000_1000L, 1)); // the hole
        assertThrows(GuestMemoryFault.class, () -> index.toGuestPhys(0x7f00_0000_0ff8L, 0x10)); // runs past the end
        assertThrows(GuestMemoryFault.class, () -> index.toGuestPhys(0x7f00_0001_0000L, -1));
        assertThrows(GuestMemoryFault.class, () -> index.toGuestPhys(-8, 4));
        assertThrows(GuestMemoryFault.class, () -> FrontendAddressIndex.EMPTY.toGuestPhys(0x7f00_0000_0000L, 1));
    }

    @Test
    void regionsOverlappingInFrontendAddressSpaceAreRefused() {
        IllegalArgumentException e = assertThrows(
                IllegalArgumentException.class,
                () -> FrontendAddressIndex.of(List.of(region(0x0, 0x1000, 0x10000), region(0x4000, 0x1000, 0x10800))));
        assertTrue(e.getMessage().contains("overlap in frontend address space"), e.getMessage());
    }

    /** Through {@link Accesses}: ranges around the region and at its edges, so that translations happen too. */
    @Property(tries = 500)
    void translationNeverEscapesTheRegion(@ForAll("accesses") Tuple2<Long, Long> access) {
        FrontendAddressIndex index = FrontendAddressIndex.of(List.of(region(0x4000, 0x4000, 0x100000)));
        long uva = access.get1();
        long len = access.get2();
        boolean translated;
        try {
            long gpa = index.toGuestPhys(uva, len);
            assertTrue(uva >= 0x100000 && len >= 0 && uva + len <= 0x104000);
            assertEquals(0x4000 + (uva - 0x100000), gpa);
            translated = true;
        } catch (GuestMemoryFault expected) {
            assertFalse(uva >= 0x100000 && len >= 0 && uva < 0x104000 && len <= 0x104000 - uva);
            translated = false;
        }
        Accesses.record(translated);
    }

    @Provide
    Arbitrary<Tuple2<Long, Long>> accesses() {
        return Accesses.around(0x100000, 0x104000);
    }
}
