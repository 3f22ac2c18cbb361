// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.devices.blk.BlkDevice;
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
final class BlkExport implements AutoCloseable {
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

    /** Disconnects the frontend (in-flight requests complete first), syncs and closes the image. */
    @Override
    public void close() {
        server.close();
        image.flushAndClose("blk " + spec.id());
    }
}
