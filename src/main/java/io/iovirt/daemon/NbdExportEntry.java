// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.nbd.NbdExport;
import io.iovirt.nbd.NbdServer;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.Images;
import java.io.IOException;
import java.nio.file.Path;

/**
 * An NBD export in the daemon (for QEMU's emulated disks: {@code -drive driver=nbd,server.type=unix,...}, or any NBD
 * client): its own NBD server on its own UNIX socket, so its accept and connection threads are its own and one
 * export's clients never wait on another's.
 */
final class NbdExportEntry implements AutoCloseable {
    record Spec(String id, Path image, Path socket, boolean readOnly, ImageFormat format) {}

    final Spec spec;
    final DiskImage image;
    final NbdServer server;
    final NbdExport export;
    /** Declared in the configuration file (a reload may remove or replace it), not added through the API. */
    final boolean fromConfig;

    private NbdExportEntry(Spec spec, DiskImage image, NbdServer server, NbdExport export, boolean fromConfig) {
        this.spec = spec;
        this.fromConfig = fromConfig;
        this.image = image;
        this.server = server;
        this.export = export;
    }

    static NbdExportEntry start(Spec spec, io.iovirt.linux.SocketAccess access, boolean fromConfig) throws IOException {
        DiskImage image = Images.open(spec.image(), spec.format(), spec.readOnly(), false);
        try {
            // the daemon's --socket-group/--allow-uid: mode set before listening, peer uids checked at accept
            NbdServer server = NbdServer.startUnix(spec.socket(), NbdServer.DEFAULT_MAX_CONNECTIONS, access);
            try {
                NbdExport export = new NbdExport(spec.id(), image, spec.readOnly());
                server.addExport(export);
                return new NbdExportEntry(spec, image, server, export, fromConfig);
            } catch (RuntimeException e) {
                server.close();
                throw e;
            }
        } catch (IOException | RuntimeException e) {
            image.close();
            throw e;
        }
    }

    /** Stops the server (its connections end), flushes and closes the image. */
    @Override
    public void close() {
        server.close();
        image.flushAndClose("nbd " + spec.id());
    }
}
