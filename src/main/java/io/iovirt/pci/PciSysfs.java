// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import io.iovirt.util.ActionableException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;

/**
 * The few facts about one PCI function that opening it with VFIO needs — its IOMMU group, the group's other
 * members and the driver each is bound to — read through {@link SysfsTree}, like {@link PciInventory} reads all of
 * them. The root is a parameter so tests can use fixture trees.
 */
public final class PciSysfs {
    public static final PciSysfs SYSTEM = new PciSysfs(Path.of("/sys"));

    private final SysfsTree sys;

    public PciSysfs(Path root) {
        this(new SysfsTree(root, "--sysfs-root"));
    }

    public PciSysfs(SysfsTree sys) {
        this.sys = sys;
    }

    public SysfsTree tree() {
        return sys;
    }

    /** The function's directory (bus/pci/devices/BDF). */
    public Path deviceDir(Bdf a) {
        return sys.path(PciDevice.dir(a));
    }

    public boolean exists(Bdf a) {
        return sys.isDirectory(PciDevice.dir(a));
    }

    /** The device's IOMMU group number; explains what is missing when there is none. */
    public int iommuGroup(Bdf a) {
        if (!exists(a)) {
            throw new ActionableException(
                    "no PCI device " + a + " (" + deviceDir(a) + " does not exist)",
                    "'lspci -D' or 'iovirt host devices' lists the addresses this machine has");
        }
        String link = PciDevice.dir(a) + "/iommu_group";
        String name = sys.linkName(link)
                .orElseThrow(() -> new ActionableException(
                        "PCI device " + a
                                + " has no IOMMU group, so VFIO cannot protect DMA from it: the IOMMU is off or absent",
                        "boot with intel_iommu=on (Intel) or amd_iommu=on (AMD) and enable VT-d/AMD-Vi in the firmware "
                                + "(a QEMU guest needs -device intel-iommu)"));
        if (name.isEmpty() || name.length() > 9 || !name.chars().allMatch(Character::isDigit)) {
            throw sys.malformed(link, "a link to kernel/iommu_groups/<number>", name);
        }
        return Integer.parseInt(name);
    }

    /** Every PCI function in IOMMU group {@code group}, in address order (non-PCI members are left out). */
    public List<Bdf> groupMembers(int group) {
        List<Bdf> out = new ArrayList<>();
        for (String name : sys.list("kernel/iommu_groups/" + group + "/devices")) {
            Bdf b = Bdf.tryParse(name);
            if (b != null) {
                out.add(b);
            }
        }
        out.sort(null);
        return out;
    }

    /** The name of the driver bound to {@code a}, if any. */
    public Optional<String> driver(Bdf a) {
        return sys.linkName(PciDevice.dir(a) + "/driver");
    }

    /** "vvvv:dddd" from the vendor and device files. */
    public String ids(Bdf a) {
        String d = PciDevice.dir(a) + "/";
        return String.format("%04x:%04x", sys.readHex(d + "vendor", 4), sys.readHex(d + "device", 4));
    }

    /** Number of IOMMU groups the kernel created (0 when the IOMMU is off). */
    public int iommuGroupCount() {
        return sys.list("kernel/iommu_groups").size();
    }
}
