// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.ok;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A disk that fails writeback: the image lives on a loop device whose backing file is on a 1 MiB tmpfs, so the
 * kernel's writeback of the image's pages fails (ENOSPC from the backing file, an I/O error on the loop device) and
 * fdatasync reports it — once. Then the tmpfs grows, as a disk that recovers.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img: Failsafe
class Qcow2WritebackErrorTest {
    @TempDir
    Path dir;

    @Test
    void aFailedFdatasyncFailsEveryLaterFlushAndWrite() throws Exception {
        Require.program("losetup", "util-linux");
        Path small = Files.createDirectory(dir.resolve("small"));
        QemuTools.Result mount = QemuTools.run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small.toString());
        Require.that(
                mount.exit() == 0, "mounting a tmpfs (root): " + mount.output().trim());
        String loop = null;
        try {
            Path backing = small.resolve("disk");
            ok("truncate", "-s", "64M", backing.toString());
            QemuTools.Result l = QemuTools.run("losetup", "--find", "--show", backing.toString());
            Require.that(
                    l.exit() == 0 && l.output().startsWith("/dev/loop"),
                    "a loop device: " + l.output().trim());
            loop = l.output().trim();
            ok("qemu-img", "create", "-q", "-f", "qcow2", loop, "60M");
            try (Qcow2Image q = Qcow2Image.open(Path.of(loop), false)) {
                Qcow2ImageTest.write(q, 0, Qcow2ImageTest.fill(4 << 20, 0x77)); // 4 MiB: more than the tmpfs holds
                IOException first = assertThrows(IOException.class, q::flush, "the writeback did not fail");
                assertTrue(first.getMessage().contains("fdatasync"), first.getMessage());
                // The disk recovers (the tmpfs grows). The kernel reported the lost pages once: a flush that writes
                // what is still dirty and syncs again succeeds, and used to report success for the data that never
                // reached the disk.
                ok("mount", "-o", "remount,size=128m", small.toString());
                IOException again =
                        assertThrows(IOException.class, q::flush, "a flush succeeded after a lost writeback");
                assertTrue(
                        again.getMessage().contains("until it is opened again")
                                && again.getMessage().contains("qemu-img check -r all"),
                        again.getMessage());
                assertThrows(IOException.class, () -> Qcow2ImageTest.write(q, 8 << 20, new byte[4096]));
                assertThrows(IOException.class, () -> q.writeZeroes(0, 65536, false));
            }
        } finally {
            if (loop != null) {
                QemuTools.run("losetup", "-d", loop);
            }
            QemuTools.run("umount", small.toString());
        }
    }
}
