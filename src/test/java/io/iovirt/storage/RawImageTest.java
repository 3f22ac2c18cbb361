// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Errno;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Require;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

class RawImageTest {
    @TempDir
    Path dir;

    private Path image(long size) throws IOException {
        Path p = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(size);
        }
        return p;
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void scatterGatherRoundTripIncludingUnalignedBuffersInDirectMode(boolean direct) throws Exception {
        Path p = image(1 << 20);
        byte[] data = new byte[8192];
        new Random(7).nextBytes(data);
        try (RawImage img = RawImage.open(p, false, direct);
                Arena arena = Arena.ofConfined();
                RawImage.IoContext io = img.newContext(16, 64 * 1024)) {
            // Three buffers, the middle one deliberately misaligned (a guest may do that) - forces the bounce path.
            MemorySegment whole = arena.allocate(8192 + 4096 + 1, 4096);
            MemorySegment a = whole.asSlice(0, 4096);
            MemorySegment b = whole.asSlice(4096 + 1, 4096);
            MemorySegment.copy(data, 0, a, ValueLayout.JAVA_BYTE, 0, 4096);
            MemorySegment.copy(data, 4096, b, ValueLayout.JAVA_BYTE, 0, 4096);
            io.clear();
            io.add(a);
            io.add(b);
            io.write(65536);
            img.flush();
            assertArrayEquals(data, java.util.Arrays.copyOfRange(Files.readAllBytes(p), 65536, 65536 + 8192));

            MemorySegment back = arena.allocate(8192, 4096);
            io.clear();
            io.add(back.asSlice(0, 512));
            io.add(back.asSlice(512));
            io.read(65536);
            assertArrayEquals(data, back.toArray(ValueLayout.JAVA_BYTE));
        }
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void asynchronousRoundTripThroughIoUringWithContextsOverSharedMemory(boolean direct) throws Exception {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        Path p = image(1 << 20);
        byte[] data = new byte[3 * 4096];
        new Random(11).nextBytes(data);
        try (RawImage img = RawImage.open(p, false, direct);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(8)) {
            MemorySegment iovMemory = arena.allocate(2 * IoVec.bytes(4), 8);
            MemorySegment bounce = arena.allocate(4096, 4096);
            RawImage.IoContext one = img.newContext(IoVec.over(iovMemory.asSlice(0, IoVec.bytes(4))), bounce);
            RawImage.IoContext two = img.newContext(IoVec.over(iovMemory.asSlice(IoVec.bytes(4))), bounce);
            MemorySegment buf = arena.allocate(data.length, 4096);
            MemorySegment.copy(data, 0, buf, ValueLayout.JAVA_BYTE, 0, data.length);
            one.clear();
            one.add(buf.asSlice(0, 4096));
            one.add(buf.asSlice(4096, 8192));
            two.clear();
            two.add(buf.asSlice(0, 4096));
            assertTrue(one.submitWrite(ring, 0, 1));
            assertTrue(two.submitWrite(ring, 65536, 2));
            img.submitFlush(ring, 3); // not ordered after the writes: only its result is checked here
            ring.submitAndWait(3);
            int[] res = new int[4];
            assertEquals(3, ring.reap((ud, r, f) -> res[(int) ud] = r));
            one.completed(true, 0, res[1]);
            two.completed(true, 65536, res[2]);
            img.flushCompleted(res[3]);
            byte[] file = Files.readAllBytes(p);
            assertArrayEquals(data, java.util.Arrays.copyOfRange(file, 0, data.length));
            assertArrayEquals(
                    java.util.Arrays.copyOf(data, 4096), java.util.Arrays.copyOfRange(file, 65536, 65536 + 4096));

            MemorySegment back = arena.allocate(data.length, 4096);
            one.clear();
            one.add(back.asSlice(0, 8192));
            one.add(back.asSlice(8192));
            assertTrue(one.submitRead(ring, 0, 4));
            ring.submitAndWait(1);
            ring.reap((ud, r, f) -> res[0] = r);
            assertEquals(data.length, res[0]);
            one.completed(false, 0, res[0]);
            assertArrayEquals(data, back.toArray(ValueLayout.JAVA_BYTE));

            // A short completion is finished synchronously: pretend the kernel stopped after the first 4 KiB.
            back.asSlice(4096).fill((byte) 0);
            one.completed(false, 0, 4096);
            assertArrayEquals(data, back.toArray(ValueLayout.JAVA_BYTE));

            // An error result names the operation and the image.
            LinuxException e = assertThrows(LinuxException.class, () -> one.completed(false, 0, -Errno.EIO));
            assertEquals("io_uring READV", e.call());
            assertTrue(e.getMessage().contains(p.toString()), e.getMessage());

            // Unaligned buffers in O_DIRECT mode are not submitted: the caller runs them synchronously (bounced).
            back.fill((byte) 0);
            two.clear();
            two.add(back.asSlice(1, 4096));
            assertEquals(!direct, two.submitRead(ring, 0, 5));
            if (direct) {
                two.read(0);
            } else {
                ring.submitAndWait(1);
                ring.reap((ud, r, f) -> two.completed(false, 0, r));
            }
            assertArrayEquals(
                    java.util.Arrays.copyOf(data, 4096), back.asSlice(1, 4096).toArray(ValueLayout.JAVA_BYTE));
            assertEquals(0, ring.outstanding());
            one.close();
            two.close();
        }
    }

    /**
     * The image file shrinks under the disk (another process truncates it): an io_uring read across the new end
     * completes short, with the bytes up to it. What the guest gets past the end must be zeros, as a pread past the
     * end reads (and as QEMU's file driver answers), never what its buffer held before.
     */
    @Test
    void aReadThroughIoUringAcrossTheEndOfAShrunkFileFillsThePastTheEndWithZeros() throws Exception {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        Path p = image(1 << 20);
        byte[] data = new byte[16384];
        new Random(13).nextBytes(data);
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(65536);
            f.write(data);
        }
        try (RawImage img = RawImage.open(p, false, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4)) {
            try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
                f.setLength(65536 + 6000); // cut in the middle of the range read next
            }
            MemorySegment iovMemory = arena.allocate(IoVec.bytes(4), 8);
            RawImage.IoContext io = img.newContext(IoVec.over(iovMemory), null);
            MemorySegment guest = arena.allocate(16384, 4096);
            guest.fill((byte) 0x5a); // stale contents of the guest's buffers
            io.clear();
            io.add(guest.asSlice(0, 4096));
            io.add(guest.asSlice(4096));
            assertTrue(io.submitRead(ring, 65536, 1));
            ring.submitAndWait(1);
            int[] res = new int[1];
            ring.reap((ud, r, fl) -> res[0] = r);
            assertEquals(6000, res[0], "the kernel reads up to the new end");
            io.completed(false, 65536, res[0]);
            byte[] expected = new byte[16384];
            System.arraycopy(data, 0, expected, 0, 6000);
            assertArrayEquals(expected, guest.toArray(ValueLayout.JAVA_BYTE), "the data, then zeros");
            io.close();
        }
    }

    @Test
    void outOfRangeAndReadOnlyWritesAreRefused() throws Exception {
        Path p = image(4096);
        try (RawImage img = RawImage.open(p, true, false);
                Arena arena = Arena.ofConfined();
                RawImage.IoContext io = img.newContext(4, 0)) {
            io.clear();
            io.add(arena.allocate(512));
            assertThrows(LinuxException.class, () -> io.read(4096));
            assertThrows(LinuxException.class, () -> io.read(Long.MAX_VALUE - 100));
            assertThrows(LinuxException.class, () -> io.write(0));
            assertThrows(LinuxException.class, () -> img.discard(0, 512));
        }
    }

    @Test
    void discardAndWriteZeroesReadBackAsZeros() throws Exception {
        Path p = image(1 << 20);
        byte[] ones = new byte[1 << 20];
        java.util.Arrays.fill(ones, (byte) 1);
        Files.write(p, ones);
        try (RawImage img = RawImage.open(p, false, false)) {
            img.discard(0, 65536);
            img.writeZeroes(65536, 4096, false);
            img.flush();
        }
        byte[] after = Files.readAllBytes(p);
        for (int i = 0; i < 65536 + 4096; i++) {
            assertEquals(0, after[i], "byte " + i);
        }
        assertEquals(1, after[65536 + 4096]);
    }

    @Test
    void missingImageSaysHowToCreateIt() {
        IOException e = assertThrows(IOException.class, () -> RawImage.open(dir.resolve("nope.raw"), false, false));
        assertTrue(e.getMessage().contains("truncate -s"), e.getMessage());
    }

    /**
     * A missing path under /dev is a device that is not there (or that the packaged unit's PrivateDevices=yes hides),
     * not a file to create: no truncate advice (it said "create it first, e.g. 'truncate -s 1G /dev/...'").
     */
    @Test
    void aMissingDeviceSaysWhatHidesIt() {
        Path dev = Path.of("/dev/iovirt-missing-" + ProcessHandle.current().pid());
        IOException e = assertThrows(IOException.class, () -> RawImage.open(dev, false, false));
        assertTrue(e.getMessage().contains("ENOENT"), e.getMessage());
        assertTrue(
                e.getMessage().contains("PrivateDevices=yes") && !e.getMessage().contains("truncate"), e.getMessage());
    }

    /**
     * A missing image under /tmp may only be missing from the daemon's view: the packaged unit's PrivateTmp=yes gives
     * it a /tmp of its own, and the answer says so beside the truncate advice (which, in the host's /tmp, would not
     * help the daemon).
     */
    @Test
    void aMissingImageUnderTmpNamesTheUnitsPrivateTmp() {
        Path missing = Path.of("/tmp/iovirt-missing-" + ProcessHandle.current().pid() + ".raw");
        IOException e = assertThrows(IOException.class, () -> RawImage.open(missing, false, false));
        assertTrue(e.getMessage().contains("PrivateTmp=yes"), e.getMessage());
    }

    /**
     * EROFS is a read-only file system, not a permission (under the packaged unit's ProtectSystem=strict, anything
     * outside ReadWritePaths=): the answer says so, and names no command-line option, since the daemon opens images
     * too (it said "check its permissions or use --readonly"). A real read-only mount: a tmpfs remounted ro (root).
     */
    @Test
    void anImageOnAReadOnlyFileSystemSaysSo() throws Exception {
        Path ro = Files.createDirectory(dir.resolve("ro"));
        QemuTools.Result mount = QemuTools.run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", ro.toString());
        Require.that(
                mount.exit() == 0, "mounting a tmpfs (root): " + mount.output().trim());
        try {
            Path img = ro.resolve("disk.raw");
            Files.write(img, new byte[4096]);
            QemuTools.ok("mount", "-o", "remount,ro", ro.toString());
            IOException e = assertThrows(IOException.class, () -> RawImage.open(img, false, false));
            assertTrue(e.getMessage().contains("EROFS"), e.getMessage());
            assertTrue(
                    e.getMessage().contains("ReadWritePaths=")
                            && !e.getMessage().contains("--readonly"),
                    e.getMessage());
            try (RawImage readable = RawImage.open(img, true, false)) {
                assertEquals(4096, readable.size(), "read-only, it opens");
            }
        } finally {
            QemuTools.run("umount", ro.toString());
        }
    }
    /**
     * A lease on the image (a file server's, here python's fcntl F_SETLEASE) makes the non-blocking open fail with
     * EAGAIN: the open is retried as any other user's would be, on the very file checked (its /proc/self/fd name), and
     * waits for the holder to give the lease up — it is not refused.
     */
    @Test
    void anImageUnderALeaseOpensOnceItsHolderGivesItUp() throws Exception {
        Require.program("python3", "apt-get install python3");
        Path img = Files.write(dir.resolve("leased.raw"), new byte[4096]);
        String holder = "import fcntl, os, signal, sys, time\n"
                + "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                + "def release(sig, frame):\n"
                + "    fcntl.fcntl(fd, 1024, 2)\n" // F_SETLEASE, F_UNLCK
                + "    print('released', flush=True)\n"
                + "signal.signal(signal.SIGIO, release)\n"
                + "fcntl.fcntl(fd, 1024, 1)\n" // F_SETLEASE, F_WRLCK
                + "print('held', flush=True)\n"
                + "time.sleep(600)\n";
        Process p = new ProcessBuilder("python3", "-c", holder, img.toString())
                .redirectErrorStream(true)
                .start();
        try (var out = new java.io.BufferedReader(new java.io.InputStreamReader(p.getInputStream()))) {
            assertEquals("held", out.readLine());
            try (RawImage r = RawImage.open(img, true, false)) {
                assertEquals(4096, r.size());
            }
            assertEquals("released", out.readLine()); // the open broke the lease, and waited for it
        } finally {
            p.destroyForcibly().waitFor();
        }
    }
}
