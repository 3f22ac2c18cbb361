// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import io.iovirt.util.ActionableException;
import java.util.Collection;
import java.util.Collections;
import java.util.Map;
import java.util.TreeMap;

/** Every PCI function of the host and its IOMMU groups, read once from sysfs. */
public final class PciInventory {
    private final Map<Bdf, PciDevice> devices;
    private final IommuGroups groups;

    private PciInventory(Map<Bdf, PciDevice> devices, IommuGroups groups) {
        this.devices = Collections.unmodifiableMap(devices);
        this.groups = groups;
    }

    public static PciInventory scan(SysfsTree sys) {
        if (!sys.isDirectory("bus/pci/devices")) {
            throw new ActionableException(
                    sys.path("bus/pci/devices") + " does not exist: no PCI bus, or sysfs is not mounted",
                    "mount sysfs (mount -t sysfs sysfs /sys) or pass --sysfs-root pointing at one");
        }
        Map<Bdf, PciDevice> devices = new TreeMap<>();
        for (String name : sys.list("bus/pci/devices")) {
            Bdf bdf = Bdf.tryParse(name);
            if (bdf == null || !bdf.toString().equals(name)) {
                throw new ActionableException(
                        sys.path("bus/pci/devices/" + name) + ": not a PCI address",
                        "the tree under " + sys.root() + " is not a kernel sysfs");
            }
            devices.put(bdf, PciDevice.read(sys, bdf));
        }
        return new PciInventory(devices, IommuGroups.read(sys));
    }

    public Collection<PciDevice> devices() {
        return devices.values();
    }

    public PciDevice device(Bdf bdf) {
        return devices.get(bdf);
    }

    /** The device, or an error saying it does not exist. */
    public PciDevice require(Bdf bdf) {
        PciDevice d = devices.get(bdf);
        if (d == null) {
            throw new ActionableException(
                    "no PCI device " + bdf + " on this host", "list the devices with: iovirt host devices");
        }
        return d;
    }

    public IommuGroups groups() {
        return groups;
    }
}
