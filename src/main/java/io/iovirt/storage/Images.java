// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.storage.qcow2.Qcow2Image;
import java.io.IOException;
import java.nio.file.Path;

/**
 * The one place images are opened, by every frontend (vhost-user-blk, NBD, the composer) and for every backing
 * file of a chain — so policies that apply to opening an image (format detection, read-only backing files, image
 * locking) live here.
 */
public final class Images {
    private Images() {
    }

    /**
     * Opens {@code path}.
     *
     * @param format   the format, or null to detect it from the header
     * @param readOnly refuse writes (backing files are always opened read-only)
     * @param direct   O_DIRECT data I/O (raw only)
     * @throws IOException naming the image, what is wrong and what to do
     */
    public static DiskImage open(Path path, ImageFormat format, boolean readOnly, boolean direct) throws IOException {
        ImageFormat f = format != null ? format : ImageFormat.detect(path);
        return switch (f) {
            case RAW -> RawImage.open(path, readOnly, direct);
            case QCOW2 -> {
                if (direct) {
                    throw new IOException("image " + path + " is qcow2: O_DIRECT is supported for raw images only; drop --direct");
                }
                yield Qcow2Image.open(path, readOnly);
            }
        };
    }
}
