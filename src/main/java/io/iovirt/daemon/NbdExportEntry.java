// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.nbd.NbdExport;
import io.iovirt.nbd.NbdServer;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.ImageLock;
import io.iovirt.storage.Images;
import java.io.IOException;
import java.nio.file.Path;

/**
 * An NBD export in the daemon (for QEMU's emulated disks: {@code -drive driver=nbd,server.type=unix,...}, or any NBD
 * client): its own NBD server on its own UNIX socket, so its accept and connection threads are its own and one
 * export's clients never wait on another's.
 *
 * <p>A writable export owns its image for as long as it runs: it takes the exclusive {@link ImageLock} (the one a
 * vhost-user-blk export takes while its frontend runs, which also conflicts with QEMU's own image locks) before it
 * opens the image, and is refused when another process holds a lock on it; it lets go only after the image is
 * flushed and closed. NBD clients come and go, so unlike a blk export the lock does not follow them.
 */
final class NbdExportEntry implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    record Spec(String id, Path image, Path socket, boolean readOnly, ImageFormat format) {}

    final Spec spec;
    final DiskImage image;
    final NbdServer server;
    final NbdExport export;
    /** Declared in the configuration file (a reload may remove or replace it), not added through the API. */
    final boolean fromConfig;
    /** The writable export's hold on its image; null for a read-only export or a file system without OFD locks. */
    private final ImageLock lock;

    private NbdExportEntry(
            Spec spec, DiskImage image, NbdServer server, NbdExport export, boolean fromConfig, ImageLock lock) {
        this.spec = spec;
        this.fromConfig = fromConfig;
        this.image = image;
        this.server = server;
        this.export = export;
        this.lock = lock;
    }

    static NbdExportEntry start(Spec spec, io.iovirt.linux.SocketAccess access, boolean fromConfig) throws IOException {
        ImageLock lock = spec.readOnly() ? null : ImageLock.holdForWriting(spec.image(), "nbd " + spec.id());
        try {
            DiskImage image = Images.open(spec.image(), spec.format(), spec.readOnly(), false);
            try {
                // the daemon's --socket-group/--allow-uid: mode set before listening, peer uids checked at accept
                NbdServer server = NbdServer.startUnix(spec.socket(), NbdServer.DEFAULT_MAX_CONNECTIONS, access);
                try {
                    NbdExport export = new NbdExport(spec.id(), image, spec.readOnly());
                    server.addExport(export);
                    return new NbdExportEntry(spec, image, server, export, fromConfig, lock);
                } catch (RuntimeException e) {
                    server.close();
                    throw e;
                }
            } catch (IOException | RuntimeException e) {
                image.close();
                throw e;
            }
        } catch (IOException | RuntimeException e) {
            if (lock != null) {
                lock.close();
            }
            throw e;
        }
    }

    /**
     * Takes the image for a writable export: the lock, or an IOException naming who holds the image. A file system
     * without OFD locks is served unlocked, with a warning (as a blk export and QEMU's locking=auto do).
     */
    /** Stops the server (its connections end), flushes and closes the image, then lets go of the image lock. */
    @Override
    public void close() {
        try {
            server.close();
            image.flushAndClose("nbd " + spec.id());
        } finally {
            if (lock != null) {
                lock.close();
            }
        }
    }
}
