// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import java.io.IOException;
import java.nio.file.Path;

/**
 * Which process serves a socket path: an exclusive OFD lock on {@code SOCKET.lock}, held for the life of the server.
 * The kernel drops it the moment the holder dies, however it dies, which is what a warm standby waits for
 * ({@code serve blk --standby}, issue 11): a second, fully started process blocked in {@link #await} takes the
 * socket over as soon as the first one is gone (SIGKILL included), with no JVM start in QEMU's reconnect path.
 *
 * <p>The lock file is left in place when the server exits (removing it would race with a process about to lock it).
 */
public final class SocketOwner implements AutoCloseable {
    private final Path lockFile;
    private final Fd fd;

    private SocketOwner(Path lockFile, Fd fd) {
        this.lockFile = lockFile;
        this.fd = fd;
    }

    /** The lock file that guards {@code socket}. */
    public static Path lockFile(Path socket) {
        return Path.of(socket + ".lock");
    }

    /**
     * Takes the socket without waiting.
     *
     * @throws IOException another process serves it (the message says so and how to stand by instead), or the lock
     *                     file cannot be opened or locked
     */
    public static SocketOwner acquire(Path socket) throws IOException {
        SocketOwner owner = tryAcquire(socket);
        if (owner == null) {
            throw new IOException("socket " + socket + " is served by another process (it holds " + lockFile(socket)
                    + "); stop it first, or start this one with --standby to take over when it exits");
        }
        return owner;
    }

    /**
     * Takes the socket without waiting; null when another process serves it.
     *
     * @throws IOException the lock file cannot be opened or locked
     */
    public static SocketOwner tryAcquire(Path socket) throws IOException {
        Path lock = lockFile(socket);
        Fd fd = open(lock);
        try {
            if (!FileIo.ofdLock(fd, FileIo.F_WRLCK)) {
                fd.close();
                return null;
            }
            return new SocketOwner(lock, fd);
        } catch (LinuxException e) {
            fd.close();
            throw new IOException("cannot lock " + lock + ": " + e.getMessage(), e);
        } catch (IOException | RuntimeException e) {
            fd.close();
            throw e;
        }
    }

    /** Takes the socket, waiting (blocking this platform thread) for as long as another process serves it. */
    public static SocketOwner await(Path socket) throws IOException {
        Path lock = lockFile(socket);
        Fd fd = open(lock);
        try {
            FileIo.ofdLockWait(fd, FileIo.F_WRLCK);
            return new SocketOwner(lock, fd);
        } catch (LinuxException | RuntimeException e) {
            fd.close();
            throw new IOException("cannot lock " + lock + ": " + e.getMessage(), e);
        }
    }

    private static Fd open(Path lock) throws IOException {
        try {
            return FileIo.open(lock, FileIo.O_RDWR | FileIo.O_CREAT | FileIo.O_CLOEXEC, 0600);
        } catch (LinuxException e) {
            // the first file made next to the socket: a missing or unwritable directory shows here first
            String remedy = switch (e.errnoName()) {
                case "ENOENT" ->
                    "its directory " + lock.toAbsolutePath().getParent() + " does not exist: create it"
                            + " (mkdir -p), or give a socket path in an existing directory";
                case "EACCES", "EPERM", "EROFS" ->
                    "this user cannot create files in " + lock.toAbsolutePath().getParent()
                            + ": give a socket path in a directory it can write";
                default -> "check the socket's path";
            };
            throw new IOException(
                    "cannot open the socket's lock file " + lock + ": " + e.getMessage() + "; " + remedy, e);
        }
    }

    public Path lockFile() {
        return lockFile;
    }

    /**
     * Waits, up to {@code limit}, until nothing listens on {@code socket} any more, and returns whether that came.
     * Holding the lock, a listener there can only be the process that held it before, still exiting: the kernel
     * releases a dying process's files one by one, and its lock file's may go before its listening socket's (seen:
     * a standby that took over from a SIGKILLed server found the socket still listened on, refused to listen, and
     * exited, leaving the guest without a backend). A listener still there after the limit is another server's.
     */
    public boolean awaitNoListener(Path socket, java.time.Duration limit) throws InterruptedException {
        long deadline = System.nanoTime() + limit.toNanos();
        while (true) {
            boolean listened;
            try {
                listened = io.iovirt.linux.UnixSocket.listenedOn(socket);
            } catch (LinuxException e) {
                return true; // the listen says what is wrong with the path
            }
            if (!listened) {
                return true;
            }
            if (System.nanoTime() - deadline >= 0) {
                return false;
            }
            Thread.sleep(10);
        }
    }

    @Override
    public void close() {
        fd.close();
    }
}
