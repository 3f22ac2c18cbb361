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
import java.time.Duration;
import java.util.concurrent.atomic.AtomicBoolean;

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
final class NbdExportEntry implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

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
    private final AtomicBoolean closing = new AtomicBoolean();

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
        ImageLock lock = ImageLock.holdForExport(spec.image(), spec.readOnly(), "nbd " + spec.id());
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
     * Stops the server (its connections end), flushes and closes the image, then lets go of the image lock — at once
     * when no request is running any more, which is the rule. A request stuck in image I/O (a hung NFS or FUSE file, a
     * dying disk) outlives the server's wait for its connection, and its thread may still read, write or flush
     * through the image's descriptors: closed now, a number could be reused by another open (another tenant's image
     * or socket) and take this request's writes. Then the image stays open and locked (a second export of it is
     * refused, naming this process) until every such thread has ended, and a thread of its own closes it; this call
     * does not wait for that, so a control request, a reload or the daemon's stop is not held up.
     */
    @Override
    public void close() {
        if (!closing.compareAndSet(false, true)) {
            return;
        }
        try {
            server.close();
        } finally {
            if (server.quiescent()) {
                closeImage();
            } else {
                LOG.log(
                        System.Logger.Level.ERROR,
                        "nbd " + spec.id() + ": requests of its disconnected clients are still in I/O on "
                                + spec.image() + " (its file system or disk does not answer): the image stays open"
                                + " and locked (exporting it again is refused) until they end, then it is flushed and"
                                + " closed; make that file system or disk answer again (a hung NFS server or FUSE"
                                + " daemon, a failing disk), or stop the daemon to let go of the image without its"
                                + " final flush");
                Thread.ofPlatform().name("nbd " + spec.id() + " close").daemon().start(this::closeWhenQuiescent);
            }
        }
    }

    /** On a thread of its own: waits for the last request to end, then closes the image and lets go of its lock. */
    private void closeWhenQuiescent() {
        try {
            while (!server.awaitQuiescent(Duration.ofMinutes(10))) {
                // as long as it takes: the image must not be closed under a request
            }
        } catch (InterruptedException e) {
            LOG.log(
                    System.Logger.Level.ERROR,
                    "nbd " + spec.id() + ": interrupted waiting for its requests to end: " + spec.image()
                            + " stays open and locked until the daemon stops");
            return;
        }
        closeImage();
        LOG.log(
                System.Logger.Level.WARNING,
                "nbd " + spec.id() + ": its last requests have ended: " + spec.image() + " is flushed, closed and"
                        + " unlocked now");
    }

    private void closeImage() {
        try {
            image.flushAndClose("nbd " + spec.id());
        } finally {
            if (lock != null) {
                lock.close();
            }
        }
    }
}
