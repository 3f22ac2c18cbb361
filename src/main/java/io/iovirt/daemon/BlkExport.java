// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.Images;
import io.iovirt.vhostuser.VhostUserServer;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * One vhost-user-blk export in the daemon: its image, device and server, with their own threads (the server's
 * accept and session threads, one thread per queue). Nothing here is shared with another export.
 */
final class BlkExport implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    /** What the export was made from (the config file's entry or blk.add's parameters). */
    record Spec(
            String id,
            Path image,
            Path socket,
            int queues,
            boolean readOnly,
            boolean direct,
            String serial,
            BlkDevice.IoEngine engine,
            ImageFormat format) {
        Spec withReadOnly(boolean ro) {
            return new Spec(id, image, socket, queues, ro, direct, serial, engine, format);
        }
    }

    final Spec spec;
    final DiskImage image;
    final BlkDevice device;
    final VhostUserServer server;
    /** True when the configuration file declared it (SIGHUP may remove it); false when added through the API. */
    final boolean fromConfig;
    /** Set by the first {@link #close}: the image is closed once, by it or by the thread it hands the image to. */
    private final AtomicBoolean closing = new AtomicBoolean();

    private BlkExport(Spec spec, DiskImage image, BlkDevice device, VhostUserServer server, boolean fromConfig) {
        this.spec = spec;
        this.image = image;
        this.device = device;
        this.server = server;
        this.fromConfig = fromConfig;
    }

    /**
     * Opens the image as {@code spec} says and serves it. {@code readOnlyNow}: switched read-only (as
     * blk.set-readonly does) before the socket serves — a state file's disk that blk.set-readonly had switched, opened
     * writable as added so that blk.set-readonly false still works.
     */
    static BlkExport start(Spec spec, boolean fromConfig, io.iovirt.linux.SocketAccess access, boolean readOnlyNow)
            throws IOException {
        DiskImage image = Images.open(spec.image(), spec.format(), spec.readOnly(), spec.direct());
        try {
            if (readOnlyNow && !image.readOnly()) {
                image.setReadOnly(true);
            }
            BlkDevice device = new BlkDevice(spec.id(), image, spec.queues(), spec.serial(), spec.engine());
            VhostUserServer server = VhostUserServer.start(spec.socket(), device, access);
            return new BlkExport(spec, image, device, server, fromConfig);
        } catch (IOException | RuntimeException e) {
            image.close();
            throw e;
        }
    }

    /**
     * Disconnects the frontend (in-flight requests complete first), syncs and closes the image, then the device lets
     * go of the image lock — at once when no queue thread runs any more, which is the rule. A request stuck in image
     * I/O (a hung NFS or FUSE file, a dying disk) outlives the server's stop (its queue is given up on after {@link
     * io.iovirt.virtio.QueueWorker#STOP_WAIT_LIMIT}), and its thread may still read, write or flush through the
     * image's descriptors: closed now, a number could be reused by another open (another tenant's image or socket)
     * and take this request's writes. Then the image stays open and locked (a VM started on it elsewhere is refused
     * it) until every such thread has ended, and a thread of its own closes it; this call does not wait for that, so
     * a control request, a reload or the daemon's stop is not held up beyond the server's own stop.
     */
    @Override
    public void close() {
        if (!closing.compareAndSet(false, true)) {
            return;
        }
        try {
            server.close();
        } finally {
            if (device.quiescent()) {
                closeImage();
            } else {
                LOG.log(
                        System.Logger.Level.ERROR,
                        "blk " + spec.id() + ": a request of its frontend is still in I/O on " + spec.image()
                                + " (its file system or disk does not answer): the image stays open and locked (a VM"
                                + " started on it is refused it) until the request ends, then it is flushed and"
                                + " closed; make that file system or disk answer again (a hung NFS server or FUSE"
                                + " daemon, a failing disk), or stop the daemon to let go of the image without its"
                                + " final flush");
                Thread.ofPlatform().name("blk " + spec.id() + " close").daemon().start(this::closeWhenQuiescent);
            }
        }
    }

    /** On a thread of its own: waits for the last queue thread to end, then closes the image and lets go of it. */
    private void closeWhenQuiescent() {
        try {
            while (!device.awaitQuiescent(Duration.ofMinutes(10))) {
                // as long as it takes: the image must not be closed under a request
            }
        } catch (InterruptedException e) {
            LOG.log(
                    System.Logger.Level.ERROR,
                    "blk " + spec.id() + ": interrupted waiting for its requests to end: " + spec.image()
                            + " stays open and locked until the daemon stops");
            return;
        }
        closeImage();
        LOG.log(
                System.Logger.Level.WARNING,
                "blk " + spec.id() + ": its last requests have ended: " + spec.image() + " is flushed, closed and"
                        + " unlocked now");
    }

    private void closeImage() {
        try {
            image.flushAndClose("blk " + spec.id());
        } finally {
            device.close();
        }
    }
}
