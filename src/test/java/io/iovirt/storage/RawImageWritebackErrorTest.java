// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Errno;
import io.iovirt.linux.IoUring;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Require;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A buffered raw image whose writeback failed: the kernel reports a failed writeback once and may drop the pages it
 * could not write, so a later fdatasync succeeds for data that never reached the disk. Every later flush must fail,
 * as in QEMU (file-posix: page_cache_inconsistent), or a guest that retries its flush is told the lost writes are
 * durable.
 */
class RawImageWritebackErrorTest {
    @TempDir
    Path dir;

    /** What a test does with the failing disk: {@code loop} is its device; growing {@code tmpfs} recovers it. */
    private interface OnFailingDisk {
        void run(String loop, Path tmpfs) throws Exception;
    }

    /**
     * Runs {@code body} on a real failing disk: a loop device over a 64 MiB sparse file on a 1 MiB tmpfs (writes past
     * what the tmpfs holds fail), which the test may grow (the disk recovers). Undone after.
     */
    private void onFailingDisk(OnFailingDisk body) throws Exception {
        Require.program("losetup", "util-linux");
        Path small = Files.createDirectory(dir.resolve("small"));
        QemuTools.Result mount = QemuTools.run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small.toString());
        Require.that(
                mount.exit() == 0, "mounting a tmpfs (root): " + mount.output().trim());
        String loop = null;
        try {
            Path backing = small.resolve("disk");
            QemuTools.ok("truncate", "-s", "64M", backing.toString());
            QemuTools.Result l = QemuTools.run("losetup", "--find", "--show", backing.toString());
            Require.that(
                    l.exit() == 0 && l.output().startsWith("/dev/loop"),
                    "a loop device: " + l.output().trim());
            loop = l.output().trim();
            body.run(loop, small);
        } finally {
            if (loop != null) {
                QemuTools.run("losetup", "-d", loop);
            }
            QemuTools.run("umount", small.toString());
        }
    }

    /** A real failing disk ({@link #onFailingDisk}) as the image. */
    @Test
    void aFailedFdatasyncFailsEveryLaterFlush() throws Exception {
        onFailingDisk((loop, tmpfs) -> {
            try (RawImage img = RawImage.open(Path.of(loop), false, false);
                    Arena a = Arena.ofConfined();
                    ImageIo io = img.newContext(1, 1 << 20)) {
                MemorySegment data = a.allocate(4 << 20, 4096).fill((byte) 0x77); // more than the tmpfs holds
                io.add(data);
                io.write(0);
                IOException first = assertThrows(IOException.class, img::flush, "the writeback did not fail");
                assertTrue(first.getMessage().contains("fdatasync"), first.getMessage());
                QemuTools.ok("mount", "-o", "remount,size=128m", tmpfs.toString());
                IOException again =
                        assertThrows(IOException.class, img::flush, "a flush succeeded after a lost writeback");
                assertTrue(again.getMessage().contains("opened again"), again.getMessage());
            }
        });
    }

    /**
     * A resize's fsync that finds the writeback failed keeps the failure for every later flush, as a flush's own
     * fdatasync does: the kernel reports a failed writeback once per open file, so a resize (blk.resize) between the
     * guest's writes and its FLUSH consumed the report, and the FLUSH was answered OK for data the kernel had dropped.
     * A real failing disk under a real file system: ext2 on {@link #onFailingDisk}'s loop device.
     */
    @Test
    void aResizeThatFindsAFailedWritebackFailsEveryLaterFlush() throws Exception {
        Require.program("mkfs.ext2", "e2fsprogs");
        Path fs = Files.createDirectory(dir.resolve("fs"));
        onFailingDisk((loop, tmpfs) -> {
            QemuTools.ok("mkfs.ext2", "-q", "-F", "-N", "16", "-m", "0", loop); // little metadata: it fits
            QemuTools.ok("mount", "-o", "errors=continue", loop, fs.toString());
            try {
                Path file = fs.resolve("disk.raw");
                QemuTools.ok("truncate", "-s", "16M", file.toString());
                try (RawImage img = RawImage.open(file, false, false);
                        Arena a = Arena.ofConfined();
                        ImageIo io = img.newContext(1, 1 << 20)) {
                    MemorySegment data = a.allocate(8 << 20, 4096).fill((byte) 0x77); // more than the tmpfs holds
                    io.add(data);
                    io.write(0);
                    assertThrows(IOException.class, () -> img.resize(32 << 20), "the writeback did not fail");
                    QemuTools.ok("mount", "-o", "remount,size=128m", tmpfs.toString());
                    IOException again =
                            assertThrows(IOException.class, img::flush, "a flush succeeded after a lost writeback");
                    assertTrue(again.getMessage().contains("opened again"), again.getMessage());
                }
            } finally {
                QemuTools.run("umount", fs.toString());
            }
        });
    }

    /** The io_uring flush (FLUSH requests of a blk queue) keeps its failure too, and leaves the rest to flush(). */
    @Test
    void aFailedFlushThroughIoUringFailsEveryLaterFlush() throws Exception {
        Path p = dir.resolve("disk.raw");
        Files.write(p, new byte[1 << 20]);
        try (RawImage img = RawImage.open(p, false, false)) {
            assertThrows(IOException.class, () -> img.flushCompleted(-Errno.EIO));
            assertThrows(IOException.class, img::flush, "a flush succeeded after a failed one");
            Require.that(IoUring.unavailableReason() == null, "io_uring: " + IoUring.unavailableReason());
            try (IoUring ring = IoUring.create(4, 0, false)) {
                assertFalse(img.submitFlush(ring, 1), "queued a flush that can only fail: flush() reports it");
            }
        }
    }
}
