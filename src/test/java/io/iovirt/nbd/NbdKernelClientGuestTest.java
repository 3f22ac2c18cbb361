// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.ok;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.testing.Require;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.QemuGuest;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Linux kernel's NBD client (nbd.ko + nbd-client 3.24) reading and writing through iovirt's NBD server. The
 * host kernel here is built without CONFIG_BLK_DEV_NBD, so the kernel client runs in a guest: the guest's Debian
 * kernel loads nbd.ko (taken from the same kernel package the guest image was built from), reaches the server on
 * the host's loopback through QEMU's user network (10.0.2.2), and the Debian nbd-client binary (copied in with its
 * libraries) connects /dev/nbd0 to the export.
 */
@Tag("guest")
class NbdKernelClientGuestTest {
    @TempDir
    Path dir;

    @Test
    void kernelNbdClientReadsAndWritesAQcow2Export() throws Exception {
        GuestImage image = GuestImage.ensure();
        Path nbdClient =
                Require.program("nbd-client", "apt-get install nbd-client (scripts/install-deps.sh installs it)");
        Path nbdKo = extractNbdModule(image.kernelRelease());
        Path img = dir.resolve("k.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", img.toString(), "64M");
        qemuIoOk(img, "qcow2", "write -P 0x4b 8M 4M");
        byte[] guestData = new byte[4 << 20];
        new Random(31).nextBytes(guestData);
        byte[] hostData = new byte[4 << 20];
        Arrays.fill(hostData, (byte) 0x4b);
        try (DiskImage disk = Images.open(img, null, false, false);
                NbdServer server = NbdServer.startTcp("127.0.0.1", 0, 4)) {
            server.addExport(new NbdExport("kern", disk, false));
            QemuGuest.Builder g = QemuGuest.builder(image)
                    .name("nbd-kernel-client")
                    .workDir(dir)
                    .modules("virtio_pci", "virtio_net")
                    .args("-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=")
                    .file("/root/nbd.ko", nbdKo)
                    .file("/sbin/nbd-client", Files.readAllBytes(nbdClient), 0755)
                    .file("/root/g.bin", guestData, 0644);
            for (Path lib : libraries(nbdClient)) {
                g.file(lib.toString(), Files.readAllBytes(lib), 0755);
            }
            GuestResult r = g.payload("""
                    set -e -o pipefail
                    insmod /root/nbd.ko
                    ip link set lo up
                    ip addr add 10.0.2.15/24 dev eth0
                    ip link set eth0 up
                    for i in $(seq 100); do [ -b /dev/nbd0 ] && break; sleep 0.1; done
                    nbd-client 10.0.2.2 PORT /dev/nbd0 -N kern -b 4096 -L
                    # nbd-client may return before its NBD_DO_IT starts the device, which is when the kernel sets
                    # the size: read as 0 once in CI
                    for i in $(seq 100); do [ "$(cat /sys/block/nbd0/size)" != 0 ] && break; sleep 0.1; done
                    echo size=$(cat /sys/block/nbd0/size)
                    echo sha=$(dd if=/dev/nbd0 bs=1M skip=8 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                    dd if=/root/g.bin of=/dev/nbd0 bs=1M seek=20 oflag=direct conv=fsync 2>/dev/null
                    echo sha2=$(dd if=/dev/nbd0 bs=1M skip=20 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                    nbd-client -d /dev/nbd0
                    """.replace("PORT", Integer.toString(server.port())))
                    .build()
                    .run(Duration.ofSeconds(240));
            assertEquals(0, r.exitCode(), r.consoleTail(40));
            assertEquals(Long.toString((64L << 20) / 512), r.field("size"));
            assertEquals(sha256(hostData), r.field("sha"), "the kernel client read other data than qemu-io wrote");
            assertEquals(sha256(guestData), r.field("sha2"));
            NbdExportStats st = server.exports().iterator().next().stats();
            assertTrue(st.writes.sum() > 0 && st.reads.sum() > 0, st.toString());
        }
        check(img, false);
        Path out = dir.resolve("out.raw");
        ok("qemu-img", "convert", "-f", "qcow2", "-O", "raw", img.toString(), out.toString());
        byte[] all = Files.readAllBytes(out);
        assertEquals(
                sha256(guestData),
                sha256(Arrays.copyOfRange(all, 20 << 20, 24 << 20)),
                "qemu-img does not see the kernel client's write");
    }

    /** nbd.ko of the guest's kernel, out of the Debian kernel package the guest image was built from. */
    private Path extractNbdModule(String kernelRelease) throws Exception {
        Path cache = Path.of(
                System.getenv().getOrDefault("IOVIRT_CACHE", System.getProperty("user.home") + "/.cache/iovirt"),
                "guest",
                "debs");
        Path deb;
        try (Stream<Path> s = Files.list(cache)) {
            deb = s.filter(p -> p.getFileName().toString().startsWith("linux-image-" + kernelRelease + "_"))
                    .findFirst()
                    .orElse(null);
        }
        Require.that(
                deb != null,
                "the kernel package linux-image-" + kernelRelease + " in " + cache
                        + " (scripts/build-guest.sh downloads it when it builds the guest image)");
        Path out = dir.resolve("nbd.ko");
        Process p = new ProcessBuilder(
                        "sh",
                        "-c",
                        "dpkg-deb --fsys-tarfile \"$1\" | tar -xO ./lib/modules/" + kernelRelease
                                + "/kernel/drivers/block/nbd.ko > \"$2\"",
                        "sh",
                        deb.toString(),
                        out.toString())
                .redirectErrorStream(true)
                .start();
        Require.that(
                p.waitFor(60, TimeUnit.SECONDS) && p.exitValue() == 0 && Files.size(out) > 0,
                "nbd.ko inside " + deb + ": " + new String(p.getInputStream().readAllBytes()));
        return out;
    }

    /** The shared libraries (and the dynamic loader) a binary needs, by ldd. */
    private static List<Path> libraries(Path binary) throws Exception {
        String out = ok("ldd", binary.toString());
        return out.lines()
                .map(String::trim)
                .map(l -> {
                    String[] f = l.split("\\s+");
                    if (f.length >= 3 && f[1].equals("=>") && f[2].startsWith("/")) {
                        return f[2];
                    }
                    return f[0].startsWith("/") ? f[0] : null;
                })
                .filter(s -> s != null)
                .map(Path::of)
                .toList();
    }

    private static String sha256(byte[] d) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(d));
    }
}
