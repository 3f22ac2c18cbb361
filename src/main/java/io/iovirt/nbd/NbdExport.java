// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import io.iovirt.storage.DiskImage;
import java.nio.charset.StandardCharsets;

/**
 * One exported image. The server does not own the image: whoever opened it closes it after the export is removed
 * (or the server closed). {@code readOnly} may narrow a writable image to read-only for NBD clients.
 *
 * @param name        the NBD export name clients ask for (at most 4096 bytes of UTF-8)
 * @param description free text for NBD_INFO_DESCRIPTION, or null
 */
public record NbdExport(String name, DiskImage image, boolean readOnly, String description, NbdExportStats stats) {

    public NbdExport {
        if (name.getBytes(StandardCharsets.UTF_8).length > 4096) {
            throw new IllegalArgumentException("export name longer than 4096 bytes");
        }
        readOnly = readOnly || image.readOnly();
    }

    public NbdExport(String name, DiskImage image, boolean readOnly) {
        this(name, image, readOnly, image.format() + " image " + image.path(), new NbdExportStats());
    }

    /**
     * Transmission flags (handshake flags of the export) for a connection that has ({@code structuredReplies}) or
     * has not negotiated structured replies: NBD_FLAG_SEND_DF only with them, since the NBD protocol (doc/proto.md,
     * "Transmission flags") says the server MUST leave it clear when structured replies have not been negotiated.
     */
    int transmissionFlags(boolean structuredReplies) {
        int f = Nbd.TF_HAS_FLAGS | Nbd.TF_SEND_FLUSH | Nbd.TF_SEND_FUA | Nbd.TF_CAN_MULTI_CONN;
        if (structuredReplies) {
            f |= Nbd.TF_SEND_DF; // a read is always answered in one chunk
        }
        if (readOnly) {
            f |= Nbd.TF_READ_ONLY;
        } else {
            f |= Nbd.TF_SEND_TRIM | Nbd.TF_SEND_WRITE_ZEROES | Nbd.TF_SEND_FAST_ZERO;
        }
        return f;
    }

    /** Smallest block clients should address: 1, or the O_DIRECT alignment. */
    int minimumBlock() {
        return image.direct() ? image.blockSize() : 1;
    }
}
