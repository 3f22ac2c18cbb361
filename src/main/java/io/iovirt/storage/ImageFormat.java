// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.Locale;

/** Image formats iovirt serves, and detection by header (as QEMU probes: a qcow2 file starts with "QFI\xfb"). */
public enum ImageFormat {
    RAW, QCOW2;

    public static final int QCOW2_MAGIC = 0x514649fb;

    /** "raw" / "qcow2". */
    public String id() {
        return name().toLowerCase(Locale.ROOT);
    }

    /** Parses a --format value. */
    public static ImageFormat parse(String s) {
        return switch (s.toLowerCase(Locale.ROOT)) {
            case "raw" -> RAW;
            case "qcow2" -> QCOW2;
            default -> throw new IllegalArgumentException("unknown image format '" + s + "': use raw or qcow2");
        };
    }

    /** The format of {@code path} by its first bytes: QCOW2 for the qcow2 magic, RAW otherwise. */
    public static ImageFormat detect(Path path) throws IOException {
        try (Fd fd = FileIo.open(path, FileIo.O_RDONLY); Arena a = Arena.ofConfined()) {
            MemorySegment b = a.allocate(4);
            long n = FileIo.readFully(fd, b, 0);
            if (n == 4 && b.get(ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN), 0) == QCOW2_MAGIC) {
                return QCOW2;
            }
            return RAW;
        } catch (LinuxException e) {
            throw new IOException("cannot open image " + path + " to detect its format: " + e.errnoName()
                    + (e.errnoName().equals("ENOENT") ? " (create it first, e.g. 'qemu-img create -f qcow2 " + path + " 10G')" : ""), e);
        }
    }
}
