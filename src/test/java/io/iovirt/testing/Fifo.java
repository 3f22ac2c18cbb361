// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.time.Duration;

/**
 * A FIFO (named pipe) where an image is expected, for tests that nothing waits on one: opening a FIFO for reading
 * waits for a writer. So that code which does wait fails such a test instead of hanging the build, a writer comes
 * along once {@link #RESCUE_AFTER} has passed and the FIFO is not yet {@link #close closed} (it opens the FIFO, writes
 * a sector of zeros and closes it, every second): the waiting open then returns and the test fails on what it got.
 * Nothing is asserted about time; the writer only ends the wait.
 */
public final class Fifo implements AutoCloseable {
    /** How long a test may take before the writer ends any wait on the FIFO. */
    public static final Duration RESCUE_AFTER = Duration.ofSeconds(30);

    private final Path path;
    private final Thread writer;
    private volatile boolean closed;

    private Fifo(Path path) {
        this.path = path;
        this.writer = Thread.ofPlatform().daemon().name("fifo writer " + path).unstarted(this::rescue);
    }

    /** Makes the FIFO {@code path} (mkfifo). */
    public static Fifo make(Path path) throws Exception {
        assertEquals(0, new ProcessBuilder("mkfifo", path.toString()).start().waitFor(), "mkfifo " + path);
        Fifo f = new Fifo(path);
        f.writer.start();
        return f;
    }

    public Path path() {
        return path;
    }

    private void rescue() {
        long at = System.nanoTime() + RESCUE_AFTER.toNanos();
        try {
            while (!closed && System.nanoTime() < at) {
                Thread.sleep(100);
            }
            while (!closed) {
                // read-write: never waits for a reader (a daemon thread: a full pipe nobody reads only stops it)
                try (RandomAccessFile w = new RandomAccessFile(path.toFile(), "rw")) {
                    w.write(new byte[512]);
                } catch (IOException e) {
                    return; // removed with the test's directory
                }
                Thread.sleep(1000);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** The test is over: no writer comes. */
    @Override
    public void close() {
        closed = true;
        writer.interrupt();
    }

    @Override
    public String toString() {
        return path.toString();
    }
}
