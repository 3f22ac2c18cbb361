// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import io.iovirt.storage.DiskImage;
import java.nio.charset.StandardCharsets;

/**
 * One exported image. The server does not own the image: whoever opened it closes it after the export is removed
 * (or the server closed). {@code readOnly} may narrow a writable image to read-only for NBD clients.
 *
 * @param name        the NBD export name clients ask for (at most 4096 bytes of UTF-8)
 * @param description free text for NBD_INFO_DESCRIPTION and the LIST reply, or null; one longer than the protocol's
 *     {@value #MAX_DESCRIPTION} bytes of UTF-8 is cut to fit, at a character boundary, ending in "…"
 */
public record NbdExport(String name, DiskImage image, boolean readOnly, String description, NbdExportStats stats) {

    /** Longest description sent: the NBD protocol's limit for strings (doc/proto.md: at most 4096 bytes). */
    static final int MAX_DESCRIPTION = 4096;

    public NbdExport {
        if (name.getBytes(StandardCharsets.UTF_8).length > 4096) {
            throw new IllegalArgumentException("export name longer than 4096 bytes");
        }
        readOnly = readOnly || image.readOnly();
        description = fit(description);
    }

    /**
     * The description cut to {@link #MAX_DESCRIPTION} bytes of UTF-8. Cut, not refused: it is made from the image's
     * path, which may be longer (PATH_MAX is 4096 too, before the format's words), and is only for display. Cut at a
     * character boundary: a cut inside a multi-byte character would leave the peer a string that is not UTF-8, which
     * the protocol requires it to be. The "…" says something is missing.
     */
    private static String fit(String description) {
        if (description == null) {
            return null;
        }
        byte[] b = description.getBytes(StandardCharsets.UTF_8);
        if (b.length <= MAX_DESCRIPTION) {
            return description;
        }
        int end = Nbd.utf8Prefix(b, MAX_DESCRIPTION - 3); // room for "…" (3 bytes)
        return new String(b, 0, end, StandardCharsets.UTF_8) + "…";
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
