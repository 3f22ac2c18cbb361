// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Objects;

/**
 * qemu-storage-daemon exporting a raw image file as a vhost-user-blk device on a UNIX socket: QEMU's own
 * vhost-user-blk backend, the reference peer iovirt is tested and benchmarked against.
 */
public final class QemuStorageDaemon implements AutoCloseable {

    public static final String PROGRAM = "qemu-storage-daemon";

    private final ChildProcess process;
    private final Path socket;

    private QemuStorageDaemon(ChildProcess process, Path socket) {
        this.process = process;
        this.socket = socket;
    }

    public static Builder builder(Path image, Path socket) {
        return new Builder(image, socket);
    }

    public Path socket() {
        return socket;
    }

    public ChildProcess process() {
        return process;
    }

    public long pid() {
        return process.pid();
    }

    @Override
    public void close() {
        process.close();
    }

    /** Options of the export. */
    public static final class Builder {
        private final Path image;
        private final Path socket;
        private int numQueues = 1;
        private boolean writable = true;
        private boolean cacheDirect = true;
        private boolean locking = true;
        private Path log;
        private Duration startTimeout = Duration.ofSeconds(20);

        private Builder(Path image, Path socket) {
            this.image = Objects.requireNonNull(image);
            this.socket = Objects.requireNonNull(socket);
        }

        public Builder numQueues(int numQueues) {
            if (numQueues < 1) {
                throw new IllegalArgumentException("num-queues must be at least 1, got " + numQueues);
            }
            this.numQueues = numQueues;
            return this;
        }

        public Builder writable(boolean writable) {
            this.writable = writable;
            return this;
        }

        /** O_DIRECT on the image (with Linux native AIO) instead of the host page cache. */
        public Builder cacheDirect(boolean cacheDirect) {
            this.cacheDirect = cacheDirect;
            return this;
        }

        /**
         * QEMU's image locking on the file node (default on). Off lets two daemons serve one image, as a live
         * migration between two daemons on one host needs.
         */
        public Builder locking(boolean locking) {
            this.locking = locking;
            return this;
        }

        /** Where the daemon's output goes; defaults to {@code <socket>.qsd.log}. */
        public Builder log(Path log) {
            this.log = log;
            return this;
        }

        public Builder startTimeout(Duration startTimeout) {
            this.startTimeout = startTimeout;
            return this;
        }

        /** The command line; QEMU's option syntax needs commas in paths doubled. */
        public List<String> command() {
            String file = "driver=file,node-name=file0,filename="
                    + QemuGuest.escape(image.toAbsolutePath().toString())
                    + (cacheDirect ? ",cache.direct=on,aio=native" : ",cache.direct=off")
                    + (writable ? "" : ",read-only=on") + (locking ? "" : ",locking=off");
            String raw = "driver=raw,node-name=disk0,file=file0" + (writable ? "" : ",read-only=on");
            String export = "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path="
                    + QemuGuest.escape(socket.toAbsolutePath().toString())
                    + ",writable=" + (writable ? "on" : "off") + ",num-queues=" + numQueues;
            return List.of(PROGRAM, "--blockdev", file, "--blockdev", raw, "--export", export);
        }

        /** Starts the daemon and returns once it listens on the socket; kills it if that fails. */
        public QemuStorageDaemon start() {
            if (!Files.isRegularFile(image)) {
                throw new IllegalArgumentException("image " + image + " is not a regular file");
            }
            Path logFile = log != null ? log : socket.resolveSibling(socket.getFileName() + ".qsd.log");
            return new QemuStorageDaemon(
                    ChildProcess.builder(command())
                            .name(PROGRAM)
                            .log(logFile)
                            .directory(logFile.toAbsolutePath().getParent())
                            .startListening(socket, startTimeout),
                    socket);
        }
    }
}
