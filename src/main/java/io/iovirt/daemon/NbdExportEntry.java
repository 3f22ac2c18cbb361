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
            NbdServer server = NbdServer.startUnix(spec.socket(), NbdServer.DEFAULT_MAX_CONNECTIONS);
            try {
                NbdExport export = new NbdExport(spec.id(), image, spec.readOnly());
                server.addExport(export);
                restrict(spec.socket(), access.group());
                return new NbdExportEntry(spec, image, server, export, fromConfig);
            } catch (IOException | RuntimeException e) {
                server.close();
                throw e;
            }
        } catch (IOException | RuntimeException e) {
            image.close();
            throw e;
        }
    }

    /**
     * The NBD server has no access option of its own (yet): the socket file gets the daemon's mode and group after
     * listening. No uid allow-list: the file mode is the gate.
     */
    private static void restrict(Path socket, String group) throws IOException {
        if (group != null) {
            java.nio.file.attribute.GroupPrincipal g =
                    socket.getFileSystem().getUserPrincipalLookupService().lookupPrincipalByGroupName(group);
            java.nio.file.Files.getFileAttributeView(socket, java.nio.file.attribute.PosixFileAttributeView.class)
                    .setGroup(g);
        }
        java.nio.file.Files.setPosixFilePermissions(
                socket,
                java.nio.file.attribute.PosixFilePermissions.fromString(group != null ? "rw-rw----" : "rw-------"));
    }

    /** Stops the server (its connections end), flushes and closes the image. */
    @Override
    public void close() {
        server.close();
        try {
            image.flush();
        } catch (IOException e) {
            System.getLogger("io.iovirt.daemon")
                    .log(System.Logger.Level.ERROR, "nbd " + spec.id() + ": final flush failed: " + e.getMessage());
        } finally {
            image.close();
        }
    }
}
