// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.nbd.NbdExport;
import io.iovirt.nbd.NbdServer;
import io.iovirt.storage.BackingPolicy;
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
 * <p>An export holds its image's {@link ImageLock} (the one a vhost-user-blk export takes while its frontend runs,
 * which also conflicts with QEMU's own image locks) for as long as it runs, taken before it opens the image and let
 * go only after the image is flushed and closed: a writable export owns it (exclusive lock; refused when another
 * process holds a lock on it), a read-only one keeps writers away (shared lock; refused while another process
 * writes it), so its clients never see data change under them. NBD clients come and go, so unlike a blk export the
 * lock does not follow them.
 */
final class NbdExportEntry implements Daemon.Export {

    record Spec(String id, Path image, Path socket, boolean readOnly, ImageFormat format) {}

    final Spec spec;
    final DiskImage image;
    final NbdServer server;
    final NbdExport export;
    /** Declared in the configuration file (a reload may remove or replace it), not added through the API. */
    final boolean fromConfig;
    /** The export's hold on its image (shared when read-only); null on a file system without OFD locks. */
    private final ImageLock lock;
    /** Set by the first {@link #close}: the image is closed once, by it or by the thread it hands the image to. */
    private ImageRelease.Closing closing; // guarded by this; set by the first closeAsync

    private NbdExportEntry(
            Spec spec, DiskImage image, NbdServer server, NbdExport export, boolean fromConfig, ImageLock lock) {
        this.spec = spec;
        this.fromConfig = fromConfig;
        this.image = image;
        this.server = server;
        this.export = export;
        this.lock = lock;
    }

    /**
     * Opens the image as {@code spec} says and serves it. For an add's open ({@link ImageOpens}): an add that no
     * longer waits for it ({@code wanted}) closes the image and lock and starts no server, as a blk export's.
     * {@code backing}: where the image's backing files may be (the daemon's; there is deliberately no overload
     * without it, which would serve any backing file a tenant's image names).
     */
    static NbdExportEntry start(
            Spec spec,
            io.iovirt.linux.SocketAccess access,
            boolean fromConfig,
            ImageOpens.Wanted wanted,
            BackingPolicy backing)
            throws IOException {
        ImageLock lock = ImageLock.holdForExport(spec.image(), spec.readOnly(), "nbd " + spec.id());
        try {
            DiskImage image = Images.open(spec.image(), spec.format(), spec.readOnly(), false, backing);
            try {
                wanted.check();
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
     * Stops the server (its connections end: requests in flight are answered, within the caller's bound or after it
     * on the close thread), then flushes and closes the image and lets go of the image lock, in
     * that order, on a thread of its own — at once, or once a request stuck in image I/O has ended ({@link
     * ImageRelease}). Returns that close, which the caller waits for as long as it chooses. A second call returns the
     * same close.
     */
    @Override
    public synchronized ImageRelease.Closing closeAsync() {
        if (closing != null) {
            return closing;
        }
        closing = new ImageRelease.Closing("nbd " + spec.id(), spec.image());
        try {
            ImageRelease.afterStop(
                    // its clients' requests in flight are answered within the removal's limit or on the close
                    // thread, before the image's close
                    new ImageRelease.ServerStop(
                            () -> server.stopWithin(BlkExport.SERVER_STOP_WAIT), server::finishStop, "", ""),
                    "nbd " + spec.id(),
                    spec.image(),
                    "requests of its disconnected clients are",
                    "exporting it again is refused",
                    server::quiescent,
                    server::awaitQuiescent,
                    this::closeImage,
                    closing);
        } catch (RuntimeException e) { // the image's close has started all the same
            System.getLogger("io.iovirt.daemon")
                    .log(System.Logger.Level.ERROR, "nbd " + spec.id() + ": stopping its server failed", e);
        }
        return closing;
    }

    /** The image's final flush and close, then its lock goes (not before). Whether it flushed. */
    private boolean closeImage() {
        try {
            return image.flushAndClose("nbd " + spec.id());
        } finally {
            if (lock != null) {
                lock.close();
            }
        }
    }
}
