// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import java.io.IOException;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Removal of the demo's temporary directory: by the command's thread when it ends, or by a shutdown hook when a
 * signal (Ctrl-C, SIGTERM) ends the JVM — never both at once.
 *
 * <p>The command's thread keeps running while the JVM shuts down. A signal right after "booting the guest" finds it
 * creating the guest's directory (re-creating the demo directory's path with it) and, once QEMU is killed, closing the
 * servers, which unlink their sockets. A hook that removed the directory at once raced with both: the walk gave up on
 * a socket unlinked under it, or the path was created again after it, and the directory was left behind (seen in CI).
 * So the hook interrupts the command's thread, waits (bounded) until that thread has removed the directory on its way
 * out, and only then removes whatever is left.
 */
final class DemoCleanup {
    /** How long the hook waits for the command's thread to stop writing before it removes the directory anyway. */
    private static final long COMMAND_GRACE_SECONDS = 20;

    private final Path dir;
    private final Thread command;
    private final Thread hook;
    private final CountDownLatch ended = new CountDownLatch(1);
    private volatile boolean registered;

    DemoCleanup(Path dir, Thread command) {
        this.dir = dir;
        this.command = command;
        this.hook = new Thread(this::onShutdown, "iovirt-demo-cleanup");
    }

    /** A cleanup of {@code dir}, written in {@code command}, whose hook runs at the JVM's shutdown. */
    static DemoCleanup register(Path dir, Thread command) {
        DemoCleanup c = new DemoCleanup(dir, command);
        Runtime.getRuntime().addShutdownHook(c.hook);
        c.registered = true;
        return c;
    }

    /** What the JVM runs at shutdown (tests run it directly). */
    Thread hook() {
        return hook;
    }

    /** The command's thread is done with the directory: removes it and, outside a shutdown, the hook. */
    void commandEnded() {
        synchronized (this) {
            deleteTree(dir);
        }
        ended.countDown();
        if (registered) {
            try {
                Runtime.getRuntime().removeShutdownHook(hook);
            } catch (IllegalStateException e) {
                // the JVM is already shutting down: the hook runs (and finds nothing left)
            }
        }
    }

    private void onShutdown() {
        command.interrupt();
        try {
            if (!ended.await(COMMAND_GRACE_SECONDS, TimeUnit.SECONDS)) {
                System.err.println("demo: the demo did not stop within " + COMMAND_GRACE_SECONDS
                        + " s of the signal; removing " + dir + " under it");
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        synchronized (this) {
            deleteTree(dir);
        }
    }

    /**
     * Removes {@code dir} and everything in it, as far as it can: an entry that is gone already or cannot be read is
     * passed over, not the end of the walk.
     */
    static void deleteTree(Path dir) {
        try {
            Files.walkFileTree(dir, new SimpleFileVisitor<>() {
                @Override
                public FileVisitResult visitFile(Path file, BasicFileAttributes attrs) {
                    file.toFile().delete();
                    return FileVisitResult.CONTINUE;
                }

                @Override
                public FileVisitResult visitFileFailed(Path file, IOException e) {
                    file.toFile().delete();
                    return FileVisitResult.CONTINUE;
                }

                @Override
                public FileVisitResult postVisitDirectory(Path d, IOException e) {
                    d.toFile().delete();
                    return FileVisitResult.CONTINUE;
                }
            });
        } catch (IOException e) {
            // the walk could not start: the directory is gone already
        }
    }
}
