// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.host.HostPaths;
import io.iovirt.host.HostUsage;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciIds;
import io.iovirt.pci.PciInventory;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** What {@code host devices} shows for every PCI function. */
public record DeviceReport(PciInventory inventory, List<Entry> entries) {
    public record Entry(
            PciDevice device,
            String vendorName,
            String deviceName,
            String className,
            List<String> groupPeers,
            List<String> blockDevices,
            List<String> netInterfaces,
            Assignability assignability) {
        public Map<String, Object> toMap() {
            PciDevice d = device;
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("bdf", d.bdf().toString());
            m.put("vendor_id", String.format("%04x", d.vendorId()));
            m.put("device_id", String.format("%04x", d.deviceId()));
            m.put("vendor", vendorName);
            m.put("device", deviceName);
            m.put("class", String.format("%06x", d.classCode()));
            m.put("class_name", className);
            m.put("driver", d.driver());
            m.put("driver_override", d.driverOverride());
            m.put("iommu_group", d.iommuGroup() < 0 ? null : d.iommuGroup());
            m.put("iommu_group_peers", groupPeers);
            if (d.sriov() != null) {
                Map<String, Object> s = new LinkedHashMap<>();
                s.put("total_vfs", d.sriov().totalVfs());
                s.put("num_vfs", d.sriov().numVfs());
                s.put("drivers_autoprobe", d.sriov().autoprobe());
                s.put("vfs", d.sriov().vfs().stream().map(Bdf::toString).toList());
                m.put("sriov", s);
            } else {
                m.put("sriov", null);
            }
            m.put("physfn", d.physfn() == null ? null : d.physfn().toString());
            m.put("block_devices", blockDevices);
            m.put("net_interfaces", netInterfaces);
            m.put("nvme_controllers", d.nvmeControllers());
            m.put("resettable", d.resettable());
            m.put("assignable", assignability.status().name().toLowerCase());
            m.put("assigned_to", assignability.vm());
            m.put("reasons", assignability.reasons());
            return m;
        }

        public void print(PrintWriter o) {
            PciDevice d = device;
            String cls = className != null ? className : "Class";
            String name = vendorName != null
                    ? vendorName + " " + (deviceName != null ? deviceName : "Device " + hex4(d.deviceId()))
                    : "Device";
            o.printf(
                    "%s %s [%04x]: %s [%s:%s]%s%n",
                    d.bdf(),
                    cls,
                    d.classCode() >>> 8,
                    name,
                    hex4(d.vendorId()),
                    hex4(d.deviceId()),
                    d.revision() >= 0 ? String.format(" (rev %02x)", d.revision()) : "");
            StringBuilder line = new StringBuilder("    driver: ").append(d.driver() == null ? "none" : d.driver());
            if (d.driverOverride() != null) {
                line.append(" (override: ").append(d.driverOverride()).append(')');
            }
            line.append("   IOMMU group: ");
            if (d.iommuGroup() < 0) {
                line.append("none");
            } else {
                line.append(d.iommuGroup())
                        .append(groupPeers.isEmpty() ? " (alone)" : " (with " + String.join(", ", groupPeers) + ")");
            }
            o.println(line);
            if (d.sriov() != null) {
                o.printf(
                        "    SR-IOV: %d of %d VFs enabled%s%s%n",
                        d.sriov().numVfs(),
                        d.sriov().totalVfs(),
                        d.sriov().autoprobe() == null
                                ? ""
                                : ", drivers autoprobe " + (d.sriov().autoprobe() ? "on" : "off"),
                        d.sriov().vfs().isEmpty()
                                ? ""
                                : ": "
                                        + String.join(
                                                " ",
                                                d.sriov().vfs().stream()
                                                        .map(Bdf::toString)
                                                        .toList()));
            }
            if (d.physfn() != null) {
                o.println("    virtual function of " + d.physfn());
            }
            List<String> used = new ArrayList<>();
            if (!blockDevices.isEmpty()) {
                used.add("block: " + String.join(" ", blockDevices));
            }
            if (!netInterfaces.isEmpty()) {
                used.add("net: " + String.join(" ", netInterfaces));
            }
            if (!d.nvmeControllers().isEmpty()) {
                used.add("nvme: " + String.join(" ", d.nvmeControllers()));
            }
            if (!used.isEmpty()) {
                o.println("    " + String.join("   ", used));
            }
            Assignability a = assignability;
            switch (a.status()) {
                case READY -> o.println("    assignable: yes (bound to " + d.driver() + ")");
                case ASSIGNED -> o.println("    assigned to VM " + a.vm());
                case AFTER_BIND ->
                    o.println("    assignable: after binding: " + a.reasons().getFirst());
                case NO -> o.println("    assignable: no");
            }
            if (a.status() != Assignability.Status.AFTER_BIND) {
                for (String r : a.reasons()) {
                    o.println("      - " + r);
                }
            }
        }
    }

    private static String hex4(int v) {
        return String.format("%04x", v);
    }

    public static DeviceReport collect(HostPaths paths) {
        PciInventory inv = PciInventory.scan(paths.sys());
        HostUsage usage = HostUsage.scan(paths.sys(), paths.proc(), paths.dev());
        PciIds ids = PciIds.load(paths.pciIds());
        List<AssignmentRegistry.Assignment> owners = new AssignmentRegistry(paths.stateDir()).list();
        List<Entry> entries = new ArrayList<>();
        for (PciDevice d : inv.devices()) {
            List<String> peers = new ArrayList<>();
            if (d.iommuGroup() >= 0) {
                for (String p : inv.groups().peers(d.iommuGroup(), d.bdf())) {
                    Bdf b = Bdf.tryParse(p);
                    PciDevice pd = b == null ? null : inv.device(b);
                    peers.add(pd == null ? p : p + " (" + (pd.driver() == null ? "no driver" : pd.driver()) + ")");
                }
            }
            AssignmentRegistry.Assignment owner = owners.stream()
                    .filter(a -> a.bdf().equals(d.bdf()))
                    .findFirst()
                    .orElse(null);
            entries.add(new Entry(
                    d,
                    ids.vendor(d.vendorId()),
                    ids.device(d.vendorId(), d.deviceId()),
                    ids.className(d.classCode()),
                    peers,
                    List.copyOf(usage.blockDevices(d.bdf())),
                    List.copyOf(usage.netInterfaces(d.bdf())),
                    Assignability.of(inv, usage, owner, d)));
        }
        return new DeviceReport(inv, entries);
    }
}
