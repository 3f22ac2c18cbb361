// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;

/** Waiting for a child process to listen on a UNIX socket, without connecting to it. */
public final class UnixSockets {

    /** sun_path holds 108 bytes including the terminating NUL. */
    public static final int MAX_PATH_BYTES = 107;

    private static final long SO_ACCEPTCON = 0x10000;

    private UnixSockets() {}

    /** Throws if {@code path} cannot be bound as a UNIX socket (too long), with what to do about it. */
    public static void checkPath(Path path) {
        int len = path.toAbsolutePath().toString().getBytes(java.nio.charset.StandardCharsets.UTF_8).length;
        if (len > MAX_PATH_BYTES) {
            throw new IllegalArgumentException("UNIX socket path is " + len + " bytes, the kernel allows "
                    + MAX_PATH_BYTES + ": " + path + " — use a shorter directory (e.g. under /tmp)");
        }
    }

    /**
     * Waits until some process of this network namespace listens on {@code path}. Reads /proc/net/unix instead of
     * probing with a connection, because a probe connection would be a real client to a vhost-user backend.
     * Fails early, with the owner's log, if {@code owner} exits first.
     */
    public static void awaitListening(Path path, ChildProcess owner, Duration timeout) {
        String want = path.toAbsolutePath().toString();
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            if (isListening(want)) {
                return;
            }
            if (owner != null && !owner.isAlive()) {
                throw new IllegalStateException(owner.name() + " exited with status " + owner.exitValue()
                        + " before listening on " + path + ":\n" + owner.logTail(20)
                        + (owner.crashReport().isEmpty() ? "" : "\n" + owner.crashReport()));
            }
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException((owner == null ? "nobody" : owner.name()) + " is not listening on "
                        + path + " after " + timeout.toMillis() + " ms"
                        + (owner == null ? "" : ":\n" + owner.logTail(20)));
            }
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while waiting for " + path, e);
            }
        }
    }

    /** Columns: Num RefCount Protocol Flags Type St Inode [Path]; a listener has __SO_ACCEPTCON in Flags. */
    static boolean isListening(String absolutePath) {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/net/unix"))) {
                String[] f = line.trim().split("\\s+", 8);
                if (f.length == 8
                        && f[7].equals(absolutePath)
                        && !f[0].equals("Num:")
                        && (Long.parseLong(f[3], 16) & SO_ACCEPTCON) != 0) {
                    return true;
                }
            }
            return false;
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read /proc/net/unix", e);
        }
    }
}
