// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.cli.HostCommand;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.QemuGuest;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.net.URISyntaxException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

/**
 * iovirt's host commands against a real Linux kernel: a QEMU guest with an emulated VT-d IOMMU (interrupt
 * remapping on) and an NVMe PF with SR-IOV (QEMU's nvme, sriov_max_vfs=2) runs this build of iovirt — the host's
 * JDK and classes shared read-only over virtio-9p, chrooted into — so sysfs, /dev/vfio, the nvme driver and the
 * NVMe Virtualization Management command are the kernel's and QEMU's own, not fixtures.
 */
@Tag("guest")
class HostNestedGuestTest {
    /** JVM start-up and class loading over 9p under TCG dominate; one JVM runs all commands (see GuestScriptMain). */
    private static final Duration TIMEOUT = Duration.ofMinutes(12);

    private static final String PF = "0000:01:00.0";
    private static final String VF1 = "0000:01:00.1";
    private static final String VF2 = "0000:01:00.2";

    @TempDir
    Path dir;

    @Test
    void checkProvisionBindAndAssignOnARealKernel() throws Exception {
        Path pfImage = dir.resolve("pf.raw");
        try (RandomAccessFile f = new RandomAccessFile(pfImage.toFile(), "rw")) {
            f.setLength(64L << 20);
        }
        String state = " --state-dir /run/iovirt";
        List<String> commands = List.of(
                "host check --require vfio,sriov --json" + state, // 0
                "host vfs " + PF + " --count 2 --no-provision --json" + state, // 1 VFs without resources
                "@wait-nvme " + VF1, // 2
                "host vfs " + PF + " --count 0" + state, // 3
                "host vfs " + PF + " --count 2 --no-autoprobe --json" + state, // 4 provisioned
                "host bind " + VF1 + " --json" + state, // 5
                "host assign " + VF1 + " --vm vm-a --json" + state, // 6
                "host assign " + VF1 + " --vm vm-b" + state, // 7
                "host devices " + VF1 + " --json" + state, // 8
                "host unbind " + VF1 + state, // 9 refused: assigned
                "host release " + VF1 + " --vm vm-a" + state, // 10
                "host unbind " + VF1 + " --json" + state, // 11
                "host vfs " + PF + " --count 0" + state, // 12
                "host vfs " + PF + " --count 2 --autoprobe --json" + state, // 13
                "@wait-nvme " + VF1, // 14
                "@wait-nvme " + VF2, // 15
                "host bind " + VF2 + " --json" + state, // 16 from nvme to vfio-pci
                "host reset " + VF2 + " --json" + state, // 17
                "host unbind " + VF2 + " --json" + state, // 18 back to nvme
                "@wait-nvme " + VF2, // 19
                "host bind " + VF1 + " --json" + state, // 20
                "host assign " + VF1 + " --vm vm-c --json" + state, // 21
                "host unbind " + PF + state, // 22 refused: the VFs would vanish with the PF's driver
                "@write /sys/bus/pci/devices/" + PF + "/sriov_numvfs 0", // 23 VFs destroyed behind iovirt's back
                "host assignments --json" + state, // 24
                "host config --vm vm-c" + state, // 25 refused: the device is gone
                "host vfs " + PF + " --count 2 --autoprobe --json" + state, // 26 a new VF where vm-c's was
                "host assignments --json" + state, // 27
                "@wait-nvme " + VF1, // 28
                "@wait-nvme " + VF2); // 29
        StringBuilder quoted = new StringBuilder();
        for (String c : commands) {
            quoted.append(" '").append(c).append('\'');
        }
        Path jdk = Path.of(ProcessHandle.current().info().command().orElseThrow())
                .toRealPath()
                .getParent()
                .getParent();
        String classpath = String.join(
                ":", codeSource(HostCommand.class), codeSource(GuestScriptMain.class), codeSource(CommandLine.class));
        for (String p : List.of(jdk.toString(), classpath)) {
            assertFalse(
                    p.startsWith("/run/") || p.contains(":/run/"), "the guest mounts a tmpfs over /run, hiding " + p);
        }
        String payload = """
                set -u
                mkdir -p /host
                mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /host || exit 90
                mount -t proc proc /host/proc && mount -t sysfs sysfs /host/sys && mount -t devtmpfs devtmpfs /host/dev \
                  && mount -t tmpfs tmpfs /host/run || exit 91
                JDK=%s
                chroot /host env LD_LIBRARY_PATH=$JDK/lib $JDK/bin/java --enable-native-access=ALL-UNNAMED \
                  -XX:-UsePerfData -Djava.io.tmpdir=/run -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xmx192m -cp %s io.iovirt.host.GuestScriptMain %s
                echo "java_exit=$?"
                for vf in %s %s; do echo "driver_$vf=$(basename "$(readlink /sys/bus/pci/devices/$vf/driver)")"; done
                dmesg | grep -e nvme -e vfio | sed 's/^/dmesg: /'
                """.formatted(jdk, classpath, quoted, VF1, VF2);
        GuestResult r = QemuGuest.builder(GuestImage.ensure())
                .workDir(dir)
                .name("host-nested")
                .memoryMiB(1024)
                .machineOptions("kernel-irqchip=split")
                .modules("virtio_pci", "9pnet_virtio", "9p", "nvme", "vfio_pci")
                .kernelArgs("intel_iommu=on")
                .args(
                        "-device",
                        "intel-iommu,intremap=on,caching-mode=on",
                        "-device",
                        "pcie-root-port,id=rp1,chassis=1,slot=1",
                        "-device",
                        "nvme-subsys,id=subsys0,nqn=subsys0",
                        "-device",
                        "nvme,id=nvme0,serial=sriovpf,bus=rp1,subsys=subsys0,sriov_max_vfs=2,"
                                + "sriov_vq_flexible=4,sriov_vi_flexible=2,max_ioqpairs=6,msix_qsize=4",
                        "-drive",
                        "file=" + QemuGuest.escape(pfImage.toString()) + ",if=none,id=nvm0,format=raw",
                        "-device",
                        "nvme-ns,drive=nvm0,bus=nvme0,nsid=1",
                        // multidevs=remap: /proc, /sys, /dev of the host are separate devices; without it their
                        // inode numbers collide and the guest mounts proc on the wrong directory.
                        "-virtfs",
                        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
                .payload(payload)
                .build()
                .run(TIMEOUT);
        System.out.println(r.output()); // kept in the surefire report: what iovirt printed inside the guest
        assertEquals(0, r.exitCode(), r.consoleTail(80));
        assertEquals("0", r.field("java_exit"), r.output());
        List<Section> s = sections(r.output(), commands.size());

        // host check: IOMMU, interrupt remapping and vfio are PASS; VFIO and SR-IOV possible.
        s.get(0).assertRc(0);
        for (String id : List.of(
                "iommu-firmware",
                "iommu-enabled",
                "interrupt-remapping",
                "vfio-modules",
                "vfio-device",
                "iommu-groups",
                "sriov-devices")) {
            assertTrue(
                    Pattern.compile("\"id\": \"" + id + "\",\\s*\"status\": \"PASS\"")
                            .matcher(s.get(0).out)
                            .find(),
                    id + ":\n" + s.get(0).out);
        }
        assertTrue(s.get(0).out.contains("\"ok\": true"), s.get(0).out);

        // VFs created without resources: their secondary controllers are offline with no queues, and the kernel's
        // nvme driver cannot bring them up.
        s.get(1).assertRc(0);
        assertEquals(2, count(s.get(1).out, "\"state\": \"offline\""), s.get(1).out);
        assertEquals(2, count(s.get(1).out, "\"queues\": 0,"), s.get(1).out);
        assertTrue(s.get(2).out.contains("nvme-state " + VF1 + "=none"), s.get(2).out);

        // host vfs with provisioning: each secondary controller online with 2 queues (admin + 1 I/O pair), 1 interrupt.
        s.get(3).assertRc(0);
        s.get(4).assertRc(0);
        String vfs = s.get(4).out;
        assertTrue(vfs.contains("\"vfs\": 2"), vfs);
        assertEquals(2, count(vfs, "\"state\": \"online\""), vfs);
        assertEquals(2, count(vfs, "\"queues\": 2,"), vfs);
        assertEquals(2, count(vfs, "\"io_queue_pairs\": 1,"), vfs);
        assertEquals(2, count(vfs, "\"interrupts\": 1"), vfs);

        // host bind: the VF is on vfio-pci and its group's /dev/vfio/N exists.
        s.get(5).assertRc(0);
        assertTrue(s.get(5).out.contains("\"driver_after\": \"vfio-pci\""), s.get(5).out);
        assertTrue(s.get(5).out.contains("\"vfio_device_present\": true"), s.get(5).out);
        assertTrue(
                Pattern.compile("\"vfio_device\": \"/dev/vfio/\\d+\"")
                        .matcher(s.get(5).out)
                        .find(),
                s.get(5).out);

        // host assign: vm-a gets it, vm-b is refused; the device list says so.
        s.get(6).assertRc(0);
        assertTrue(s.get(6).out.contains("\"vm\": \"vm-a\""), s.get(6).out);
        s.get(7).assertRc(1);
        assertTrue(s.get(7).err.contains(VF1 + " is already assigned to VM vm-a"), s.get(7).err);
        s.get(8).assertRc(0);
        assertTrue(s.get(8).out.contains("\"assigned_to\": \"vm-a\""), s.get(8).out);
        assertTrue(s.get(8).out.contains("\"physfn\": \"" + PF + "\""), s.get(8).out);

        // Unbinding an assigned device is refused; after release it goes back to no driver.
        s.get(9).assertRc(1);
        assertTrue(s.get(9).err.contains("it is assigned to VM vm-a"), s.get(9).err);
        s.get(10).assertRc(0);
        s.get(11).assertRc(0);
        assertTrue(s.get(11).out.contains("\"driver_before\": \"vfio-pci\""), s.get(11).out);

        // Recreated, provisioned, with autoprobe: the kernel's nvme driver brings both VF controllers up.
        s.get(12).assertRc(0);
        s.get(13).assertRc(0);
        assertTrue(s.get(14).out.contains("nvme-state " + VF1 + "=live"), s.get(14).out);
        assertTrue(s.get(15).out.contains("nvme-state " + VF2 + "=live"), s.get(15).out);

        // A device the host driver holds: bind takes it from nvme, reset works on vfio-pci, unbind gives it back
        // to the remembered nvme driver, whose controller comes up again.
        s.get(16).assertRc(0);
        assertTrue(s.get(16).out.contains("\"driver_before\": \"nvme\""), s.get(16).out);
        assertTrue(s.get(16).out.contains("\"driver_after\": \"vfio-pci\""), s.get(16).out);
        assertTrue(s.get(16).out.contains("/drivers/nvme/unbind <- " + VF2), s.get(16).out);
        s.get(17).assertRc(0);
        assertTrue(s.get(17).out.contains("/reset <- 1"), s.get(17).out);
        s.get(18).assertRc(0);
        assertTrue(s.get(18).out.contains("\"driver_after\": \"nvme\""), s.get(18).out);
        assertTrue(s.get(18).out.contains("\"note\": \"restored to nvme\""), s.get(18).out);
        assertTrue(s.get(19).out.contains("nvme-state " + VF2 + "=live"), s.get(19).out);

        // A PF whose VF a VM owns keeps its driver; when its VFs are destroyed anyway (sriov_numvfs written by hand),
        // the assignment shows as gone, gets no QEMU configuration, and does not pass to the new VF at that address.
        s.get(20).assertRc(0);
        s.get(21).assertRc(0);
        s.get(22).assertRc(1);
        assertTrue(s.get(22).err.contains("its VF " + VF1 + " is assigned to VM vm-c"), s.get(22).err);
        assertTrue(s.get(23).out.contains("wrote "), s.get(23).out);
        s.get(24).assertRc(0);
        assertTrue(s.get(24).out.contains("\"present\": false"), s.get(24).out);
        s.get(25).assertRc(1);
        assertTrue(
                s.get(25).err.contains(VF1 + " is assigned to VM vm-c but does not exist on this host"), s.get(25).err);
        s.get(26).assertRc(0);
        assertTrue(
                s.get(26).out.contains("VF " + VF1 + " was assigned to VM vm-c and had been destroyed outside iovirt"),
                s.get(26).out);
        s.get(27).assertRc(0);
        assertEquals("[]", s.get(27).out.strip(), s.get(27).out);
        assertTrue(s.get(28).out.contains("nvme-state " + VF1 + "=live"), s.get(28).out);
        assertTrue(s.get(29).out.contains("nvme-state " + VF2 + "=live"), s.get(29).out);
        assertEquals("nvme", r.field("driver_" + VF1), r.output());
        assertEquals("nvme", r.field("driver_" + VF2), r.output());
    }

    private record Section(String command, String out, String err, int rc) {
        void assertRc(int expected) {
            assertEquals(expected, rc, command + "\nstdout:\n" + out + "\nstderr:\n" + err);
        }
    }

    private static List<Section> sections(String output, int expected) {
        Pattern p = Pattern.compile("=== BEGIN (\\d+): (.*)\\n(?s)(.*?)=== STDERR \\1\\n(.*?)=== END \\1 rc=(\\d+)");
        Matcher m = p.matcher(output);
        List<Section> out = new ArrayList<>();
        while (m.find()) {
            out.add(new Section(m.group(2), m.group(3), m.group(4), Integer.parseInt(m.group(5))));
        }
        assertEquals(expected, out.size(), "the guest ran fewer commands than expected:\n" + output);
        return out;
    }

    private static int count(String s, String what) {
        int n = 0;
        for (int i = s.indexOf(what); i >= 0; i = s.indexOf(what, i + 1)) {
            n++;
        }
        return n;
    }

    private static String codeSource(Class<?> c) throws URISyntaxException, IOException {
        return Path.of(c.getProtectionDomain().getCodeSource().getLocation().toURI())
                .toRealPath()
                .toString();
    }
}
