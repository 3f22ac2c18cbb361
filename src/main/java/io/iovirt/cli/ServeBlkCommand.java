package io.iovirt.cli;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.Images;
import io.iovirt.vhostuser.VhostUserServer;
import java.nio.file.Path;
import java.util.HexFormat;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code iovirt serve blk}: a vhost-user-blk backend on a UNIX socket. QEMU connects as the client; after it
 * disconnects (guest reboot, VM stop) the next connection is accepted. SIGINT/SIGTERM finish in-flight requests,
 * fsync the image and exit 0.
 */
@Command(name = "blk", mixinStandardHelpOptions = true,
        description = {"Serve a disk image (raw or qcow2) to QEMU guests as vhost-user-blk.",
                "QEMU: -chardev socket,id=c0,path=SOCKET -device vhost-user-blk-pci,chardev=c0 (guest RAM must be shared: "
                        + "-object memory-backend-memfd,id=mem,size=...,share=on -numa node,memdev=mem)."})
final class ServeBlkCommand implements Callable<Integer> {
    @Option(names = "--image", required = true, paramLabel = "FILE",
            description = "Disk image: raw file or block device, or qcow2 (format detected from the header).")
    Path image;

    @Option(names = "--format", paramLabel = "raw|qcow2", description = "Image format, overriding detection from the header.")
    String format;

    @Option(names = "--socket", required = true, paramLabel = "PATH", description = "UNIX socket to listen on.")
    Path socket;

    @Option(names = "--readonly", description = "Refuse writes (the guest sees a read-only disk).")
    boolean readOnly;

    @Option(names = "--queues", defaultValue = "1", paramLabel = "N", description = "Request queues offered (default ${DEFAULT-VALUE}).")
    int queues;

    @Option(names = "--direct", description = "Open the image with O_DIRECT (bypass the host page cache).")
    boolean direct;

    @Option(names = "--io-engine", defaultValue = "auto", paramLabel = "auto|sync|io_uring", converter = EngineConverter.class,
            description = {"How queues reach the image: io_uring keeps up to queue-size requests in flight per queue;",
                    "sync serves one at a time; auto (default) uses io_uring when the kernel allows it."})
    BlkDevice.IoEngine ioEngine;

    static final class EngineConverter implements picocli.CommandLine.ITypeConverter<BlkDevice.IoEngine> {
        @Override
        public BlkDevice.IoEngine convert(String value) {
            return switch (value) {
                case "auto" -> BlkDevice.IoEngine.AUTO;
                case "sync" -> BlkDevice.IoEngine.SYNC;
                case "io_uring" -> BlkDevice.IoEngine.IO_URING;
                default -> throw new picocli.CommandLine.TypeConversionException(
                        "'" + value + "' is not an I/O engine: use auto, sync or io_uring");
            };
        }
    }

    @Option(names = "--serial", paramLabel = "ID", description = "Disk serial (GET_ID), at most 20 characters; default derived from the image path.")
    String serial;


    @Override
    public Integer call() throws Exception {
        if (queues < 1 || queues > 64) {
            throw new IllegalArgumentException("--queues must be between 1 and 64, got " + queues);
        }
        String id = serial != null ? serial : defaultSerial(image);
        ImageFormat fmt = format == null ? null : ImageFormat.parse(format);
        try (DiskImage img = Images.open(image, fmt, readOnly, direct)) {
            BlkDevice device = new BlkDevice(socket.toString(), img, queues, id, ioEngine);
            try (VhostUserServer server = VhostUserServer.start(socket, device)) {
                System.err.printf("iovirt: serving %s (%s, %d MiB%s%s, %d queue%s, %s) on %s%n", image, img.format(), img.size() >> 20,
                        readOnly ? ", read-only" : "", direct ? ", O_DIRECT" : "", queues, queues == 1 ? "" : "s",
                        device.ioDescription(), socket);
                String signal = Signals.awaitTermination();
                System.err.println("iovirt: " + signal + ": stopping (in-flight requests complete first)");
            } // closing the server stops every queue: requests in flight are completed
            device.flush();
            System.err.println("iovirt: stopped; image synced. " + device.stats());
        }
        return 0;
    }

    /** "iovirt-" and 13 hex digits of a hash of the absolute path: stable for one image, distinct between images. */
    static String defaultSerial(Path image) {
        long h = image.toAbsolutePath().normalize().toString().hashCode() * 0x9E3779B97F4A7C15L;
        return "iovirt-" + HexFormat.of().toHexDigits(h).substring(0, 13);
    }
}
