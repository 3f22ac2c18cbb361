// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.sriov;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.HostConfigException;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import java.util.List;
import org.junit.jupiter.api.Test;

/** How NVMe SR-IOV provisioning shares a PF's flexible resources between its VFs. */
class NvmeVirtualizationTest {
    @Test
    void sharesAreEvenAndBounded() {
        PciDevice pf = new PciDevice(
                Bdf.parse("01:00.0"),
                0x1b36,
                0x10,
                -1,
                -1,
                0x010802,
                2,
                "nvme",
                null,
                3,
                null,
                null,
                true,
                List.of(),
                false);
        assertEquals(2, NvmeVirtualization.perVf("queue", 0, 4, 2, 0, 2, pf));
        assertEquals(3, NvmeVirtualization.perVf("queue", 0, 7, 2, 0, 2, pf));
        assertEquals(2, NvmeVirtualization.perVf("queue", 0, 7, 2, 2, 2, pf), "capped by VQFRSM");
        HostConfigException few =
                assertThrows(HostConfigException.class, () -> NvmeVirtualization.perVf("queue", 0, 3, 2, 0, 2, pf));
        assertTrue(few.getMessage().contains("only 3 flexible queue resources are free"), few.getMessage());
        HostConfigException asked =
                assertThrows(HostConfigException.class, () -> NvmeVirtualization.perVf("interrupt", 2, 2, 2, 0, 1, pf));
        assertTrue(asked.getMessage().contains("2 VFs x 2 interrupt resources exceed the 2 free"), asked.getMessage());
    }
}
