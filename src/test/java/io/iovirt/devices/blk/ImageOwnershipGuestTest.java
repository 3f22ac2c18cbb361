// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.IovirtCli;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.RunningGuest;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Image ownership (issue 11) with real guests: two VMs on one writable image, each through its own
 * {@code iovirt serve blk}. The first VM's backend holds the image lock while its queues run; the second VM's disk
 * fails every request with an I/O error, its backend logs who holds the image, and not one byte of the image
 * changes through it. Once the first VM is gone its backend hands the image back, and a new VM on the second
 * backend writes.
 */
@Tag("guest")
class ImageOwnershipGuestTest {
    static final int MIB = 1 << 20;
    static final Duration TIMEOUT = Duration.ofSeconds(120);
    private static final String WAIT_DISK = """
            for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
            [ -b /dev/vda ] || { echo "no /dev/vda"; exit 90; }
            """;

    @TempDir
    Path dir;

    @Test
    void aSecondVmOnAWritableImageFailsWithTheHolderNamedAndChangesNothing() throws Exception {
        GuestImage image = GuestImage.ensure();
        Path disk = dir.resolve("disk.raw");
        byte[] content = VhostUserBlkGuestTest.pattern(21, 16 * MIB);
        Files.write(disk, content);
        Path sockA = dir.resolve("a.sock");
        Path sockB = dir.resolve("b.sock");
        byte[] junk = VhostUserBlkGuestTest.pattern(22, 4 * MIB);
        try (ChildProcess a = backend(disk, sockA, "a");
                ChildProcess b = backend(disk, sockB, "b")) {
            try (RunningGuest vm1 = QemuGuest.builder(image)
                    .name("owner-vm1")
                    .workDir(dir)
                    .memoryMiB(256)
                    .args(
                            "-chardev",
                            "socket,id=vub0,path=" + QemuGuest.escape(sockA.toString()),
                            "-device",
                            "vhost-user-blk-pci,chardev=vub0")
                    .payload(WAIT_DISK + """
                            dd if=/dev/vda of=/dev/null bs=1M count=1 iflag=direct 2>/dev/null && echo "vm1: holding"
                            sleep 600
                            """)
                    .build()
                    .start(TIMEOUT.multipliedBy(3))) {
                vm1.awaitConsole(Pattern.compile("vm1: holding"), TIMEOUT);

                GuestResult r2 = QemuGuest.builder(image)
                        .name("owner-vm2")
                        .workDir(dir)
                        .memoryMiB(256)
                        .file("/root/junk.bin", junk, 0644)
                        .args(
                                "-chardev",
                                "socket,id=vub0,path=" + QemuGuest.escape(sockB.toString()),
                                "-device",
                                "vhost-user-blk-pci,chardev=vub0")
                        .payload(WAIT_DISK + """
                                if dd if=/root/junk.bin of=/dev/vda bs=1M count=4 oflag=direct conv=fsync 2>/dev/null; then
                                    echo write=accepted
                                else
                                    echo write=refused
                                fi
                                if dd if=/dev/vda of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; then
                                    echo read=accepted
                                else
                                    echo read=refused
                                fi
                                """)
                        .build()
                        .run(TIMEOUT);
                assertEquals(0, r2.exitCode(), r2.consoleTail(30));
                assertEquals("refused", r2.field("write"), r2.consoleTail(30));
                assertEquals("refused", r2.field("read"), r2.consoleTail(30));
                String log = b.log();
                assertTrue(
                        log.contains("is in use by pid " + a.pid()), "the refusal does not name the holder:\n" + log);
                assertTrue(log.contains("NEEDS_RESET"), log);
                assertTrue(
                        VhostUserBlkGuestTest.sha256(Files.readAllBytes(disk))
                                .equals(VhostUserBlkGuestTest.sha256(content)),
                        "the image changed through the second VM");
                System.out.println("image-ownership: "
                        + log.lines()
                                .filter(l -> l.contains("is in use by"))
                                .findFirst()
                                .orElse(""));
            } // the first VM goes away: its backend releases the image

            GuestResult r3 = QemuGuest.builder(image)
                    .name("owner-vm3")
                    .workDir(dir)
                    .memoryMiB(256)
                    .file("/root/junk.bin", junk, 0644)
                    .args(
                            "-chardev",
                            "socket,id=vub0,path=" + QemuGuest.escape(sockB.toString()),
                            "-device",
                            "vhost-user-blk-pci,chardev=vub0")
                    .payload(WAIT_DISK + """
                            dd if=/root/junk.bin of=/dev/vda bs=1M count=4 oflag=direct conv=fsync 2>/dev/null && echo write=accepted
                            """)
                    .build()
                    .run(TIMEOUT);
            assertEquals("accepted", r3.field("write"), r3.consoleTail(30) + "\n" + b.logTail(20));
            byte[] after = Files.readAllBytes(disk);
            assertEquals(
                    VhostUserBlkGuestTest.sha256(junk),
                    VhostUserBlkGuestTest.sha256(java.util.Arrays.copyOf(after, 4 * MIB)));
        }
    }

    private ChildProcess backend(Path disk, Path socket, String tag) {
        return ChildProcess.builder(IovirtCli.command(
                        List.of("serve", "blk", "--image", disk.toString(), "--socket", socket.toString())))
                .name("iovirt serve blk " + tag)
                .log(dir.resolve("iovirt-" + tag + ".log"))
                .startListening(socket, BlkBackendUnderTest.START_TIMEOUT);
    }
}
