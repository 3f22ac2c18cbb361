// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.sriov;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.HostConfigException;
import io.iovirt.nvme.NvmeAdmin;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
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
        // Asked for fewer than a VF can go online with: that is what is wrong, not the number of VFs.
        HostConfigException one =
                assertThrows(HostConfigException.class, () -> NvmeVirtualization.perVf("queue", 1, 100, 2, 0, 2, pf));
        assertTrue(
                one.getMessage().startsWith("1 queue resource(s) per VF are too few: a VF needs at least 2"),
                one.getMessage());
        assertTrue(one.remedy().startsWith("ask for 2 or more"), one.remedy());
        // No stated maximum (VQFRSM 0): NR and NVQ are 16 bits, so a share of 70000 would have been sent as 4464.
        assertEquals(0xffff, NvmeVirtualization.perVf("queue", 0, 140_000, 2, 0, 2, pf));
        HostConfigException wide = assertThrows(
                HostConfigException.class, () -> NvmeVirtualization.perVf("queue", 70_000, 140_000, 2, 0, 2, pf));
        assertTrue(wide.getMessage().contains("exceed the 16-bit field of the command"), wide.getMessage());
        assertTrue(wide.remedy().contains("at most 65535"), wide.remedy());
    }

    /**
     * Resources left by an earlier configuration (another tool's, or the controller's defaults): VF 1 holds no queues
     * and VF 2 all four of the pool, and each is to get two. Replayed against the controller's own accounting
     * (NVMe 2.0 §5.22: an assignment needs NR minus what the secondary holds, from what is free at that moment),
     * every command of the plan must succeed, and each VF ends online with its share.
     */
    @Test
    void resourcesAreGivenBackBeforeTheyAreTakenAgain() {
        List<NvmeAdmin.SecondaryController> targets = List.of(
                new NvmeAdmin.SecondaryController(0x42, 0x41, false, 1, 0, 0),
                new NvmeAdmin.SecondaryController(0x43, 0x41, false, 2, 4, 2));
        Map<Integer, int[]> held = new HashMap<>(); // scid -> {vq, vi, online}
        for (NvmeAdmin.SecondaryController sc : targets) {
            held.put(sc.scid(), new int[] {sc.nvq(), sc.nvi(), 0});
        }
        int[] pool = {4, 2}; // VQ and VI flexible resources for secondaries, all of them held now
        for (NvmeVirtualization.Step step : NvmeVirtualization.plan(targets, 2, 1)) {
            int[] h = held.get(step.scid());
            if (step.act() == NvmeAdmin.ACT_SECONDARY_ASSIGN) {
                int free = pool[step.rt()]
                        - held.values().stream().mapToInt(x -> x[step.rt()]).sum();
                assertTrue(
                        step.nr() - h[step.rt()] <= free,
                        step + " needs " + (step.nr() - h[step.rt()]) + " with " + free + " free: Invalid Number of"
                                + " Controller Resources");
                h[step.rt()] = step.nr();
            } else {
                assertEquals(NvmeAdmin.ACT_SECONDARY_ONLINE, step.act());
                assertTrue(h[0] >= 2 && h[1] >= 1, "online without resources: Invalid Secondary Controller State");
                h[2] = 1;
            }
        }
        for (int[] h : held.values()) {
            assertEquals(List.of(2, 1, 1), List.of(h[0], h[1], h[2]));
        }
    }
}
