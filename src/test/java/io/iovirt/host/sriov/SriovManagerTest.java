// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.sriov;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.host.DevicesTest;
import io.iovirt.host.FakeHost;
import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.pci.Bdf;
import io.iovirt.testing.DirectoryReads;
import io.iovirt.util.ActionableException;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Supplier;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * sriov_numvfs and autoprobe handling on fixtures. The fixture cannot create VF directories, so what is checked is
 * what the kernel was told and what is refused; HostNestedGuestTest creates real VFs.
 */
class SriovManagerTest {
    @TempDir
    Path tmp;

    private static final Bdf PF = Bdf.parse("0000:03:00.0");

    @Test
    void changingTheCountGoesThroughZero() {
        FakeHost h = DevicesTest.desktop(tmp);
        SriovManager.Outcome o =
                new SriovManager(h.paths()).setVfs(PF, 4, null, SriovManager.NvmeRequest.DEFAULT, false);
        assertEquals(
                List.of(
                        h.sys.resolve("bus/pci/devices/0000:03:00.0/sriov_numvfs") + " <- 0",
                        h.sys.resolve("bus/pci/devices/0000:03:00.0/sriov_numvfs") + " <- 4"),
                o.writes());
        assertEquals("4", h.read("bus/pci/devices/0000:03:00.0/sriov_numvfs"));
        assertEquals(2, o.before());
        assertEquals(4, o.after());
        assertEquals(7, o.totalVfs());
    }

    @Test
    void autoprobeIsWrittenBeforeTheVfsAppear() {
        FakeHost h = DevicesTest.desktop(tmp);
        SriovManager.Outcome o =
                new SriovManager(h.paths()).setVfs(PF, 0, false, SriovManager.NvmeRequest.DEFAULT, false);
        assertEquals(
                h.sys.resolve("bus/pci/devices/0000:03:00.0/sriov_drivers_autoprobe") + " <- 0",
                o.writes().getFirst());
        assertEquals("0", h.read("bus/pci/devices/0000:03:00.0/sriov_drivers_autoprobe"));
        assertEquals("0", h.read("bus/pci/devices/0000:03:00.0/sriov_numvfs"));
    }

    /** --no-autoprobe with the count unchanged still sets it (for VFs made later), and says so. */
    @Test
    void autoprobeIsSetWhenTheCountStaysTheSame() {
        FakeHost h = DevicesTest.desktop(tmp);
        SriovManager.Outcome o =
                new SriovManager(h.paths()).setVfs(PF, 2, false, SriovManager.NvmeRequest.DEFAULT, false);
        assertEquals(
                List.of(h.sys.resolve("bus/pci/devices/0000:03:00.0/sriov_drivers_autoprobe") + " <- 0"), o.writes());
        assertEquals("0", h.read("bus/pci/devices/0000:03:00.0/sriov_drivers_autoprobe"));
        assertEquals("2\n", h.read("bus/pci/devices/0000:03:00.0/sriov_numvfs"), "the VFs were left alone");
        assertEquals(false, o.autoprobe());
        assertTrue(
                o.notes()
                        .contains("drivers autoprobe off applies to VFs created later; the 2 that exist keep the"
                                + " drivers they have"),
                o.notes().toString());
    }

    /**
     * Runs {@code change} with sriov_numvfs of the PF turned into a directory (a write to it fails, as the kernel's
     * does when the PF driver refuses) after the change has read the PF: /proc/swaps is a FIFO, so the change's host
     * usage scan, which comes after the PCI scan and before any write, waits for this test to swap the file and only
     * then reads the swaps.
     */
    private static ActionableException withNumvfsWriteFailing(FakeHost h, Runnable change) throws Exception {
        Path swaps = h.proc.resolve("swaps");
        Files.deleteIfExists(swaps);
        assertEquals(0, new ProcessBuilder("mkfifo", swaps.toString()).start().waitFor());
        Path numvfs = h.sys.resolve("devices/pci0000:00/0000:03:00.0/sriov_numvfs");
        Thread kernel = new Thread(() -> {
            try (OutputStream out = Files.newOutputStream(swaps)) { // returns once the change opens the FIFO
                Files.delete(numvfs);
                Files.createDirectory(numvfs);
                out.write("Filename\tType\tSize\tUsed\tPriority\n".getBytes(StandardCharsets.US_ASCII));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        });
        kernel.setDaemon(true);
        kernel.start();
        try {
            return assertThrows(ActionableException.class, change::run);
        } finally {
            kernel.join(30_000);
            if (kernel.isAlive()) {
                new FileInputStream(swaps.toFile()).close(); // release the writer; the assertion above failed
            }
        }
    }

    /**
     * Runs {@code change} (which must check the host's usage and then write {@code count} to the PF's sriov_numvfs
     * once) with the kernel's part played: the VFs {@code vfs} appear, as the kernel creates them, between the write
     * and the next read of sriov_numvfs. As in {@link #withNumvfsWriteFailing}, the /proc/swaps FIFO stops the change
     * after its PCI scan; then sriov_numvfs becomes a FIFO, whose write is read here: the VFs are created, and only
     * then can the change read sriov_numvfs again (a FIFO opened read-write, which Linux opens at once, answers a read
     * already waiting; a regular file replaces the FIFO for every later one).
     */
    private static <T> T withKernelCreatingVfs(FakeHost h, String pf, List<String> vfs, Supplier<T> change)
            throws Exception {
        Path swaps = h.proc.resolve("swaps");
        Files.deleteIfExists(swaps);
        assertEquals(0, new ProcessBuilder("mkfifo", swaps.toString()).start().waitFor());
        Path pfDir = h.sys.resolve("devices/pci0000:00/" + pf);
        Path numvfs = pfDir.resolve("sriov_numvfs");
        AtomicReference<String> written = new AtomicReference<>();
        Thread kernel = new Thread(() -> {
            try {
                try (OutputStream out = Files.newOutputStream(swaps)) { // returns once the change opens the FIFO
                    Path fifo = pfDir.resolve("numvfs.fifo");
                    assertEquals(
                            0,
                            new ProcessBuilder("mkfifo", fifo.toString())
                                    .start()
                                    .waitFor());
                    Files.move(fifo, numvfs, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                    Path plain = h.proc.resolve("swaps.plain");
                    Files.writeString(plain, "Filename\tType\tSize\tUsed\tPriority\n");
                    Files.move(plain, swaps, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                    out.write("Filename\tType\tSize\tUsed\tPriority\n".getBytes(StandardCharsets.US_ASCII));
                }
                try (InputStream in = Files.newInputStream(numvfs)) { // returns once the change opens it to write
                    written.set(new String(in.readAllBytes(), StandardCharsets.US_ASCII));
                }
                for (int i = 0; i < vfs.size(); i++) {
                    h.device(vfs.get(i), 0x15b3, 0x1018, 0x020000).group(40 + i).physfn(pf);
                    FakeHost.link(pfDir.resolve("virtfn" + i), "../" + vfs.get(i));
                }
                Path plain = pfDir.resolve("numvfs.plain");
                Files.writeString(plain, vfs.size() + "\n");
                try (FileChannel answer = FileChannel.open(numvfs, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
                    answer.write(ByteBuffer.wrap((vfs.size() + "\n").getBytes(StandardCharsets.US_ASCII)));
                    Files.move(plain, numvfs, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                }
            } catch (IOException | InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        kernel.setDaemon(true);
        kernel.start();
        try {
            return change.get();
        } finally {
            kernel.join(30_000);
            assertEquals(vfs.size() + "", written.get(), "what the change wrote to sriov_numvfs");
        }
    }

    /**
     * A VF assigned to a VM was destroyed outside iovirt (sriov_numvfs lowered by hand, or the PF unbound): when
     * iovirt creates VFs again, the new VF at that address is not the VM's — it was handed over as if it were.
     */
    @Test
    void aVfDestroyedOutsideIovirtLeavesNoOwnerToItsSuccessor() throws Exception {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        h.device("0000:05:00.0", 0x15b3, 0x1017, 0x020000)
                .driver("mlx5_core")
                .group(30)
                .sriov(8, List.of());
        AssignmentRegistry registry = new AssignmentRegistry(h.state);
        Bdf vf = Bdf.parse("0000:05:00.2");
        Bdf unplugged = Bdf.parse("0000:06:00.0"); // not a VF of this PF: kept
        registry.assign(vf, "vm-a", List.of());
        registry.assign(unplugged, "vm-b", List.of());
        SriovManager.Outcome o = withKernelCreatingVfs(
                h,
                "0000:05:00.0",
                List.of("0000:05:00.1", "0000:05:00.2"),
                () -> new SriovManager(h.paths())
                        .setVfs(Bdf.parse("0000:05:00.0"), 2, null, SriovManager.NvmeRequest.DEFAULT, false));
        assertEquals(
                List.of(Bdf.parse("0000:05:00.1"), vf),
                o.vfs().stream().map(SriovManager.VfInfo::bdf).toList());
        assertNull(registry.owner(vf), "the new VF still belongs to vm-a");
        assertEquals("vm-b", registry.owner(unplugged).vm());
        assertTrue(
                o.notes().stream()
                        .anyMatch(n -> n.startsWith(
                                "VF 0000:05:00.2 was assigned to VM vm-a and had been destroyed" + " outside iovirt")),
                o.notes().toString());
    }

    @Test
    void autoprobeIsPutBackWhenTheCountCannotBeChanged() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        ActionableException e = withNumvfsWriteFailing(
                h, () -> new SriovManager(h.paths()).setVfs(PF, 4, false, SriovManager.NvmeRequest.DEFAULT, false));
        assertTrue(e.getMessage().contains("sriov_numvfs failed"), e.getMessage());
        assertEquals(
                "1",
                h.read("bus/pci/devices/0000:03:00.0/sriov_drivers_autoprobe").strip());
    }

    @Test
    void vfResourcesShowWhatSysfsKnows() {
        FakeHost h = DevicesTest.desktop(tmp);
        h.dev("0000:03:00.0").attr("sriov_vf_total_msix", "22\n");
        FakeHost.mkdir(h.sys.resolve("devices/pci0000:00/0000:03:10.0/msi_irqs/40"));
        FakeHost.mkdir(h.sys.resolve("devices/pci0000:00/0000:03:10.0/msi_irqs/41"));
        SriovManager.Outcome o = new SriovManager(h.paths()).status(PF);
        assertEquals(2, o.vfs().size());
        SriovManager.VfInfo vf0 = o.vfs().getFirst();
        assertEquals(Bdf.parse("0000:03:10.0"), vf0.bdf());
        assertEquals("igbvf", vf0.driver());
        assertEquals(21, vf0.iommuGroup());
        assertEquals(2, vf0.resources().get("interrupts_in_use"));
        assertEquals("enp3s16", vf0.resources().get("interface"));
        assertEquals(1L, vf0.resources().get("rx_queues"));
        assertTrue(
                o.notes().getFirst().contains("usually far fewer than the PF's"),
                o.notes().toString());
        assertTrue(
                o.notes().get(1).contains("the PF shares 22 MSI-X vectors among all its VFs"),
                o.notes().toString());
        // The PF's own netdev has 8 queue pairs; the VF has one: shown, not hidden.
        CliRun r = CliRun.host(h, "vfs", PF.toString());
        assertEquals(0, r.exit(), r.err());
        assertTrue(
                r.out()
                        .contains(
                                "VF 1   0000:03:10.0  driver: igbvf      group: 21    interrupts_in_use=2, interface=enp3s16, rx_queues=1, tx_queues=1"),
                r.out());
    }

    @Test
    void refusesTooManyVfsAVfAndAPfWithoutDriver() {
        FakeHost h = DevicesTest.desktop(tmp);
        SriovManager m = new SriovManager(h.paths());
        HostConfigException many = assertThrows(
                HostConfigException.class, () -> m.setVfs(PF, 8, null, SriovManager.NvmeRequest.DEFAULT, false));
        assertTrue(many.getMessage().contains("supports at most 7 VFs, not 8"), many.getMessage());
        CliRun negative = CliRun.host(h, "vfs", PF.toString(), "--count", "-1");
        assertEquals(2, negative.exit(), "a usage error: " + negative.err());
        assertTrue(negative.err().contains("--count must be 0 or more (0 removes the VFs), not -1"), negative.err());
        HostConfigException vf = assertThrows(
                HostConfigException.class,
                () -> m.setVfs(Bdf.parse("0000:03:10.0"), 1, null, SriovManager.NvmeRequest.DEFAULT, false));
        assertTrue(vf.getMessage().contains("is a virtual function of 0000:03:00.0"), vf.getMessage());
        HostConfigException notCapable = assertThrows(
                HostConfigException.class,
                () -> m.setVfs(Bdf.parse("0000:02:00.0"), 1, null, SriovManager.NvmeRequest.DEFAULT, false));
        assertTrue(notCapable.getMessage().contains("is not SR-IOV capable"), notCapable.getMessage());
        h.device("0000:05:00.0", 0x15b3, 0x1017, 0x020000).group(30).sriov(8, List.of());
        HostConfigException noDriver = assertThrows(
                HostConfigException.class,
                () -> m.setVfs(Bdf.parse("0000:05:00.0"), 2, null, SriovManager.NvmeRequest.DEFAULT, false));
        assertTrue(
                noDriver.getMessage().contains("has no driver, and only its driver can enable VFs"),
                noDriver.getMessage());
    }

    @Test
    void refusesToDestroyAssignedVfsUnlessForced() {
        FakeHost h = DevicesTest.desktop(tmp);
        new AssignmentRegistry(h.state).assign(Bdf.parse("0000:03:10.2"), "vm-a", List.of());
        SriovManager m = new SriovManager(h.paths());
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> m.setVfs(PF, 0, null, SriovManager.NvmeRequest.DEFAULT, false));
        assertTrue(e.getMessage().contains("VF 0000:03:10.2 is assigned to VM vm-a"), e.getMessage());
        assertEquals("2\n", h.read("bus/pci/devices/0000:03:00.0/sriov_numvfs"), "nothing was written");
        m.setVfs(PF, 0, null, SriovManager.NvmeRequest.DEFAULT, true);
        assertEquals("0", h.read("bus/pci/devices/0000:03:00.0/sriov_numvfs"));
    }

    /**
     * A VF bound to vfio-pci whose group a process has open (a QEMU started without iovirt host assign): vfio-pci
     * lets it go only when that process closes it, so the sriov_numvfs write would wait (state lock held) while the
     * VM loses its device. Refused like an assigned VF, naming the process; --force goes ahead.
     */
    @Test
    void refusesToDestroyVfsAProcessHasOpenThroughVfio() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        h.dev("0000:03:10.2").driver("vfio-pci");
        holds(h, 4242, "/dev/vfio/22", "nic-vm");
        SriovManager m = new SriovManager(h.paths());
        HostConfigException e = assertThrows(
                HostConfigException.class, () -> m.setVfs(PF, 0, null, SriovManager.NvmeRequest.DEFAULT, false));
        assertTrue(
                e.getMessage()
                        .contains("VF 0000:03:10.2 is in use through VFIO: pid 4242 (qemu-system-x86_64 -name nic-vm)"
                                + " has /dev/vfio/22 open"),
                e.getMessage());
        assertEquals("2\n", h.read("bus/pci/devices/0000:03:00.0/sriov_numvfs"), "nothing was written");
        m.setVfs(PF, 0, null, SriovManager.NvmeRequest.DEFAULT, true);
        assertEquals("0", h.read("bus/pci/devices/0000:03:00.0/sriov_numvfs"));
    }

    /**
     * Who holds each VF through VFIO is found from one read of /proc for all the VFs: it listed every process's
     * descriptors once per VF on vfio-pci, O(VFs × processes) for one {@code host vfs --count}. Each process is still
     * named with the VF whose node it holds, and another read of /proc is made for each change asked for.
     */
    @Test
    void theVfioHoldersOfAllVfsComeFromOneReadOfProc() throws Exception {
        FakeHost h = DevicesTest.desktop(tmp);
        h.dev("0000:03:10.0").driver("vfio-pci");
        h.dev("0000:03:10.2").driver("vfio-pci");
        holds(h, 4242, "/dev/vfio/21", "nic-vm");
        holds(h, 4243, "/dev/vfio/22", "other-vm");
        DirectoryReads proc = DirectoryReads.of(h.proc);
        HostPaths paths = h.paths();
        SriovManager m = new SriovManager(new HostPaths(
                paths.sysRoot(), proc.root(), paths.devRoot(), paths.stateDir(), paths.pciIds(), paths.binPath()));
        for (int change = 1; change <= 2; change++) {
            HostConfigException e = assertThrows(
                    HostConfigException.class, () -> m.setVfs(PF, 0, null, SriovManager.NvmeRequest.DEFAULT, false));
            assertTrue(
                    e.getMessage()
                                    .contains("VF 0000:03:10.0 is in use through VFIO: pid 4242 (qemu-system-x86_64"
                                            + " -name nic-vm) has /dev/vfio/21 open")
                            && e.getMessage()
                                    .contains("VF 0000:03:10.2 is in use through VFIO: pid 4243 (qemu-system-x86_64"
                                            + " -name other-vm) has /dev/vfio/22 open"),
                    e.getMessage());
            assertEquals(change, proc.listings(""), "reads of /proc after " + change + " changes of the VFs");
            assertEquals(change, proc.listings("4242/fd"), "reads of pid 4242's descriptors");
        }
        assertEquals("2\n", h.read("bus/pci/devices/0000:03:00.0/sriov_numvfs"), "nothing was written");
    }

    /** A process {@code pid} (QEMU of VM {@code vm}) with {@code node} open. */
    private static void holds(FakeHost h, int pid, String node, String vm) throws IOException {
        Path dir = h.proc.resolve(Integer.toString(pid));
        Files.createDirectories(dir.resolve("fd"));
        Files.createSymbolicLink(dir.resolve("fd/17"), Path.of(node));
        Files.write(
                dir.resolve("cmdline"), ("qemu-system-x86_64\0-name\0" + vm + "\0").getBytes(StandardCharsets.UTF_8));
    }

    @Test
    void forcedRemovalDropsTheAssignmentsOfTheDestroyedVfs() {
        FakeHost h = DevicesTest.desktop(tmp);
        Bdf vf = Bdf.parse("0000:03:10.2");
        Bdf gpu = Bdf.parse("0000:04:00.0");
        AssignmentRegistry registry = new AssignmentRegistry(h.state);
        registry.assign(vf, "vm-a", List.of());
        registry.assign(gpu, "vm-b", List.of());
        SriovManager.Outcome o =
                new SriovManager(h.paths()).setVfs(PF, 4, null, SriovManager.NvmeRequest.DEFAULT, true);
        assertNull(registry.owner(vf), "the destroyed VF still belongs to vm-a");
        assertEquals("vm-b", registry.owner(gpu).vm(), "not a VF of this PF: kept");
        assertTrue(
                o.notes().stream()
                        .anyMatch(n -> n.startsWith("VF 0000:03:10.2 was assigned to VM vm-a and is destroyed")),
                o.notes().toString());
        // The VF the kernel makes at the same address is a new device, free for any VM.
        assertTrue(registry.assign(vf, "vm-c", List.of()).created());
    }

    @Test
    void nvmePfKeepsDriversAwayUntilProvisionedAndSaysWhenProvisioningFails() {
        FakeHost h = new FakeHost(tmp).intelHostWithIommu();
        h.device("0000:01:00.0", 0x1b36, 0x0010, 0x010802)
                .driver("nvme")
                .group(3)
                .sriov(2, List.of())
                .nvmeController("nvme0");
        HostConfigException e = assertThrows(
                HostConfigException.class,
                () -> new SriovManager(h.paths())
                        .setVfs(Bdf.parse("0000:01:00.0"), 2, null, SriovManager.NvmeRequest.DEFAULT, false));
        assertTrue(e.getMessage().startsWith("2 VFs of 0000:01:00.0 exist but have no queues: "), e.getMessage());
        assertTrue(e.getMessage().contains(h.dev.resolve("nvme0").toString()), e.getMessage());
        assertTrue(e.getMessage().contains("--count 0"), e.getMessage());
        assertEquals("2", h.read("bus/pci/devices/0000:01:00.0/sriov_numvfs"));
        // Autoprobe was switched off for the VFs' creation and then restored.
        assertEquals("1", h.read("bus/pci/devices/0000:01:00.0/sriov_drivers_autoprobe"));
    }
}
