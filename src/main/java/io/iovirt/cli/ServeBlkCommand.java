// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.bench.BlkBench;
import io.iovirt.bench.BlkBenchOptions;
import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.linux.SdNotify;
import io.iovirt.storage.BackingPolicy;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.Images;
import io.iovirt.util.ActionableException;
import io.iovirt.util.ByteSizes;
import io.iovirt.vhostuser.SocketOwner;
import io.iovirt.vhostuser.VhostUserServer;
import java.io.IOException;
import java.nio.file.Path;
import java.util.HexFormat;
import java.util.concurrent.Callable;
import java.util.concurrent.atomic.AtomicBoolean;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code iovirt serve blk}: a vhost-user-blk backend on a UNIX socket. QEMU connects as the client; after it
 * disconnects (guest reboot, VM stop) the next connection is accepted. SIGINT, SIGTERM and SIGHUP finish in-flight requests,
 * fsync the image and exit 0.
 */
@Command(
        name = "blk",
        footerHeading = "%nExamples:%n",
        footer = {
            "  iovirt serve blk --image disk.raw --socket /run/iovirt/blk0.sock",
            "  iovirt serve blk --image /dev/vg0/vm1 --socket /run/iovirt/vm1.sock --queues 4 --direct",
            "  iovirt serve blk --image disk.raw --socket blk.sock --log-format json --stats-interval 10"
        },
        mixinStandardHelpOptions = true,
        description = {
            "Serve a disk image (raw or qcow2) to QEMU guests as vhost-user-blk.",
            "QEMU: -chardev socket,id=c0,path=SOCKET -device vhost-user-blk-pci,chardev=c0 (guest RAM must be shared: "
                    + "-object memory-backend-memfd,id=mem,size=...,share=on -numa node,memdev=mem)."
        })
final class ServeBlkCommand implements Callable<Integer> {
    private static final java.util.logging.Logger LOG = java.util.logging.Logger.getLogger("iovirt.serve.blk");

    /** How long a server that took the socket's lock waits for the previous holder's listener to go (it is exiting). */
    private static final java.time.Duration PREVIOUS_LISTENER_WAIT = java.time.Duration.ofSeconds(5);

    @picocli.CommandLine.Spec
    picocli.CommandLine.Model.CommandSpec spec;

    @Option(
            names = "--image",
            required = true,
            paramLabel = "FILE",
            description = "Disk image: a raw file or block device, or qcow2 (the format is read from the header).")
    Path image;

    @Option(names = "--socket", required = true, paramLabel = "PATH", description = "UNIX socket to listen on.")
    Path socket;

    @Option(names = "--readonly", description = "Refuse writes (the guest sees a read-only disk).")
    boolean readOnly;

    @Option(
            names = "--queues",
            defaultValue = "1",
            paramLabel = "N",
            description = "Request queues offered (default ${DEFAULT-VALUE}).")
    int queues;

    @Option(
            names = "--direct",
            description =
                    "Open the image with O_DIRECT (bypass the host page cache; for qcow2 its data and metadata, a backing chain stays buffered).")
    boolean direct;

    @Option(
            names = "--io-engine",
            defaultValue = "auto",
            paramLabel = "auto|sync|io_uring",
            converter = EngineConverter.class,
            description = {
                "How queues reach the image: io_uring keeps up to queue-size requests in flight per "
                        + "queue; sync serves one at a time; auto (default) uses io_uring when the kernel allows "
                        + "it."
            })
    BlkDevice.IoEngine ioEngine;

    static final class EngineConverter implements picocli.CommandLine.ITypeConverter<BlkDevice.IoEngine> {
        @Override
        public BlkDevice.IoEngine convert(String value) {
            return switch (value) {
                case "auto" -> BlkDevice.IoEngine.AUTO;
                case "sync" -> BlkDevice.IoEngine.SYNC;
                case "io_uring" -> BlkDevice.IoEngine.IO_URING;
                default ->
                    throw new picocli.CommandLine.TypeConversionException(
                            "'" + value + "' is not an I/O engine: use auto, sync or io_uring");
            };
        }
    }

    @Option(
            names = "--format",
            paramLabel = "raw|qcow2",
            converter = FormatConverter.class,
            description = {
                "The image's format. Without it the header decides: raw and qcow2 are served, an image "
                        + "that says it is another format (VMDK, VHDX, VDI, LUKS...) is refused, and a guest's write "
                        + "that would give a raw image another format's signature fails; 'raw' serves the "
                        + "file's bytes as they are, whatever the header says."
            })
    ImageFormat format;

    static final class FormatConverter implements picocli.CommandLine.ITypeConverter<ImageFormat> {
        @Override
        public ImageFormat convert(String value) {
            return switch (value) {
                case "raw" -> ImageFormat.RAW;
                case "qcow2" -> ImageFormat.QCOW2;
                default ->
                    throw new picocli.CommandLine.TypeConversionException(
                            "'" + value + "' is not a format "
                                    + "serve blk serves: use raw or qcow2 (convert other images with qemu-img convert -O qcow2)");
            };
        }
    }

    @Option(
            names = "--allow-partial-sector",
            description = {
                "Serve an image whose size is not a multiple of 512 bytes, with a warning: the guest sees"
                        + " the whole sectors, and the last partial one is neither read nor written."
            })
    boolean allowPartialSector;

    @picocli.CommandLine.Mixin
    LogOptions logOptions;

    @CommandLine.Mixin
    StatsOptions statsOptions;

    @Option(
            names = "--jfr-slow-ms",
            paramLabel = "MS",
            description = {
                "Emit the JFR event io.iovirt.blk.SlowRequest for every request taking MS milliseconds or"
                        + " longer (0: every request), for a JFR recording to catch, e.g. with "
                        + "JAVA_TOOL_OPTIONS=-XX:StartFlightRecording:filename=blk.jfr, or jcmd PID JFR.start "
                        + "(docs/cli.md)."
            })
    Long jfrSlowMs;

    @Option(
            names = "--poll-us",
            paramLabel = "POLL",
            defaultValue = "adaptive",
            description = {
                "How long a queue keeps polling its ring and its completions after it ran dry (default"
                        + " ${DEFAULT-VALUE}): adaptive polls as long as recent wake-ups say is worth it, up to 32 us"
                        + " (as QEMU's iothreads), and not at all while the disk is idle; adaptive:US sets the bound,"
                        + " US is a fixed time, 0 sleeps at once (a kick per request at low depth, least CPU)."
            })
    String pollUs;

    @Option(
            names = "--serial",
            paramLabel = "ID",
            description = "Disk serial (GET_ID), at most 20 characters; default derived from the image path.")
    String serial;

    @CommandLine.Mixin
    SocketAccessOptions socketAccess;

    /** --backing-dir / --backing-devices: where a qcow2 image's backing files may be. */
    @CommandLine.Mixin
    BackingOptions backingOptions;

    @Option(
            names = "--standby",
            description = "Warm standby: start up, open the image, then wait while another serve blk serves --socket, "
                    + "and take the socket over the moment that process exits (also when it is killed), so a "
                    + "reconnecting QEMU finds a running backend instead of waiting for a new one to start. Serves "
                    + "at once when nobody serves the socket: run two such processes per export.")
    boolean standby;

    @Override
    public Integer call() throws Exception {
        logOptions.apply();
        if (queues < 1 || queues > 64) {
            throw Contract.usage(spec, "--queues must be between 1 and 64, got " + queues);
        }
        if (jfrSlowMs != null && jfrSlowMs < 0) {
            throw Contract.usage(spec, "--jfr-slow-ms must not be negative, got " + jfrSlowMs);
        }
        PollOption poll;
        try {
            poll = PollOption.parse(pollUs);
        } catch (IllegalArgumentException e) {
            throw Contract.usage(spec, "--poll-us: " + e.getMessage());
        }
        String id = serial != null ? serial : defaultSerial(image);
        checkFormat(image, format);
        BackingPolicy backing = backingOptions.policy(spec);
        // A standby opens the image only to check it (read-only: the process serving it may be writing it) and
        // opens it for serving once it serves the socket (below).
        DiskImage img = Images.open(image, format, readOnly || standby, direct, backing);
        // The socket (and so the image, to a standby or the next backend) is let go of only after the image was
        // flushed and closed, on every way out (a server that cannot start, a failed final flush, an exception): a
        // standby that took over while this process still wrote back a qcow2 image's tables read them as they were
        // before, and both processes wrote the image.
        SocketOwner owner = null;
        try {
            checkSize(image, img.size(), allowPartialSector);
            Signals.Termination termination = Signals.watch();
            // Under systemd (Type=notify): READY=1 once the socket listens, or once a standby stands by behind the
            // process that serves it, so that units ordered after this one (libvirt) find the socket there.
            SdNotify notify = SdNotify.fromEnvironment();
            if (standby) { // crash recovery (issue 11): everything is ready but the socket
                warmUp();
                owner = SocketOwner.tryAcquire(socket); // null: another process serves it
            } else {
                owner = SocketOwner.acquire(socket);
            }
            if (owner == null) {
                LOG.info("standby for " + socket + ": waiting for the process that serves it to exit");
                notify(notify, "READY=1\nSTATUS=standing by for " + socket);
                // Stopped while standing by (systemctl stop of the pair stops both members): nothing to complete or
                // sync, exit 0 at once; the thread blocked on the lock cannot be interrupted, so the watcher exits.
                AtomicBoolean waiting = new AtomicBoolean(true);
                Thread.ofPlatform().daemon().name("standby-signals").start(() -> {
                    try {
                        String signal = termination.await();
                        if (waiting.compareAndSet(true, false)) {
                            LOG.info(signal + " while standing by for " + socket + ": exiting");
                            System.exit(0);
                        }
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                    }
                });
                owner = SocketOwner.await(socket);
                if (!waiting.compareAndSet(true, false)) {
                    owner.close(); // a termination signal won the race: the process is exiting
                    Thread.currentThread().join();
                }
                LOG.info("taking over " + socket);
            }
            // the server that held the socket before (killed, or crashed) may still be exiting: its listener goes last
            owner.awaitNoListener(socket, PREVIOUS_LISTENER_WAIT);
            if (standby) {
                // Opened for serving only now: the process that served the socket changed the image meanwhile, and
                // what a qcow2 image keeps from its open (the L1 and refcount tables, the end of the file the
                // allocator starts from) would be stale - serving from it lost that process's clusters and
                // allocated over them. Nor may a standby repair or write a dirty image another process serves.
                DiskImage checked = img;
                img = null;
                checked.close();
                img = Images.open(image, format, readOnly, direct, backing);
                checkSize(image, img.size(), allowPartialSector);
            }
            BlkDevice device = new BlkDevice(socket.toString(), img, queues, id, ioEngine);
            device.poll(poll.micros() * 1000L, poll.adaptive());
            if (jfrSlowMs != null) {
                device.slowRequestThreshold(java.time.Duration.ofMillis(jfrSlowMs));
            }
            Throwable failure = null;
            try {
                serve(device, img, termination, notify);
            } catch (Exception | Error e) {
                failure = e; // the server has stopped (or never started): the image is dealt with first
            }
            if (!device.quiescent()) {
                // A queue given up on (a request stuck in image I/O: a hung NFS or FUSE file, a dying disk) may
                // still use the image's descriptors: closed now, a number could be reused by whatever this
                // process opens on its way out and take that request's writes; the flush would wait for the same
                // file system. The image stays open (and its lock held) until the process has exited, also when
                // serving ended in an exception.
                img = null;
                LOG.severe("a request of the frontend is still in I/O on " + image + " (its file system or disk"
                        + " does not answer): exiting without the final flush; the image stays open and locked"
                        + " until the process has exited. Make that file system or disk answer again (a hung NFS"
                        + " server or FUSE daemon, a failing disk) before the image is used again");
                if (failure != null) {
                    LOG.severe("serving " + image + " ended in an error: " + failure);
                }
                logStats("stopped; image not synced. ", device, null);
                return 1;
            }
            // Quiescent: flushed (also after an error: what the guest wrote is made durable if it can be), closed and
            // unlocked here, and only then is the socket let go of (below).
            try {
                device.flush();
                logStats(failure == null ? "stopped; image synced. " : "image synced. ", device, null);
            } catch (IOException | RuntimeException e) {
                if (failure == null) {
                    failure = e;
                } else {
                    failure.addSuppressed(e);
                }
            } finally {
                DiskImage served = img;
                img = null;
                try {
                    served.close();
                } finally {
                    device.close(); // lets go of the image lock a queue kept (its hand-over failed)
                }
            }
            if (failure instanceof Error e) {
                throw e;
            } else if (failure != null) {
                throw (Exception) failure;
            }
        } finally {
            try {
                if (img != null) {
                    img.close();
                }
            } finally {
                if (owner != null) {
                    owner.close(); // last: the image is closed (or, stuck, stays open and locked until the exit)
                }
            }
        }
        return 0;
    }

    /** Serves the socket until a termination signal; in-flight requests are completed when it returns. */
    private void serve(BlkDevice device, DiskImage img, Signals.Termination termination, SdNotify notify)
            throws Exception {
        try (VhostUserServer server = VhostUserServer.start(socket, device, socketAccess.access())) {
            LOG.info(String.format(
                    "serving %s (%s, %s%s%s, %d queue%s, %s) on %s",
                    image,
                    img.format(),
                    ByteSizes.human(img.size()),
                    readOnly ? ", read-only" : "",
                    direct ? ", O_DIRECT" : "",
                    queues,
                    queues == 1 ? "" : "s",
                    device.ioDescription(),
                    socket));
            notify(notify, "READY=1\nSTATUS=serving " + image + " on " + socket);
            Thread stats = statsOptions.start(() -> logStats("counters: ", device, server));
            String signal = termination.await(); // also one that arrived while it started or stood by
            LOG.info(signal + ": stopping (in-flight requests complete first)");
            notify(notify, "STOPPING=1\nSTATUS=stopping (" + signal + ")");
            StatsOptions.stop(stats);
        } // closing the server stops every queue: requests in flight are completed
    }

    /** sd_notify(3); a service manager that cannot be told is logged, the export serves anyway. */
    private static void notify(SdNotify notify, String state) {
        try {
            notify.send(state);
        } catch (io.iovirt.linux.LinuxException e) {
            LOG.warning("cannot notify the service manager: " + e.getMessage());
        }
    }

    /**
     * A standby's warm-up: the code a takeover runs (the vhost-user handshake, queue start, the request path of this
     * I/O engine) loaded and compiled before it is needed, by a few hundred requests of each ring layout through a
     * scratch export of the same device in this process. Measured reason: a cold standby took 1.3-4.9 s from the
     * kill to QEMU's reconnected session on a loaded host, most of it after QEMU's 1 s reconnect interval
     * (docs/migration.md). Failing to warm up only costs speed.
     */
    private void warmUp() {
        long t0 = System.nanoTime();
        Path scratch = null;
        try {
            scratch = java.nio.file.Files.createTempDirectory("iovirt-standby-");
            Path img = scratch.resolve("warm-up.raw");
            try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
                f.setLength(16 << 20);
            }
            Path sock = scratch.resolve("warm-up.sock");
            long ios = 0;
            try (DiskImage wimg = Images.open(img, ImageFormat.RAW, false, false);
                    VhostUserServer ws =
                            VhostUserServer.start(sock, new BlkDevice("warm-up", wimg, 1, "warm-up", ioEngine))) {
                for (boolean packed : new boolean[] {false, true}) {
                    for (BlkBenchOptions.Pattern pattern : new BlkBenchOptions.Pattern[] {
                        BlkBenchOptions.Pattern.RANDWRITE, BlkBenchOptions.Pattern.RANDREAD
                    }) {
                        ios += BlkBench.run(new BlkBenchOptions(
                                        sock, pattern, 4096, 8, 0.3, 0.2, 1, 128, packed, true, true, false, 1))
                                .ios();
                    }
                }
            }
            LOG.info(String.format(
                    "standby warmed up: %d requests through a scratch export in %d ms",
                    ios, (System.nanoTime() - t0) / 1_000_000));
        } catch (IOException | RuntimeException e) {
            LOG.warning("standby warm-up failed (the takeover will run cold): " + e.getMessage());
        } finally {
            if (scratch != null) {
                try (var files = java.nio.file.Files.list(scratch)) {
                    for (Path f : files.toList()) {
                        java.nio.file.Files.deleteIfExists(f);
                    }
                    java.nio.file.Files.deleteIfExists(scratch);
                } catch (IOException ignored) {
                    // a temporary directory left behind
                }
            }
        }
    }

    /**
     * One statistics line: the device's counters and who is connected (a frontend waiting behind the connected one
     * included); with --log-format json also as a "stats" object: {"device": counters as ctl reports them,
     * "frontend": {"connected", "pid", "waiting", "waited"}}.
     */
    private static void logStats(String title, BlkDevice device, VhostUserServer server) {
        io.iovirt.devices.blk.BlkStats.Snapshot s = device.stats();
        java.util.Map<String, Object> doc = new java.util.LinkedHashMap<>();
        doc.put("device", io.iovirt.daemon.Daemon.blkCounters(s));
        java.util.List<Object> queues = new java.util.ArrayList<>();
        StringBuilder workers = new StringBuilder();
        for (int i = 0; i < device.queueCount(); i++) {
            io.iovirt.virtio.QueueWorker.Totals t = device.workerStats(i);
            java.util.Map<String, Object> q = new java.util.LinkedHashMap<>();
            q.put("queue", i);
            q.put("worker", io.iovirt.daemon.Daemon.workerCounters(t));
            queues.add(q);
            workers.append("; q").append(i).append(' ').append(t);
        }
        doc.put("queues", queues);
        if (server != null) {
            java.util.Map<String, Object> fe = new java.util.LinkedHashMap<>();
            int pid = server.frontendPid();
            fe.put("connected", pid >= 0 || server.connected());
            fe.put("pid", pid >= 0 ? pid : null);
            fe.put("waiting", server.frontendWaiting());
            fe.put("waited", server.frontendsWaited());
            doc.put("frontend", fe);
        }
        LogOptions.log(
                LOG,
                java.util.logging.Level.INFO,
                title + s + workers + (server == null ? "" : "; " + server.frontendSummary()),
                new LogOptions.Field("stats", doc));
    }

    /**
     * Refuses an image whose header names a format iovirt does not serve (VMDK, VHDX, VDI, LUKS...), unless
     * {@code format} says how to read it: serving its bytes as raw would let a guest destroy its metadata.
     */
    static void checkFormat(Path image, ImageFormat format) throws IOException {
        if (format == null && java.nio.file.Files.isReadable(image)) { // else open() says what is wrong with the path
            ImageFormat detected = ImageFormat.detect(image);
            if (detected != ImageFormat.RAW && detected != ImageFormat.QCOW2) {
                throw new ActionableException(
                        "cannot serve " + image + ": its header says it is "
                                + detected.description()
                                + ", and serve blk serves raw and qcow2 images (a guest writing to it "
                                + "would destroy the " + detected.qemuName() + " metadata)",
                        "convert it (qemu-img convert -f "
                                + detected.qemuName() + " -O qcow2 " + image
                                + " disk.qcow2), or pass --format raw if the "
                                + "guest is meant to see these bytes");
            }
        }
    }

    /** Refuses an image that is not a whole number of 512-byte sectors, or only warns when that is allowed. */
    static void checkSize(Path image, long size, boolean allowPartialSector) {
        if (size % 512 != 0) {
            String what = image + " is " + size + " bytes, not a multiple of 512: the guest would see "
                    + (size / 512) * 512 + " bytes and the last " + size % 512 + " would be neither read nor written";
            if (!allowPartialSector) {
                throw new ActionableException(
                        "cannot serve " + what,
                        "resize it to whole sectors (truncate -s " + ((size + 511) / 512) * 512 + " " + image
                                + "), or pass --allow-partial-sector");
            }
            LOG.warning(what);
        }
    }

    /** "iovirt-" and 13 hex digits of a hash of the absolute path: stable for one image, distinct between images. */
    static String defaultSerial(Path image) {
        long h = image.toAbsolutePath().normalize().toString().hashCode() * 0x9E3779B97F4A7C15L;
        return "iovirt-" + HexFormat.of().toHexDigits(h).substring(0, 13);
    }
}
