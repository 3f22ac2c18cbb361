// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

@Timeout(60)
class FileIoTest {
    @TempDir
    Path dir;

    private static MemorySegment pattern(Arena a, long size, int seed) {
        MemorySegment s = FileIo.directBuffer(a, size);
        for (long i = 0; i < size; i++) {
            s.set(JAVA_BYTE, i, (byte) (i * 31 + seed));
        }
        return s;
    }

    @Test
    void preadAndPwriteAtOffsetsThenSync() throws Exception {
        Path file = dir.resolve("disk.raw");
        try (Arena a = Arena.ofConfined();
                Fd fd = FileIo.open(file, FileIo.O_RDWR | FileIo.O_CREAT | FileIo.O_EXCL, 0600)) {
            assertTrue(fd.isCloseOnExec());
            MemorySegment data = pattern(a, 10_000, 3);
            FileIo.writeFully(fd, data, 5000);
            FileIo.fsync(fd);
            FileIo.fdatasync(fd);
            assertEquals(15_000, FileIo.size(fd));
            assertEquals(15_000, Files.size(file));

            MemorySegment back = a.allocate(10_000);
            assertEquals(10_000, FileIo.readFully(fd, back, 5000));
            assertEquals(-1, back.mismatch(data));
            MemorySegment tail = a.allocate(100);
            assertEquals(50, FileIo.pread(fd, tail, 14_950)); // short read at end of file
            assertEquals(0, FileIo.pread(fd, tail, 20_000));

            byte[] viaJdk = Files.readAllBytes(file);
            assertArrayEquals(data.toArray(JAVA_BYTE), Arrays.copyOfRange(viaJdk, 5000, 15_000));
        }
    }

    @Test
    void directIoWithAlignedBuffersAndRejectionOfUnalignedOnes() throws Exception {
        Path file = dir.resolve("direct.raw");
        try (Arena a = Arena.ofConfined();
                Fd fd = FileIo.open(file, FileIo.O_RDWR | FileIo.O_CREAT | FileIo.O_DIRECT, 0600)) {
            FileIo.Stat st = FileIo.stat(fd);
            assertTrue(st.isRegularFile());
            MemorySegment data = pattern(a, 8192, 9);
            assertEquals(0, data.address() % FileIo.DIRECT_ALIGNMENT);
            FileIo.writeFully(fd, data, 4096);
            FileIo.fdatasync(fd);
            MemorySegment back = FileIo.directBuffer(a, 8192);
            assertEquals(8192, FileIo.pread(fd, back, 4096));
            assertEquals(-1, back.mismatch(data));

            long align = Math.max(st.directIoMemoryAlign(), 2);
            MemorySegment misaligned = FileIo.directBuffer(a, 8192 + 4096).asSlice(align / 2, 4096);
            // (at an allocated offset: reads of holes are served without checking alignment)
            LinuxException e = assertThrows(LinuxException.class, () -> FileIo.pread(fd, misaligned, 4096));
            assertEquals(Errno.EINVAL, e.errno());
            assertTrue(e.getMessage().startsWith("pread(fd "), e.getMessage());
            long offAlign = Math.max(st.directIoOffsetAlign(), 2);
            assertThrows(LinuxException.class, () -> FileIo.pread(fd, back.asSlice(0, 4096), 4096 + offAlign / 2));
        }
    }

    @Test
    void scatterGatherThroughAPreallocatedIovecArray() throws Exception {
        try (Arena a = Arena.ofConfined();
                Fd fd = FileIo.open(dir.resolve("sg.raw"), FileIo.O_RDWR | FileIo.O_CREAT, 0600)) {
            IoVec iov = IoVec.allocate(a, 4);
            MemorySegment p1 = pattern(a, 512, 1);
            MemorySegment p2 = pattern(a, 1000, 2);
            MemorySegment p3 = pattern(a, 7, 3);
            iov.set(0, p1);
            iov.set(1, p2);
            iov.set(2, p3);
            assertEquals(1519, FileIo.pwritev(fd, iov, 3, 100));

            MemorySegment whole = a.allocate(1519);
            assertEquals(1519, FileIo.pread(fd, whole, 100));
            assertEquals(-1, whole.asSlice(0, 512).mismatch(p1));
            assertEquals(-1, whole.asSlice(512, 1000).mismatch(p2));
            assertEquals(-1, whole.asSlice(1512, 7).mismatch(p3));

            MemorySegment r1 = a.allocate(1000);
            MemorySegment r2 = a.allocate(519);
            iov.set(0, r1);
            iov.set(1, r2);
            assertEquals(1519, FileIo.preadv(fd, iov, 2, 100));
            assertEquals(-1, whole.asSlice(0, 1000).mismatch(r1));
            assertEquals(-1, whole.asSlice(1000, 519).mismatch(r2));
            assertThrows(IllegalArgumentException.class, () -> FileIo.preadv(fd, iov, 5, 0));
            assertThrows(IndexOutOfBoundsException.class, () -> iov.set(4, r1));
        }
    }

    @Test
    void punchHoleAndZeroRangeKeepTheSize() throws Exception {
        try (Arena a = Arena.ofConfined();
                Fd fd = FileIo.open(dir.resolve("sparse.raw"), FileIo.O_RDWR | FileIo.O_CREAT, 0600)) {
            FileIo.writeFully(fd, pattern(a, 64 * 1024, 5), 0);
            FileIo.fsync(fd);
            long blocksBefore = FileIo.stat(fd).blocks();
            FileIo.fallocate(fd, FileIo.FALLOC_FL_PUNCH_HOLE | FileIo.FALLOC_FL_KEEP_SIZE, 16 * 1024, 32 * 1024);
            FileIo.fallocate(fd, FileIo.FALLOC_FL_ZERO_RANGE | FileIo.FALLOC_FL_KEEP_SIZE, 0, 4096);
            FileIo.Stat after = FileIo.stat(fd);
            assertEquals(64 * 1024, after.size());
            assertTrue(
                    after.blocks() < blocksBefore,
                    "the hole released blocks: " + blocksBefore + " -> " + after.blocks());
            MemorySegment back = a.allocate(64 * 1024);
            FileIo.readFully(fd, back, 0);
            MemorySegment original = pattern(a, 64 * 1024, 5);
            for (long i = 0; i < 64 * 1024; i += 8) {
                boolean zeroed = i < 4096 || (i >= 16 * 1024 && i < 48 * 1024);
                assertEquals(zeroed ? 0 : original.get(JAVA_LONG, i), back.get(JAVA_LONG, i), "offset " + i);
            }
        }
    }

    @Test
    void failuresNameTheCallThePathAndTheErrno() {
        Path missing = dir.resolve("missing.raw");
        LinuxException e = assertThrows(LinuxException.class, () -> FileIo.open(missing, FileIo.O_RDONLY));
        assertEquals(Errno.ENOENT, e.errno());
        assertEquals("ENOENT", e.errnoName());
        assertEquals("open", e.call());
        assertEquals("open(" + missing + ") failed: ENOENT (No such file or directory)", e.getMessage());
    }

    @Test
    void blockDeviceIoctlsOnALoopDevice() throws Exception {
        Path backing = dir.resolve("loop.raw");
        try (Arena a = Arena.ofConfined();
                Fd fd = FileIo.open(backing, FileIo.O_RDWR | FileIo.O_CREAT, 0600)) {
            FileIo.writeFully(fd, pattern(a, 1 << 20, 7), 0);
            FileIo.fsync(fd);
        }
        String loop = attachLoop(backing);
        Require.that(loop != null, "losetup could not attach a loop device here");
        try (Arena a = Arena.ofConfined();
                Fd dev = FileIo.open(Path.of(loop), FileIo.O_RDWR | FileIo.O_DIRECT)) {
            assertTrue(FileIo.stat(dev).isBlockDevice());
            assertEquals(1 << 20, FileIo.blockDeviceSize(dev));
            assertEquals(1 << 20, FileIo.size(dev));
            String sysName = Path.of(loop).getFileName().toString();
            assertEquals(
                    Long.parseLong(Files.readString(Path.of("/sys/block", sysName, "size"))
                                    .trim())
                            * 512,
                    FileIo.blockDeviceSize(dev));
            assertEquals(
                    Integer.parseInt(Files.readString(Path.of("/sys/block", sysName, "queue", "logical_block_size"))
                            .trim()),
                    FileIo.logicalBlockSize(dev));
            FileIo.blockZeroOut(dev, 0, 64 * 1024);
            FileIo.blockDiscard(dev, 128 * 1024, 64 * 1024);
            MemorySegment buf = FileIo.directBuffer(a, 256 * 1024);
            assertEquals(256 * 1024, FileIo.readFully(dev, buf, 0));
            MemorySegment original = pattern(a, 256 * 1024, 7);
            for (long i = 0; i < 256 * 1024; i += 8) {
                boolean zero = i < 64 * 1024 || (i >= 128 * 1024 && i < 192 * 1024);
                assertEquals(zero ? 0 : original.get(JAVA_LONG, i), buf.get(JAVA_LONG, i), "offset " + i);
            }
        } finally {
            run("losetup", "-d", loop);
        }
    }

    private static String attachLoop(Path file) throws Exception {
        Process p = new ProcessBuilder("losetup", "--find", "--show", file.toString())
                .redirectErrorStream(true)
                .start();
        try {
            if (!p.waitFor(30, TimeUnit.SECONDS) || p.exitValue() != 0) {
                return null;
            }
            String out = new String(p.getInputStream().readAllBytes()).trim();
            return out.startsWith("/dev/loop") ? out : null;
        } finally {
            p.destroyForcibly();
        }
    }

    private static void run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            p.waitFor(30, TimeUnit.SECONDS);
        } finally {
            p.destroyForcibly();
        }
    }
}
