// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.util.ActionableException;
import org.junit.jupiter.api.Test;

/** The one PCI address type: what host tooling and the VFIO driver both accept. */
class BdfTest {
    @Test
    void parsesTheFullAndTheShortForm() {
        assertEquals("0000:01:00.0", Bdf.parse("01:00.0").toString());
        assertEquals(new Bdf(0x10, 0xab, 0x1f, 7), Bdf.parse("0010:ab:1f.7"));
        assertEquals(new Bdf(0, 3, 0, 1), Bdf.parse(" 0000:03:00.1\n"));
    }

    @Test
    void vmdDomainsAboveFfffAreAddressesToo() {
        // Intel VMD puts the NVMe drives behind it in domains 10000 and up; sysfs and VFIO name them with 5 digits.
        Bdf vmd = Bdf.parse("10000:e1:00.0");
        assertEquals(0x10000, vmd.domain());
        assertEquals("10000:e1:00.0", vmd.toString());
        assertEquals(vmd, Bdf.parse(vmd.toString()));
    }

    @Test
    void rejectsWhatIsNotAnAddressWithTheRemedy() {
        for (String bad : new String[] {"01:20.0", "01:00.8", "100000:01:00.0", "../../etc", "0000:zz:00.0", ""}) {
            assertNull(Bdf.tryParse(bad), bad);
            ActionableException e = assertThrows(ActionableException.class, () -> Bdf.parse(bad));
            assertTrue(e.remedy().contains("0000:01:00.1"), e.getMessage());
        }
        assertThrows(IllegalArgumentException.class, () -> new Bdf(0x100000, 0, 0, 0));
    }

    @Test
    void ordersByDomainBusDeviceFunction() {
        assertTrue(Bdf.parse("0000:00:1f.7").compareTo(Bdf.parse("0000:01:00.0")) < 0);
        assertTrue(Bdf.parse("0001:00:00.0").compareTo(Bdf.parse("0000:ff:1f.7")) > 0);
    }
}
