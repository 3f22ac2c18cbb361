// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.nbd.NbdExport;
import io.iovirt.nbd.NbdServer;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.ImageLock;
import io.iovirt.storage.Images;
import io.iovirt.util.ByteSizes;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code iovirt serve nbd}: exports one image over NBD on a UNIX socket or a loopback TCP address, for QEMU's
 * emulated disks ({@code -drive driver=nbd,...}), qemu-img/qemu-io, or the kernel's nbd-client. SIGINT, SIGTERM and
 * SIGHUP disconnect the clients, sync the image and exit 0. Logs and statistics as every server: {@link LogOptions}.
 */
@Command(
        name = "nbd",
        mixinStandardHelpOptions = true,
        footerHeading = "%nExamples:%n",
        footer = {
            "  iovirt serve nbd --image disk.qcow2 --socket /run/iovirt/nbd0.sock --name disk0",
            "  iovirt serve nbd --image base.raw --listen 127.0.0.1:10809 --readonly",
            "  iovirt serve nbd --image disk.raw --socket nbd.sock --log-format json --stats-interval 10"
        },
        description = {
            "Export a disk image (raw or qcow2) over NBD.",
            "QEMU: -drive driver=nbd,server.type=unix,server.path=SOCKET,export=NAME,if=none,id=d0",
            "      -device ide-hd,drive=d0",
            "qemu-img/qemu-io: nbd+unix:///NAME?socket=SOCKET or nbd://127.0.0.1:PORT/NAME"
        })
final class ServeNbdCommand implements Callable<Integer> {
    private static final java.util.logging.Logger LOG = java.util.logging.Logger.getLogger("iovirt.serve.nbd");

    @picocli.CommandLine.Spec
    picocli.CommandLine.Model.CommandSpec spec;

    @picocli.CommandLine.Mixin
    LogOptions logOptions;

    @picocli.CommandLine.Mixin
    StatsOptions statsOptions;

    /** --socket-group / --allow-uid, as for serve blk|net (UNIX sockets only: TCP has no peer uid). */
    @picocli.CommandLine.Mixin
    SocketAccessOptions socketAccess;

    /** --backing-dir / --backing-devices, as for serve blk. */
    @picocli.CommandLine.Mixin
    BackingOptions backingOptions;

    @Option(
            names = "--image",
            required = true,
            paramLabel = "FILE",
            description = "Image file (raw, qcow2) or block device.")
    Path image;

    @ArgGroup(exclusive = true, multiplicity = "1")
    Listen listen;

    static final class Listen {
        @Option(names = "--socket", paramLabel = "PATH", description = "UNIX socket to listen on.")
        Path socket;

        @Option(
                names = "--listen",
                paramLabel = "HOST:PORT",
                description = "Loopback TCP address to listen on (port 0 picks one).")
        String tcp;
    }

    @Option(
            names = "--name",
            defaultValue = "",
            paramLabel = "NAME",
            description = "Export name (default: the empty name).")
    String name;

    @Option(names = "--readonly", description = "Refuse writes.")
    boolean readOnly;

    @Option(
            names = "--format",
            paramLabel = "raw|qcow2",
            description = "Image format, overriding detection from the header.")
    String format;

    @Option(
            names = "--direct",
            description =
                    "Open the image with O_DIRECT (raw, or qcow2: its data and metadata; a backing chain stays buffered); clients then address it in whole blocks of the file system's direct I/O alignment.")
    boolean direct;

    @Option(
            names = "--max-connections",
            defaultValue = "16",
            paramLabel = "N",
            description = "Connections served at once; more are refused in the handshake (default ${DEFAULT-VALUE}).")
    int maxConnections;

    @Override
    public Integer call() throws Exception {
        logOptions.apply();
        if (maxConnections < 1) {
            throw Contract.usage(spec, "--max-connections must be at least 1, got " + maxConnections);
        }
        String host = null;
        int port = 0;
        if (listen.tcp != null) {
            int colon = listen.tcp.lastIndexOf(':');
            try {
                port = colon < 0 ? -1 : Integer.parseInt(listen.tcp.substring(colon + 1));
            } catch (NumberFormatException e) {
                port = -1;
            }
            if (port < 0 || port > 65535) {
                throw Contract.usage(
                        spec,
                        "--listen takes HOST:PORT with a port 0..65535, e.g. 127.0.0.1:10809, got '" + listen.tcp
                                + "'");
            }
            host = listen.tcp.substring(0, colon).replace("[", "").replace("]", "");
        }
        if (listen.socket == null && (socketAccess.socketGroup() != null || socketAccess.allowsOthers())) {
            throw new picocli.CommandLine.ParameterException(
                    spec.commandLine(),
                    "--socket-group, --allow-uid and --allow-user apply to a UNIX socket (--socket); a TCP listener is loopback-only"
                            + " and has no peer uid to check");
        }
        ImageFormat fmt = format == null ? null : ImageFormat.parse(format);
        io.iovirt.storage.BackingPolicy backing = backingOptions.policy(spec);
        // The export holds its image while it runs, as the daemon's do: a writable one owns it (QEMU or another
        // export writing it too would corrupt it), a read-only one keeps writers away (its clients would see data
        // change under them). Closed after the image, so the lock outlives the final flush.
        ImageLock lock = ImageLock.holdForExport(image, readOnly, "serve nbd"); // null: nothing to hold (see there)
        DiskImage img = null;
        NbdServer server = null;
        try {
            img = Images.open(image, fmt, readOnly, direct, backing);
            NbdExport export = new NbdExport(name, img, readOnly);
            server = listen.socket != null
                    ? NbdServer.startUnix(listen.socket, maxConnections, socketAccess.access())
                    : NbdServer.startTcp(host, port, maxConnections);
            try (NbdServer serving = server) {
                serving.addExport(export);
                LOG.info(String.format(
                        "exporting %s (%s, %s%s%s) as '%s' over NBD on %s",
                        image,
                        img.format(),
                        ByteSizes.human(img.size()),
                        export.readOnly() ? ", read-only" : "",
                        img.direct() ? ", O_DIRECT in " + img.blockSize() + "-byte blocks" : "",
                        name,
                        serving.address()));
                Thread stats = statsOptions.start(() -> logStats("counters: ", export));
                String signal = Signals.awaitTermination();
                LOG.info(signal + ": stopping (clients are disconnected after their current request)");
                StatsOptions.stop(stats);
            }
            if (!server.quiescent()) {
                logStats("stopped; image not synced. ", export);
                return 1; // the image stays open (below)
            }
            if (!img.readOnly()) {
                img.flush();
            }
            logStats("stopped; image synced. ", export);
        } finally {
            // A request stuck in image I/O (a hung NFS or FUSE file, a dying disk) may still use the image's
            // descriptors: closed, a number could be reused by whatever the process opens on its way out and take
            // that request's writes, and the flush would wait on the same file system. So the image stays open (and
            // locked) until the process has exited — also when serving ended in an exception.
            if (server == null || server.quiescent()) {
                try {
                    if (img != null) {
                        img.close();
                    }
                } finally {
                    if (lock != null) {
                        lock.close();
                    }
                }
            } else {
                stuck(image);
            }
        }
        return 0;
    }

    private static void stuck(Path image) {
        LOG.severe("a request of a client is still in I/O on " + image + " (its file system or disk does not"
                + " answer): exiting without the final flush; the image stays open and locked until the process has"
                + " exited. Make that file system or disk answer again (a hung NFS server or FUSE daemon, a failing"
                + " disk) before the image is used again");
    }

    /** The export's counters; with --log-format json also as a "stats" object (the counters ctl reports). */
    private static void logStats(String title, NbdExport export) {
        LogOptions.log(
                LOG,
                java.util.logging.Level.INFO,
                title + export.stats(),
                new LogOptions.Field("stats", io.iovirt.daemon.Daemon.nbdCounters(export.stats())));
    }
}
