// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciSysfs;
import io.iovirt.util.ActionableException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** What a user reads when VFIO is not ready: each message names the cause and the remedy. */
class VfioErrorsTest {
    @TempDir
    Path tmp;

    @Test
    void aMissingGroupNodeSaysToBindTheGroupToVfioPci() {
        VfioException e = assertThrows(VfioException.class, () -> VfioGroup.open(42, tmp));
        String m = e.getMessage();
        assertTrue(m.contains(tmp.resolve("42").toString()), m);
        assertTrue(m.contains("IOMMU group 42"), m);
        assertTrue(m.contains("vfio-pci") && m.contains("iovirt host bind") && m.contains("driver_override"), m);
    }

    @Test
    void aMissingContainerNodeSaysToLoadTheModule() {
        VfioException e = assertThrows(VfioException.class, () -> VfioContainer.open(tmp.resolve("vfio")));
        assertTrue(e.getMessage().contains("modprobe vfio-pci"), e.getMessage());
    }

    @Test
    void aGroupNodeThatIsNotVfioIsRefused() throws IOException {
        Path notVfio = tmp.resolve("vfio");
        Files.writeString(notVfio, "x");
        VfioException e = assertThrows(VfioException.class, () -> VfioContainer.open(notVfio));
        assertTrue(e.getMessage().contains("VFIO_GET_API_VERSION"), e.getMessage());
    }

    /** A sysfs tree shaped like the kernel's: devices, their driver links, and iommu_groups. */
    private PciSysfs fixture() throws IOException {
        Path sys = tmp.resolve("sys");
        Path devices = Files.createDirectories(sys.resolve("bus/pci/devices"));
        Path drivers = Files.createDirectories(sys.resolve("bus/pci/drivers"));
        Files.createDirectories(drivers.resolve("vfio-pci"));
        Files.createDirectories(drivers.resolve("e1000e"));
        Path groups = Files.createDirectories(sys.resolve("kernel/iommu_groups"));
        Path g7 = Files.createDirectories(groups.resolve("7/devices"));
        for (String[] d :
                new String[][] {{"0000:03:00.0", "vfio-pci"}, {"0000:03:00.1", "e1000e"}, {"0000:03:00.2", null}}) {
            Path dev = Files.createDirectories(devices.resolve(d[0]));
            Files.writeString(dev.resolve("vendor"), "0x8086\n");
            Files.writeString(dev.resolve("device"), "0x10d3\n");
            Files.createSymbolicLink(dev.resolve("iommu_group"), groups.resolve("7"));
            if (d[1] != null) {
                Files.createSymbolicLink(dev.resolve("driver"), drivers.resolve(d[1]));
            }
            Files.createSymbolicLink(g7.resolve(d[0]), dev);
        }
        Files.createDirectories(devices.resolve("0000:00:02.0")); // no IOMMU group
        return new PciSysfs(sys);
    }

    @Test
    void sysfsFactsAreReadFromTheTree() throws Exception {
        PciSysfs s = fixture();
        assertEquals(7, s.iommuGroup(Bdf.parse("03:00.1")));
        assertEquals(List.of(Bdf.parse("03:00.0"), Bdf.parse("03:00.1"), Bdf.parse("03:00.2")), s.groupMembers(7));
        assertEquals("e1000e", s.driver(Bdf.parse("03:00.1")).orElseThrow());
        assertTrue(s.driver(Bdf.parse("03:00.2")).isEmpty());
        assertEquals("8086:10d3", s.ids(Bdf.parse("03:00.0")));
        assertEquals(1, s.iommuGroupCount());
    }

    @Test
    void aNonViableGroupNamesTheDevicesHoldingItBack() throws Exception {
        String m = VfioGroup.notViableMessage(7, fixture());
        assertTrue(m.contains("IOMMU group 7 is not viable"), m);
        assertTrue(m.contains("0000:03:00.1 (bound to e1000e)"), m);
        assertTrue(
                !m.contains("0000:03:00.0 (") && !m.contains("0000:03:00.2 ("),
                "vfio-pci and driverless members are fine: " + m);
        assertTrue(m.contains("iovirt host bind"), m);
    }

    /**
     * The kernel's rule, not "vfio-pci or nothing": members bound to pci-stub, to a vendor variant of vfio-pci, or a
     * bridge bound to pcieport keep a group viable (those drivers manage no DMA of their own), so naming them sent the
     * user to bind a root port to vfio-pci — which refuses bridges — while the real culprit was in the list too.
     */
    @Test
    void aNonViableGroupNamesOnlyTheMembersTheKernelObjectsTo() throws Exception {
        PciSysfs s = fixture();
        Path sys = tmp.resolve("sys");
        Path g7 = sys.resolve("kernel/iommu_groups/7/devices");
        for (String[] d : new String[][] {
            {"0000:00:1c.0", "pcieport"}, {"0000:03:00.3", "pci-stub"}, {"0000:03:00.4", "mlx5_vfio_pci"}
        }) {
            Path dev = Files.createDirectories(sys.resolve("bus/pci/devices").resolve(d[0]));
            Path drv = Files.createDirectories(sys.resolve("bus/pci/drivers").resolve(d[1]));
            Files.createSymbolicLink(dev.resolve("driver"), drv);
            Files.createSymbolicLink(dev.resolve("iommu_group"), sys.resolve("kernel/iommu_groups/7"));
            Files.createSymbolicLink(g7.resolve(d[0]), dev);
        }
        String m = VfioGroup.notViableMessage(7, s);
        assertTrue(m.contains("0000:03:00.1 (bound to e1000e) is not"), m);
        assertTrue(!m.contains("0000:00:1c.0 (") && !m.contains("0000:03:00.3 (") && !m.contains("0000:03:00.4 ("), m);
        assertTrue(m.contains("pci-stub"), "the rule the message states names pci-stub too: " + m);
    }

    @Test
    void aDeviceWithoutIommuGroupSaysToTurnTheIommuOn() throws Exception {
        PciSysfs s = fixture();
        ActionableException e = assertThrows(ActionableException.class, () -> s.iommuGroup(Bdf.parse("00:02.0")));
        assertTrue(e.getMessage().contains("intel_iommu=on"), e.getMessage());
        e = assertThrows(ActionableException.class, () -> s.iommuGroup(Bdf.parse("00:09.0")));
        assertTrue(e.getMessage().contains("no PCI device 0000:00:09.0"), e.getMessage());
    }

    @Test
    void openingASessionOnAnUnboundDeviceExplainsTheBinding() throws Exception {
        PciSysfs s = fixture();
        Path devVfio = Files.createDirectories(tmp.resolve("dev/vfio"));
        // no /dev/vfio/vfio here: the container is what fails first
        VfioException e = assertThrows(
                VfioException.class, () -> VfioSession.open(Bdf.parse("03:00.1"), s, devVfio, devVfio.resolve("vfio")));
        assertTrue(e.getMessage().contains("modprobe vfio-pci"), e.getMessage());
    }

    @Test
    void aVfioDevCdevCountsOnlyWhenItsDeviceNodeExists() throws Exception {
        PciSysfs s = fixture();
        Bdf a = Bdf.parse("03:00.0");
        Files.createDirectories(tmp.resolve("sys/bus/pci/devices/0000:03:00.0/vfio-dev/vfio0"));
        Path dev = Files.createDirectories(tmp.resolve("dev"));
        assertTrue(IommuEnvironment.deviceCdev(s, dev, a).isEmpty(), "6.1: sysfs lists vfio-dev, /dev has no node");
        Files.createDirectories(dev.resolve("vfio/devices"));
        Files.writeString(dev.resolve("vfio/devices/vfio0"), "");
        assertEquals(
                dev.resolve("vfio/devices/vfio0"),
                IommuEnvironment.deviceCdev(s, dev, a).orElseThrow());
        IommuEnvironment env = IommuEnvironment.detect(dev, s);
        assertEquals(List.of("vfio0"), env.vfioDeviceCdevs());
        assertTrue(!env.iommufd() && !env.vfioContainer());
        assertTrue(env.summary().contains("iommufd: no"), env.summary());
    }

    @Test
    void memlockLimitIsParsedAndExplained() {
        MemLockLimit.Limit l = MemLockLimit.parse(List.of(
                "Limit                     Soft Limit           Hard Limit           Units     ",
                "Max locked memory         8388608              unlimited            bytes     "));
        assertEquals(8388608, l.soft().getAsLong());
        assertTrue(l.hard().isEmpty());
        String m = MemLockLimit.explainEnomem(16 << 20);
        assertTrue(m.contains("RLIMIT_MEMLOCK") && m.contains("ulimit -l") && m.contains("CAP_IPC_LOCK"), m);
        assertTrue(m.contains("16384 KiB"), m);
    }
}
