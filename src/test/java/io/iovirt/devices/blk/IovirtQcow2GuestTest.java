// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.ok;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.HostPaths;
import io.iovirt.nbd.NbdExportStats;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.IovirtCli;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.compose.VmComposer;
import io.iovirt.vm.compose.VmSpec;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * qcow2 images made by qemu-img, served by {@code iovirt serve blk} (format from the header) to a real Linux guest
 * over vhost-user-blk, and by {@code iovirt serve nbd} to QEMU's emulated AHCI disk: the guest reads what qemu-io
 * wrote, qemu-io and qemu-img compare find what the guest wrote, and qemu-img check is clean after fio's
 * write+verify.
 */
@Tag("guest")
class IovirtQcow2GuestTest {
    static final int MIB = 1 << 20;
    static final Duration TIMEOUT = Duration.ofSeconds(240);
    /** A child JVM's start: measured at ~40 s with a load average of 34 on this shared 2-core machine. */
    static final Duration START = Duration.ofSeconds(120);

    static GuestImage image;

    @TempDir
    Path dir;

    @BeforeAll
    static void buildImage() {
        image = GuestImage.ensure();
    }

    private ChildProcess serveBlk(Path img, int queues, String... extra) {
        Path sock = dir.resolve("vub.sock");
        List<String> options = new ArrayList<>(List.of("--queues", Integer.toString(queues)));
        options.addAll(List.of(extra));
        return ChildProcess.builder(IovirtCli.serveBlk(img, sock, options.toArray(String[]::new)))
                .name("iovirt serve blk")
                .log(dir.resolve("iovirt.log"))
                .startListening(sock, START);
    }

    private QemuGuest.Builder vhostGuest(String name, int queues) {
        return QemuGuest.builder(image)
                .name("qcow2/" + name)
                .workDir(dir)
                .args(
                        "-chardev",
                        "socket,id=vub0,path="
                                + QemuGuest.escape(dir.resolve("vub.sock").toString()),
                        "-device",
                        "vhost-user-blk-pci,chardev=vub0,num-queues=" + queues);
    }

    private static final String WAIT = """
            set -e -o pipefail
            for i in $(seq 100); do [ -b /dev/DEV ] && break; sleep 0.1; done
            [ -b /dev/DEV ] || { echo "no /dev/DEV"; exit 90; }
            """;

    /** A raw base file of pattern {@code seed} and a 64 MiB qcow2 overlay on it (64 KiB clusters, relative name). */
    private byte[] overlay(String base, int seed, int baseBytes, Path img) throws Exception {
        byte[] b = VhostUserBlkGuestTest.pattern(seed, baseBytes);
        Files.write(dir.resolve(base), b);
        ok(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=65536",
                "-b",
                base,
                "-F",
                "raw",
                img.toString(),
                "64M");
        return b;
    }

    /** 64 KiB clusters over a raw backing file: reads through the chain, COW writes, qemu-io finds them. */
    @Test
    void guestReadsQemuIoDataThroughABackingChainAndQemuFindsTheGuestsWrites() throws Exception {
        Path img = dir.resolve("overlay.qcow2");
        byte[] b = overlay("base.raw", 21, 16 * MIB, img);
        qemuIoOk(img, "qcow2", "write -P 0x3c 4M 1M");
        byte[] expected = Arrays.copyOf(b, 8 * MIB);
        Arrays.fill(expected, 4 * MIB, 5 * MIB, (byte) 0x3c);
        byte[] guestData = VhostUserBlkGuestTest.pattern(22, 2 * MIB);
        try (ChildProcess p = serveBlk(img, 1)) {
            GuestResult r = vhostGuest("chain", 1)
                    .file("/root/g.bin", guestData, 0644)
                    .payload(WAIT.replace("DEV", "vda") + """
                    echo sha=$(dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                    # 2 MiB at 1 MiB + 4 KiB: partial clusters at both ends copy the backing data around the write
                    dd if=/root/g.bin of=/dev/vda bs=4k seek=257 oflag=direct conv=fsync 2>/dev/null
                    echo sha2=$(dd if=/dev/vda bs=4k skip=257 count=512 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                    """)
                    .build()
                    .run(TIMEOUT);
            assertEquals(0, r.exitCode(), r.consoleTail(40));
            assertEquals(VhostUserBlkGuestTest.sha256(expected), r.field("sha"));
            assertEquals(VhostUserBlkGuestTest.sha256(guestData), r.field("sha2"));
            p.stop(Duration.ofSeconds(20));
        }
        check(img, false);
        System.arraycopy(guestData, 0, expected, MIB + 4096, guestData.length);
        byte[] all = Arrays.copyOf(b, 64 * MIB);
        System.arraycopy(expected, 0, all, 0, expected.length);
        Path want = dir.resolve("want.raw");
        Files.write(want, all);
        ok("qemu-img", "compare", "-f", "qcow2", "-F", "raw", img.toString(), want.toString());
    }

    /** 2 MiB clusters and compressed clusters (qemu-img convert -c); fio write+verify on two queues; check clean. */
    @Test
    void compressedTwoMegabyteClusterImageReadsAndFioVerifyLeavesACleanImage() throws Exception {
        Path raw = dir.resolve("src.raw");
        byte[] d = new byte[32 * MIB];
        for (int i = 0; i < d.length; i += 512) {
            Arrays.fill(d, i, i + 512, (byte) ((i >> 9) * 7));
        }
        Files.write(raw, d);
        Path img = dir.resolve("c.qcow2");
        ok(
                "qemu-img",
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=2M",
                raw.toString(),
                img.toString());
        ok("qemu-img", "resize", "-q", "-f", "qcow2", img.toString(), "96M");
        try (ChildProcess p = serveBlk(img, 2)) {
            GuestResult r = vhostGuest("compressed-fio", 2)
                    .cpus(2)
                    .fio()
                    .payload(WAIT.replace("DEV", "vda") + """
                    echo sha=$(dd if=/dev/vda bs=1M count=32 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                    fio --name=verify --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite --offset=16M \\
                        --bsrange=4k-256k --size=64M --iodepth=16 --numjobs=2 --offset_increment=32M \\
                        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --randseed=7 --group_reporting
                    """)
                    .build()
                    .run(TIMEOUT.multipliedBy(2));
            assertEquals(0, r.exitCode(), r.consoleTail(60));
            assertEquals(VhostUserBlkGuestTest.sha256(d), r.field("sha"));
            assertTrue(r.output().contains("err= 0"), r.output());
            p.stop(Duration.ofSeconds(20));
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0 0 512", "read -P 7 512 512");
    }

    /** QEMU's emulated AHCI disk on iovirt's NBD export of a qcow2 image: the PV data checks, on the FV path. */
    @Test
    void emulatedAhciDiskOnTheNbdExportPassesTheDataChecks() throws Exception {
        Path img = dir.resolve("fv.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", img.toString(), "64M");
        qemuIoOk(img, "qcow2", "write -P 0x5e 8M 4M");
        Path sock = dir.resolve("nbd.sock");
        byte[] guestData = VhostUserBlkGuestTest.pattern(23, 4 * MIB);
        try (ChildProcess p = ChildProcess.builder(IovirtCli.command(
                        "serve", "nbd", "--image", img.toString(), "--socket", sock.toString(), "--name", "fv"))
                .name("iovirt serve nbd")
                .log(dir.resolve("nbd.log"))
                .startListening(sock, START)) {
            List<String> args = new ArrayList<>(List.of(
                    "-drive",
                    "driver=nbd,server.type=unix,server.path=" + QemuGuest.escape(sock.toString())
                            + ",export=fv,if=none,id=fv0",
                    "-device",
                    "ahci,id=ahci0",
                    "-device",
                    "ide-hd,drive=fv0,bus=ahci0.0"));
            GuestResult r = QemuGuest.builder(image)
                    .name("qcow2/ahci-nbd")
                    .workDir(dir)
                    .modules("ahci", "sd_mod")
                    .fio()
                    .args(args.toArray(String[]::new))
                    .file("/root/g.bin", guestData, 0644)
                    .payload(WAIT.replace("DEV", "sda") + """
                            echo sha=$(dd if=/dev/sda bs=1M skip=8 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                            dd if=/root/g.bin of=/dev/sda bs=1M seek=20 oflag=direct conv=fsync 2>/dev/null
                            fio --name=verify --filename=/dev/sda --ioengine=libaio --direct=1 --rw=randwrite --offset=32M \\
                                --bsrange=4k-64k --size=16M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \\
                                --verify_state_save=0 --randseed=42
                            """)
                    .build()
                    .run(TIMEOUT.multipliedBy(2));
            assertEquals(0, r.exitCode(), r.consoleTail(60));
            byte[] want = new byte[4 * MIB];
            Arrays.fill(want, (byte) 0x5e);
            assertEquals(VhostUserBlkGuestTest.sha256(want), r.field("sha"));
            assertTrue(r.output().contains("err= 0"), r.output());
            p.stop(Duration.ofSeconds(20));
            assertTrue(p.log().contains("writes="), p.log());
        }
        check(img, false);
        Path g = dir.resolve("g.bin");
        Files.write(g, guestData);
        ok(
                "qemu-img",
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                img.toString(),
                dir.resolve("out.raw").toString());
        byte[] out = Files.readAllBytes(dir.resolve("out.raw"));
        assertEquals(
                VhostUserBlkGuestTest.sha256(guestData),
                VhostUserBlkGuestTest.sha256(Arrays.copyOfRange(out, 20 * MIB, 24 * MIB)),
                "qemu-img does not see the guest's write");
    }

    /**
     * The composer's NVMe disk kind ({@code vm run --disk fv:IMG,bus=nvme}): QEMU's emulated NVMe controller on
     * iovirt's NBD export of a qcow2 image; the AHCI test's data checks, on the NVMe path.
     */
    @Test
    void composedEmulatedNvmeDiskOnTheNbdExportPassesTheDataChecks() throws Exception {
        Path img = dir.resolve("nvme.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", img.toString(), "64M");
        qemuIoOk(img, "qcow2", "write -P 0x5f 8M 4M");
        byte[] guestData = VhostUserBlkGuestTest.pattern(24, 4 * MIB);
        VmSpec spec = new VmSpec(
                "nvme-fv",
                VmSpec.Profile.HVM,
                384,
                1,
                List.of(new VmSpec.Disk(VmSpec.Kind.FV, img, false, VmSpec.Bus.NVME)),
                List.of(),
                List.of(),
                List.of());
        try (VmComposer c = VmComposer.compose(
                spec,
                Files.createDirectories(dir.resolve("run")),
                HostPaths.system().withStateDir(dir.resolve("state")))) {
            assertTrue(
                    c.qemuArgs().stream().anyMatch(a -> a.startsWith("nvme,drive=")),
                    c.qemuArgs().toString());
            GuestResult r = QemuGuest.builder(image)
                    .name("qcow2/nvme-nbd")
                    .workDir(dir)
                    .memoryMiB(384)
                    .modules(c.modules().toArray(String[]::new))
                    .fio()
                    .args(c.qemuArgs())
                    .file("/root/g.bin", guestData, 0644)
                    .payload(WAIT.replace("DEV", "nvme0n1") + """
                            echo model=$(cat /sys/block/nvme0n1/device/model | tr -d ' ')
                            echo sha=$(dd if=/dev/nvme0n1 bs=1M skip=8 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                            dd if=/root/g.bin of=/dev/nvme0n1 bs=1M seek=20 oflag=direct conv=fsync 2>/dev/null
                            fio --name=verify --filename=/dev/nvme0n1 --ioengine=libaio --direct=1 --rw=randwrite --offset=32M \\
                                --bsrange=4k-64k --size=16M --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \\
                                --verify_state_save=0 --randseed=43
                            """)
                    .build()
                    .run(TIMEOUT.multipliedBy(2));
            assertEquals(0, r.exitCode(), r.consoleTail(60));
            assertTrue(r.field("model").contains("QEMU"), r.field("model")); // QEMU's emulated controller
            byte[] want = new byte[4 * MIB];
            Arrays.fill(want, (byte) 0x5f);
            assertEquals(VhostUserBlkGuestTest.sha256(want), r.field("sha"));
            assertTrue(r.output().contains("err= 0"), r.output());
            // the blocks went through iovirt's NBD export, not QEMU's file driver
            NbdExportStats st = c.nbdServer().exports().iterator().next().stats();
            assertTrue(st.writes.sum() >= 1 && st.flushes.sum() >= 1, st.toString());
        }
        check(img, false);
        ok(
                "qemu-img",
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                img.toString(),
                dir.resolve("out.raw").toString());
        byte[] out = Files.readAllBytes(dir.resolve("out.raw"));
        assertEquals(
                VhostUserBlkGuestTest.sha256(guestData),
                VhostUserBlkGuestTest.sha256(Arrays.copyOfRange(out, 20 * MIB, 24 * MIB)),
                "qemu-img does not see the guest's write");
    }

    /** {@code serve blk --direct} on a qcow2 image over a backing file: reads through the chain, fio write+verify. */
    @Test
    void directQcow2ServedToAGuestPassesTheDataChecks() throws Exception {
        Path img = dir.resolve("direct.qcow2");
        byte[] b = overlay("dbase.raw", 25, 8 * MIB, img);
        try (ChildProcess p = serveBlk(img, 1, "--direct")) {
            GuestResult r = vhostGuest("direct", 1)
                    .fio()
                    .payload(WAIT.replace("DEV", "vda") + """
                    echo sha=$(dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                    fio --name=verify --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite --offset=4M \\
                        --bsrange=4k-128k --size=24M --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \\
                        --verify_state_save=0 --randseed=44
                    """)
                    .build()
                    .run(TIMEOUT.multipliedBy(2));
            assertEquals(0, r.exitCode(), r.consoleTail(60));
            assertEquals(VhostUserBlkGuestTest.sha256(b), r.field("sha"));
            assertTrue(r.output().contains("err= 0"), r.output());
            p.stop(Duration.ofSeconds(20));
            assertTrue(p.log().contains("O_DIRECT"), p.log());
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P " + (b[0] & 0xff) + " 0 1");
    }
}
