// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.util.Printable;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.Locale;

/**
 * What an image file's header says it is. A raw image has no header, so "raw" means "no known signature": serving a
 * qcow2, VMDK, VHDX, VDI or LUKS file as raw would show the guest the container's metadata as disk sectors, and a
 * guest writing to them destroys the image. The signatures are those the formats' specifications put at the start of
 * the file (the same ones QEMU's format probes and file(1) look for); names are QEMU's {@code -f} names.
 */
public enum ImageFormat {
    RAW("raw", "a raw image"),
    QCOW2("qcow2", "a qcow2 image"),
    QCOW("qcow", "a qcow (version 1) image"),
    QED("qed", "a QED image"),
    VMDK("vmdk", "a VMware VMDK image"),
    VHDX("vhdx", "a Hyper-V VHDX image"),
    VPC("vpc", "a dynamic VHD (Virtual PC) image"),
    VDI("vdi", "a VirtualBox VDI image"),
    LUKS("luks", "a LUKS-encrypted volume"),
    PARALLELS("parallels", "a Parallels image"),
    BOCHS("bochs", "a Bochs image"),
    CLOOP("cloop", "a compressed loop (cloop) image");

    /** Bytes of the header {@link #detect(byte[])} looks at. */
    public static final int HEADER_BYTES = 512;

    private final String qemuName;
    private final String description;

    ImageFormat(String qemuName, String description) {
        this.qemuName = qemuName;
        this.description = description;
    }

    /** The name QEMU's {@code -f} / qemu-img use ("qcow2"). */
    public String qemuName() {
        return qemuName;
    }

    /** The same as {@link #qemuName()}: "raw", "qcow2". */
    public String id() {
        return qemuName;
    }

    /** "a qcow2 image", for messages. */
    public String description() {
        return description;
    }

    /**
     * Reads the first {@value #HEADER_BYTES} bytes of {@code path} (a file or a block device) and detects. Anything
     * else (a FIFO, whose open would wait for a writer, a socket, a directory) is refused before it is read.
     */
    public static ImageFormat detect(Path path) throws IOException {
        Fd fd;
        try {
            fd = RawImage.openFileOrDevice(path, FileIo.O_RDONLY);
        } catch (LinuxException e) {
            if (e.errno() == Errno.ENOENT) {
                throw new java.nio.file.NoSuchFileException(path.toString()); // the image's open reports it
            }
            String why = e.errno() == Errno.EACCES || e.errno() == Errno.EPERM ? "permission denied" : e.errnoName();
            throw new IOException(
                    "cannot read image " + Printable.of(path) + " to detect its format: " + why
                            + " (check the path and its permissions, or name the format)",
                    e);
        }
        try (fd;
                Arena a = Arena.ofConfined()) {
            MemorySegment b = a.allocate(HEADER_BYTES);
            long n =
                    FileIo.readFully(fd, b, 0); // a short file has a short header: detect() looks only at what is there
            return detect(b.asSlice(0, n).toArray(ValueLayout.JAVA_BYTE));
        } catch (LinuxException e) {
            throw new IOException(
                    "cannot read image " + Printable.of(path) + " to detect its format: " + e.errnoName()
                            + " (check the file or device, or name the format)",
                    e);
        }
    }

    /** The format whose signature starts {@code header} (the file's first bytes), or RAW when none does. */
    public static ImageFormat detect(byte[] header) {
        if (startsWith(header, 0, "QFI\u00fb")) {
            int version = header.length >= 8
                    ? (header[4] & 0xff) << 24 | (header[5] & 0xff) << 16 | (header[6] & 0xff) << 8 | (header[7] & 0xff)
                    : 0;
            return version == 1 ? QCOW : QCOW2; // qcow2 is versions 2 and 3
        }
        if (startsWith(header, 0, "QED\0")) {
            return QED;
        }
        if (startsWith(header, 0, "KDMV")
                || startsWith(header, 0, "COWD")
                || startsWith(header, 0, "# Disk DescriptorFile")) {
            return VMDK; // hosted sparse extent, ESX COW extent, or a descriptor file naming the extents
        }
        if (startsWith(header, 0, "vhdxfile")) {
            return VHDX;
        }
        if (startsWith(header, 0, "conectix")) {
            return VPC; // a dynamic VHD starts with a copy of its footer; a fixed VHD is raw with a footer at the end
        }
        if (header.length >= 0x44
                && (header[0x40] & 0xff) == 0x7f
                && (header[0x41] & 0xff) == 0x10
                && (header[0x42] & 0xff) == 0xda
                && (header[0x43] & 0xff) == 0xbe) {
            return VDI; // 0xbeda107f, little-endian, after the 64-byte text banner
        }
        if (startsWith(header, 0, "LUKS\u00ba\u00be")) {
            return LUKS; // LUKS1 and LUKS2 share the magic
        }
        if (startsWith(header, 0, "WithoutFreeSpace") || startsWith(header, 0, "WithouFreSpacExt")) {
            return PARALLELS;
        }
        if (startsWith(header, 0, "Bochs Virtual HD Image")) {
            return BOCHS;
        }
        if (startsWith(header, 0, "#!/bin/sh\n#V2.0 Format")) {
            return CLOOP;
        }
        return RAW;
    }

    /**
     * The format named {@code name} (QEMU's name, case-insensitive).
     *
     * @throws IllegalArgumentException naming the known formats
     */
    public static ImageFormat parse(String name) {
        for (ImageFormat f : values()) {
            if (f.qemuName.equalsIgnoreCase(name.strip())) {
                return f;
            }
        }
        StringBuilder known = new StringBuilder();
        for (ImageFormat f : values()) {
            known.append(known.isEmpty() ? "" : ", ").append(f.qemuName);
        }
        throw new IllegalArgumentException("'" + name + "' is not an image format (known: " + known + ")");
    }

    private static boolean startsWith(byte[] header, int offset, String magic) {
        byte[] m = magic.getBytes(StandardCharsets.ISO_8859_1);
        if (header.length < offset + m.length) {
            return false;
        }
        for (int i = 0; i < m.length; i++) {
            if (header[offset + i] != m[i]) {
                return false;
            }
        }
        return true;
    }

    @Override
    public String toString() {
        return qemuName.toLowerCase(Locale.ROOT);
    }
}
