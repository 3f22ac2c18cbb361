// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.storage.qcow2.Qcow2Image;
import io.iovirt.util.Printable;
import java.io.IOException;
import java.nio.file.Path;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The one place images are opened, by every frontend (vhost-user-blk, NBD, the composer) and for every backing
 * file of a chain — so policies that apply to opening an image (format detection, read-only backing files, image
 * locking, where backing files may be: {@link BackingPolicy}) live here.
 */
public final class Images {
    /** Files open for writing in this process: a second writer (two caches of one qcow2) would corrupt it. */
    private static final Set<Path> WRITABLE = ConcurrentHashMap.newKeySet();

    private Images() {}

    /**
     * Opens {@code path}.
     *
     * @param format   the format, or null to detect it from the header
     * @param readOnly refuse writes (backing files are always opened read-only)
     * @param direct   O_DIRECT I/O (raw; qcow2 data and metadata, its backing chain stays buffered)
     * @throws IOException naming the image, what is wrong and what to do
     */
    public static DiskImage open(Path path, ImageFormat format, boolean readOnly, boolean direct) throws IOException {
        return open(path, format, readOnly, direct, BackingPolicy.UNRESTRICTED);
    }

    /**
     * As {@link #open(Path, ImageFormat, boolean, boolean)}, with the backing files of a qcow2 chain confined by
     * {@code backing} (the image {@code path} itself is the operator's choice and is not checked).
     */
    public static DiskImage open(Path path, ImageFormat format, boolean readOnly, boolean direct, BackingPolicy backing)
            throws IOException {
        if (readOnly) {
            return openFormat(path, format, true, direct, backing);
        }
        Path real;
        try {
            real = path.toRealPath();
        } catch (IOException e) {
            real = path.toAbsolutePath().normalize(); // the format's open reports the missing file with the remedy
        }
        if (!WRITABLE.add(real)) {
            throw new IOException(
                    "image " + Printable.of(path) + " is already open for writing in this process (two writers would "
                            + "corrupt it): give each disk its own image, or open one of them read-only");
        }
        try {
            return new Exclusive(openFormat(path, format, false, direct, backing), real);
        } catch (IOException | RuntimeException e) {
            WRITABLE.remove(real);
            throw e;
        }
    }

    private static DiskImage openFormat(
            Path path, ImageFormat format, boolean readOnly, boolean direct, BackingPolicy backing) throws IOException {
        ImageFormat f;
        try {
            f = format != null ? format : ImageFormat.detect(path);
        } catch (java.nio.file.NoSuchFileException e) {
            f = ImageFormat.RAW; // the raw open reports the missing file with its remedy
        }
        return switch (f) {
            case RAW -> {
                RawImage raw = RawImage.open(path, readOnly, direct);
                if (format == null) {
                    raw.probed(); // a guest may not make its next open detect another format
                }
                yield raw;
            }
            case QCOW2 -> Qcow2Image.open(path, readOnly, direct, backing);
            default ->
                throw new IOException(
                        "image " + Printable.of(path) + " is " + f.description() + ": iovirt serves raw and qcow2 "
                                + "images only — convert it with 'qemu-img convert -O qcow2 " + Printable.of(path)
                                + " NEW.qcow2', or pass "
                                + "--format raw to serve its bytes as they are");
        };
    }

    /** A writable image registered in {@link #WRITABLE} until it is closed. */
    private static final class Exclusive extends ForwardingDiskImage {
        private final Path real;
        private volatile boolean closed;

        Exclusive(DiskImage d, Path real) {
            super(d);
            this.real = real;
        }

        @Override
        public void close() {
            if (!closed) {
                closed = true;
                try {
                    delegate.close();
                } finally {
                    WRITABLE.remove(real);
                }
            }
        }
    }
}
