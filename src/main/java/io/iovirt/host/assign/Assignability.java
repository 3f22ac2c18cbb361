// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.host.HostUsage;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciInventory;
import java.util.ArrayList;
import java.util.List;

/**
 * Whether a PCI function can be handed to a guest now, and if not, why — the answer {@code host devices} prints and
 * the checks {@code host bind} enforces.
 *
 * @param vm the owning VM when {@code status} is ASSIGNED
 * @param reasons why not (NO), or what is left to do (AFTER_BIND)
 */
public record Assignability(Status status, String vm, List<String> reasons) {
    public enum Status {
        /** Bound to vfio-pci, group viable, owned by no VM. */
        READY,
        /** Owned by a VM in the registry. */
        ASSIGNED,
        /** Nothing prevents it, but it must be bound to vfio-pci first. */
        AFTER_BIND,
        /** Something prevents it (see reasons). */
        NO
    }

    public Assignability {
        reasons = List.copyOf(reasons);
    }

    public static Assignability of(
            PciInventory inv, HostUsage usage, AssignmentRegistry.Assignment owner, PciDevice dev) {
        List<String> blockers = blockers(inv, usage, dev);
        if (owner != null) {
            return new Assignability(Status.ASSIGNED, owner.vm(), blockers);
        }
        if (!blockers.isEmpty()) {
            return new Assignability(Status.NO, null, blockers);
        }
        if (PciDevice.isVfioDriver(dev.driver())) {
            return new Assignability(Status.READY, null, List.of());
        }
        String now = dev.driver() == null ? "unbound" : "bound to " + dev.driver();
        return new Assignability(Status.AFTER_BIND, null, List.of(now + "; run: iovirt host bind " + dev.bdf()));
    }

    /** Everything that stops {@code dev} from going to a guest. */
    public static List<String> blockers(PciInventory inv, HostUsage usage, PciDevice dev) {
        List<String> reasons = new ArrayList<>(platformBlockers(dev));
        reasons.addAll(bootDisplayBlockers(inv, dev));
        if (dev.iommuGroup() < 0) {
            reasons.add("it has no IOMMU group: the IOMMU is off (see iovirt host check)");
        } else {
            reasons.addAll(groupBlockers(inv, dev));
        }
        for (String use : usage.uses(dev.bdf())) {
            reasons.add("the host uses it: it " + use);
        }
        return reasons;
    }

    /**
     * Why {@code dev} is part of the platform rather than a device to hand over: a PCI-to-PCI or CardBus bridge
     * (vfio-pci takes endpoint functions only), the host bridge, or the ISA/LPC bridge. The one rule for both
     * {@code host bind} and {@code host assign}.
     */
    public static List<String> platformBlockers(PciDevice dev) {
        int baseSub = dev.classCode() >>> 8;
        if (dev.isBridge()) {
            return List.of("it is a PCI bridge: vfio-pci takes endpoint functions only");
        } else if (baseSub == 0x0600) {
            return List.of("it is the host bridge: part of the platform");
        } else if (baseSub == 0x0601) {
            return List.of("it is the ISA/LPC bridge: the platform needs it");
        }
        return List.of();
    }

    /**
     * Why {@code dev} is the host's console: it is the boot display (boot_vga 1), or another function of the boot
     * display's slot in the same IOMMU group (its HDMI audio), which goes to a guest only with the display's group.
     * The boot display often has no PCI driver bound (efifb, simplefb and vesafb drive it through the firmware's
     * framebuffer), so the group check alone would let it go.
     */
    public static List<String> bootDisplayBlockers(PciInventory inv, PciDevice dev) {
        List<String> reasons = new ArrayList<>();
        String remedy = "make another GPU the primary display in the firmware setup, or pass --force if the host can "
                + "do without its console";
        if (dev.bootVga()) {
            reasons.add("it is the boot display (boot_vga is 1): the host's console runs on it (" + remedy + ")");
            return reasons;
        }
        if (dev.iommuGroup() < 0) {
            return reasons;
        }
        Bdf b = dev.bdf();
        for (String peer : inv.groups().peers(dev.iommuGroup(), b)) {
            Bdf pb = Bdf.tryParse(peer);
            PciDevice p = pb == null ? null : inv.device(pb);
            if (p != null
                    && p.bootVga()
                    && pb.domain() == b.domain()
                    && pb.bus() == b.bus()
                    && pb.device() == b.device()) {
                reasons.add("it shares its slot and IOMMU group " + dev.iommuGroup() + " with the boot display " + pb
                        + " (boot_vga is 1), on which the host's console runs (" + remedy + ")");
            }
        }
        return reasons;
    }

    /**
     * Members of the device's IOMMU group that make the group non-viable for VFIO: every other member must be
     * unbound, bound to vfio-pci or pci-stub, or a bridge (pcieport manages no DMA).
     */
    public static List<String> groupBlockers(PciInventory inv, PciDevice dev) {
        List<String> reasons = new ArrayList<>();
        if (dev.iommuGroup() < 0) {
            return reasons;
        }
        for (String peer : inv.groups().peers(dev.iommuGroup(), dev.bdf())) {
            Bdf b = Bdf.tryParse(peer);
            PciDevice p = b == null ? null : inv.device(b);
            if (p == null) {
                reasons.add("group " + dev.iommuGroup() + " also holds " + peer
                        + ", which is not a PCI device iovirt can manage");
                continue;
            }
            if (!peerAllowed(p)) {
                reasons.add("group " + dev.iommuGroup() + " also holds " + peer + ", bound to " + p.driver());
            }
        }
        return reasons;
    }

    private static boolean peerAllowed(PciDevice p) {
        return PciDevice.keepsGroupViable(p.driver()) || p.isBridge();
    }
}
