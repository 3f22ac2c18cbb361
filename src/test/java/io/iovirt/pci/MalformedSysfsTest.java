// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.host.FakeHost;
import io.iovirt.util.ActionableException;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Damaged sysfs files give one clear line naming the file, what was expected and what was found. */
class MalformedSysfsTest {
    @TempDir
    Path tmp;

    private FakeHost host() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        h.device("0000:02:00.0", 0x8086, 0x1533, 0x020000).driver("igb").group(4);
        return h;
    }

    private String error(FakeHost h) {
        ActionableException e = assertThrows(
                ActionableException.class, () -> PciInventory.scan(h.paths().sys()));
        return e.getMessage();
    }

    @Test
    void truncatedVendor() {
        FakeHost h = host();
        h.dev("0000:02:00.0").attr("vendor", "0x80");
        String m = error(h);
        assertTrue(
                m.contains(
                        "0000:02:00.0/vendor: expected a 16-bit hex value like 0x0000, found '0x80' (too few or too many digits: truncated?)"),
                m);
    }

    @Test
    void emptyClass() {
        FakeHost h = host();
        h.dev("0000:02:00.0").attr("class", "");
        String m = error(h);
        assertTrue(m.contains("class: expected a 24-bit hex value like 0x000000, found '' (empty: truncated?)"), m);
        assertTrue(m.contains("check that --sysfs-root points at a mounted filesystem"), m);
    }

    @Test
    void garbageInSriovCount() {
        FakeHost h = host();
        h.dev("0000:02:00.0").attr("sriov_totalvfs", "7\n").attr("sriov_numvfs", "two\n");
        String m = error(h);
        assertTrue(m.contains("sriov_numvfs: expected a decimal number, found 'two'"), m);
    }

    @Test
    void binaryJunkIsEscaped() {
        FakeHost h = host();
        h.dev("0000:02:00.0").attr("device", "\u0000\u00ff\n");
        String m = error(h);
        assertTrue(m.contains("found '\\x00\\xff'"), m);
    }

    @Test
    void iommuGroupLinkToNowhere() {
        FakeHost h = host();
        FakeHost.relink(
                h.sys.resolve("devices/pci0000:00/0000:02:00.0/iommu_group"), "../../../kernel/iommu_groups/abc");
        String m = error(h);
        assertTrue(m.contains("iommu_group: expected a link to kernel/iommu_groups/<number>, found 'abc'"), m);
    }

    @Test
    void driverThatIsAFileInsteadOfALink() throws Exception {
        FakeHost h = host();
        Path driver = h.sys.resolve("devices/pci0000:00/0000:02:00.0/driver");
        java.nio.file.Files.delete(driver);
        FakeHost.write(driver, "igb");
        String m = error(h);
        assertTrue(m.contains("driver should be a symbolic link but is a regular file"), m);
    }

    @Test
    void missingVendorFile() throws Exception {
        FakeHost h = host();
        java.nio.file.Files.delete(h.sys.resolve("devices/pci0000:00/0000:02:00.0/vendor"));
        String m = error(h);
        assertTrue(m.contains("0000:02:00.0/vendor: no such file"), m);
    }

    @Test
    void noPciBusAtAll() {
        ActionableException e = assertThrows(
                ActionableException.class,
                () -> PciInventory.scan(new SysfsTree(tmp.resolve("nothing"), "--sysfs-root")));
        assertTrue(e.getMessage().contains("no PCI bus, or sysfs is not mounted"), e.getMessage());
    }

    @Test
    void cliShowsOneLineAndNoStackTrace() {
        FakeHost h = host();
        h.dev("0000:02:00.0").attr("vendor", "0x80");
        for (String cmd : new String[] {"devices", "bind", "assign"}) {
            CliRun r = switch (cmd) {
                case "bind" -> CliRun.host(h, "bind", "0000:02:00.0");
                case "assign" -> CliRun.host(h, "assign", "0000:02:00.0", "--vm", "a");
                default -> CliRun.host(h, "devices");
            };
            assertEquals(1, r.exit(), cmd);
            assertEquals(1, r.err().strip().lines().count(), r.err());
            assertTrue(r.err().startsWith("iovirt host " + cmd + ": "), r.err());
            assertTrue(r.err().contains("vendor: expected a 16-bit hex value"), r.err());
            assertTrue(r.noStackTrace(), r.err());
        }
    }

    @Test
    void badAddressesAreUsageErrorsWithAnExample() {
        FakeHost h = host();
        CliRun r = CliRun.host(h, "bind", "02:00");
        assertEquals(2, r.exit());
        assertTrue(r.err().contains("'02:00' is not a PCI address"), r.err());
        assertTrue(r.err().contains("0000:01:00.1"), r.err());
        assertTrue(r.noStackTrace(), r.err());
        assertEquals(Bdf.parse("0000:02:00.0"), Bdf.parse("02:00.0"));
        assertEquals("0001:ff:1f.7", Bdf.parse("0001:ff:1f.7").toString());
        assertThrows(ActionableException.class, () -> Bdf.parse("0000:00:20.0"));
        assertThrows(ActionableException.class, () -> Bdf.parse("0000:00:1f.8"));
    }
}
