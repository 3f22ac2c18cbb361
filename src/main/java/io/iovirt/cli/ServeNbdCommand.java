// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.nbd.NbdExport;
import io.iovirt.nbd.NbdServer;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.Images;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code iovirt serve nbd}: exports one image over NBD on a UNIX socket or a loopback TCP address, for QEMU's
 * emulated disks ({@code -drive driver=nbd,...}), qemu-img/qemu-io, or the kernel's nbd-client. SIGINT/SIGTERM
 * disconnect the clients, sync the image and exit 0.
 */
@Command(name = "nbd", mixinStandardHelpOptions = true, footerHeading = "%nExamples:%n",
        footer = {"  iovirt serve nbd --image disk.qcow2 --socket /run/iovirt/nbd0.sock --name disk0",
                "  iovirt serve nbd --image base.raw --listen 127.0.0.1:10809 --readonly"},
        description = {"Export a disk image (raw or qcow2) over NBD.",
                "QEMU: -drive driver=nbd,server.type=unix,server.path=SOCKET,export=NAME,if=none,id=d0",
                "      -device ide-hd,drive=d0",
                "qemu-img/qemu-io: nbd+unix:///NAME?socket=SOCKET or nbd://127.0.0.1:PORT/NAME"})
final class ServeNbdCommand implements Callable<Integer> {
    @Option(names = "--image", required = true, paramLabel = "FILE", description = "Image file (raw, qcow2) or block device.")
    Path image;

    @ArgGroup(exclusive = true, multiplicity = "1")
    Listen listen;

    static final class Listen {
        @Option(names = "--socket", paramLabel = "PATH", description = "UNIX socket to listen on.")
        Path socket;

        @Option(names = "--listen", paramLabel = "HOST:PORT", description = "Loopback TCP address to listen on (port 0 picks one).")
        String tcp;
    }

    @Option(names = "--name", defaultValue = "", paramLabel = "NAME", description = "Export name (default: the empty name).")
    String name;

    @Option(names = "--readonly", description = "Refuse writes.")
    boolean readOnly;

    @Option(names = "--format", paramLabel = "raw|qcow2", description = "Image format, overriding detection from the header.")
    String format;

    @Option(names = "--direct", description = "Open a raw image with O_DIRECT.")
    boolean direct;

    @Option(names = "--max-connections", defaultValue = "16", paramLabel = "N",
            description = "Connections served at once; more are refused in the handshake (default ${DEFAULT-VALUE}).")
    int maxConnections;

    @Override
    public Integer call() throws Exception {
        ImageFormat fmt = format == null ? null : ImageFormat.parse(format);
        try (DiskImage img = Images.open(image, fmt, readOnly, direct)) {
            NbdExport export = new NbdExport(name, img, readOnly);
            NbdServer server;
            if (listen.socket != null) {
                server = NbdServer.startUnix(listen.socket, maxConnections);
            } else {
                int colon = listen.tcp.lastIndexOf(':');
                if (colon < 0) {
                    throw new IllegalArgumentException("--listen takes HOST:PORT, e.g. 127.0.0.1:10809, got '" + listen.tcp + "'");
                }
                String host = listen.tcp.substring(0, colon).replace("[", "").replace("]", "");
                server = NbdServer.startTcp(host, Integer.parseInt(listen.tcp.substring(colon + 1)), maxConnections);
            }
            try (server) {
                server.addExport(export);
                System.err.printf("iovirt: exporting %s (%s, %d MiB%s) as '%s' over NBD on %s%n", image, img.format(),
                        img.size() >> 20, export.readOnly() ? ", read-only" : "", name, server.address());
                String signal = Signals.awaitTermination();
                System.err.println("iovirt: " + signal + ": stopping (clients are disconnected after their current request)");
            }
            if (!img.readOnly()) {
                img.flush();
            }
            System.err.println("iovirt: stopped; image synced. " + export.stats());
        }
        return 0;
    }
}
