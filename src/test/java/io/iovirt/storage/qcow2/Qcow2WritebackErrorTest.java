// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.ok;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Errno;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.LinuxException;
import io.iovirt.testing.Require;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A disk that fails writeback: the image lives on a loop device whose backing file is on a 1 MiB tmpfs, so the
 * kernel's writeback of the image's pages fails (ENOSPC from the backing file, an I/O error on the loop device) and
 * fdatasync reports it — once. Then the tmpfs grows, as a disk that recovers. Or the image lives on a small tmpfs
 * itself, filled up: a metadata write to a page it does not have fails at once (ENOSPC from pwrite).
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

    /**
     * A switch to read-only whose write-back fails after it freed, at once, a discarded cluster a read still in
     * flight reads leaves the image read-only: the allocator must not hand that cluster out while the read is on it.
     * The image lives on a small tmpfs: its cached refcount block is punched out of the file and the tmpfs filled, so
     * that the write of that block fails with ENOSPC. It fails at the switch's third flush, which writes the block
     * the cluster was counted down in ({@code atSecondFlush} false); or at its second, which writes the block another
     * discarded cluster, whose read completed, was counted down in (true) — the early free is then not counted down
     * yet, with 1-bit refcounts. Before, the image stayed writable with the cluster free: once there was space again,
     * the next allocation took the cluster the read was still reading. Switched back to writable, the cluster is
     * taken again until the read is over; when its free was not counted down yet, it is not counted up either (it
     * was: refcount 2, more than 1-bit refcounts hold, and the switch back failed). While read-only, reading the image
     * again (a next frontend's start, under a shared lock) refuses rather than write the tables left dirty.
     */
    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void aSwitchToReadOnlyWhoseWriteBackFailsStaysReadOnly(boolean atSecondFlush) throws Exception {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        int mib = 1 << 20;
        Path small = Files.createDirectory(dir.resolve("small"));
        QemuTools.Result mount = QemuTools.run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small.toString());
        Require.that(
                mount.exit() == 0, "mounting a tmpfs (root): " + mount.output().trim());
        try {
            Path file =
                    QemuTools.createQcow2(small, "rofail.qcow2", "16M", "refcount_bits=" + (atSecondFlush ? 1 : 16));
            qemuIoOk(file, "qcow2", "write -P 0x33 0 4M");
            long block;
            try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
                f.seek(48); // refcount_table_offset
                f.seek(f.readLong());
                block = f.readLong(); // refcount block 0: counts every cluster of this image
            }
            byte[] saved = new byte[65536];
            Path filler = small.resolve("filler");
            try (Qcow2Image q = Qcow2Image.open(file, false);
                    Arena arena = Arena.ofConfined();
                    IoUring ring = IoUring.create(4);
                    Qcow2Image.Qcow2Io io = q.newContext(8, 0);
                    Qcow2Image.Qcow2Io other = q.newContext(8, 0)) {
                long host = q.l2Entry(2 * mib) & Qcow2Image.OFFSET_MASK;
                Qcow2ImageTest.write(q, 8 * mib, Qcow2ImageTest.fill(65536, 0x44)); // the refcount block is cached
                q.flush();
                MemorySegment buf = arena.allocate(65536, 4096);
                if (atSecondFlush) {
                    // a discarded cluster whose free waits for a read that completes before the switch: the switch's
                    // first flush counts it down, its second writes that
                    other.add(buf);
                    assertTrue(other.submitRead(ring, mib, 2), "queued: a read of an allocated cluster");
                    q.discard(mib, 65536);
                    q.flush();
                    ring.submitAndWait(1);
                    assertEquals(1, ring.reap((ud, res, f) -> assertEquals(65536, res)));
                    other.completed(false, mib, 65536);
                }
                Qcow2ImageTest.discardUnderARead(q, io, ring, buf);
                try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
                    f.seek(block);
                    f.readFully(saved);
                }
                ok("fallocate", "--punch-hole", "--offset", Long.toString(block), "--length", "65536", file.toString());
                fill(filler);
                assertThrows(IOException.class, () -> q.setReadOnly(true), "the refcount block's write failed");
                assertTrue(q.readOnly(), "the cluster the read is on was freed: the image must stay read-only");
                Files.delete(filler); // space again: the block as it was on disk, then what iovirt writes over it
                try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
                    f.seek(block);
                    f.write(saved);
                }
                LinuxException e = assertThrows(
                        LinuxException.class, () -> Qcow2ImageTest.write(q, 9 * mib, Qcow2ImageTest.fill(65536, 0x66)));
                assertEquals(Errno.EROFS, e.errno());
                // a next frontend's start reads the image again (refresh) under the shared lock of a read-only disk:
                // it wrote the tables left dirty there, readers let in; it refuses now, writing nothing (refused
                // before it reads anything: the read still in flight is not in its way)
                byte[] before = Files.readAllBytes(file);
                IOException refused = assertThrows(IOException.class, q::refresh, "tables left dirty, read-only");
                assertTrue(refused.getMessage().contains("not written back"), refused.getMessage());
                assertTrue(java.util.Arrays.equals(before, Files.readAllBytes(file)), "written while read-only");
                q.setReadOnly(false); // the read is still in flight
                assertFalse(q.readOnly());
                Qcow2ImageTest.assertFreedOnlyOnceTheReadCompleted(q, io, ring, host);
            }
            check(file, false);
            qemuIoOk(
                    file,
                    "qcow2",
                    "read -P 0x33 0 1M",
                    "read -P 0 2M 64k",
                    "read -P 0x44 8M 64k",
                    "read -P 0x66 9M 64k",
                    "read -P 0x77 10M 64k");
        } finally {
            QemuTools.run("umount", small.toString());
        }
    }

    /**
     * A new refcount block whose refcount table entry cannot be written. 4 KiB clusters with 64-bit refcounts: a
     * block counts 2 MiB of file, and the image ends short of that, so a write that allocates past it makes block 1
     * (at 2 MiB), syncs it, then writes table entry 1. The image lives on a small tmpfs: the file's pages up to
     * 3 MiB are allocated beforehand (the data and the block are written), the refcount table's page is punched out
     * and the tmpfs filled, so that the entry's write fails with ENOSPC. Before, the in-memory table named block 1
     * already and the image stayed writable: once there was space again, every cluster allocated after it was counted
     * in a block the table on disk does not name (qemu-img check: refcount 0 for referenced clusters, corruption).
     * Now the failure is kept as a failed fdatasync is: every later write and flush is refused until the image is
     * opened again, which reads the table the disk has; the image is then consistent and writes go on.
     */
    @Test
    void aRefcountTableEntryWriteThatFailsLeavesNoBlockTheDiskDoesNotName() throws Exception {
        int kib = 1024;
        Path small = Files.createDirectory(dir.resolve("small"));
        QemuTools.Result mount = QemuTools.run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small.toString());
        Require.that(
                mount.exit() == 0, "mounting a tmpfs (root): " + mount.output().trim());
        try {
            Path file = QemuTools.createQcow2(small, "entry.qcow2", "16M", "cluster_size=4096", "refcount_bits=64");
            qemuIoOk(file, "qcow2", "write -P 0x33 0 1900k");
            long end = Files.size(file);
            assertTrue(end < 2 << 20, "the file ends before block 1's range: " + end);
            ok("fallocate", "-n", "-o", Long.toString(end), "-l", Long.toString((3 << 20) - end), file.toString());
            long table;
            try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
                f.seek(48); // refcount_table_offset
                table = f.readLong();
            }
            byte[] saved = new byte[4096];
            try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
                f.seek(table);
                f.readFully(saved);
            }
            Path filler = small.resolve("filler");
            int written = 0;
            boolean refused = false;
            try (Qcow2Image q = Qcow2Image.open(file, false)) {
                ok("fallocate", "--punch-hole", "--offset", Long.toString(table), "--length", "4096", file.toString());
                fill(filler);
                IOException failed = null;
                for (; written < 148 && failed == null; written++) {
                    try {
                        Qcow2ImageTest.write(q, (1900L + 4 * written) * kib, Qcow2ImageTest.fill(4096, 0x40));
                    } catch (IOException e) {
                        failed = e;
                    }
                }
                assertTrue(failed != null, "no write failed: the table entry's write should have");
                Files.delete(filler); // space again, and the table as it is on disk
                try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
                    f.seek(table);
                    f.write(saved);
                }
                try {
                    for (int i = written - 1; i < 148; i++) {
                        Qcow2ImageTest.write(q, (1900L + 4 * i) * kib, Qcow2ImageTest.fill(4096, 0x41));
                    }
                    q.flush();
                } catch (IOException e) {
                    refused = e.getMessage().contains("until it is opened again");
                }
            }
            check(file, true);
            assertTrue(refused, "the image took writes after a table entry it could not write");
            try (Qcow2Image q = Qcow2Image.open(file, false)) {
                Qcow2ImageTest.write(q, 1900L * kib, Qcow2ImageTest.fill(148 * 4096, 0x42));
                Qcow2ImageTest.write(q, 8L << 20, Qcow2ImageTest.fill(1 << 20, 0x43));
                q.flush();
            }
            check(file, true);
            qemuIoOk(file, "qcow2", "read -P 0x33 0 1900k", "read -P 0x42 1900k 592k", "read -P 0x43 8M 1M");
        } finally {
            QemuTools.run("umount", small.toString());
        }
    }

    /** Writes {@code filler} until its file system is full. */
    private static void fill(Path filler) throws IOException {
        byte[] page = new byte[4096];
        java.util.Arrays.fill(page, (byte) 1);
        try (var out = Files.newOutputStream(filler)) {
            while (true) {
                out.write(page);
                out.flush();
            }
        } catch (IOException full) {
            // ENOSPC: no page left for the punched-out refcount block
        }
    }
}
