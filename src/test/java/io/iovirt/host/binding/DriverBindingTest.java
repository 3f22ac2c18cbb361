// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.binding;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.host.DevicesTest;
import io.iovirt.host.FakeHost;
import io.iovirt.host.HostConfigException;
import io.iovirt.host.StateStore;
import io.iovirt.host.assign.Assignability;
import io.iovirt.host.assign.Assigning;
import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.host.assign.DeviceReport;
import io.iovirt.pci.Bdf;
import io.iovirt.util.ActionableException;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The binding logic on fixture trees: which files are written with what, and what is refused. A fixture cannot
 * probe drivers, so every bind here ends in "the kernel did not bind" and a rollback — the successful probe is
 * proven against a real kernel in HostNestedGuestTest.
 */
class DriverBindingTest {
    @TempDir
    Path tmp;

    private DriverBinding binding(FakeHost h) {
        return new DriverBinding(h.paths(), Duration.ZERO, false);
    }

    @Test
    void bindWritesOverrideUnbindAndProbeThenRollsBackWhenTheKernelDoesNotBind() {
        FakeHost h = DevicesTest.desktop(tmp);
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:03:10.0"), "vfio-pci", false));
        assertTrue(
                e.getMessage().contains("the kernel did not bind 0000:03:10.0 to vfio-pci (driver now: igbvf"),
                e.getMessage());
        assertTrue(e.getMessage().contains("gave it back to igbvf"), e.getMessage());
        // What the kernel was told, in order: override, unbind from igbvf, probe — then the rollback.
        assertEquals("0000:03:10.0", h.read("bus/pci/drivers_probe"));
        assertEquals("0000:03:10.0", h.read("bus/pci/drivers/igbvf/unbind"));
        assertEquals("0000:03:10.0", h.read("bus/pci/drivers/igbvf/bind"));
        assertEquals("\n", h.read("devices/pci0000:00/0000:03:10.0/driver_override"));
        // A failed bind leaves nothing remembered.
        assertNull(binding(h).previousDriver(Bdf.parse("0000:03:10.0")));
    }

    /**
     * The probe request fails (the kernel refuses the write) after the device has left its driver: the override is
     * cleared, the device goes back to its driver, and nothing stays remembered — it used to stay unbound with
     * driver_override vfio-pci, and the drivers table named igbvf for a bind that never happened. The kernel's part
     * (the unbind, the refused probe) is played after the bind's PCI scan: /proc/swaps is a FIFO, which the bind's
     * host usage scan (after the PCI scan, before any write) waits on until the device has no driver link any more
     * and drivers_probe refuses writes.
     */
    @Test
    void aFailedProbeWriteGivesTheDeviceBackAndForgetsIt() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        Path probe = h.sys.resolve("bus/pci/drivers_probe");
        ActionableException e = bindWithKernelActing(h, "0000:03:10.0", () -> {
            Files.delete(h.sys.resolve("devices/pci0000:00/0000:03:10.0/driver"));
            Files.delete(h.sys.resolve("bus/pci/drivers/igbvf/0000:03:10.0"));
            Files.delete(probe);
            Files.createDirectory(probe); // a write to it fails, as the kernel's does when it refuses
        });
        assertEquals("\n", h.read("devices/pci0000:00/0000:03:10.0/driver_override"), "override cleared");
        assertEquals("0000:03:10.0", h.read("bus/pci/drivers/igbvf/unbind"));
        assertEquals("0000:03:10.0", h.read("bus/pci/drivers/igbvf/bind"), "given back to igbvf");
        assertNull(binding(h).previousDriver(Bdf.parse("0000:03:10.0")), "nothing remembered");
        assertTrue(
                e.getMessage()
                        .startsWith("binding 0000:03:10.0 to vfio-pci failed: writing '0000:03:10.0' to " + probe),
                e.getMessage());
        assertTrue(
                e.getMessage().contains("driver now: none; override cleared, gave it back to igbvf"), e.getMessage());
    }

    interface KernelPart {
        void run() throws IOException;
    }

    /**
     * Binds {@code bdf} to vfio-pci with the kernel's part ({@code kernel}) played after the bind's PCI scan and
     * before its first write: /proc/swaps is a FIFO, which the bind's host usage scan waits on until {@code kernel}
     * has run. Returns what the bind threw.
     */
    private ActionableException bindWithKernelActing(FakeHost h, String bdf, KernelPart kernel) throws Exception {
        Path swaps = h.proc.resolve("swaps");
        Files.deleteIfExists(swaps);
        assertEquals(0, new ProcessBuilder("mkfifo", swaps.toString()).start().waitFor());
        Thread t = new Thread(() -> {
            try (OutputStream out = Files.newOutputStream(swaps)) { // returns once the bind opens the FIFO
                kernel.run();
                out.write("Filename\tType\tSize\tUsed\tPriority\n".getBytes(StandardCharsets.US_ASCII));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        });
        t.setDaemon(true);
        t.start();
        try {
            return assertThrows(ActionableException.class, () -> binding(h).bind(Bdf.parse(bdf), "vfio-pci", false));
        } finally {
            t.join(30_000);
            if (t.isAlive()) {
                new FileInputStream(swaps.toFile()).close(); // release the writer; the assertion above failed
            }
        }
    }

    /**
     * Another actor moved the device to another driver between the bind's scan and its unbind (which then fails, as
     * the kernel's unbind of a device that driver no longer has does): the device is left with that driver — not
     * taken from it by a rollback — and only the override is cleared.
     */
    @Test
    void aDeviceAnotherActorMovedMeanwhileIsLeftWhereItIs() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp).driver("ixgbevf");
        ActionableException e = bindWithKernelActing(h, "0000:03:10.0", () -> {
            FakeHost.relink(
                    h.sys.resolve("devices/pci0000:00/0000:03:10.0/driver"), "../../../bus/pci/drivers/ixgbevf");
            Path unbind = h.sys.resolve("bus/pci/drivers/igbvf/unbind");
            Files.delete(unbind);
            Files.createDirectory(unbind);
        });
        assertEquals("\n", h.read("devices/pci0000:00/0000:03:10.0/driver_override"), "override cleared");
        assertEquals("", h.read("bus/pci/drivers/ixgbevf/unbind"), "not taken from ixgbevf");
        assertEquals("", h.read("bus/pci/drivers/igbvf/bind"));
        assertNull(binding(h).previousDriver(Bdf.parse("0000:03:10.0")), "nothing remembered");
        assertTrue(
                e.getMessage().contains("driver now: ixgbevf; override cleared, left bound to ixgbevf"),
                e.getMessage());
    }

    /**
     * The unbind is refused (the device is still with its driver): only the override is cleared — the device is not
     * taken from its driver by the rollback — and nothing stays remembered.
     */
    @Test
    void aFailedUnbindWriteClearsTheOverrideAndLeavesTheDriver() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        Path unbind = h.sys.resolve("bus/pci/drivers/igbvf/unbind");
        Files.delete(unbind);
        Files.createDirectory(unbind);
        ActionableException e = assertThrows(
                ActionableException.class, () -> binding(h).bind(Bdf.parse("0000:03:10.0"), "vfio-pci", false));
        assertEquals("\n", h.read("devices/pci0000:00/0000:03:10.0/driver_override"), "override cleared");
        assertEquals("", h.read("bus/pci/drivers_probe"), "no probe after the failed unbind");
        assertEquals("", h.read("bus/pci/drivers/igbvf/bind"), "not rebound: it never left igbvf");
        assertNull(binding(h).previousDriver(Bdf.parse("0000:03:10.0")), "nothing remembered");
        assertTrue(e.getMessage().contains("override cleared, left bound to igbvf"), e.getMessage());
    }

    /**
     * The first write fails (a read-only /sys in a container whose state directory is writable): the device never
     * moved, so the row naming its previous driver, written just before, must not stay — even though clearing the
     * override fails the same way.
     */
    @Test
    void aBindWhoseFirstWriteFailsRemembersNothing() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        Path override = h.sys.resolve("devices/pci0000:00/0000:03:10.0/driver_override");
        ActionableException e = bindWithKernelActing(h, "0000:03:10.0", () -> {
            Files.delete(override); // after the scan read it: every write to it fails from now on
            Files.createDirectory(override);
        });
        assertTrue(e.getMessage().contains("clearing the override failed too"), e.getMessage());
        assertNull(binding(h).previousDriver(Bdf.parse("0000:03:10.0")), "nothing remembered");
        assertFalse(binding(h).boundByIovirt(Bdf.parse("0000:03:10.0")));
    }

    @Test
    void bindOfAnUnboundDeviceWritesOnlyOverrideAndProbe() {
        FakeHost h = DevicesTest.desktop(tmp);
        // Record writes by making the rollback's target visible: the device had no driver, so no bind file is written.
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:03:10.2"), "vfio-pci", false));
        assertTrue(e.getMessage().contains("driver now: none; override cleared)"), e.getMessage());
        assertEquals("0000:03:10.2", h.read("bus/pci/drivers_probe"));
        assertEquals("", h.read("bus/pci/drivers/vfio-pci/bind"));
    }

    @Test
    void refusesANonViableGroupNamingTheCulprit() {
        FakeHost h = DevicesTest.desktop(tmp);
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:00:1f.3"), "vfio-pci", false));
        assertTrue(
                e.getMessage()
                        .contains(
                                "refusing to bind 0000:00:1f.3 to vfio-pci: group 7 also holds 0000:00:1f.4, bound to i801_smbus"),
                e.getMessage());
        assertTrue(e.getMessage().contains("pass --force"), e.getMessage());
        assertEquals("(null)\n", h.read("devices/pci0000:00/0000:00:1f.3/driver_override"), "nothing was written");
        assertEquals("", h.read("bus/pci/drivers_probe"));
    }

    @Test
    void refusesTheBootDiskAndTheDefaultRoute() {
        FakeHost h = DevicesTest.desktop(tmp);
        HostConfigException disk = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:01:00.0"), "vfio-pci", false));
        assertTrue(
                disk.getMessage().contains("the host uses it: it holds the mounted filesystem / (/dev/nvme0n1p2)"),
                disk.getMessage());
        HostConfigException nic = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:02:00.0"), "vfio-pci", false));
        assertTrue(nic.getMessage().contains("it carries the default route (eno1)"), nic.getMessage());
        assertEquals("", h.read("bus/pci/drivers_probe"), "nothing was written");
    }

    @Test
    void defaultRouteThroughABridgeProtectsTheBridgedNic() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        h.device("0000:05:00.0", 0x8086, 0x1533, 0x020000)
                .driver("igb")
                .group(12)
                .net("enp5s0", 4);
        FakeHost.mkdir(h.sys.resolve("devices/virtual/net/br0/brif"));
        FakeHost.link(
                h.sys.resolve("devices/virtual/net/br0/brif/enp5s0"), "../../../../pci0000:00/0000:05:00.0/net/enp5s0");
        FakeHost.link(h.sys.resolve("class/net/br0"), "../../devices/virtual/net/br0");
        h.defaultRoute("br0");
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:05:00.0"), "vfio-pci", false));
        assertTrue(e.getMessage().contains("it carries the default route (br0 via enp5s0)"), e.getMessage());
    }

    /**
     * The boot GPU driven by efifb (no PCI driver bound) with its HDMI audio, unbound too, in the same slot and group
     * — a group the viability check alone lets go — and a second GPU like it that is not the boot display.
     */
    private static FakeHost twoGpus(Path dir) {
        FakeHost h = new FakeHost(dir).intelHostWithIommu();
        h.device("0000:01:00.0", 0x10de, 0x1c82, 0x030000)
                .attr("boot_vga", "1\n")
                .group(11);
        h.device("0000:01:00.1", 0x10de, 0x0fb9, 0x040300).group(11);
        h.device("0000:02:00.0", 0x1002, 0x67df, 0x030000)
                .attr("boot_vga", "0\n")
                .group(12);
        h.device("0000:02:00.1", 0x1002, 0xaaf0, 0x040300).group(12);
        return h;
    }

    @Test
    void refusesTheBootDisplayAndTheOtherFunctionsOfItsSlot() {
        FakeHost h = twoGpus(tmp).driver("pci-stub");
        HostConfigException gpu = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:01:00.0"), "vfio-pci", false));
        assertTrue(
                gpu.getMessage()
                        .startsWith(
                                "refusing to bind 0000:01:00.0 to vfio-pci: it is the boot display (boot_vga is 1): "
                                        + "the host's console runs on it (make another GPU the primary display"),
                gpu.getMessage());
        HostConfigException audio = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:01:00.1"), "pci-stub", false));
        assertTrue(
                audio.getMessage()
                        .contains("it shares its slot and IOMMU group 11 with the boot display 0000:01:00.0 "
                                + "(boot_vga is 1), on which the host's console runs"),
                audio.getMessage());
        assertEquals("", h.read("bus/pci/drivers_probe"), "nothing was written");
        // The assignability the devices report and host assign use says the same.
        DeviceReport r = DeviceReport.collect(h.paths());
        for (String bdf : List.of("0000:01:00.0", "0000:01:00.1")) {
            Assignability a = r.entries().stream()
                    .filter(e -> e.device().bdf().toString().equals(bdf))
                    .findFirst()
                    .orElseThrow()
                    .assignability();
            assertEquals(Assignability.Status.NO, a.status(), bdf);
            assertTrue(a.reasons().toString().contains("boot display"), bdf + ": " + a.reasons());
        }
        // The second GPU and its audio are not the console: the bind goes ahead (and the fixture's kernel declines).
        for (String bdf : List.of("0000:02:00.0", "0000:02:00.1")) {
            HostConfigException other =
                    assertThrows(HostConfigException.class, () -> binding(h).bind(Bdf.parse(bdf), "vfio-pci", false));
            assertTrue(other.getMessage().contains("the kernel did not bind"), other.getMessage());
        }
        // --force is the way to take the console anyway.
        HostConfigException forced = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:01:00.0"), "vfio-pci", true));
        assertTrue(forced.getMessage().contains("the kernel did not bind"), forced.getMessage());
    }

    @Test
    void assignRefusesABootDisplayBoundToVfio() {
        FakeHost h = twoGpus(tmp);
        h.dev("0000:01:00.0").driver("vfio-pci");
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> Assigning.assign(h.paths(), Bdf.parse("0000:01:00.0"), "vm-a", false));
        assertTrue(e.getMessage().contains("it is the boot display (boot_vga is 1)"), e.getMessage());
        assertTrue(new AssignmentRegistry(h.state).list().isEmpty());
    }

    @Test
    void refusesTheHostBridgeAndTheLpcBridgeAsAssignDoes() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu().driver("pci-stub");
        // Each alone in its group and unbound, so no other check stands in the way.
        h.device("0000:00:00.0", 0x8086, 0x3e30, 0x060000).group(0);
        h.device("0000:00:1f.0", 0x8086, 0xa305, 0x060100).group(7);
        HostConfigException host = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:00:00.0"), "vfio-pci", false));
        assertEquals(
                "refusing to bind 0000:00:00.0 to vfio-pci: it is the host bridge: part of the platform",
                host.problem());
        HostConfigException lpc = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:00:1f.0"), "pci-stub", false));
        assertEquals(
                "refusing to bind 0000:00:1f.0 to pci-stub: it is the ISA/LPC bridge: the platform needs it",
                lpc.problem());
        assertEquals("", h.read("bus/pci/drivers_probe"), "nothing was written");
    }

    @Test
    void forceSkipsTheSafetyChecks() {
        FakeHost h = DevicesTest.desktop(tmp);
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:02:00.0"), "vfio-pci", true));
        assertTrue(e.getMessage().contains("the kernel did not bind"), e.getMessage());
        assertEquals("0000:02:00.0", h.read("bus/pci/drivers/e1000e/unbind"));
    }

    @Test
    void refusesWithoutIommuGroupAndWhenVfioIsNotLoaded() {
        FakeHost h = new FakeHost(tmp).intelCpu(true);
        h.device("0000:05:00.0", 0x8086, 0x1533, 0x020000).driver("igb");
        HostConfigException notLoaded = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:05:00.0"), "vfio-pci", false));
        assertTrue(notLoaded.getMessage().contains("driver vfio-pci is not loaded"), notLoaded.getMessage());
        assertTrue(notLoaded.getMessage().contains("modprobe vfio-pci"), notLoaded.getMessage());
        h.vfio();
        HostConfigException noGroup = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:05:00.0"), "vfio-pci", false));
        assertTrue(noGroup.getMessage().contains("it has no IOMMU group: the IOMMU is off"), noGroup.getMessage());
    }

    @Test
    void refusesAPfWhoseVfsWouldVanish() {
        FakeHost h = DevicesTest.desktop(tmp);
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:03:00.0"), "vfio-pci", false));
        assertTrue(e.getMessage().contains("it has 2 VFs enabled, which vanish when igb lets go"), e.getMessage());
    }

    /**
     * A forced unbind of a PF destroys its VFs (its driver disables SR-IOV as it lets go): their assignments and
     * remembered drivers are dropped then, with a note naming the VM — they were kept, shown as gone, until the next
     * {@code host vfs}, and a VF made at that address meanwhile would have looked like the VM's.
     */
    @Test
    void aForcedPfUnbindDropsItsDestroyedVfsAssignments() {
        FakeHost h = DevicesTest.desktop(tmp);
        AssignmentRegistry r = new AssignmentRegistry(h.state);
        r.assign(Bdf.parse("0000:03:10.2"), "vm-a", List.of());
        r.assign(Bdf.parse("0000:04:00.0"), "vm-b", List.of());
        new StateStore(h.state)
                .write(DriverBinding.TABLE, List.<String[]>of(new String[] {"0000:03:10.2", "igbvf"}, new String[] {
                    "0000:04:00.0", "nouveau"
                }));
        // the fake sysfs does not act on writes: the VFs are removed as igb's remove destroys them, before the
        // unbind write returns (the PF still names them; its virtfn links dangle)
        goneVfs(h, "0000:03:10.0", "0000:03:10.2");
        DriverBinding.Outcome o = binding(h).unbind(Bdf.parse("0000:03:00.0"), true);
        assertEquals("0000:03:00.0", h.read("bus/pci/drivers/igb/unbind"));
        assertTrue(
                o.note()
                        .contains("VF 0000:03:10.2 was assigned to VM vm-a and was destroyed when igb let go of its PF"
                                + " 0000:03:00.0: the assignment is dropped"),
                o.note());
        assertNull(r.owner(Bdf.parse("0000:03:10.2")));
        assertNull(binding(h).previousDriver(Bdf.parse("0000:03:10.2")));
        assertEquals("vm-b", r.owner(Bdf.parse("0000:04:00.0")).vm(), "another device's assignment stays");
        assertEquals("nouveau", binding(h).previousDriver(Bdf.parse("0000:04:00.0")));
    }

    /** A PF driver that leaves SR-IOV enabled (pci-pf-stub has no remove callback): its VFs keep their VMs. */
    @Test
    void aForcedPfUnbindKeepsTheAssignmentsOfVfsThatSurvive() {
        FakeHost h = DevicesTest.desktop(tmp);
        AssignmentRegistry r = new AssignmentRegistry(h.state);
        r.assign(Bdf.parse("0000:03:10.2"), "vm-a", List.of());
        DriverBinding.Outcome o = binding(h).unbind(Bdf.parse("0000:03:00.0"), true);
        assertEquals("vm-a", r.owner(Bdf.parse("0000:03:10.2")).vm(), "the VF still exists: its VM keeps it");
        assertTrue(
                o.note()
                        .contains("igb left SR-IOV enabled on 0000:03:00.0: VFs [0000:03:10.0, 0000:03:10.2] still"
                                + " exist and keep their assignments"),
                o.note());
    }

    private static void goneVfs(FakeHost h, String... vfs) {
        for (String vf : vfs) {
            try {
                Files.delete(h.sys.resolve("bus/pci/devices/" + vf));
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }
    }

    @Test
    void alreadyBoundIsANoOp() {
        FakeHost h = DevicesTest.desktop(tmp);
        DriverBinding.Outcome o = binding(h).bind(Bdf.parse("0000:04:00.0"), "vfio-pci", false);
        assertEquals("already bound to vfio-pci", o.note());
        assertTrue(o.writes().isEmpty());
        assertEquals(h.dev.resolve("vfio/9").toString(), o.vfioDevice());
    }

    @Test
    void unbindGivesTheDeviceBackToItsRememberedDriver() {
        FakeHost h = DevicesTest.desktop(tmp);
        h.dev("0000:04:00.0").attr("driver_override", "vfio-pci\n");
        h.driver("nouveau");
        new StateStore(h.state).write(DriverBinding.TABLE, List.<String[]>of(new String[] {"0000:04:00.0", "nouveau"}));
        DriverBinding.Outcome o = binding(h).unbind(Bdf.parse("0000:04:00.0"), false);
        assertEquals(
                List.of(
                        h.sys.resolve("bus/pci/devices/0000:04:00.0/driver_override") + " <- (clear)",
                        h.sys.resolve("bus/pci/drivers/vfio-pci/unbind") + " <- 0000:04:00.0",
                        h.sys.resolve("bus/pci/drivers/nouveau/bind") + " <- 0000:04:00.0"),
                o.writes());
        assertEquals("0000:04:00.0", h.read("bus/pci/drivers/nouveau/bind"));
        assertTrue(o.note().contains("the kernel did not give it back to nouveau"), o.note());
        assertNull(binding(h).previousDriver(Bdf.parse("0000:04:00.0")));
    }

    /**
     * A device whose VFIO group a process has open (a QEMU iovirt does not know about): vfio-pci would not let go —
     * the unbind would wait for the process and hang every host command behind the state lock — so it is refused,
     * naming the process; --force goes ahead.
     */
    @Test
    void unbindRefusesADeviceAProcessHasOpenThroughVfio() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        Path pid = h.proc.resolve("4242");
        Files.createDirectories(pid.resolve("fd"));
        Files.createSymbolicLink(pid.resolve("fd/3"), Path.of("/dev/null"));
        Files.createSymbolicLink(pid.resolve("fd/17"), Path.of("/dev/vfio/9"));
        Files.write(pid.resolve("cmdline"), "qemu-system-x86_64\0-name\0gpu-vm\0".getBytes());
        HostConfigException e =
                assertThrows(HostConfigException.class, () -> binding(h).unbind(Bdf.parse("0000:04:00.0"), false));
        assertTrue(
                e.getMessage().contains("pid 4242 (qemu-system-x86_64 -name gpu-vm) has /dev/vfio/9 open"),
                e.getMessage());
        assertThrows(HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:04:00.0"), "pci-stub", false));
        binding(h).unbind(Bdf.parse("0000:04:00.0"), true);
        assertEquals("0000:04:00.0", h.read("bus/pci/drivers/vfio-pci/unbind"));
    }

    @Test
    void unbindRefusesAnAssignedDevice() {
        FakeHost h = DevicesTest.desktop(tmp);
        new AssignmentRegistry(h.state).assign(Bdf.parse("0000:04:00.0"), "gpu-vm", List.of());
        HostConfigException e =
                assertThrows(HostConfigException.class, () -> binding(h).unbind(Bdf.parse("0000:04:00.0"), false));
        assertTrue(e.getMessage().contains("it is assigned to VM gpu-vm"), e.getMessage());
    }

    /**
     * Unbinding a PF destroys its VFs as lowering sriov_numvfs does: refused while VFs exist, naming the VM that
     * would lose one — the VF disappeared under its guest, and its assignment stayed behind for a later VF at the
     * same address.
     */
    @Test
    void unbindRefusesAPfWhoseVfsWouldVanishNamingTheirVms() {
        FakeHost h = DevicesTest.desktop(tmp);
        h.device("0000:05:00.0", 0x15b3, 0x1017, 0x020000)
                .driver("mlx5_core")
                .group(30)
                .sriov(8, List.of("0000:05:00.1"));
        h.device("0000:05:00.1", 0x15b3, 0x1018, 0x020000)
                .driver("vfio-pci")
                .group(31)
                .physfn("0000:05:00.0");
        new AssignmentRegistry(h.state).assign(Bdf.parse("0000:05:00.1"), "vm-a", List.of());
        String before = h.read("bus/pci/drivers/mlx5_core/unbind");
        HostConfigException e =
                assertThrows(HostConfigException.class, () -> binding(h).unbind(Bdf.parse("0000:05:00.0"), false));
        assertTrue(
                e.getMessage()
                        .startsWith("refusing to unbind 0000:05:00.0: it has 1 VFs enabled, which vanish when mlx5_core"
                                + " lets go"),
                e.getMessage());
        assertTrue(e.getMessage().contains("its VF 0000:05:00.1 is assigned to VM vm-a"), e.getMessage());
        assertTrue(e.remedy().contains("iovirt host vfs 0000:05:00.0 --count 0"), e.remedy());
        assertEquals(before, h.read("bus/pci/drivers/mlx5_core/unbind"), "nothing was written");
        HostConfigException bind = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:05:00.0"), "vfio-pci", false));
        assertTrue(bind.getMessage().contains("its VF 0000:05:00.1 is assigned to VM vm-a"), bind.getMessage());
    }

    @Test
    void resetWritesOneAndRefusesWhileAssignedOrHostOwned() {
        FakeHost h = DevicesTest.desktop(tmp);
        DriverBinding.Outcome o = binding(h).reset(Bdf.parse("0000:04:00.0"), false);
        assertEquals("1", h.read("bus/pci/devices/0000:04:00.0/reset"));
        assertEquals("reset methods: flr bus", o.note());
        HostConfigException host =
                assertThrows(HostConfigException.class, () -> binding(h).reset(Bdf.parse("0000:02:00.0"), false));
        assertTrue(
                host.getMessage().contains("its host driver e1000e would lose the device's state"), host.getMessage());
        new AssignmentRegistry(h.state).assign(Bdf.parse("0000:04:00.0"), "gpu-vm", List.of());
        HostConfigException vm =
                assertThrows(HostConfigException.class, () -> binding(h).reset(Bdf.parse("0000:04:00.0"), false));
        assertTrue(vm.getMessage().contains("assigned to VM gpu-vm"), vm.getMessage());
    }

    /**
     * A device a process has open through VFIO (a QEMU iovirt does not know about) is not reset under it: the sysfs
     * reset goes ahead whatever vfio-pci's user is doing, and the guest loses the device's state — refused like an
     * assigned device, naming the process; --force goes ahead.
     */
    @Test
    void resetRefusesADeviceAProcessHasOpenThroughVfio() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        Path pid = h.proc.resolve("4242");
        Files.createDirectories(pid.resolve("fd"));
        Files.createSymbolicLink(pid.resolve("fd/17"), Path.of("/dev/vfio/9"));
        Files.write(pid.resolve("cmdline"), "qemu-system-x86_64\0-name\0gpu-vm\0".getBytes(StandardCharsets.UTF_8));
        HostConfigException e =
                assertThrows(HostConfigException.class, () -> binding(h).reset(Bdf.parse("0000:04:00.0"), false));
        assertTrue(
                e.getMessage().contains("pid 4242 (qemu-system-x86_64 -name gpu-vm) has /dev/vfio/9 open"),
                e.getMessage());
        assertEquals("", h.read("bus/pci/devices/0000:04:00.0/reset"), "no reset was written");
        binding(h).reset(Bdf.parse("0000:04:00.0"), true);
        assertEquals("1", h.read("bus/pci/devices/0000:04:00.0/reset"));
    }

    /**
     * On a kernel with VFIO device cdevs (6.6+), a user on iommufd holds /dev/vfio/devices/vfioX, not the group node:
     * vfio-pci waits for it just the same, so the unbind is refused, naming it.
     */
    @Test
    void unbindRefusesADeviceAProcessHasOpenThroughItsVfioCdev() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        Files.createDirectories(h.sys.resolve("devices/pci0000:00/0000:04:00.0/vfio-dev/vfio3"));
        Path pid = h.proc.resolve("4243");
        Files.createDirectories(pid.resolve("fd"));
        Files.createSymbolicLink(pid.resolve("fd/20"), Path.of("/dev/iommu"));
        Files.createSymbolicLink(pid.resolve("fd/21"), Path.of("/dev/vfio/devices/vfio3"));
        Files.write(pid.resolve("cmdline"), "qemu-system-x86_64\0".getBytes(StandardCharsets.UTF_8));
        HostConfigException e =
                assertThrows(HostConfigException.class, () -> binding(h).unbind(Bdf.parse("0000:04:00.0"), false));
        assertTrue(
                e.getMessage().contains("pid 4243 (qemu-system-x86_64) has /dev/vfio/devices/vfio3 open"),
                e.getMessage());
        assertEquals("", h.read("bus/pci/drivers/vfio-pci/unbind"), "nothing was written");
    }

    @Test
    void driverNamesCannotEscapeTheDriversDirectory() {
        FakeHost h = DevicesTest.desktop(tmp);
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> binding(h).bind(Bdf.parse("0000:03:10.2"), "../../../x", false));
        assertTrue(e.getMessage().contains("is not a driver name"), e.getMessage());
    }

    @Test
    void aTamperedRememberedDriverNeverReachesSysfs() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        h.dev("0000:04:00.0").attr("driver_override", "vfio-pci\n");
        h.driver("nouveau");
        new StateStore(h.state)
                .write(DriverBinding.TABLE, List.<String[]>of(new String[] {"0000:03:10.0", "igbvf"}, new String[] {
                    "0000:04:00.0", "nouveau"
                }));
        Path file = h.state.resolve(DriverBinding.TABLE);
        String good = Files.readString(file);
        // Each tampering keeps the file's frame (header, trailer, row count) intact: only the row check catches it.
        for (String[] t : List.of(
                new String[] {
                    "0000:04:00.0 nouveau",
                    "0000:04:00.0 ../../../../../tmp/x",
                    "line 3 is damaged: '../../../../../tmp/x' is not a driver name"
                },
                new String[] {"0000:04:00.0 nouveau", "0000:04:00.0 ..", "line 3 is damaged: '..' is not a driver name"
                },
                new String[] {"0000:03:10.0 igbvf", "03:10.0 igbvf", "line 2 is damaged: '03:10.0' is not a PCI address"
                },
                new String[] {
                    "0000:03:10.0 igbvf",
                    "0000:03:10.0/../.. igbvf",
                    "line 2 is damaged: '0000:03:10.0/../..' is not a PCI address"
                },
                new String[] {
                    "0000:04:00.0 nouveau", "0000:04:00.0 nouveau extra", "line 3 is damaged: expected 'BDF DRIVER'"
                })) {
            Files.writeString(file, good.replace(t[0], t[1]));
            String before = h.read("bus/pci/drivers/vfio-pci/unbind");
            HostConfigException e = assertThrows(
                    HostConfigException.class, () -> binding(h).unbind(Bdf.parse("0000:04:00.0"), false), t[1]);
            assertTrue(e.getMessage().contains(file + " " + t[2]), e.getMessage());
            assertTrue(e.remedy().contains("fix or remove that line"), e.remedy());
            assertEquals(
                    before, h.read("bus/pci/drivers/vfio-pci/unbind"), "nothing was written to sysfs for: " + t[1]);
            assertFalse(Files.exists(tmp.resolve("tmp/x")));
        }
        Files.writeString(file, good);
        assertEquals("nouveau", binding(h).previousDriver(Bdf.parse("0000:04:00.0")));
    }

    @Test
    void cliBindRefusalIsOneLine() {
        FakeHost h = DevicesTest.desktop(tmp);
        CliRun r = CliRun.host(h, "bind", "0000:00:1f.3");
        assertEquals(1, r.exit());
        assertTrue(
                r.err()
                        .startsWith(
                                "iovirt host bind: refusing to bind 0000:00:1f.3 to vfio-pci: group 7 also holds 0000:00:1f.4"),
                r.err());
        assertTrue(r.noStackTrace(), r.err());
    }

    @Test
    void unbindRefusesTheDiskHoldingTheRootFilesystemWithBindsMessage() {
        FakeHost h = DevicesTest.desktop(tmp);
        Bdf nvme = Bdf.parse("0000:01:00.0");
        String before = h.read("bus/pci/drivers/nvme/unbind");
        HostConfigException unbind =
                assertThrows(HostConfigException.class, () -> binding(h).unbind(nvme, false));
        HostConfigException bind =
                assertThrows(HostConfigException.class, () -> binding(h).bind(nvme, "vfio-pci", false));
        // The same check and the same words as bind and reset: the host uses it, and what for.
        String use = "the host uses it: it holds the mounted filesystem /";
        assertTrue(unbind.getMessage().startsWith("refusing to unbind 0000:01:00.0: " + use), unbind.getMessage());
        assertTrue(bind.getMessage().contains(use), bind.getMessage());
        assertTrue(unbind.remedy().contains("--force"), unbind.remedy());
        assertEquals(before, h.read("bus/pci/drivers/nvme/unbind"), "nothing was written");

        CliRun cli = CliRun.host(h, "unbind", "0000:01:00.0");
        assertEquals(1, cli.exit());
        assertTrue(cli.err().startsWith("iovirt host unbind: refusing to unbind 0000:01:00.0: " + use), cli.err());
        assertEquals(1, cli.err().strip().lines().count(), cli.err());
    }

    @Test
    void unbindWithForceDetachesAHostDeviceAndWarnsThatIovirtDidNotBindIt() {
        FakeHost h = DevicesTest.desktop(tmp);
        DriverBinding.Outcome o = binding(h).unbind(Bdf.parse("0000:01:00.0"), true);
        assertEquals("0000:01:00.0", h.read("bus/pci/drivers/nvme/unbind"));
        assertTrue(o.note().contains("iovirt did not bind it: nvme is the host's own driver"), o.note());
    }

    @Test
    void dryRunChecksAndListsTheWritesButChangesNothing() {
        FakeHost h = DevicesTest.desktop(tmp);
        Bdf vf = Bdf.parse("0000:03:10.0");
        DriverBinding dry = new DriverBinding(h.paths(), Duration.ZERO, true);
        String override = h.read("bus/pci/devices/0000:03:10.0/driver_override");
        String reset = h.read("bus/pci/devices/0000:04:00.0/reset");
        DriverBinding.Outcome o = dry.bind(vf, "vfio-pci", false);
        assertEquals(
                List.of(
                        h.sys.resolve("bus/pci/devices/0000:03:10.0/driver_override") + " <- vfio-pci (would write)",
                        h.sys.resolve("bus/pci/drivers/igbvf/unbind") + " <- 0000:03:10.0 (would write)",
                        h.sys.resolve("bus/pci/drivers_probe") + " <- 0000:03:10.0 (would write)"),
                o.writes());
        assertEquals(DriverBinding.DRY_RUN_NOTE, o.note());
        assertEquals(override, h.read("bus/pci/devices/0000:03:10.0/driver_override"));
        assertTrue(new StateStore(h.state).read(DriverBinding.TABLE).isEmpty(), "no driver remembered");
        // A dry run refuses what the real one refuses.
        assertThrows(HostConfigException.class, () -> dry.unbind(Bdf.parse("0000:01:00.0"), false));

        CliRun cli = CliRun.host(h, "bind", "0000:03:10.0", "--dry-run");
        assertEquals(0, cli.exit(), cli.err());
        assertTrue(
                cli.out().contains("dry run: nothing was changed") && cli.out().contains("(would write)"), cli.out());
        for (String cmd : new String[] {"unbind", "reset"}) {
            CliRun r = CliRun.host(h, cmd, "0000:04:00.0", "--dry-run");
            assertEquals(0, r.exit(), cmd + ": " + r.err());
            assertTrue(r.out().contains("dry run: nothing was changed"), cmd + ": " + r.out());
        }
        assertEquals(reset, h.read("bus/pci/devices/0000:04:00.0/reset"), "no reset was written");
        CliRun assign = CliRun.host(h, "assign", "0000:04:00.0", "--vm", "vm-a", "--dry-run");
        assertEquals(0, assign.exit(), assign.err());
        assertTrue(assign.out().contains("would be assigned to VM vm-a"), assign.out());
        assertTrue(CliRun.host(h, "assignments", "--json").out().strip().equals("[]"), "nothing recorded");
    }
}
