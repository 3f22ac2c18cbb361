// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.iovirt.host.binding.DriverBinding;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciInventory;
import io.iovirt.pci.SysfsTree;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code host check} and {@code host devices} against this machine's real /sys and /proc (read-only). What they
 * must say is derived independently from the kernel's files, so the test holds on a host with an IOMMU too; on the
 * project's build machine (a VM without IOMMU or KVM) it proves the tool reports exactly that, with remedies.
 */
class RealHostTest {
    @TempDir
    Path state;

    private static List<String> ls(String dir) throws IOException {
        Path p = Path.of(dir);
        if (!Files.isDirectory(p)) {
            return List.of();
        }
        try (Stream<Path> s = Files.list(p)) {
            return s.map(x -> x.getFileName().toString()).sorted().toList();
        }
    }

    @Test
    void checkTellsTheTruthAboutThisMachine() throws IOException {
        boolean iommu = !ls("/sys/class/iommu").isEmpty();
        boolean groups = !ls("/sys/kernel/iommu_groups").isEmpty();
        boolean kvm = Files.exists(Path.of("/dev/kvm"));
        String cpuinfo = Files.readString(Path.of("/proc/cpuinfo"));
        boolean hw = cpuinfo.matches("(?s).*\\bflags\\s*:[^\\n]*\\b(vmx|svm)\\b.*");
        CliRun r = CliRun.run(List.of("host", "check", "--require", "vfio", "--state-dir", state.toString()));
        assertTrue(r.noStackTrace(), r.err());
        assertTrue(r.out().contains((iommu ? "PASS" : "FAIL") + "  iommu-enabled"), r.out());
        assertTrue(r.out().contains((groups ? "PASS" : "FAIL") + "  iommu-groups"), r.out());
        // Without VT-x/AMD-V a /dev/kvm is PVM or software nesting: a WARN, and guests run under TCG.
        assertTrue(r.out().contains((!kvm ? "FAIL" : hw ? "PASS" : "WARN") + "  kvm"), r.out());
        assertTrue(r.out().contains("Guests run under " + (kvm && hw ? "KVM" : "TCG")), r.out());
        if (!(kvm && hw)) {
            assertFalse(r.out().contains("KVM-accelerated"), "the summary must not promise KVM: " + r.out());
            assertTrue(r.out().contains("under TCG (KVM unusable: slow)"), r.out());
        }
        if (!iommu) {
            assertEquals(3, r.exit(), "VFIO cannot be possible without an IOMMU (3: the check found a failure)");
            assertTrue(r.out().contains("* VFIO   no    needs: "), r.out());
            assertTrue(r.out().contains("remedy: enable "), r.out());
            assertTrue(r.out().contains("firmware setup"), r.out());
        }
        if (!kvm) {
            assertTrue(r.out().contains("  PVHVM  no    needs: "), r.out());
        }
    }

    @Test
    void devicesListsEveryRealPciFunction() throws IOException {
        List<String> real = ls("/sys/bus/pci/devices");
        CliRun r = CliRun.run(List.of("host", "devices", "--state-dir", state.toString()));
        assertEquals(0, r.exit(), r.err());
        for (String bdf : real) {
            String vendor = Files.readString(Path.of("/sys/bus/pci/devices", bdf, "vendor"))
                    .strip()
                    .substring(2);
            String device = Files.readString(Path.of("/sys/bus/pci/devices", bdf, "device"))
                    .strip()
                    .substring(2);
            assertTrue(
                    r.out().contains(bdf + " ") && r.out().contains("[" + vendor + ":" + device + "]"),
                    bdf + " missing:\n" + r.out());
        }
        long listed = r.out()
                .lines()
                .filter(l -> Bdf.tryParse(l.split(" ")[0]) != null)
                .count();
        assertEquals(real.size(), listed);
        if (ls("/sys/kernel/iommu_groups").isEmpty()) {
            assertFalse(r.out().contains("assignable: yes"), r.out());
            assertTrue(r.out().contains("it has no IOMMU group: the IOMMU is off"), r.out());
            assertTrue(r.out().contains("No IOMMU groups: the IOMMU is off"), r.out());
        }
    }

    @Test
    void theRootFilesystemsDeviceIsProtected() throws IOException {
        // Which PCI function holds "/" according to the kernel's own links, found without iovirt's code.
        String rootSource = Files.readAllLines(Path.of("/proc/mounts")).stream()
                .map(l -> l.split(" "))
                .filter(f -> f[1].equals("/") && f[0].startsWith("/dev/"))
                .map(f -> f[0])
                .findFirst()
                .orElse(null);
        // Skipped (shown as such), not passed, where this host has nothing to check it on.
        assumeTrue(rootSource != null, "/ is not on a block device here (overlay, tmpfs): nothing to protect");
        Path classLink =
                Path.of("/sys/class/block", Path.of(rootSource).getFileName().toString());
        assumeTrue(Files.exists(classLink), rootSource + " has no " + classLink);
        Path target = classLink.toRealPath();
        String pci = null;
        for (Path part : target) {
            if (part.toString().matches("[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]")) {
                pci = part.toString();
            }
        }
        assumeTrue(pci != null, rootSource + " is not on a PCI device: " + target);
        HostUsage usage = HostUsage.scan(
                new SysfsTree(Path.of("/sys"), "--sysfs-root"),
                new SysfsTree(Path.of("/proc"), "--proc-root"),
                new SysfsTree(Path.of("/dev"), "--dev-root"));
        String expected = "holds the mounted filesystem / (" + rootSource + ")";
        assertTrue(usage.uses(Bdf.parse(pci)).contains(expected), pci + ": " + usage.uses(Bdf.parse(pci)));
        // The refusal happens before any write: checked through the planner, never by binding the real disk.
        DriverBinding b = new DriverBinding(HostPaths.system().withStateDir(state));
        List<String> problems = b.bindProblems(
                PciInventory.scan(new SysfsTree(Path.of("/sys"), "--sysfs-root")),
                PciInventory.scan(new SysfsTree(Path.of("/sys"), "--sysfs-root"))
                        .require(Bdf.parse(pci)),
                "vfio-pci");
        assertTrue(problems.contains("the host uses it: it " + expected), problems.toString());
    }
}
