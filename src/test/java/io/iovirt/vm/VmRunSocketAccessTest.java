// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.testing.QemuAsUser;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code vm run --serve} (and --libvirt-xml, the same backends) for QEMU that runs as another user, as under
 * qemu:///system: with --socket-group and --allow-user the run directory is group-owned 0750, every socket 0660, and
 * QEMU as libvirt-qemu (created as Debian's libvirt creates it) realizes a vhost-user-blk device on the printed
 * socket. The sockets used to be 0600 in a 0700 directory, so the XML it printed could not boot under libvirt.
 */
@Tag("peer") // QEMU as another user, vm run as its own process
@Timeout(300)
class VmRunSocketAccessTest {
    @TempDir
    Path dir;

    @BeforeAll
    static void libvirtQemuUser() throws Exception {
        QemuAsUser.debianLibvirtQemuUser();
    }

    @Test
    void servedBackendsAreReachableForLibvirtsQemu() throws Exception {
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxr-xr-x"));
        Path img = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(16L << 20);
        }
        Path runParent = Files.createDirectories(dir.resolve("run"));
        Files.setPosixFilePermissions(runParent, PosixFilePermissions.fromString("rwxr-xr-x"));
        try (ChildProcess vm = ChildProcess.builder(IovirtCli.command(
                        "vm",
                        "run",
                        "access-test",
                        "--serve",
                        "--disk",
                        "pv:" + img,
                        "--nic",
                        "pv",
                        "--socket-group",
                        "kvm",
                        "--allow-user",
                        QemuAsUser.LIBVIRT_QEMU,
                        "--run-dir",
                        runParent.toString(),
                        "--state-dir",
                        dir.resolve("state").toString()))
                .name("iovirt vm run --serve")
                .log(dir.resolve("vm-run.log"))
                .start()) {
            Await.until(
                    Duration.ofSeconds(120),
                    "vm run serving",
                    vm,
                    () -> vm.log().contains("backends running"));
            Matcher m = Pattern.compile("id=disk0,path=(\\S+)").matcher(vm.log());
            assertTrue(m.find(), vm.log());
            Path disk = Path.of(m.group(1));
            Path run = disk.getParent();
            assertEquals(runParent, run.getParent(), "the run directory is made under --run-dir");
            assertEquals("rwxr-x---", PosixFilePermissions.toString(Files.getPosixFilePermissions(run)));
            assertEquals("kvm", Files.getAttribute(run, "posix:group").toString());
            for (String sock : List.of("disk0.sock", "nic0.sock")) {
                Path s = run.resolve(sock);
                assertEquals("rw-rw----", PosixFilePermissions.toString(Files.getPosixFilePermissions(s)), sock);
                assertEquals("kvm", Files.getAttribute(s, "posix:group").toString(), sock);
            }
            String qemu = QemuAsUser.realizeVhostUserBlk(QemuAsUser.LIBVIRT_QEMU, disk);
            assertTrue(QemuAsUser.realized(qemu), "QEMU as libvirt-qemu:\n" + qemu + "\n--- vm run ---\n" + vm.log());

            new ProcessBuilder("kill", "-TERM", Long.toString(vm.pid())).start().waitFor();
            assertTrue(vm.waitFor(Duration.ofSeconds(60)), vm.logTail(20));
            assertEquals(0, vm.exitValue(), vm.log());
            assertFalse(Files.exists(run), "the run directory is removed at exit");
        }
    }
}
