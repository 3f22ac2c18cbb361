// SPDX-License-Identifier: Apache-2.0
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
        h.device("0000:03:00.0", 0x8086, 0x10c9, 0x020000)
                .driver("igb")
                .group(20)
                .sriov(7, List.of("0000:03:10.0", "0000:03:10.2"))
                .net("enp3s0f0", 8);
        h.device("0000:03:10.0", 0x8086, 0x10ca, 0x020000)
                .driver("igbvf")
                .group(21)
                .physfn("0000:03:00.0")
                .net("enp3s16", 1);
        h.device("0000:03:10.2", 0x8086, 0x10ca, 0x020000).group(22).physfn("0000:03:00.0");
    }

    @Test
    void intelHostWithIommuOffersEveryTechnique() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        addSriovNic(h);
        HostPaths paths = new HostPaths(h.sys, h.proc, h.dev, h.state, null, List.of(fakeQemu()));
        HostCheck.Report r = HostCheck.run(paths, GIB, h.kvmProbe());
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
        h.device("0000:01:00.0", 0x1b36, 0x0010, 0x010802)
                .driver("nvme")
                .group(3)
                .sriov(2, List.of())
                .nvmeController("nvme0");
        HostCheck.Report r = HostCheck.run(h.paths(), GIB, h.kvmProbe());
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
        assertTrue(
                on.remedy().contains("enable VT-d")
                        && on.remedy().contains("add intel_iommu=on to the kernel command line"),
                on.remedy());
        assertEquals(Status.FAIL, r.result("cmdline-iommu").status());
        assertTrue(r.result("cmdline-iommu").remedy().contains("intel_iommu=on"));
        assertEquals(Status.FAIL, r.result("iommu-groups").status());
        assertEquals(Status.FAIL, r.result("interrupt-remapping").status());
        assertEquals(Status.FAIL, r.result("vfio-modules").status());
        assertFalse(r.techniques().get(Technique.VFIO).possible());
        assertTrue(r.techniques()
                .get(Technique.VFIO)
                .missing()
                .containsAll(List.of("iommu-enabled", "iommu-groups", "vfio-modules")));
        assertFalse(r.techniques().get(Technique.SRIOV).possible());
        assertTrue(r.techniques().get(Technique.SRIOV).missing().contains("sriov-devices"));
    }

    /**
     * A VT-d IOMMU (ACPI DMAR) on an AMD CPU — a QEMU guest with -device intel-iommu on an AMD host, or under TCG,
     * whose default CPU says AuthenticAMD — without intel_iommu=on: the IOMMU is off, and the remedy is intel_iommu=on.
     * It used to follow the CPU: "AMD-Vi needs no command-line switch" passed and "remove amd_iommu=off" was advised.
     */
    @Test
    void theIommuKindFollowsTheFirmwareTableNotTheCpu() {
        FakeHost h = new FakeHost(tmp).amdCpu(true).acpiTable("DMAR").vfio();
        HostCheck.Report r = HostCheck.run(h.paths(), GIB);
        assertEquals(Status.FAIL, r.result("iommu-enabled").status());
        assertTrue(
                r.result("iommu-enabled").remedy().contains("add intel_iommu=on"),
                r.result("iommu-enabled").remedy());
        assertEquals(
                Status.FAIL,
                r.result("cmdline-iommu").status(),
                r.result("cmdline-iommu").toString());
        assertTrue(
                r.result("cmdline-iommu").remedy().contains("intel_iommu=on"),
                r.result("cmdline-iommu").toString());
        // and the other way round: AMD-Vi (IVRS) on a CPU that does not say AMD (Hygon) needs no switch
        FakeHost hygon = new FakeHost(tmp.resolve("hygon"))
                .cpu("HygonGenuine", "fpu svm sse2")
                .acpiTable("IVRS")
                .iommu("ivhd0");
        assertEquals(
                Status.PASS,
                HostCheck.run(hygon.paths(), GIB).result("cmdline-iommu").status());
    }

    @Test
    void firmwareOnButKernelOffAsksOnlyForTheCommandLine() {
        FakeHost h = new FakeHost(tmp).intelCpu(true).acpiTable("DMAR").cmdline("root=/dev/sda1 intel_iommu=off");
        HostCheck.Report r = HostCheck.run(h.paths(), GIB);
        assertEquals(Status.PASS, r.result("iommu-firmware").status());
        assertEquals(Status.FAIL, r.result("iommu-enabled").status());
        assertFalse(
                r.result("iommu-enabled").remedy().contains("firmware"),
                r.result("iommu-enabled").remedy());
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
        assertTrue(
                r.result("memlock").detail().contains("8 MiB"),
                r.result("memlock").detail());
        assertTrue(r.result("memlock").remedy().contains("ulimit -l"));
    }

    /** The host: /dev/kvm works (PVM) on a CPU without vmx/svm. A WARN naming it, and TCG everywhere. */
    @Test
    void kvmWithoutHardwareVirtualizationIsAWarningAndTheSummarySaysTcg() {
        FakeHost h = new FakeHost(tmp).intelCpu(false).kvm().netDevicesAndHugepages(0);
        HostPaths paths = new HostPaths(h.sys, h.proc, h.dev, h.state, null, List.of(fakeQemu()));
        HostCheck.Report r = HostCheck.run(paths, GIB, h.kvmProbe());
        HostCheck.Result kvm = r.result("kvm");
        assertEquals(Status.WARN, kvm.status(), kvm.toString());
        assertTrue(
                kvm.detail().contains("PVM / software-nested KVM")
                        && kvm.detail().contains("iovirt uses TCG"),
                kvm.detail());
        assertTrue(kvm.remedy().contains("VT-x/AMD-V"), kvm.remedy());
        assertEquals(Status.FAIL, r.result("cpu-virt").status());
        assertEquals(io.iovirt.vm.Accelerator.Kind.TCG, r.accelerator().kind());
        for (Technique t : Technique.values()) {
            assertFalse(
                    r.techniques().get(t).how().contains("KVM-accelerated"),
                    t + ": " + r.techniques().get(t).how());
        }
        assertTrue(r.techniques().get(Technique.FV).possible());
        assertTrue(r.techniques().get(Technique.FV).how().contains("under TCG"));
        assertFalse(r.techniques().get(Technique.PVHVM).possible());
    }

    @Test
    void kvmTheUserCannotOpenIsAFailWithTheKvmGroupAsRemedy() {
        FakeHost h = new FakeHost(tmp).intelCpu(true).kvm(FakeHost.KvmKind.DENIED);
        HostCheck.Report r = HostCheck.run(h.paths(), GIB, h.kvmProbe());
        HostCheck.Result kvm = r.result("kvm");
        assertEquals(Status.FAIL, kvm.status());
        assertTrue(
                kvm.detail().contains("EACCES") && kvm.detail().contains("as user " + System.getProperty("user.name")),
                kvm.detail());
        assertTrue(kvm.remedy().contains("kvm group"), kvm.remedy());
        assertTrue(r.techniques().get(Technique.PVHVM).missing().contains("kvm"));
        assertEquals(io.iovirt.vm.Accelerator.Kind.TCG, r.accelerator().kind());
    }

    @Test
    void kvmThatCannotCreateAVmIsAFail() {
        FakeHost h = new FakeHost(tmp).amdCpu(true).kvm(FakeHost.KvmKind.NO_VM);
        HostCheck.Result kvm = HostCheck.run(h.paths(), GIB, h.kvmProbe()).result("kvm");
        assertEquals(Status.FAIL, kvm.status());
        assertTrue(kvm.detail().contains("KVM_CREATE_VM failed: EBUSY"), kvm.detail());
    }

    /** No /dev/kvm at all: FAIL, modprobe as the remedy on a CPU with VT-x, TCG as the decision. */
    @Test
    void noKvmDevice() {
        FakeHost h = new FakeHost(tmp).intelCpu(true);
        HostCheck.Report r = HostCheck.run(h.paths(), GIB);
        assertEquals(Status.FAIL, r.result("kvm").status());
        assertTrue(
                r.result("kvm").detail().contains("does not exist"),
                r.result("kvm").detail());
        assertTrue(
                r.result("kvm").remedy().contains("modprobe kvm_intel"),
                r.result("kvm").remedy());
        assertEquals(io.iovirt.vm.Accelerator.Kind.TCG, r.accelerator().kind());
        assertTrue(
                r.accelerator().reason().contains("does not exist"),
                r.accelerator().reason());
    }

    /** The real probe on a fixture node that is a plain file: the ioctl step says it is not KVM. */
    @Test
    void aKvmNodeThatIsNotKvm() {
        FakeHost h = new FakeHost(tmp).intelCpu(true).kvm();
        HostCheck.Result kvm = HostCheck.run(h.paths(), GIB).result("kvm");
        assertEquals(Status.FAIL, kvm.status());
        assertTrue(kvm.detail().contains("not a KVM device: KVM_GET_API_VERSION failed with ENOTTY"), kvm.detail());
    }

    @Test
    void tunVhostNetAndHugepagesSayWhatTheyMatterFor() {
        FakeHost bare = new FakeHost(tmp.resolve("bare")).intelCpu(true);
        HostCheck.Report r = HostCheck.run(bare.paths(), GIB);
        assertEquals(Status.WARN, r.result("tun").status());
        assertTrue(r.result("tun").detail().contains("tap"), r.result("tun").detail());
        assertTrue(r.result("tun").remedy().contains("modprobe tun"));
        assertEquals(Status.WARN, r.result("vhost-net").status());
        assertTrue(
                r.result("vhost-net").detail().contains("vhost=on"),
                r.result("vhost-net").detail());
        assertTrue(r.result("vhost-net").remedy().contains("modprobe vhost_net"));
        assertEquals(Status.WARN, r.result("hugepages").status(), "no meminfo in the fixture");
        for (String id : List.of("tun", "vhost-net", "hugepages")) {
            assertTrue(r.result(id).gates().isEmpty(), id + " rules out no technique");
        }

        FakeHost none = new FakeHost(tmp.resolve("none")).intelCpu(true).netDevicesAndHugepages(0);
        HostCheck.Result huge = HostCheck.run(none.paths(), GIB).result("hugepages");
        assertEquals(Status.WARN, huge.status());
        assertTrue(
                huge.detail().contains("vhost-user backends") && huge.detail().contains("4 KiB pages"), huge.detail());
        assertTrue(huge.remedy().contains("nr_hugepages"), huge.remedy());

        FakeHost full = new FakeHost(tmp.resolve("full")).intelCpu(true).netDevicesAndHugepages(512);
        HostCheck.Report ok = HostCheck.run(full.paths(), GIB);
        assertEquals(Status.PASS, ok.result("tun").status());
        assertEquals(Status.PASS, ok.result("vhost-net").status());
        assertEquals(Status.PASS, ok.result("hugepages").status());
        assertTrue(
                ok.result("hugepages").detail().startsWith("512 huge pages of 2 MiB reserved, 512 free"),
                ok.result("hugepages").detail());
    }

    /**
     * /dev/kvm is opened as the user running the check, for real: a node that user may not open is a FAIL naming the
     * user, with the kvm group as the remedy. As root the check runs in a child JVM switched to nobody (setpriv);
     * as any other user it runs here, on a node of mode 000.
     */
    @Test
    void kvmIsCheckedAsTheInvokingUser() throws Exception {
        Path root = java.nio.file.Files.createTempDirectory(Path.of("/var/tmp"), "iovirt-kvm-user-");
        try {
            FakeHost h = new FakeHost(root).intelCpu(true).kvm();
            java.nio.file.Files.setPosixFilePermissions(h.dev.resolve("kvm"), java.util.Set.of());
            try (var all = java.nio.file.Files.walk(root)) {
                for (Path p : (Iterable<Path>) all::iterator) {
                    if (java.nio.file.Files.isDirectory(p)) {
                        java.nio.file.Files.setPosixFilePermissions(
                                p, java.nio.file.attribute.PosixFilePermissions.fromString("rwxr-xr-x"));
                    }
                }
            }
            String out;
            String user;
            if (new com.sun.security.auth.module.UnixSystem().getUid() == 0) {
                io.iovirt.testing.Require.program("setpriv", "apt-get install util-linux");
                user = "nobody";
                List<String> cmd = new java.util.ArrayList<>(
                        List.of("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"));
                // nobody cannot read root's Maven repository, nor target/classes of a checkout under /root
                String cp = io.iovirt.testing.ClassPathCopy.readableByAll(
                        root, io.iovirt.cli.Main.class, picocli.CommandLine.class);
                cmd.addAll(List.of(
                        Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                        "--enable-native-access=ALL-UNNAMED",
                        "-cp",
                        cp,
                        "io.iovirt.cli.Main",
                        "host",
                        "check",
                        "--json"));
                cmd.addAll(h.cliRoots());
                Path log = root.resolve("check.log");
                try (io.iovirt.vm.ChildProcess p = io.iovirt.vm.ChildProcess.builder(cmd)
                        .name("iovirt host check as nobody")
                        .log(log)
                        .start()) {
                    assertTrue(p.waitFor(java.time.Duration.ofSeconds(120)), p.log());
                    out = p.log();
                }
            } else {
                user = System.getProperty("user.name");
                out = CliRun.host(h, "check", "--json").out();
            }
            assertTrue(out.contains("\"id\": \"kvm\",\n      \"status\": \"FAIL\""), out);
            assertTrue(out.contains("read-write as this user: EACCES") && out.contains("(as user " + user + ")"), out);
            assertTrue(out.contains("add the user to the kvm group"), out);
        } finally {
            try (var all = java.nio.file.Files.walk(root)) {
                all.sorted(java.util.Comparator.reverseOrder())
                        .forEach(p -> p.toFile().delete());
            }
        }
    }

    /** Text and JSON carry the same checks and the same accelerator decision. */
    @Test
    void textAndJsonAgree() {
        FakeHost h = new FakeHost(tmp).intelCpu(false).kvm().netDevicesAndHugepages(0);
        CliRun text = CliRun.host(h, "check");
        CliRun json = CliRun.host(h, "check", "--json");
        assertTrue(text.noStackTrace() && json.noStackTrace(), text.err() + json.err());
        assertEquals(text.exit(), json.exit());
        java.util.regex.Matcher line =
                java.util.regex.Pattern.compile("(?m)^(PASS|WARN|FAIL)  (\\S+)").matcher(text.out());
        int checks = 0;
        while (line.find()) {
            checks++;
            assertTrue(
                    json.out()
                            .contains(
                                    "\"id\": \"" + line.group(2) + "\",\n      \"status\": \"" + line.group(1) + "\""),
                    line.group() + ": " + json.out());
        }
        assertTrue(checks >= 15, text.out());
        assertTrue(text.out().contains("Guests run under TCG (KVM unusable: "), text.out());
        assertTrue(
                json.out().contains("\"accelerator\": {\n    \"kind\": \"tcg\",\n    \"reason\": \"KVM unusable: "),
                json.out());
        assertTrue(json.out().contains("\"kvm_usable\": false"), json.out());
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
