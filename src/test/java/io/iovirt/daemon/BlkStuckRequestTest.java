// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.devices.blk.BlkTestDriver;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.SocketAccess;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.ImageLock;
import io.iovirt.testing.Await;
import io.iovirt.testing.StoppableFuse;
import io.iovirt.vhostuser.LogCapture;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A vhost-user-blk export whose image is on a file system that stops answering while a request of its frontend is in
 * image I/O — a real one: fuse2fs serving an ext4 image, stopped with SIGSTOP, and a real vhost-user frontend
 * ({@link BlkTestDriver}) whose queue thread reads the image. Removing the export returns once the device has given
 * the queue up ({@code QueueWorker.STOP_WAIT_LIMIT}, 30 s), but the image is neither closed nor unlocked under the
 * request: a descriptor closed then could be reused by another open (another tenant's image or socket) and take that
 * request's I/O. Once the file system answers again and the request has ended, the image is closed and its lock let
 * go (the device's lock descriptor too).
 *
 * <p>The lock is watched with F_OFD_GETLK through a descriptor opened before the stop, as in {@link
 * NbdStuckRequestTest}.
 */
@Tag("peer")
@Timeout(value = 240, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class BlkStuckRequestTest {
    static final Duration TIMEOUT = Duration.ofSeconds(20);
    /** The device's stop wait (30 s) and then some: how long removing the export may take. */
    static final Duration REMOVED = Duration.ofSeconds(90);
    /** Long enough for the request to end and the image to be flushed and closed. */
    static final Duration RELEASED = Duration.ofSeconds(120);

    @TempDir
    Path dir;

    StoppableFuse fs;
    Path image;
    BlkExport export;
    Fd probe;
    LogCapture log;

    @BeforeEach
    void start() throws Exception {
        fs = StoppableFuse.mount(dir);
        image = fs.file("disk.raw", 4 << 20);
        log = LogCapture.start("io.iovirt");
    }

    @AfterEach
    void stop() throws Exception {
        if (fs != null) {
            fs.resume();
        }
        if (export != null) {
            export.close(); // a no-op when the test closed it
        }
        if (fs != null) {
            // the export lets go of the image once its request ended: then the file system can be unmounted
            Await.until(
                    RELEASED, "the export to close " + image, () -> exportFds().isEmpty());
        }
        if (probe != null) {
            probe.close();
        }
        if (fs != null) {
            fs.close();
        }
        if (log != null) {
            log.close();
        }
    }

    @Test
    void aQueueThreadStuckInImageIoKeepsTheImageOpenAndLockedUntilItEnds() throws Exception {
        // read-only: its flush is a no-op, so a close under the request would show at once (the number goes from
        // /proc/self/fd even while close(2) waits for the stopped daemon's FUSE_FLUSH)
        Path socket = startReadOnlyExport("stuck");
        try (EventFd call = EventFd.create(true);
                BlkTestDriver d = new BlkTestDriver(socket, 1 << 20, call)) {
            assertEquals(
                    0 /* S_OK */,
                    d.awaitStatus(d.read(d.alloc(65536, 4096), 65536)),
                    "served while the daemon answers");
            List<Integer> fds = exportFds();
            assertEquals(2, fds.size(), "the export's image and (its frontend runs) lock descriptors: " + fds);
            probe = FileIo.open(image, FileIo.O_RDONLY);
            assertEquals(FileIo.F_RDLCK, FileIo.ofdConflict(probe, FileIo.F_WRLCK), "the device holds a read lock");

            fs.stop();
            d.read(d.alloc(65536, 4096), 65536);
            Await.until(
                    TIMEOUT,
                    "the queue thread to wait for the stopped daemon on " + fds,
                    () -> !StoppableFuse.blockedOn(fds).isEmpty());

            // blk.remove: returns once the device gave the queue up, without waiting for the request
            CompletableFuture<Void> removed = CompletableFuture.runAsync(export::close);
            // until it returns, or a descriptor of the image goes under the stuck request (then close(2) itself may
            // wait for the stopped daemon's FUSE_FLUSH)
            Await.until(
                    REMOVED,
                    "closing the export to return",
                    () -> removed.isDone() || !exportFds().equals(fds));
            stillHeld(fds);
            removed.get(); // returned, without an exception
            assertTrue(
                    log.all().stream()
                            .anyMatch(l -> l.contains("blk stuck")
                                    && l.contains("the image stays open and locked")
                                    && l.contains(image.toString())),
                    "an error line says the image stays open: " + log.all());
            long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(2); // a close under it would follow at once
            while (System.nanoTime() < until) {
                stillHeld(fds);
                Thread.sleep(50);
            }

            fs.resume();
            Await.until(
                    RELEASED,
                    () -> "the image to be closed and unlocked once the request ended (open: " + exportFds() + ")",
                    () -> exportFds().isEmpty());
            assertEquals(FileIo.F_UNLCK, FileIo.ofdConflict(probe, FileIo.F_WRLCK), "the image lock is let go");
            Await.until(
                    TIMEOUT,
                    "a line saying the image is closed now",
                    () -> log.all().stream().anyMatch(l -> l.contains("is flushed, closed and unlocked now")));
        }
        // and a writer (another VM) can take the image: nobody holds it any more
        try (ImageLock writer = ImageLock.open(image, false)) {
            assertNull(writer.acquire(), "the image is free for a writer");
        }
    }

    /**
     * A frontend that starts its queue while the image's file system does not answer is answered and its queue
     * started, the image lock taken: the device locks through a dup of the descriptor it opened the image with. It
     * opened the image's path again for the lock, on the vhost-user session's thread, which then waited for the
     * file system: the frontend's SET_VRING_KICK went unanswered, and removing the export waited for that thread.
     */
    @Test
    void aFrontendStartingWhileTheFileSystemHangsIsAnswered() throws Exception {
        Path socket = startReadOnlyExport("hung");
        probe = FileIo.open(image, FileIo.O_RDONLY); // before the stop: opening it now would wait too
        assertEquals(FileIo.F_UNLCK, FileIo.ofdConflict(probe, FileIo.F_WRLCK), "no frontend yet: no lock");
        fs.stop();
        try (EventFd call = EventFd.create(true)) {
            CompletableFuture<BlkTestDriver> started = CompletableFuture.supplyAsync(() -> {
                try {
                    return new BlkTestDriver(socket, 1 << 20, call);
                } catch (java.io.IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            });
            try (BlkTestDriver d = started.get(60, TimeUnit.SECONDS)) {
                assertEquals(
                        FileIo.F_RDLCK,
                        FileIo.ofdConflict(probe, FileIo.F_WRLCK),
                        "the device took its read lock while the file system does not answer");
            } finally {
                fs.resume();
            }
        }
    }

    /**
     * Starts {@link #export}: a read-only raw export of the image with one queue and synchronous I/O, {@code name} its
     * id and serial; returns its socket.
     */
    private Path startReadOnlyExport(String name) throws java.io.IOException {
        Path socket = dir.resolve("blk.sock");
        export = BlkExport.start(
                new BlkExport.Spec(name, image, socket, 1, true, false, name, BlkDevice.IoEngine.SYNC, ImageFormat.RAW),
                false,
                SocketAccess.ownerOnly(),
                false);
        return socket;
    }

    /** The export's image descriptors are all still open, and its lock still keeps writers away. */
    private void stillHeld(List<Integer> fds) throws Exception {
        assertEquals(fds, exportFds(), "the export's descriptors of " + image + " are still open");
        assertEquals(FileIo.F_RDLCK, FileIo.ofdConflict(probe, FileIo.F_WRLCK), "the image lock is still held");
        assertTrue(fs.alive());
    }

    /** This process's descriptors of the image, other than the test's probe. */
    private List<Integer> exportFds() {
        return StoppableFuse.descriptorsOf(image, probe == null ? -1 : probe.get());
    }
}
