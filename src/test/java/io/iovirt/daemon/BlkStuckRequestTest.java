// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.devices.blk.BlkTestDriver;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.SocketAccess;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.ImageLock;
import io.iovirt.testing.Await;
import io.iovirt.testing.StoppableFuse;
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

    @TempDir
    Path dir;

    StoppedFsImage fx;
    BlkExport export;

    @BeforeEach
    void start() throws Exception {
        fx = StoppedFsImage.mount(dir, "disk.raw", 4 << 20);
    }

    @AfterEach
    void stop() throws Exception {
        if (fx != null) {
            fx.close(); // closes the export first: a no-op when the test closed it
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
            List<Integer> fds = fx.imageFds();
            assertEquals(2, fds.size(), "the export's image and (its frontend runs) lock descriptors: " + fds);
            fx.openProbe();
            assertEquals(FileIo.F_RDLCK, fx.conflict(FileIo.F_WRLCK), "the device holds a read lock");

            fx.fs.stop();
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
                    () -> removed.isDone() || !fx.imageFds().equals(fds));
            fx.stillHeld(fds);
            removed.get(); // returned, without an exception
            fx.assertLine(
                    "an error line says the image stays open",
                    "blk stuck",
                    "the image stays open and locked",
                    fx.image.toString());
            fx.staysHeld(fds);

            fx.resumeAndAwaitRelease("the request");
            fx.log.awaitLine("is flushed, closed and unlocked now");
        }
        // and a writer (another VM) can take the image: nobody holds it any more
        try (ImageLock writer = ImageLock.open(fx.image, false)) {
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
        fx.openProbe(); // before the stop: opening it now would wait too
        assertEquals(FileIo.F_UNLCK, fx.conflict(FileIo.F_WRLCK), "no frontend yet: no lock");
        fx.fs.stop();
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
                        fx.conflict(FileIo.F_WRLCK),
                        "the device took its read lock while the file system does not answer");
            } finally {
                fx.fs.resume();
            }
        }
    }

    /**
     * Starts {@link #export}: a read-only raw export of the image with one queue and synchronous I/O, {@code name} its
     * id and serial; returns its socket.
     */
    private Path startReadOnlyExport(String name) throws java.io.IOException {
        Path socket = dir.resolve("blk.sock");
        export = fx.closeFirst(BlkExport.start(
                new BlkExport.Spec(
                        name, fx.image, socket, 1, true, false, name, BlkDevice.IoEngine.SYNC, ImageFormat.RAW),
                false,
                SocketAccess.ownerOnly(),
                false,
                ImageOpens.Wanted.ALWAYS,
                io.iovirt.storage.BackingPolicy.UNRESTRICTED));
        return socket;
    }
}
