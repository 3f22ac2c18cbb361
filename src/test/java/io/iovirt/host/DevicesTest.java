// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.assign.Assignability.Status;
import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.host.assign.DeviceReport;
import io.iovirt.host.check.HostCheckTest;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciIds;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

public class DevicesTest {
    @TempDir
    Path tmp;

    /** Intel desktop chipset: group 7 holds the LPC bridge, audio and SMBus; the NIC, NVMe and VFs have their own. */
    public static FakeHost desktop(Path dir) {
        FakeHost h = new FakeHost(dir).intelHostWithIommu();
        h.device("0000:00:00.0", 0x8086, 0x3e30, 0x060000).group(0);
        h.device("0000:00:01.0", 0x8086, 0x1901, 0x060400).driver("pcieport").group(1);
        h.device("0000:00:1f.0", 0x8086, 0xa305, 0x060100).group(7);
        h.device("0000:00:1f.3", 0x8086, 0xa348, 0x040300)
                .driver("snd_hda_intel")
                .group(7);
        h.device("0000:00:1f.4", 0x8086, 0xa323, 0x0c0500).driver("i801_smbus").group(7);
        h.device("0000:01:00.0", 0x144d, 0xa808, 0x010802)
                .driver("nvme")
                .group(1)
                .nvmeController("nvme0")
                .block("nvme/nvme0", "nvme0n1", "nvme0n1p1", "nvme0n1p2");
        h.device("0000:02:00.0", 0x8086, 0x15b8, 0x020000)
                .driver("e1000e")
                .group(8)
                .net("eno1", 1);
        HostCheckTest.addSriovNic(h);
        h.device("0000:04:00.0", 0x10de, 0x1c82, 0x030000).driver("vfio-pci").group(9);
        h.mount("/dev/nvme0n1p2", "/").mount("/dev/nvme0n1p1", "/boot/efi").defaultRoute("eno1");
        return h;
    }

    private Path pciIds() {
        Path p = tmp.resolve("pci.ids");
        FakeHost.write(p, """
                # test database
                8086  Intel Corporation
                \t10c9  82576 Gigabit Network Connection
                \t\t8086 a03c  Ethernet Server Adapter I340-T4
                \t10ca  82576 Virtual Function
                \ta348  Cannon Lake PCH cAVS
                10de  NVIDIA Corporation
                \t1c82  GP107 [GeForce GTX 1050 Ti]
                C 01  Mass storage controller
                \t08  Non-Volatile memory controller
                \t\t02  NVM Express
                C 02  Network controller
                \t00  Ethernet controller
                C 04  Multimedia controller
                \t03  Audio device
                """);
        return p;
    }

    private DeviceReport.Entry entry(DeviceReport r, String bdf) {
        return r.entries().stream()
                .filter(e -> e.device().bdf().toString().equals(bdf))
                .findFirst()
                .orElseThrow();
    }

    @Test
    void nonViableGroupNamesTheMemberAndItsDriver() {
        FakeHost h = desktop(tmp.resolve("h"));
        DeviceReport r = DeviceReport.collect(h.paths(pciIds()));
        DeviceReport.Entry audio = entry(r, "0000:00:1f.3");
        assertEquals(Status.NO, audio.assignability().status());
        assertTrue(
                audio.assignability().reasons().contains("group 7 also holds 0000:00:1f.4, bound to i801_smbus"),
                audio.assignability().reasons().toString());
        DeviceReport.Entry smbus = entry(r, "0000:00:1f.4");
        assertTrue(
                smbus.assignability().reasons().contains("group 7 also holds 0000:00:1f.3, bound to snd_hda_intel"),
                smbus.assignability().reasons().toString());
        // The unbound LPC bridge does not block the others but can never go itself.
        assertTrue(entry(r, "0000:00:1f.0")
                .assignability()
                .reasons()
                .contains("it is the ISA/LPC bridge: the platform needs it"));
        assertEquals(List.of("0000:00:1f.0 (no driver)", "0000:00:1f.4 (i801_smbus)"), audio.groupPeers());
    }

    @Test
    void hostUseBlocksTheBootDiskAndTheUplink() {
        FakeHost h = desktop(tmp.resolve("h"));
        DeviceReport r = DeviceReport.collect(h.paths());
        DeviceReport.Entry nvme = entry(r, "0000:01:00.0");
        assertEquals(Status.NO, nvme.assignability().status());
        assertTrue(
                nvme.assignability()
                        .reasons()
                        .contains("the host uses it: it holds the mounted filesystem / (/dev/nvme0n1p2)"),
                nvme.assignability().reasons().toString());
        assertTrue(nvme.assignability()
                .reasons()
                .contains("the host uses it: it holds the mounted filesystem /boot/efi (/dev/nvme0n1p1)"));
        assertEquals(List.of("nvme0n1", "nvme0n1p1", "nvme0n1p2"), nvme.blockDevices());
        DeviceReport.Entry nic = entry(r, "0000:02:00.0");
        assertTrue(nic.assignability().reasons().contains("the host uses it: it carries the default route (eno1)"));
        assertEquals(List.of("eno1"), nic.netInterfaces());
    }

    @Test
    void sriovPfAndVfsAreLinkedBothWays() {
        FakeHost h = desktop(tmp.resolve("h"));
        DeviceReport r = DeviceReport.collect(h.paths(pciIds()));
        DeviceReport.Entry pf = entry(r, "0000:03:00.0");
        PciDevice.SriovInfo s = pf.device().sriov();
        assertEquals(7, s.totalVfs());
        assertEquals(2, s.numVfs());
        assertEquals(Boolean.TRUE, s.autoprobe());
        assertEquals(List.of(Bdf.parse("0000:03:10.0"), Bdf.parse("0000:03:10.2")), s.vfs());
        assertEquals("Intel Corporation", pf.vendorName());
        assertEquals("82576 Gigabit Network Connection", pf.deviceName());
        assertEquals("Ethernet controller", pf.className());
        DeviceReport.Entry vf = entry(r, "0000:03:10.2");
        assertEquals(Bdf.parse("0000:03:00.0"), vf.device().physfn());
        assertEquals("82576 Virtual Function", vf.deviceName());
        assertEquals(Status.AFTER_BIND, vf.assignability().status());
        assertEquals(Status.AFTER_BIND, entry(r, "0000:03:10.0").assignability().status());
        assertEquals(Status.READY, entry(r, "0000:04:00.0").assignability().status());
        assertEquals("NVM Express", entry(r, "0000:01:00.0").className());
        assertEquals(List.of("nvme0"), entry(r, "0000:01:00.0").device().nvmeControllers());
    }

    @Test
    void cliPrintsTextAndJson() {
        FakeHost h = desktop(tmp.resolve("h"));
        CliRun text = CliRun.host(h, "devices", "--pci-ids", pciIds().toString());
        assertEquals(0, text.exit(), text.err());
        assertTrue(
                text.out()
                        .contains(
                                "0000:03:00.0 Ethernet controller [0200]: Intel Corporation 82576 Gigabit Network Connection [8086:10c9] (rev 01)"),
                text.out());
        assertTrue(
                text.out().contains("SR-IOV: 2 of 7 VFs enabled, drivers autoprobe on: 0000:03:10.0 0000:03:10.2"),
                text.out());
        assertTrue(text.out().contains("virtual function of 0000:03:00.0"));
        assertTrue(text.out().contains("- group 7 also holds 0000:00:1f.3, bound to snd_hda_intel"), text.out());
        assertTrue(
                text.out().contains("assignable: after binding: bound to igbvf; run: iovirt host bind 0000:03:10.0"),
                text.out());

        CliRun one = CliRun.host(h, "devices", "--json", "0000:04:00.0");
        assertEquals(0, one.exit(), one.err());
        assertTrue(one.out().contains("\"bdf\": \"0000:04:00.0\""), one.out());
        assertTrue(one.out().contains("\"assignable\": \"ready\""), one.out());
        assertTrue(one.out().contains("\"iommu_group\": 9"), one.out());
        assertTrue(!one.out().contains("0000:03:00.0"));

        CliRun missing = CliRun.host(h, "devices", "0000:09:00.0");
        assertEquals(1, missing.exit());
        assertTrue(missing.err().contains("no PCI device 0000:09:00.0"), missing.err());
    }

    @Test
    void assignedDeviceShowsItsVm() {
        FakeHost h = desktop(tmp.resolve("h"));
        new AssignmentRegistry(h.state).assign(Bdf.parse("0000:04:00.0"), "gpu-vm", List.of());
        DeviceReport.Entry gpu = entry(DeviceReport.collect(h.paths()), "0000:04:00.0");
        assertEquals(Status.ASSIGNED, gpu.assignability().status());
        assertEquals("gpu-vm", gpu.assignability().vm());
        Map<String, Object> m = gpu.toMap();
        assertEquals("gpu-vm", m.get("assigned_to"));
        assertNull(m.get("physfn"));
    }

    @Test
    void pciIdsParsesVendorsDevicesAndClasses() {
        PciIds ids = PciIds.load(pciIds());
        assertEquals("Intel Corporation", ids.vendor(0x8086));
        assertEquals("GP107 [GeForce GTX 1050 Ti]", ids.device(0x10de, 0x1c82));
        assertNull(ids.device(0x10de, 0x0001));
        assertEquals("NVM Express", ids.className(0x010802));
        assertEquals("Non-Volatile memory controller", ids.className(0x010801));
        assertEquals("Mass storage controller", ids.className(0x017700));
        assertTrue(PciIds.load(tmp.resolve("absent")).isEmpty());
    }
}
