// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

class VfioCommandTest {
    private record Run(int rc, String out, String err) {}

    private static Run run(String... args) {
        CommandLine cl = Main.commandLine();
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        cl.setOut(new PrintWriter(out));
        cl.setErr(new PrintWriter(err));
        int rc = cl.execute(args);
        return new Run(rc, out.toString(), err.toString());
    }

    @Test
    void aMalformedAddressIsAUsageError() {
        Run r = run("vfio", "nvme", "01:99.0", "identify");
        assertEquals(2, r.rc());
        assertTrue(r.err().contains("not a PCI address"), r.err());
    }

    @Test
    void nvmeWithoutAnActionIsAUsageError() {
        Run r = run("vfio", "nvme", "01:00.0");
        assertEquals(2, r.rc());
        assertTrue(r.err().contains("a subcommand is required: identify, read, write, bench, iommu-check"), r.err());
    }

    @Test
    void writeNeedsExactlyOneSource() {
        assertEquals(2, run("vfio", "nvme", "01:00.0", "write", "--lba", "0").rc());
        assertEquals(
                2,
                run("vfio", "nvme", "01:00.0", "write", "--lba", "0", "--pattern", "x", "--in", "/dev/null")
                        .rc());
    }

    @Test
    void anAbsentDeviceFailsWithOneLineNamingIt() {
        Run r = run("vfio", "info", "7f:1f.7");
        assertEquals(1, r.rc());
        assertTrue(r.err().startsWith("iovirt vfio info: no PCI device 0000:7f:1f.7"), r.err());
        assertEquals(1, r.err().strip().lines().count(), r.err());
        r = run("vfio", "nvme", "7f:1f.7", "identify");
        assertEquals(1, r.rc());
        assertTrue(r.err().startsWith("iovirt vfio nvme identify: no PCI device 0000:7f:1f.7"), r.err());
    }

    @Test
    void hexdumpCollapsesRepeatedLines() {
        byte[] b = new byte[80];
        for (int i = 0; i < 16; i++) {
            b[i] = (byte) ('a' + i);
        }
        b[79] = 1;
        StringWriter s = new StringWriter();
        PrintWriter p = new PrintWriter(s);
        VfioCommand.hexdump(p, MemorySegment.ofArray(b), 0x1000);
        p.flush();
        assertEquals("""
                00001000: 6162 6364 6566 6768 696a 6b6c 6d6e 6f70  abcdefghijklmnop
                00001010: 0000 0000 0000 0000 0000 0000 0000 0000  ................
                *
                00001040: 0000 0000 0000 0000 0000 0000 0000 0001  ................
                """, s.toString());
    }

    @Test
    void aDeviceThatIsNotNvmeIsSaidSoBeforeTheIommuIsBlamed(@org.junit.jupiter.api.io.TempDir java.nio.file.Path tmp) {
        io.iovirt.host.FakeHost h = new io.iovirt.host.FakeHost(tmp);
        h.device("0000:02:00.0", 0x8086, 0x15b8, 0x020000).driver("e1000e");
        h.device("0000:01:00.0", 0x1b36, 0x0010, 0x010802).driver("vfio-pci");
        io.iovirt.pci.PciSysfs sysfs = new io.iovirt.pci.PciSysfs(h.sys);
        io.iovirt.util.ActionableException e = org.junit.jupiter.api.Assertions.assertThrows(
                io.iovirt.util.ActionableException.class,
                () -> VfioCommand.requireNvme(sysfs, io.iovirt.pci.Bdf.parse("0000:02:00.0")));
        assertTrue(
                e.getMessage().startsWith("0000:02:00.0 is not an NVMe controller (PCI class 020000"), e.getMessage());
        VfioCommand.requireNvme(sysfs, io.iovirt.pci.Bdf.parse("0000:01:00.0"));
        // This machine's host bridge, through the real CLI: exit 1 with that message, not an IOMMU remedy.
        Run r = run("vfio", "nvme", "0000:00:00.0", "identify", "--json");
        assertEquals(1, r.rc(), r.err());
        assertTrue(r.err().contains("is not an NVMe controller"), r.err());
    }
}
