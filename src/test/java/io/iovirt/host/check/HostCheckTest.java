package io.iovirt.host.check;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.cli.Contract;
import io.iovirt.host.CliRun;
import io.iovirt.host.FakeHost;
import io.iovirt.host.HostPaths;
import io.iovirt.host.check.HostCheck.Status;
import io.iovirt.host.check.HostCheck.Technique;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

public class HostCheckTest {
    @TempDir
    Path tmp;

    private static final long GIB = 1L << 30;

    /** An SR-IOV NIC PF with two VFs, each in its own group, as on a server with ACS. */
    public static void addSriovNic(FakeHost h) {
        h.device("0000:03:00.0", 0x8086, 0x10c9, 0x020000).driver("igb").group(20)
                .sriov(7, List.of("0000:03:10.0", "0000:03:10.2")).net("enp3s0f0", 8);
        h.device("0000:03:10.0", 0x8086, 0x10ca, 0x020000).driver("igbvf").group(21).physfn("0000:03:00.0").net("enp3s16", 1);
        h.device("0000:03:10.2", 0x8086, 0x10ca, 0x020000).group(22).physfn("0000:03:00.0");
    }

    @Test
    void intelHostWithIommuOffersEveryTechnique() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        addSriovNic(h);
        HostPaths paths = new HostPaths(h.sys, h.proc, h.dev, h.state, null, List.of(fakeQemu()));
        HostCheck.Report r = HostCheck.run(paths, GIB);
        for (HostCheck.Result res : r.results()) {
            assertEquals(Status.PASS, res.status(), res.toString());
        }
        assertTrue(r.allPossible(Set.of(Technique.values())), r.techniques().toString());
        assertTrue(r.result("iommu-firmware").detail().contains("DMAR"));
        assertTrue(r.result("iommu-enabled").detail().contains("dmar0"));
        assertTrue(r.result("sriov-devices").detail().contains("0000:03:00.0 (2/7 VFs)"));
        assertTrue(r.techniques().get(Technique.FV).how().contains("KVM"));
    }

    @Test
    void amdHostNeedsNoCommandLineSwitch() {
        FakeHost h = new FakeHost(tmp).amdHostWithIommu();
        h.device("0000:01:00.0", 0x1b36, 0x0010, 0x010802).driver("nvme").group(3).sriov(2, List.of()).nvmeController("nvme0");
        HostCheck.Report r = HostCheck.run(h.paths(), GIB);
        assertEquals(Status.PASS, r.result("cpu-virt").status());
        assertTrue(r.result("cpu-virt").detail().contains("AMD-V"));
        assertTrue(r.result("iommu-firmware").detail().contains("IVRS"));
        assertEquals(Status.PASS, r.result("iommu-enabled").status());
        assertTrue(r.result("iommu-enabled").detail().contains("ivhd0"));
        assertEquals(Status.PASS, r.result("cmdline-iommu").status());
        assertEquals(Status.WARN, r.result("iommu-passthrough").status());
        assertTrue(r.techniques().get(Technique.VFIO).possible());
        assertTrue(r.techniques().get(Technique.SRIOV).possible());
        // No QEMU on the (empty) fixture PATH: the QEMU-based techniques are ruled out and say why.
        assertFalse(r.techniques().get(Technique.FV).possible());
        assertEquals(List.of("qemu"), r.techniques().get(Technique.FV).missing());
    }

    @Test
    void iommuOffGivesFirmwareAndCommandLineRemedies() {
        FakeHost h = new FakeHost(tmp).intelCpu(true).kvm();
        h.device("0000:00:02.0", 0x8086, 0x3e92, 0x030000).driver("i915");
        HostCheck.Report r = HostCheck.run(h.paths(), GIB);
        HostCheck.Result fw = r.result("iommu-firmware");
        assertEquals(Status.FAIL, fw.status());
        assertTrue(fw.remedy().contains("enable VT-d"), fw.remedy());
        HostCheck.Result on = r.result("iommu-enabled");
        assertEquals(Status.FAIL, on.status());
        assertTrue(on.remedy().contains("enable VT-d") && on.remedy().contains("add intel_iommu=on to the kernel command line"), on.remedy());
        assertEquals(Status.FAIL, r.result("cmdline-iommu").status());
        assertTrue(r.result("cmdline-iommu").remedy().contains("intel_iommu=on"));
        assertEquals(Status.FAIL, r.result("iommu-groups").status());
        assertEquals(Status.FAIL, r.result("interrupt-remapping").status());
        assertEquals(Status.FAIL, r.result("vfio-modules").status());
        assertFalse(r.techniques().get(Technique.VFIO).possible());
        assertTrue(r.techniques().get(Technique.VFIO).missing().containsAll(List.of("iommu-enabled", "iommu-groups", "vfio-modules")));
        assertFalse(r.techniques().get(Technique.SRIOV).possible());
        assertTrue(r.techniques().get(Technique.SRIOV).missing().contains("sriov-devices"));
    }

    @Test
    void firmwareOnButKernelOffAsksOnlyForTheCommandLine() {
        FakeHost h = new FakeHost(tmp).intelCpu(true).acpiTable("DMAR").cmdline("root=/dev/sda1 intel_iommu=off");
        HostCheck.Report r = HostCheck.run(h.paths(), GIB);
        assertEquals(Status.PASS, r.result("iommu-firmware").status());
        assertEquals(Status.FAIL, r.result("iommu-enabled").status());
        assertFalse(r.result("iommu-enabled").remedy().contains("firmware"), r.result("iommu-enabled").remedy());
        assertEquals(Status.FAIL, r.result("cmdline-iommu").status());
        assertTrue(r.result("cmdline-iommu").detail().contains("intel_iommu=off"));
    }

    @Test
    void unsafeInterruptsAreAWarningNotAPass() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        FakeHost.write(h.proc.resolve("interrupts"), "           CPU0\n  0:   10   IO-APIC   2-edge   timer\n");
        FakeHost.write(h.sys.resolve("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"), "Y\n");
        h.device("0000:02:00.0", 0x8086, 0x1533, 0x020000).driver("igb").group(4);
        HostCheck.Report r = HostCheck.run(h.paths(), GIB);
        assertEquals(Status.WARN, r.result("interrupt-remapping").status());
        assertTrue(r.techniques().get(Technique.VFIO).possible());
    }

    @Test
    void memlockBelowGuestSizeWarnsWithoutCapIpcLock() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        FakeHost.write(h.proc.resolve("self/status"), "Name:\tqemu\nCapEff:\t0000000000000000\n");
        HostCheck.Report r = HostCheck.run(h.paths(), 4 * GIB);
        assertEquals(Status.WARN, r.result("memlock").status());
        assertTrue(r.result("memlock").detail().contains("8 MiB"), r.result("memlock").detail());
        assertTrue(r.result("memlock").remedy().contains("ulimit -l"));
    }

    @Test
    void cliExitStatusFollowsTheRequestedTechniques() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        addSriovNic(h);
        CliRun ok = CliRun.host(h, "check", "--require", "vfio,sriov");
        assertEquals(0, ok.exit(), ok.out() + ok.err());
        assertTrue(ok.out().contains("PASS  iommu-enabled"), ok.out());
        assertTrue(ok.out().contains("All requested techniques"), ok.out());

        FakeHost off = new FakeHost(tmp.resolve("off")).intelCpu(false);
        CliRun bad = CliRun.host(off, "check", "--require", "vfio");
        assertEquals(Contract.CHECK_FAILED, bad.exit(), "3: the check ran and a requirement failed");
        assertTrue(bad.out().contains("FAIL  iommu-enabled"), bad.out());
        assertTrue(bad.out().contains("remedy: enable VT-d"), bad.out());

        CliRun json = CliRun.host(off, "check", "--json", "--require", "pv");
        assertTrue(json.out().contains("\"id\": \"iommu-enabled\""), json.out());
        assertTrue(json.out().contains("\"requested\": [\n    \"pv\"\n  ]"), json.out());

        CliRun usage = CliRun.host(off, "check", "--require", "warp");
        assertEquals(2, usage.exit());
        assertTrue(usage.err().contains("unknown technique 'warp'"), usage.err());
        assertTrue(usage.noStackTrace(), usage.err());
    }

    private Path fakeQemu() {
        Path bin = tmp.resolve("bin");
        FakeHost.write(bin.resolve("qemu-system-x86_64"), "#!/bin/sh\n");
        assertTrue(bin.resolve("qemu-system-x86_64").toFile().setExecutable(true));
        return bin;
    }
}
