// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.pci.Bdf;
import io.iovirt.vm.compose.VmComposer;
import io.iovirt.vm.compose.VmSpec;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The composer's VFIO and SR-IOV half on a fixture host: exclusive assignment through the registry. */
class VmComposerHostDevicesTest {
    @TempDir
    Path tmp;

    private static VmSpec vm(String name, List<String> vfio, List<String> vfPools) {
        return new VmSpec(name, VmSpec.Profile.PVHVM, 512, 1, List.of(), List.of(), vfio, vfPools);
    }

    @Test
    void aPassedThroughDeviceBelongsToOneVm() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        try (VmComposer a = VmComposer.compose(vm("vm-a", List.of("0000:04:00.0"), List.of()), tmp, h.paths())) {
            assertTrue(
                    String.join(" ", a.qemuArgs()).contains("vfio-pci,host=0000:04:00.0"),
                    a.qemuArgs().toString());
            assertEquals("VFIO", a.devices().get(0).technique());
        }
        assertEquals(
                "vm-a",
                new AssignmentRegistry(h.state).owner(Bdf.parse("0000:04:00.0")).vm());
        // composing vm-a again is fine (it owns the device); vm-b is refused with the remedy
        VmComposer.compose(vm("vm-a", List.of("0000:04:00.0"), List.of()), tmp, h.paths())
                .close();
        HostConfigException e = assertThrows(
                HostConfigException.class,
                () -> VmComposer.compose(vm("vm-b", List.of("0000:04:00.0"), List.of()), tmp, h.paths()));
        assertTrue(e.getMessage().contains("vm-a"), e.getMessage());
    }

    /**
     * A device the VM owns already but that is gone (a VF destroyed since, an unplugged device: the registry keeps its
     * row until it is released) is refused with the reason and the remedy, as {@code host config} refuses it — it was
     * taken as it was, and QEMU failed later without saying why.
     */
    @Test
    void aDeviceTheVmOwnsButThatIsGoneIsRefused() {
        FakeHost h = DevicesTest.desktop(tmp);
        new AssignmentRegistry(h.state).assign(Bdf.parse("0000:03:10.4"), "vm-a", List.of());
        HostConfigException e = assertThrows(
                HostConfigException.class,
                () -> VmComposer.compose(vm("vm-a", List.of("0000:03:10.4"), List.of()), tmp, h.paths()));
        assertTrue(
                e.getMessage().contains("0000:03:10.4 is assigned to VM vm-a but does not exist on this host"),
                e.getMessage());
        assertTrue(e.remedy().contains("iovirt host release 0000:03:10.4"), e.remedy());
        assertEquals(
                "vm-a",
                new AssignmentRegistry(h.state).owner(Bdf.parse("0000:03:10.4")).vm(),
                "left as it was");
    }

    @Test
    void aDeviceTheHostUsesIsNotPassedThrough() {
        FakeHost h = DevicesTest.desktop(tmp);
        HostConfigException e = assertThrows(
                HostConfigException.class,
                () -> VmComposer.compose(vm("vm-a", List.of("0000:01:00.0"), List.of()), tmp, h.paths()));
        assertTrue(e.getMessage().contains("0000:01:00.0"), e.getMessage());
    }

    @Test
    void virtualFunctionsComeFromThePoolOneVmEach() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        HostConfigException none = assertThrows(
                HostConfigException.class,
                () -> VmComposer.compose(vm("vm-a", List.of(), List.of("0000:03:00.0")), tmp, h.paths()));
        assertTrue(none.getMessage().contains("no free virtual function"), none.getMessage());
        assertTrue(none.getMessage().contains("0000:03:10.0 is on igbvf"), none.getMessage());

        h.dev("0000:03:10.2").driver("vfio-pci");
        try (VmComposer a = VmComposer.compose(vm("vm-a", List.of(), List.of("0000:03:00.0")), tmp, h.paths())) {
            assertTrue(
                    String.join(" ", a.qemuArgs()).contains("vfio-pci,host=0000:03:10.2"),
                    a.qemuArgs().toString());
            assertEquals("SR-IOV", a.devices().get(0).technique());
        }
        HostConfigException taken = assertThrows(
                HostConfigException.class,
                () -> VmComposer.compose(vm("vm-b", List.of(), List.of("0000:03:00.0")), tmp, h.paths()));
        assertTrue(taken.getMessage().contains("0000:03:10.2 belongs to vm-a"), taken.getMessage());
    }

    /**
     * A composition that fails gives back the devices it assigned, not those the VM already had: the second --vfio
     * (a device the host uses) used to fail after the first was recorded as the VM's, and it stayed so.
     */
    @Test
    void aFailedCompositionReleasesWhatItAssigned() {
        FakeHost h = DevicesTest.desktop(tmp);
        AssignmentRegistry registry = new AssignmentRegistry(h.state);
        Bdf gpu = Bdf.parse("0000:04:00.0");
        HostConfigException e = assertThrows(
                HostConfigException.class,
                () -> VmComposer.compose(
                        vm("vm-a", List.of("0000:04:00.0", "0000:01:00.0"), List.of()), tmp, h.paths()));
        assertTrue(e.getMessage().contains("0000:01:00.0"), e.getMessage());
        assertEquals(null, registry.owner(gpu), "the failed run's assignment is released");

        // a VF pool that has no free VF, after a --vfio device: released too
        assertThrows(
                HostConfigException.class,
                () -> VmComposer.compose(vm("vm-a", List.of("0000:04:00.0"), List.of("0000:03:00.0")), tmp, h.paths()));
        assertEquals(null, registry.owner(gpu));

        // a device the VM already owned stays its own
        registry.assign(gpu, "vm-a", List.of());
        assertThrows(
                HostConfigException.class,
                () -> VmComposer.compose(
                        vm("vm-a", List.of("0000:04:00.0", "0000:01:00.0"), List.of()), tmp, h.paths()));
        assertEquals("vm-a", registry.owner(gpu).vm());
    }

    /**
     * What the guest cannot boot with is refused before any device is assigned: 64..127 MiB used to pass here and
     * fail in QemuGuest after the composition; a malformed --vfio after the disks' backends had started.
     */
    @Test
    void theSpecRefusesWhatTheGuestWouldBeforeAnythingStarts() {
        IllegalArgumentException small = assertThrows(
                IllegalArgumentException.class,
                () -> new VmSpec(
                        "vm", VmSpec.Profile.PVHVM, 100, 1, List.of(), List.of(), List.of("0000:04:00.0"), List.of()));
        assertTrue(small.getMessage().contains("memory must be 128 MiB"), small.getMessage());
        RuntimeException bdf = assertThrows(
                RuntimeException.class,
                () -> new VmSpec(
                        "vm", VmSpec.Profile.PVHVM, 512, 1, List.of(), List.of(), List.of("04:00"), List.of()));
        assertTrue(bdf.getMessage().contains("'04:00' is not a PCI address"), bdf.getMessage());
    }

    @Test
    void theHvmProfileRefusesParavirtualDevices() {
        IllegalArgumentException e = assertThrows(
                IllegalArgumentException.class,
                () -> new VmSpec(
                        "vm",
                        VmSpec.Profile.HVM,
                        512,
                        1,
                        List.of(new VmSpec.Disk(VmSpec.Kind.PV, tmp.resolve("d.raw"), false)),
                        List.of(),
                        List.of(),
                        List.of()));
        assertTrue(e.getMessage().contains("--profile pvhvm"), e.getMessage());
    }
}
