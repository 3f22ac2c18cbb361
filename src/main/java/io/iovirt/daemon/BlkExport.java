// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.storage.BackingPolicy;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.Images;
import io.iovirt.vhostuser.VhostUserServer;
import java.io.IOException;
import java.nio.file.Path;

/**
 * One vhost-user-blk export in the daemon: its image, device and server, with their own threads (the server's
 * accept and session threads, one thread per queue). Nothing here is shared with another export.
 */
final class BlkExport implements Daemon.Export {
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

    /**
     * How long {@link #closeAsync} waits for the server to stop — its frontend's session to end, the device reset —
     * before it names what is stuck and leaves the rest of the stop to the close thread: a removal's whole wait
     * ({@link Daemon#CLOSE_WAIT}), so that it answers within it. Image work the session's thread waits for (reading
     * the image again, writing it back) does not use it up: the device cuts that wait to a moment when it is
     * retired, first ({@link BlkDevice#retire}), and the image's close waits for the work instead.
     */
    static final java.time.Duration SERVER_STOP_WAIT = Daemon.CLOSE_WAIT;

    final Spec spec;
    final DiskImage image;
    final BlkDevice device;
    final VhostUserServer server;
    /** True when the configuration file declared it (SIGHUP may remove it); false when added through the API. */
    final boolean fromConfig;
    /** Set by the first {@link #closeAsync}: the image is closed once, on the thread it hands the image to. */
    private ImageRelease.Closing closing; // guarded by this

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
     * writable as added so that blk.set-readonly false still works. For an add's open ({@link ImageOpens}):
     * once the image is open, {@code wanted} says whether the add still waits for it; if not (its file system
     * answered only after the add had failed), the image is closed and no socket listens: else a frontend reconnecting
     * to it would be served, for a while, by a disk its operator had been told was not added. {@code backing}: where
     * the image's backing files may be (the daemon's, from its configuration file; there is deliberately no overload
     * without it, which would serve any backing file a tenant's image names).
     */
    static BlkExport start(
            Spec spec,
            boolean fromConfig,
            io.iovirt.linux.SocketAccess access,
            boolean readOnlyNow,
            ImageOpens.Wanted wanted,
            BackingPolicy backing)
            throws IOException {
        DiskImage image = Images.open(spec.image(), spec.format(), spec.readOnly(), spec.direct(), backing);
        try {
            wanted.check();
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
     * Disconnects the frontend (in-flight requests complete first), then syncs and closes the image and lets the
     * device go of the image lock, in that order, on a thread of its own — at once, or once a request stuck in image
     * I/O has ended ({@link ImageRelease}). Returns that close, which the caller waits for as long as it chooses: a
     * final flush on a file system that does not answer does not end. A second call returns the same close.
     */
    @Override
    public synchronized ImageRelease.Closing closeAsync() {
        if (closing != null) {
            return closing;
        }
        closing = new ImageRelease.Closing("blk " + spec.id(), spec.image());
        device.retire(); // no blk.set-readonly racing with this starts a thread on the image closed below
        try {
            ImageRelease.afterStop(
                    new ImageRelease.ServerStop(() -> server.stopWithin(SERVER_STOP_WAIT), server::finishStop),
                    "blk " + spec.id(),
                    spec.image(),
                    "a request of its frontend (or reading the image again or writing it back, as its queues started or"
                            + " stopped) is",
                    "a VM started on it is refused it",
                    device::quiescent,
                    device::awaitQuiescent,
                    this::closeImage,
                    closing);
        } catch (RuntimeException e) { // the image's close has started all the same
            LOG.log(System.Logger.Level.ERROR, "blk " + spec.id() + ": stopping its server failed", e);
        }
        return closing;
    }

    /** The image's final flush and close, then the device lets go of its lock (not before). Whether it flushed. */
    private boolean closeImage() {
        try {
            return image.flushAndClose("blk " + spec.id());
        } finally {
            device.close();
        }
    }
}
