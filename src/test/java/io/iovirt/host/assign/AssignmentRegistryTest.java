// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.host.DevicesTest;
import io.iovirt.host.FakeHost;
import io.iovirt.host.HostConfigException;
import io.iovirt.host.StateStore;
import io.iovirt.pci.Bdf;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class AssignmentRegistryTest {
    @TempDir
    Path tmp;

    private static final Bdf VF1 = Bdf.parse("0000:03:10.0");
    private static final Bdf VF2 = Bdf.parse("0000:03:10.2");

    @Test
    void oneVmPerDevice() {
        AssignmentRegistry r = new AssignmentRegistry(tmp);
        assertTrue(r.assign(VF1, "vm-a", List.of()).created());
        assertFalse(r.assign(VF1, "vm-a", List.of()).created(), "same VM again is a no-op");
        HostConfigException e = assertThrows(HostConfigException.class, () -> r.assign(VF1, "vm-b", List.of()));
        assertTrue(e.getMessage().startsWith("0000:03:10.0 is already assigned to VM vm-a"), e.getMessage());
        assertEquals(1, r.list().size());
        assertEquals("vm-a", r.owner(VF1).vm());
    }

    @Test
    void oneVmPerIommuGroup() {
        AssignmentRegistry r = new AssignmentRegistry(tmp);
        r.assign(VF1, "vm-a", List.of());
        HostConfigException e = assertThrows(HostConfigException.class, () -> r.assign(VF2, "vm-b", List.of(VF1)));
        assertTrue(
                e.getMessage().contains("shares its IOMMU group with 0000:03:10.0, assigned to VM vm-a"),
                e.getMessage());
        assertTrue(r.assign(VF2, "vm-a", List.of(VF1)).created(), "the same VM may take the whole group");
    }

    @Test
    void releaseChecksTheOwner() {
        AssignmentRegistry r = new AssignmentRegistry(tmp);
        r.assign(VF1, "vm-a", List.of());
        HostConfigException wrong = assertThrows(HostConfigException.class, () -> r.release(VF1, "vm-b"));
        assertTrue(wrong.getMessage().contains("belongs to VM vm-a, not vm-b"), wrong.getMessage());
        assertEquals("vm-a", r.release(VF1, "vm-a").vm());
        assertTrue(r.list().isEmpty());
        HostConfigException none = assertThrows(HostConfigException.class, () -> r.release(VF1, null));
        assertTrue(none.getMessage().contains("is not assigned to any VM"));
    }

    @Test
    void vmNamesAreChecked() {
        AssignmentRegistry r = new AssignmentRegistry(tmp);
        for (String bad : new String[] {"", "has space", "-lead", "a\nb", "x".repeat(65)}) {
            assertThrows(HostConfigException.class, () -> r.assign(VF1, bad, List.of()), bad);
        }
        assertTrue(r.list().isEmpty());
    }

    @Test
    void theFileIsCompleteAndRereadable() throws Exception {
        AssignmentRegistry r = new AssignmentRegistry(tmp);
        r.assign(VF1, "vm-a", List.of());
        r.assign(VF2, "vm-b", List.of());
        List<String> lines = Files.readAllLines(tmp.resolve("assignments"));
        assertEquals("iovirt-assignments 1", lines.getFirst());
        assertEquals("end 2", lines.getLast());
        assertTrue(lines.get(1).startsWith("0000:03:10.0 vm-a "));
        assertEquals(
                List.of(VF1, VF2),
                new AssignmentRegistry(tmp)
                        .list().stream().map(AssignmentRegistry.Assignment::bdf).toList());
        try (var s = Files.list(tmp)) {
            assertEquals(
                    List.of("assignments", "lock"),
                    s.map(p -> p.getFileName().toString()).sorted().toList(),
                    "no temp files left");
        }
    }

    @Test
    void damageIsDetectedAndNamed() throws Exception {
        AssignmentRegistry r = new AssignmentRegistry(tmp);
        r.assign(VF1, "vm-a", List.of());
        r.assign(VF2, "vm-b", List.of());
        Path file = tmp.resolve("assignments");
        String whole = Files.readString(file);
        Files.writeString(file, whole.substring(0, whole.length() - 8)); // cut into the last row
        HostConfigException cut = assertThrows(HostConfigException.class, r::list);
        assertTrue(
                cut.getMessage().contains("is damaged") && cut.getMessage().contains("truncated?"), cut.getMessage());
        Files.writeString(file, whole.replace("vm-b", "vm b"));
        HostConfigException bad = assertThrows(HostConfigException.class, r::list);
        assertTrue(bad.getMessage().contains("line 3 is damaged"), bad.getMessage());
        Files.writeString(file, "garbage\n");
        assertThrows(HostConfigException.class, r::list);
    }

    /**
     * A table iovirt never writes — one device owned by two VMs — is refused naming both lines, instead of read as
     * "the first line wins": that made the device vm-a's, and after vm-a released it, vm-b's without an assign.
     */
    @Test
    void aDeviceListedTwiceIsDamageNotTwoOwners() throws Exception {
        AssignmentRegistry r = new AssignmentRegistry(tmp);
        r.assign(VF1, "vm-a", List.of());
        Path file = tmp.resolve("assignments");
        String row = Files.readAllLines(file).get(1);
        Files.writeString(file, "iovirt-assignments 1\n" + row + "\n" + row.replace("vm-a", "vm-b") + "\nend 2\n");
        HostConfigException e = assertThrows(HostConfigException.class, r::list);
        assertTrue(
                e.getMessage()
                        .contains("line 3 is damaged: 0000:03:10.0 is assigned to VM vm-b here and to VM vm-a"
                                + " on line 2"),
                e.getMessage());
        assertTrue(e.remedy().contains("fix or remove that line"), e.remedy());
        assertThrows(HostConfigException.class, () -> r.release(VF1, "vm-a"));
        assertEquals(row.replace("vm-a", "vm-b"), Files.readAllLines(file).get(2), "nothing was rewritten");
    }

    @Test
    void assignChecksReadinessUnderTheStateLock() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp.resolve("h"));
        Bdf gpu = Bdf.parse("0000:04:00.0"); // bound to vfio-pci: ready
        AssignmentRegistry registry = new AssignmentRegistry(h.state);
        AtomicReference<Object> outcome = new AtomicReference<>();
        Thread assigner = new Thread(() -> {
            try {
                outcome.set(Assigning.assign(h.paths(), gpu, "vm-a", false));
            } catch (RuntimeException e) {
                outcome.set(e);
            }
        });
        // Holding the lock as a concurrent host unbind does: the assigner waits for it, then the device leaves
        // vfio-pci, then the lock is released.
        registry.store().locked(() -> {
            assigner.start();
            awaitWaitingForTheStateLock(assigner);
            try {
                Files.delete(h.sys.resolve("devices/pci0000:00/0000:04:00.0/driver"));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            return null;
        });
        assigner.join(30_000);
        assertFalse(assigner.isAlive());
        HostConfigException e =
                assertInstanceOf(HostConfigException.class, outcome.get(), String.valueOf(outcome.get()));
        assertTrue(
                e.getMessage().contains("cannot assign 0000:04:00.0: it is not bound to any driver, not vfio-pci"),
                e.getMessage());
        assertTrue(registry.list().isEmpty(), "an unbound device was recorded as assigned");
    }

    private static void awaitWaitingForTheStateLock(Thread t) {
        long deadline = System.nanoTime() + 30_000_000_000L;
        while (System.nanoTime() < deadline) {
            if (t.getState() == Thread.State.WAITING
                    && Arrays.stream(t.getStackTrace())
                            .anyMatch(f -> f.getClassName().equals(StateStore.class.getName())
                                    && f.getMethodName().equals("locked"))) {
                return;
            }
            try {
                Thread.sleep(5);
            } catch (InterruptedException e) {
                throw new AssertionError(e);
            }
        }
        throw new AssertionError("the assigner never waited for the state lock: " + Arrays.toString(t.getStackTrace()));
    }

    /**
     * A device that vanished after it was assigned (its PF's VFs removed by hand, its PF unbound, unplugged): the list
     * says so and how to clean up, and no QEMU configuration is printed for an address with no device behind it.
     */
    @Test
    void anAssignedDeviceThatIsGoneIsShownAndGetsNoConfig() {
        FakeHost h = DevicesTest.desktop(tmp.resolve("h"));
        AssignmentRegistry r = new AssignmentRegistry(h.state);
        r.assign(Bdf.parse("0000:04:00.0"), "vm-a", List.of());
        r.assign(Bdf.parse("0000:03:10.4"), "vm-a", List.of());
        CliRun list = CliRun.host(h, "assignments");
        assertEquals(0, list.exit(), list.err());
        String[] lines = list.out().split("\n");
        assertFalse(lines[0].contains("gone"), lines[0]);
        assertTrue(
                lines[1].startsWith("0000:03:10.4  vm-a")
                        && lines[1].contains("(gone: a VF whose PF's VFs were removed")
                        && lines[1].endsWith("; iovirt host release 0000:03:10.4)"),
                list.out());
        CliRun json = CliRun.host(h, "assignments", "--json");
        assertTrue(json.out().contains("\"present\": false"), json.out());
        assertTrue(json.out().contains("\"present\": true"), json.out());
        CliRun config = CliRun.host(h, "config", "--vm", "vm-a");
        assertEquals(1, config.exit(), config.out());
        assertTrue(
                config.err().contains("0000:03:10.4 is assigned to VM vm-a but does not exist on this host"),
                config.err());
        assertTrue(config.err().contains("release it (iovirt host release 0000:03:10.4)"), config.err());
        assertEquals("", config.out(), "no arguments for a device that is not there");
        r.release(Bdf.parse("0000:03:10.4"), "vm-a");
        assertEquals(
                "-device vfio-pci,host=0000:04:00.0,id=hostdev0",
                CliRun.host(h, "config", "--vm", "vm-a").out().strip());
    }

    @Test
    void cliAssignRequiresVfioAndPrintsConfig() {
        FakeHost h = DevicesTest.desktop(tmp.resolve("h"));
        CliRun notBound = CliRun.host(h, "assign", "0000:03:10.0", "--vm", "vm-a");
        assertEquals(1, notBound.exit());
        assertTrue(
                notBound.err()
                        .contains("it is bound to igbvf, not vfio-pci — bind it first: iovirt host bind 0000:03:10.0"),
                notBound.err());
        CliRun blocked = CliRun.host(h, "assign", "0000:00:1f.3", "--vm", "vm-a");
        assertTrue(blocked.err().contains("group 7 also holds 0000:00:1f.4, bound to i801_smbus"), blocked.err());

        CliRun ok = CliRun.host(h, "assign", "0000:04:00.0", "--vm", "vm-a");
        assertEquals(0, ok.exit(), ok.err());
        assertTrue(ok.out().contains("0000:04:00.0 assigned to VM vm-a"), ok.out());
        assertTrue(ok.out().contains("QEMU: -device vfio-pci,host=0000:04:00.0,id=hostdev0"), ok.out());
        CliRun other = CliRun.host(h, "assign", "0000:04:00.0", "--vm", "vm-b");
        assertEquals(1, other.exit());
        assertTrue(other.err().contains("already assigned to VM vm-a"), other.err());

        CliRun list = CliRun.host(h, "assignments", "--json");
        assertTrue(list.out().contains("\"vm\": \"vm-a\""), list.out());
        CliRun libvirt = CliRun.host(h, "config", "--vm", "vm-a", "--format", "libvirt");
        assertEquals(0, libvirt.exit(), libvirt.err());
        assertTrue(
                libvirt.out().contains("<address domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>"),
                libvirt.out());
        CliRun qemu = CliRun.host(h, "config", "0000:04:00.0");
        assertEquals(
                "-device vfio-pci,host=0000:04:00.0,id=hostdev0", qemu.out().strip());
        CliRun notAssigned = CliRun.host(h, "config", "0000:03:10.0");
        assertTrue(notAssigned.err().contains("0000:03:10.0 is not assigned"), notAssigned.err());
        assertEquals(
                0, CliRun.host(h, "release", "0000:04:00.0", "--vm", "vm-a").exit());
        assertTrue(CliRun.host(h, "assignments").out().contains("No devices are assigned."));
    }
}
