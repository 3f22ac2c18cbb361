// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import java.util.ArrayList;
import java.util.List;

/**
 * One PCI function as sysfs describes it (bus/pci/devices/BDF).
 *
 * @param subsystemVendor -1 when the kernel does not expose it
 * @param revision -1 when absent
 * @param driver the bound driver's name, or null when unbound
 * @param driverOverride the driver_override value, or null when none is set
 * @param iommuGroup the IOMMU group number, or -1 when the device has none (IOMMU off)
 * @param sriov SR-IOV capability of a physical function, or null
 * @param physfn the physical function of a virtual function, or null
 * @param resettable whether the kernel offers a function reset (the "reset" attribute)
 * @param nvmeControllers NVMe controller character devices (nvme0) of an NVMe function
 * @param bootVga whether the kernel marks it the boot display (boot_vga 1): the firmware's primary display, on which
 *     the host's console runs
 */
public record PciDevice(
        Bdf bdf,
        int vendorId,
        int deviceId,
        int subsystemVendor,
        int subsystemDevice,
        int classCode,
        int revision,
        String driver,
        String driverOverride,
        int iommuGroup,
        SriovInfo sriov,
        Bdf physfn,
        boolean resettable,
        List<String> nvmeControllers,
        boolean bootVga) {
    public static final int CLASS_NVME = 0x010802;

    public PciDevice {
        nvmeControllers = List.copyOf(nvmeControllers);
    }

    /**
     * SR-IOV state of a physical function.
     *
     * @param autoprobe sriov_drivers_autoprobe, or null when absent
     * @param vfs the virtual functions that exist now, in VF index order
     */
    public record SriovInfo(int totalVfs, int numVfs, Boolean autoprobe, List<Bdf> vfs) {
        public SriovInfo {
            vfs = List.copyOf(vfs);
        }
    }

    /** sysfs directory of a function, relative to the sysfs root. */
    public static String dir(Bdf bdf) {
        return "bus/pci/devices/" + bdf;
    }

    /** Reads one function; every attribute is checked (a malformed one is reported, never guessed). */
    public static PciDevice read(SysfsTree sys, Bdf bdf) {
        String d = dir(bdf) + "/";
        int vendor = sys.readHex(d + "vendor", 4);
        int device = sys.readHex(d + "device", 4);
        int cls = sys.readHex(d + "class", 6);
        int subVendor = sys.readHexOptional(d + "subsystem_vendor", 4);
        int subDevice = sys.readHexOptional(d + "subsystem_device", 4);
        int revision = sys.readHexOptional(d + "revision", 2);
        String driver = sys.linkName(d + "driver").orElse(null);
        String override = sys.readOptional(d + "driver_override").orElse(null);
        if (override != null && (override.equals("(null)") || override.isEmpty())) {
            override = null;
        }
        int group = -1;
        var groupName = sys.linkName(d + "iommu_group");
        if (groupName.isPresent()) {
            String g = groupName.get();
            if (g.isEmpty() || g.length() > 9 || !g.chars().allMatch(Character::isDigit)) {
                throw sys.malformed(d + "iommu_group", "a link to kernel/iommu_groups/<number>", g);
            }
            group = Integer.parseInt(g);
        }
        SriovInfo sriov = null;
        if (sys.exists(d + "sriov_totalvfs")) {
            long total = sys.readDecimal(d + "sriov_totalvfs");
            long num = sys.readDecimal(d + "sriov_numvfs");
            if (total > 0xffff || num > total) {
                throw sys.malformed(
                        d + "sriov_numvfs", "at most sriov_totalvfs (" + total + ") VFs", Long.toString(num));
            }
            Boolean autoprobe = null;
            long ap = sys.readDecimalOptional(d + "sriov_drivers_autoprobe");
            if (ap >= 0) {
                if (ap > 1) {
                    throw sys.malformed(d + "sriov_drivers_autoprobe", "0 or 1", Long.toString(ap));
                }
                autoprobe = ap == 1;
            }
            sriov = new SriovInfo((int) total, (int) num, autoprobe, virtfns(sys, d));
        }
        Bdf physfn = null;
        var pf = sys.linkName(d + "physfn");
        if (pf.isPresent()) {
            physfn = Bdf.tryParse(pf.get());
            if (physfn == null) {
                throw sys.malformed(d + "physfn", "a link to the physical function's directory", pf.get());
            }
        }
        List<String> nvme = new ArrayList<>();
        if (cls == CLASS_NVME) {
            for (String n : sys.list(d + "nvme")) {
                if (n.matches("nvme[0-9]+")) {
                    nvme.add(n);
                }
            }
        }
        return new PciDevice(
                bdf,
                vendor,
                device,
                subVendor,
                subDevice,
                cls,
                revision,
                driver,
                override,
                group,
                sriov,
                physfn,
                sys.exists(d + "reset"),
                nvme,
                sys.readDecimalOptional(d + "boot_vga") == 1);
    }

    private static List<Bdf> virtfns(SysfsTree sys, String d) {
        java.util.TreeMap<Integer, Bdf> byIndex = new java.util.TreeMap<>();
        for (String name : sys.list(d)) {
            String index = name.startsWith("virtfn") ? name.substring(6) : "";
            if (!index.isEmpty() && index.length() <= 5 && index.chars().allMatch(Character::isDigit)) {
                String target = sys.linkName(d + name).orElse("");
                Bdf vf = Bdf.tryParse(target);
                if (vf == null) {
                    throw sys.malformed(d + name, "a link to a virtual function's directory", target);
                }
                byIndex.put(Integer.parseInt(index), vf);
            }
        }
        return new ArrayList<>(byIndex.values());
    }

    public boolean isBridge() {
        int baseSub = classCode >>> 8;
        return baseSub == 0x0604 || baseSub == 0x0609;
    }

    public boolean isVirtualFunction() {
        return physfn != null;
    }

    public boolean isNvme() {
        return classCode == CLASS_NVME;
    }

    /**
     * Whether a member of an IOMMU group bound to {@code driver} (null: none) leaves the group viable for VFIO: the
     * kernel lets a group go to a user only while every member is driverless or bound to a driver that does no DMA
     * through the kernel's default domain (driver_managed_dma) — vfio-pci and its variants, pci-stub, and pcieport on
     * bridges. Any other driver does DMA the user would share the IOMMU context with.
     */
    public static boolean keepsGroupViable(String driver) {
        return driver == null || isVfioDriver(driver) || driver.equals("pci-stub") || driver.equals("pcieport");
    }

    /** vfio-pci or one of its vendor variants (mlx5_vfio_pci, hisi_acc_vfio_pci...). */
    public static boolean isVfioDriver(String driver) {
        return driver != null
                && (driver.equals("vfio-pci") || driver.endsWith("_vfio_pci") || driver.endsWith("-vfio-pci"));
    }
}
