// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Errno;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.qcow2.QemuTools;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A raw image whose format was detected, not named, cannot be turned into another format by what is written to it:
 * the guest's qcow2 header naming a host file as backing file would make the next open (a restart detects again)
 * serve that file to the guest.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img: Failsafe
class ProbedRawImageTest {
    @TempDir
    Path dir;

    @Test
    void aGuestCannotMakeItsDetectedRawDiskAQcow2OverAHostFile() throws Exception {
        byte[] secret = new byte[64 << 10];
        Arrays.fill(secret, (byte) 's');
        Path secretFile = dir.resolve("secret");
        Files.write(secretFile, secret);
        // what a guest writes to its disk: a qcow2 image (made by qemu-img) whose backing file is the host's file
        Path evil = QemuTools.createQcow2(
                dir, "evil.qcow2", "1M", "backing_file=" + secretFile.toAbsolutePath(), "backing_fmt=raw");
        byte[] evilBytes = Files.readAllBytes(evil);
        Path disk = dir.resolve("disk.raw");
        Files.write(disk, new byte[1 << 20]);

        try (DiskImage d = Images.open(disk, null, false, false)) { // format detected: raw
            assertEquals("raw", d.format());
            LinuxException e = assertThrows(LinuxException.class, () -> write(d, 0, evilBytes));
            assertEquals(Errno.EPERM, e.errno());
            assertTrue(e.getMessage().contains("qcow2"), e.getMessage());
            byte[] mbr = new byte[4096];
            new Random(1).nextBytes(mbr);
            write(d, 0, mbr); // ordinary data in the first sector is written
            write(d, 512, evilBytes); // and a qcow2 header elsewhere is only data
        }
        try (DiskImage d = Images.open(disk, null, true, false)) {
            assertEquals("raw", d.format(), "the disk is still detected as raw");
            assertFalse(Arrays.equals(secret, read(d, 64 << 10, secret.length)), "the host file is not served");
        }

        try (DiskImage d = Images.open(disk, ImageFormat.RAW, false, false)) { // named raw: the guest's bytes
            write(d, 0, evilBytes);
            assertArrayEquals(evilBytes, read(d, 0, evilBytes.length));
        }
    }

    private static void write(DiskImage d, long off, byte[] data) throws IOException {
        try (Arena a = Arena.ofConfined();
                ImageIo io = d.newContext(4, 1 << 20)) {
            MemorySegment s = a.allocate(data.length, 4096);
            MemorySegment.copy(data, 0, s, ValueLayout.JAVA_BYTE, 0, data.length);
            io.add(s);
            io.write(off);
        }
    }

    private static byte[] read(DiskImage d, long off, int len) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment s = a.allocate(len, 4096);
            d.readAt(off, s);
            return s.toArray(ValueLayout.JAVA_BYTE);
        }
    }
}
