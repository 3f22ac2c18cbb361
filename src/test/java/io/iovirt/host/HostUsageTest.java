// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.pci.Bdf;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** What HostUsage counts as the host's own use, on fixture trees laid out as the kernel lays them out. */
class HostUsageTest {
    @TempDir
    Path tmp;

    private static final Bdf SATA = Bdf.parse("0000:00:17.0");
    private static final Bdf NVME = Bdf.parse("0000:01:00.0");
    private static final Bdf NVME2 = Bdf.parse("0000:02:00.0");

    private static HostUsage scan(FakeHost h) {
        HostPaths p = h.paths();
        return HostUsage.scan(p.sys(), p.proc(), p.dev());
    }

    /** A SATA controller with disk sda (partitions sda1, sda2), device numbers 8:0, 8:1, 8:2 in dev/block. */
    private static FakeHost sataHost(Path dir) {
        FakeHost h = new FakeHost(dir).intelHostWithIommu();
        h.device("0000:00:17.0", 0x8086, 0xa352, 0x010601)
                .driver("ahci")
                .group(4)
                .block("ata1/host0/target0:0:0/0:0:0:0/block", "sda", "sda1", "sda2");
        String disk = "../../devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda";
        FakeHost.link(h.sys.resolve("dev/block/8:0"), disk);
        FakeHost.link(h.sys.resolve("dev/block/8:1"), disk + "/sda1");
        FakeHost.link(h.sys.resolve("dev/block/8:2"), disk + "/sda2");
        return h;
    }

    @Test
    void rootMountedAsDevRootIsFoundByItsDeviceNumber() {
        FakeHost h = sataHost(tmp);
        // Without an initramfs the kernel mounts root= as /dev/root, a name that is in neither sysfs nor /dev.
        h.mount("/dev/root", "/");
        FakeHost.write(
                h.proc.resolve("self/mountinfo"),
                "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
                        + "23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n");
        assertEquals(List.of("holds the mounted filesystem / (/dev/root)"), scan(h).uses(SATA));
    }

    @Test
    void anUnresolvableSourceWithoutMountinfoStaysUnjudged() {
        FakeHost h = sataHost(tmp);
        h.mount("/dev/root", "/");
        assertEquals(List.of(), scan(h).uses(SATA));
    }

    /**
     * Native NVMe multipath: the namespace nvme0n1 is a child of the subsystem nvme-subsys0, which links its
     * controllers; nvme0 (on 0000:01:00.0) has the path nvme0c0n1, nvme1 (on 0000:02:00.0) has none.
     */
    private static FakeHost multipathHost(Path dir) {
        FakeHost h = new FakeHost(dir).intelHostWithIommu();
        h.device("0000:01:00.0", 0x144d, 0xa808, 0x010802)
                .driver("nvme")
                .group(1)
                .nvmeController("nvme0");
        h.device("0000:02:00.0", 0x144d, 0xa808, 0x010802)
                .driver("nvme")
                .group(2)
                .nvmeController("nvme1");
        Path subsys = h.sys.resolve("devices/virtual/nvme-subsystem/nvme-subsys0");
        FakeHost.link(subsys.resolve("nvme0"), "../../../pci0000:00/0000:01:00.0/nvme/nvme0");
        FakeHost.link(subsys.resolve("nvme1"), "../../../pci0000:00/0000:02:00.0/nvme/nvme1");
        FakeHost.mkdir(h.sys.resolve("devices/pci0000:00/0000:01:00.0/nvme/nvme0/nvme0c0n1"));
        FakeHost.link(
                h.sys.resolve("class/block/nvme0c0n1"), "../../devices/pci0000:00/0000:01:00.0/nvme/nvme0/nvme0c0n1");
        FakeHost.mkdir(subsys.resolve("nvme0n1/nvme0n1p1"));
        FakeHost.mkdir(subsys.resolve("nvme0n1/nvme0n1p2"));
        FakeHost.write(subsys.resolve("nvme0n1/nvme0n1p1/partition"), "1\n");
        FakeHost.write(subsys.resolve("nvme0n1/nvme0n1p2/partition"), "2\n");
        FakeHost.link(subsys.resolve("nvme0n1/device"), "../../nvme-subsys0");
        String ns = "../../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1";
        FakeHost.link(h.sys.resolve("class/block/nvme0n1"), ns);
        FakeHost.link(h.sys.resolve("class/block/nvme0n1p1"), ns + "/nvme0n1p1");
        FakeHost.link(h.sys.resolve("class/block/nvme0n1p2"), ns + "/nvme0n1p2");
        return h;
    }

    @Test
    void aMultipathNamespaceBelongsToTheControllersWithAPathToIt() {
        FakeHost h = multipathHost(tmp);
        h.mount("/dev/nvme0n1p2", "/");
        HostUsage u = scan(h);
        assertEquals(List.of("holds the mounted filesystem / (/dev/nvme0n1p2)"), u.uses(NVME));
        assertEquals(List.of(), u.uses(NVME2), "nvme1 has no path to nvme0n1");
        assertEquals(Set.of("nvme0c0n1", "nvme0n1", "nvme0n1p1", "nvme0n1p2"), u.blockDevices(NVME));
    }

    @Test
    void aMultipathNamespaceWithoutVisiblePathsBelongsToEveryController() throws Exception {
        FakeHost h = multipathHost(tmp);
        FakeHost.relink(h.sys.resolve("class/block/nvme0c0n1"), "nowhere");
        Files.delete(h.sys.resolve("devices/pci0000:00/0000:01:00.0/nvme/nvme0/nvme0c0n1"));
        h.mount("/dev/nvme0n1p2", "/");
        HostUsage u = scan(h);
        assertEquals(List.of("holds the mounted filesystem / (/dev/nvme0n1p2)"), u.uses(NVME));
        assertEquals(List.of("holds the mounted filesystem / (/dev/nvme0n1p2)"), u.uses(NVME2));
    }

    private static void holder(FakeHost h, String of, String holder) {
        FakeHost.link(
                h.sys.resolve("devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/" + of
                        + "/holders/" + holder),
                "../../../../../../../../../virtual/block/" + holder);
    }

    @Test
    void aDiskWithAHolderIsInUseEvenWhenNothingOnItIsMounted() {
        FakeHost h = sataHost(tmp);
        // sda1: an LVM physical volume of an active volume group, nothing mounted from it.
        FakeHost.mkdir(h.sys.resolve("devices/virtual/block/dm-0/dm"));
        FakeHost.write(h.sys.resolve("devices/virtual/block/dm-0/dm/name"), "vg0-data\n");
        FakeHost.write(h.sys.resolve("devices/virtual/block/dm-0/dm/uuid"), "LVM-abcdef\n");
        FakeHost.link(h.sys.resolve("class/block/dm-0"), "../../devices/virtual/block/dm-0");
        holder(h, "sda1", "dm-0");
        // sda2: a member of md0.
        FakeHost.mkdir(h.sys.resolve("devices/virtual/block/md0/md"));
        FakeHost.link(h.sys.resolve("class/block/md0"), "../../devices/virtual/block/md0");
        holder(h, "sda2", "md0");
        HostUsage u = scan(h);
        assertEquals(
                List.of(
                        "holds sda1, which LVM volume vg0-data (dm-0) is built on",
                        "holds sda2, which md array md0 is built on"),
                u.uses(SATA));
    }

    @Test
    void aWholeDiskUnderDmCryptIsInUse() {
        FakeHost h = sataHost(tmp);
        FakeHost.mkdir(h.sys.resolve("devices/virtual/block/dm-1/dm"));
        FakeHost.write(h.sys.resolve("devices/virtual/block/dm-1/dm/name"), "secret\n");
        FakeHost.write(h.sys.resolve("devices/virtual/block/dm-1/dm/uuid"), "CRYPT-LUKS2-1234-secret\n");
        FakeHost.link(h.sys.resolve("class/block/dm-1"), "../../devices/virtual/block/dm-1");
        FakeHost.link(
                h.sys.resolve("devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/holders/dm-1"),
                "../../../../../../../../virtual/block/dm-1");
        assertEquals(List.of("holds sda, which dm-crypt volume secret (dm-1) is built on"), scan(h).uses(SATA));
    }

    @Test
    void emptyHoldersDirectoriesAreNoUse() {
        FakeHost h = sataHost(tmp);
        FakeHost.mkdir(
                h.sys.resolve("devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/holders"));
        FakeHost.mkdir(
                h.sys.resolve("devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1/holders"));
        assertTrue(scan(h).uses(SATA).isEmpty());
    }
}
