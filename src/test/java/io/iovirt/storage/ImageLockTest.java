// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.FileIo;
import io.iovirt.storage.qcow2.QemuTools;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The image's ownership lock: writers exclude each other and readers, readers share, release hands the image over,
 * and a refusal names the holder. OFD locks conflict between open file descriptions, so two locks in this one
 * process behave like two backends.
 */
class ImageLockTest {
    @TempDir
    Path dir;

    @Test
    void oneWriterAtATimeAndTheRefusalNamesTheHolder() throws Exception {
        Path img = Files.write(dir.resolve("disk.raw"), new byte[4096]);
        try (ImageLock a = ImageLock.open(img, false);
                ImageLock b = ImageLock.open(img, false)) {
            assertNull(a.acquire());
            assertNull(a.acquire(), "taking a held lock again is a no-op");
            String why = b.acquire();
            assertTrue(
                    why != null && why.contains("pid " + ProcessHandle.current().pid()) && why.contains("ofdlck write"),
                    why);
            assertTrue(why.contains(img.toString()), why);
            a.release();
            assertNull(b.acquire(), "released: the next frontend takes the image over");
            assertTrue(a.acquire() != null);
        }
    }

    @Test
    void readOnlyExportsShareAndExcludeWriters() throws Exception {
        Path img = Files.write(dir.resolve("disk.raw"), new byte[4096]);
        try (ImageLock r1 = ImageLock.open(img, true);
                ImageLock r2 = ImageLock.open(img, true);
                ImageLock w = ImageLock.open(img, false)) {
            assertNull(r1.acquire());
            assertNull(r2.acquire());
            assertTrue(w.acquire() != null, "a writer while readers run");
            r1.release();
            r2.release();
            assertNull(w.acquire());
            assertTrue(r1.acquire().contains("in use for writing"));
        }
    }

    /**
     * QEMU (qemu-io, its image locking on) sees a shared lock as one of its own readers: a QEMU writer is refused and
     * refuses it, naming the writer; a QEMU reader shares the image. A whole-file read lock did neither.
     */
    @Test
    void aSharedLockIsAReaderToQemu() throws Exception {
        Path img = Files.write(dir.resolve("disk.raw"), new byte[1 << 20]);
        try (ImageLock r = ImageLock.open(img, true)) {
            assertNull(r.acquire());
            var write = QemuTools.run("qemu-io", "-f", "raw", "-c", "write 0 4k", img.toString());
            assertTrue(write.exit() != 0 && write.output().contains("Failed to get \"write\" lock"), write.output());
            QemuTools.ok("qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", img.toString());
            r.release();
            Process writer = QemuTools.writerHolding(img);
            try {
                String why = r.acquire();
                assertTrue(
                        why != null
                                && why.contains("in use for writing by pid " + writer.pid() + " 'qemu-io")
                                && !why.contains(
                                        "pid " + ProcessHandle.current().pid()),
                        why);
                assertTrue(!r.held());
            } finally {
                writer.destroyForcibly().waitFor();
            }
            assertNull(r.acquire(), "the writer is gone");
        }
    }

    @Test
    void closingDropsTheLock() throws Exception {
        Path img = Files.write(dir.resolve("disk.raw"), new byte[4096]);
        try (ImageLock b = ImageLock.open(img, false)) {
            ImageLock a = ImageLock.open(img, false);
            assertNull(a.acquire());
            a.close();
            assertNull(b.acquire());
            var fd = FileIo.open(img, FileIo.O_RDWR);
            try (fd) {
                assertTrue(FileIo.ofdConflict(fd, FileIo.F_WRLCK) == FileIo.F_WRLCK, "the kernel reports b's lock");
            }
        }
    }

    /**
     * A lock taken through a dup of an image's descriptor ({@link ImageLock#on}, the blk device's) is gone once it is
     * closed, though the image, which shares its open file description, stays open: closing the dup alone left the
     * lock on that description, so the image stayed locked against every other user until the image was closed too.
     */
    @Test
    void closingALockOnADupDropsItWhileTheImageStaysOpen() throws Exception {
        Path path = Files.write(dir.resolve("disk.raw"), new byte[4096]);
        try (RawImage img = RawImage.open(path, false, false);
                ImageLock other = ImageLock.open(path, false)) {
            ImageLock a = ImageLock.on(path, false, img.dupFile());
            assertNull(a.acquire());
            assertTrue(other.acquire() != null, "held through the dup");
            a.close();
            assertNull(other.acquire(), "closed: the lock is gone, the image still open");
        }
    }

    /**
     * A shared lock made exclusive ({@link ImageLock#retype}) while another export of this process reads the image
     * (a second shared lock, on an open file description of its own): refused, naming this process, and the reader's
     * bytes are kept (a QEMU writer is still refused). The refusal said "another process (not visible in /proc
     * here)": this process's locks on a reader's bytes were all taken for the converting lock's own.
     */
    @Test
    void aConversionRefusedByAnotherLockOfThisProcessNamesIt() throws Exception {
        Path img = Files.write(dir.resolve("disk.raw"), new byte[1 << 20]);
        var fd = FileIo.open(img, FileIo.O_RDWR);
        int n = fd.get();
        try (ImageLock ours = ImageLock.on(img, true, fd);
                ImageLock other = ImageLock.open(img, true)) {
            assertNull(ours.acquire());
            assertNull(other.acquire());
            String why = ours.retype(false);
            assertTrue(
                    why != null
                            && why.contains(
                                    "in use by pid " + ProcessHandle.current().pid() + " (this process)"),
                    why);
            assertTrue(ours.shared() && ours.held(), "nothing changed");
            other.close();
            var write = QemuTools.run("qemu-io", "-f", "raw", "-c", "write 0 4k", img.toString());
            assertTrue(write.exit() != 0 && write.output().contains("lock"), "the reader's bytes are kept: " + write);
            assertNull(ours.retype(false), "the other reader is gone");
            assertTrue(!ours.shared() && ours.held());
            // what a fresh exclusive lock is: one write lock over the whole file, the reader's bytes replaced
            assertEquals(List.of("WRITE 0 EOF"), locks(n));
            var read = QemuTools.run("qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", img.toString());
            assertTrue(read.exit() != 0 && read.output().contains("lock"), "a QEMU reader is refused: " + read);
            ours.release();
            assertEquals(List.of(), locks(n), "released: nothing of the reader's bytes is left");
            QemuTools.ok("qemu-io", "-f", "raw", "-c", "write 0 4k", img.toString());
        }
    }

    /**
     * An exclusive lock made shared in place ({@link ImageLock#share}, a disk switched read-only once its writes have
     * ended): it then holds exactly what a shared lock taken anew holds, so QEMU and iovirt readers are let in and
     * writers still refused, and it converts back to exclusive as any shared lock does. There was no way down: an
     * exclusive lock stayed so until released.
     */
    @Test
    void anExclusiveLockMadeSharedIsAReaderLikeAFreshOne() throws Exception {
        Path img = Files.write(dir.resolve("disk.raw"), new byte[1 << 20]);
        var fd = FileIo.open(img, FileIo.O_RDWR);
        var freshFd = FileIo.open(img, FileIo.O_RDWR);
        try (ImageLock ours = ImageLock.on(img, false, fd);
                ImageLock fresh = ImageLock.on(img, true, freshFd);
                ImageLock reader = ImageLock.open(img, true);
                ImageLock writer = ImageLock.open(img, false)) {
            assertNull(fresh.acquire());
            List<String> readerLocks = locks(freshFd.get());
            fresh.release();
            assertNull(ours.acquire());
            assertEquals(List.of("WRITE 0 EOF"), locks(fd.get()));

            ours.share();
            assertTrue(ours.shared() && ours.held());
            assertEquals(readerLocks, locks(fd.get()), "what a shared lock taken anew holds");
            QemuTools.ok("qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", img.toString());
            var write = QemuTools.run("qemu-io", "-f", "raw", "-c", "write 0 4k", img.toString());
            assertTrue(write.exit() != 0 && write.output().contains("lock"), "a QEMU writer: " + write);
            assertNull(reader.acquire(), "another export reading the image");
            assertTrue(writer.acquire() != null, "an export writing it");

            assertTrue(ours.retype(false) != null, "not exclusive again while the other reader holds the image");
            reader.release();
            assertNull(ours.retype(false));
            assertEquals(List.of("WRITE 0 EOF"), locks(fd.get()));
            ours.release();
            assertNull(writer.acquire());
        }
    }

    /** The OFD locks descriptor {@code n} of this process lists: "TYPE START END". */
    private static List<String> locks(int n) throws Exception {
        return Files.readAllLines(Path.of("/proc/self/fdinfo", Integer.toString(n))).stream()
                .filter(l -> l.startsWith("lock:"))
                .map(l -> {
                    String[] f = l.trim().split("\\s+");
                    return f[4] + " " + f[7] + " " + f[8];
                })
                .toList();
    }
}
