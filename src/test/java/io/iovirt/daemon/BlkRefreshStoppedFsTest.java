// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.devices.blk.BlkTestDriver;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.SocketAccess;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Await;
import io.iovirt.virtio.DeviceStatus;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
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
 * A qcow2 export whose image's file system stops answering after the export was added and before its frontend starts
 * its queues — a real one: fuse2fs serving an ext4 image, stopped with SIGSTOP, and a real vhost-user frontend
 * ({@link BlkTestDriver}). The first queue's start reads the image again (its header and tables: another backend may
 * have written it); that read, on the vhost-user session's thread, waited for the file system for ever: the frontend
 * got no reply to SET_VRING_KICK and removing the export waited for that thread. Now the read runs on a thread of its
 * own, given up on after a limit: the frontend is answered, its requests fail with an I/O error and the device reports
 * NEEDS_RESET; a restart of the queues meanwhile joins the read under way (no second thread), the image lock stays
 * taken while it runs and is let go when it ends (the queues stopped), and once the file system answers again a new
 * start serves the image.
 *
 * <p>The same at the other end: the last queue's stop writes the image back (a qcow2 image's tables, changed in memory
 * by the frontend's writes, for the backend that takes the image next), on the session's thread it was, and a file
 * system that stopped answering while the queues ran held the frontend's GET_VRING_BASE for ever. Now the write-back
 * runs on a thread of its own too: the frontend is answered, the image lock is kept until it has landed and is let go
 * then (the queues stopped).
 */
@Tag("peer")
@Timeout(value = 300, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class BlkRefreshStoppedFsTest {
    static final Duration TIMEOUT = Duration.ofSeconds(60);

    static final byte VIRTIO_BLK_S_OK = 0;
    static final byte VIRTIO_BLK_S_IOERR = 1;

    @TempDir
    Path dir;

    StoppedFsImage fx;
    final List<BlkExport> exports = new ArrayList<>();

    @BeforeEach
    void start() throws Exception {
        fx = StoppedFsImage.mount(dir, "disk.qcow2", 0);
        QemuTools.ok("qemu-img", "create", "-q", "-f", "qcow2", fx.image.toString(), "16M");
        QemuTools.ok("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", fx.image.toString());
    }

    @AfterEach
    void stop() throws Exception {
        if (fx != null) {
            fx.close(); // closes the exports first
        }
    }

    @Test
    void aQueueStartWhoseImageReadHangsIsAnsweredAndFencedAndServesOnceTheFileSystemAnswers() throws Exception {
        Path socket = startExport("q", fx.image, ImageFormat.QCOW2, false);
        Path otherSocket = startOtherExport();
        fx.openProbe(); // before the stop: opening it then would wait too
        fx.fs.stop();

        try (EventFd call = EventFd.create(true)) {
            // the start is answered (SET_VRING_KICK and SET_VRING_ENABLE are acknowledged: REPLY_ACK)
            try (BlkTestDriver d = connect(socket, call)) {
                assertEquals(
                        VIRTIO_BLK_S_IOERR,
                        d.awaitStatus(d.read(d.alloc(65536, 4096), 65536)),
                        "a request fails with an I/O error while the image could not be read again");
                assertNotEquals(
                        0, d.fe.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET, "the device reports NEEDS_RESET");
                fx.assertLine(
                        "an error line names the export, the image and what to do",
                        "blk q:",
                        "reading the image again",
                        fx.image.toString(),
                        "reset the device");
                assertEquals(1, imageThreads("refresh"), "one thread reads the image again");
            }
            otherServes(otherSocket);
            // the first frontend's queue stopped while the read still runs: the image lock stays taken, as that read
            // writes a writable image back first
            fx.log.awaitLine("the image lock of " + fx.image + " is kept");
            assertEquals(FileIo.F_WRLCK, fx.conflict(FileIo.F_RDLCK), "the image lock is still held");

            // a restart of the queues meanwhile is answered too, and joins the read under way
            try (BlkTestDriver d = connect(socket, call)) {
                assertEquals(VIRTIO_BLK_S_IOERR, d.awaitStatus(d.read(d.alloc(65536, 4096), 65536)), "still fenced");
                fx.assertLine(
                        "the restart joined the read under way",
                        "started by an earlier start of the queues, has still not ended");
                assertEquals(1, imageThreads("refresh"), "no second thread reads the image again");
            }

            fx.fs.resume();
            Await.until(
                    StoppedFsImage.RELEASED,
                    "the read of the image to end once the file system answers",
                    () -> imageThreads("refresh") == 0);
            // no queue runs: the lock kept for the read goes with it (not at the next start, or the removal), so
            // another VM (a migration's destination) may take the image now
            assertEquals(
                    FileIo.F_UNLCK,
                    fx.conflict(FileIo.F_WRLCK),
                    "the image lock is let go once the read has ended: " + fx.log.all());
            fx.assertLine("a line says the lock is let go", "blk q:", "image lock is let go now");
            servesOnceTheFileSystemAnswers(socket, call, (byte) 0x5a);
        }
    }

    /**
     * Removing the export while the read given up on still runs returns (the session thread is free), and the image
     * is not closed under that read: it stays open and locked until the read has ended, then is flushed, closed and
     * unlocked.
     */
    @Test
    void removingTheExportWhileTheReadHangsReturnsAndClosesTheImageOnceTheReadEnded() throws Exception {
        Path socket = startExport("q", fx.image, ImageFormat.QCOW2, false);
        fx.openProbe();
        fx.fs.stop();
        try (EventFd call = EventFd.create(true);
                BlkTestDriver d = connect(socket, call)) {
            assertEquals(VIRTIO_BLK_S_IOERR, d.awaitStatus(d.read(d.alloc(4096, 4096), 4096)), "fenced");
            removalReturnsWhileTheImageStaysOpen("refresh", "the read");
        }
        fx.resumeAndAwaitRelease("the read");
        assertCleanImage();
    }

    /**
     * The last queue's stop writes the image back (its tables, changed by the frontend's write and not yet flushed) on
     * a file system that stopped answering while the queue ran: the frontend's GET_VRING_BASE is answered, the image
     * lock is kept while the write-back runs (a migration's destination must not take the image before it has
     * landed), another export still serves, a start meanwhile is answered and fenced, and once the file system
     * answers the write-back lands, a new frontend reads the data and the image checks clean after the removal.
     */
    @Test
    void aQueueStopWhoseWriteBackHangsIsAnsweredKeepsTheLockAndWritesBackOnceTheFileSystemAnswers() throws Exception {
        Path socket = writtenThenStoppedWhileTheFileSystemHangs();
        Path otherSocket = startOtherExport();

        try (EventFd call = EventFd.create(true)) {
            fx.assertLine(
                    "an error line names the export, the image, why and what to do",
                    "blk q:",
                    "writing the image back",
                    fx.image.toString(),
                    "is kept",
                    "Make the file system answer again");
            assertEquals(1, imageThreads("hand-over"), "one thread writes the image back");
            assertEquals(FileIo.F_WRLCK, fx.conflict(FileIo.F_RDLCK), "the image lock is still held");
            otherServes(otherSocket);
            // a start while the write-back still runs is answered, waits for it (no reading again beside it) and is
            // fenced saying so
            try (BlkTestDriver d = connect(socket, call)) {
                assertEquals(VIRTIO_BLK_S_IOERR, d.awaitStatus(d.read(d.alloc(4096, 4096), 4096)), "fenced");
                assertNotEquals(
                        0, d.fe.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET, "the device reports NEEDS_RESET");
                fx.assertLine(
                        "the start says what it waits for",
                        "blk q:",
                        "writing the image back (" + fx.image + "), started when the queues last stopped, has still"
                                + " not ended",
                        "reset the device");
                assertEquals(0, imageThreads("refresh"), "no reading of the image again beside the write-back");
                assertEquals(1, imageThreads("hand-over"), "no second write-back");
            }
            fx.log.awaitLine("the image lock of " + fx.image + " is kept: writing the image back");
            assertEquals(FileIo.F_WRLCK, fx.conflict(FileIo.F_RDLCK), "the image lock is still held");

            fx.fs.resume();
            fx.log.awaitLine(fx.image + " has been written back now");
            Await.until(
                    StoppedFsImage.RELEASED, "the write-back's thread to end", () -> imageThreads("hand-over") == 0);
            // no queue runs: the lock kept for the write-back goes with it (not at the next start, or the removal),
            // so another VM (a migration's destination) may take the image now
            assertEquals(
                    FileIo.F_UNLCK,
                    fx.conflict(FileIo.F_WRLCK),
                    "the image lock is let go once the write-back has ended: " + fx.log.all());
            fx.assertLine(
                    "a line says the lock is let go",
                    "blk q:",
                    "has been written back now",
                    "image lock is let go now");
            servesOnceTheFileSystemAnswers(socket, call, (byte) 0xa5);
        }
        assertEquals(null, exports.getFirst().closeAsync().await(TIMEOUT), "the export is removed");
        assertEquals(FileIo.F_UNLCK, fx.conflict(FileIo.F_WRLCK), "the image lock is let go");
        assertCleanImage();
        assertWritten();
    }

    /**
     * Removing the export while the last queue's write-back still runs returns (the session thread is free), and the
     * image is not closed under the write-back: it stays open and locked until the write-back has ended, then is
     * flushed, closed and unlocked, with the data written in it.
     */
    @Test
    void removingTheExportWhileTheWriteBackHangsReturnsAndClosesTheImageOnceItEnded() throws Exception {
        writtenThenStoppedWhileTheFileSystemHangs();
        removalReturnsWhileTheImageStaysOpen("hand-over", "the write-back");

        fx.resumeAndAwaitRelease("the write-back");
        // the line saying the write-back has ended says the image goes, not that a next start serves it
        fx.assertLine(
                "a line says the write-back has ended and the image goes",
                "blk q:",
                "has been written back now",
                "the export is being removed");
        assertFalse(
                fx.log.all().stream().anyMatch(l -> l.contains("the next start of the queues serves it")),
                "no line promises a start of an export being removed: " + fx.log.all());
        assertCleanImage();
        assertWritten();
    }

    /**
     * Removing the export while the session's thread still waits for the last queue's write-back (the frontend's
     * GET_VRING_BASE not answered yet) ends that wait at once: the removal's server stop, which waits for that thread,
     * and the write-back's wait, bounded alike, raced, and a removal that lost the race said in an ERROR line and its
     * answer that the server had not stopped. Now the server stops; what is left is the write-back, which the answer
     * names, and the image is closed once it has ended.
     */
    @Test
    void removingTheExportWhileTheQueueStopWaitsForTheWriteBackEndsThatWait() throws Exception {
        writtenWhileTheFileSystemHangs(d -> {
            CompletableFuture<Integer> stopped = stopQueueWhileTheWriteBackHangs(d);

            String answer = exports.getFirst().closeAsync().await(Duration.ofSeconds(3));
            assertTrue(answer != null && answer.contains("still being flushed and closed"), "removal: " + answer);
            assertFalse(answer.contains("server has not stopped"), "the server has stopped: " + answer);
            fx.assertLine(
                    "a line says the write-back is not waited for any more",
                    "blk q:",
                    "writing the image back (" + fx.image + ") is not waited for any more: the export is being"
                            + " removed");
            assertFalse(
                    fx.log.all().stream()
                            .anyMatch(l -> l.contains("has not ended within") || l.contains("has not stopped")),
                    "the session did not wait out the write-back's limit, and its server stopped: " + fx.log.all());
            assertEquals(FileIo.F_WRLCK, fx.conflict(FileIo.F_RDLCK), "the image lock is still held");
            assertEquals(1, imageThreads("hand-over"), "the write-back still runs");
            stopped.handle((base, failure) -> null).get(TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        });
        fx.resumeAndAwaitRelease("the write-back");
        fx.assertLine(
                "a line says the write-back has ended and the image goes",
                "blk q:",
                "has been written back now",
                "the export is being removed");
        assertCleanImage();
        assertWritten();
    }

    /**
     * A write-back under way when the export's removal begins, which ends a moment later (its file system answers
     * again just after the removal's server stop has begun): the session's thread still waits that moment for it
     * ({@code BlkDevice.RETIRED_IMAGE_WORK_GRACE}), so the image is written back as at any queue stop, the removal ends
     * with its final flush, and nothing is logged as not waited for or stuck. Ending that wait
     * at the removal's first step instead gave the write-back up (an INFO line) however soon it was to end, and the
     * close could then find its thread still in its flush and say in an ERROR line that the file system did not
     * answer.
     */
    @Test
    void aWriteBackThatEndsJustAfterTheRemovalBeganIsWaitedFor() throws Exception {
        writtenWhileTheFileSystemHangs(d -> {
            CompletableFuture<Integer> stopped = stopQueueWhileTheWriteBackHangs(d);
            // the removal on a thread of its own, not the common pool, whose one worker (2 cores) GET_VRING_BASE holds
            CompletableFuture<String> removed = new CompletableFuture<>();
            Thread.ofPlatform()
                    .daemon()
                    .start(() ->
                            removed.complete(exports.getFirst().closeAsync().await(TIMEOUT)));
            fx.log.awaitLine("q.sock: stopping"); // the removal has retired the device and begun its server stop
            fx.fs.resume();
            assertNull(removed.get(TIMEOUT.toSeconds(), TimeUnit.SECONDS), "the removal ends with its final flush");
            stopped.handle((base, failure) -> null)
                    .get(TIMEOUT.toSeconds(), TimeUnit.SECONDS); // its connection is shut
        });
        List<String> stuck = fx.log.all(
                l -> l.contains("SEVERE") || l.contains("still in I/O") || l.contains("is not waited for any more"));
        assertEquals(List.of(), stuck, "the write-back was waited for: " + fx.log.all());
        assertCleanImage();
        assertWritten();
    }

    /**
     * A write-back the removal no longer waits for that then fails (its file system's daemon dies) says so in one
     * ERROR line that says the export is being removed — not that the image lock is kept until this backend writes the
     * image back at its next start, which an export being removed does not have.
     */
    @Test
    void aWriteBackTheRemovalNoLongerWaitsForThatFailsSaysTheExportIsBeingRemoved() throws Exception {
        writtenWhileTheFileSystemHangs(d -> {
            CompletableFuture<Integer> stopped = stopQueueWhileTheWriteBackHangs(d);
            exports.getFirst().closeAsync();
            fx.log.awaitLine("is not waited for any more: the export is being removed");
            stopped.handle((base, failure) -> null).get(TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        });
        fx.fs.kill();
        Await.until(TIMEOUT, "the write-back's thread to end", () -> imageThreads("hand-over") == 0);
        List<String> failed = fx.log.all().stream()
                .filter(l -> l.contains("writing the image back") && l.contains("failed:"))
                .toList();
        assertEquals(1, failed.size(), "one line says the write-back failed: " + fx.log.all());
        assertTrue(failed.getFirst().contains("The export is being removed"), failed.getFirst());
        assertFalse(failed.getFirst().contains("next start"), "no next start comes: " + failed.getFirst());
    }

    /**
     * A write-back given up on, the image lock kept for it, that then fails (its file system's daemon dies): one ERROR
     * line says what failed, that the lock stays taken and what to do — not one line of the write-back's own and a
     * second one of the lock's.
     */
    @Test
    void aLateWriteBackThatFailsSaysSoInOneLine() throws Exception {
        writtenThenStoppedWhileTheFileSystemHangs();
        fx.log.awaitLine("the image lock of " + fx.image + " is kept");
        fx.fs.kill();
        fx.log.awaitLine("Its image lock stays taken");
        Await.until(TIMEOUT, "the write-back's thread to end", () -> imageThreads("hand-over") == 0);
        List<String> failed = fx.log.all().stream()
                .filter(l -> l.contains("writing the image back") && l.contains("failed:"))
                .toList();
        assertEquals(1, failed.size(), "one line says the write-back failed: " + fx.log.all());
        for (String part : List.of("blk q:", fx.image.toString(), "Its image lock stays taken", "blk.remove")) {
            assertTrue(failed.getFirst().contains(part), part + ": " + failed.getFirst());
        }
        assertEquals(FileIo.F_WRLCK, fx.conflict(FileIo.F_RDLCK), "the image lock is still held");
    }

    /**
     * Export "q" of a fresh qcow2 image, to which a frontend writes 64 KiB of 0xa5 (allocating a cluster: its tables
     * change in memory, and no flush follows); then the file system stops and the frontend stops its queue
     * (GET_VRING_BASE: a migration's source, a guest's reset), whose reply comes — without the fix it throws after
     * the frontend's reply timeout — and disconnects. Returns the export's socket.
     */
    private Path writtenThenStoppedWhileTheFileSystemHangs() throws Exception {
        return writtenWhileTheFileSystemHangs(
                d -> assertEquals(1, d.fe.getVringBase(0), "GET_VRING_BASE is answered with the queue's position"));
    }

    /**
     * Export "q" of a fresh qcow2 image, to which a frontend writes 64 KiB of 0xa5 (no flush after it); then the file
     * system stops and {@code then} runs with that frontend, which disconnects after it. Returns the export's socket.
     */
    private Path writtenWhileTheFileSystemHangs(FrontendStep then) throws Exception {
        QemuTools.ok("qemu-img", "create", "-q", "-f", "qcow2", fx.image.toString(), "16M");
        Path socket = startExport("q", fx.image, ImageFormat.QCOW2, false);
        fx.openProbe(); // before the stop: opening it then would wait too
        try (EventFd call = EventFd.create(true);
                BlkTestDriver d = connect(socket, call)) {
            long buf = d.alloc(65536, 4096);
            d.ram.segment().asSlice(buf, 65536).fill((byte) 0xa5);
            assertEquals(VIRTIO_BLK_S_OK, d.awaitStatus(d.write(buf, 65536)), "the write (no flush after it)");
            fx.fs.stop();
            then.run(d);
        }
        return socket;
    }

    /**
     * The frontend stops its queue (GET_VRING_BASE) on another thread, as the file system does not answer; returns that
     * stop once the last queue's write-back it started runs.
     */
    private static CompletableFuture<Integer> stopQueueWhileTheWriteBackHangs(BlkTestDriver d) throws Exception {
        CompletableFuture<Integer> stopped = CompletableFuture.supplyAsync(() -> {
            try {
                return d.fe.getVringBase(0);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        });
        Await.until(TIMEOUT, "the last queue's write-back to start", () -> imageThreads("hand-over") == 1);
        return stopped;
    }

    /** What a test does with a connected frontend. */
    @FunctionalInterface
    private interface FrontendStep {
        void run(BlkTestDriver d) throws Exception;
    }

    /**
     * Removing export "q" while its thread doing {@code work} ("refresh", "hand-over": {@code what}) still runs
     * returns (the session thread is free), saying the image is still being flushed and closed; the image stays open
     * and locked under that thread.
     */
    private void removalReturnsWhileTheImageStaysOpen(String work, String what) throws Exception {
        List<Integer> fds = fx.imageFds();
        CompletableFuture<String> removed = CompletableFuture.supplyAsync(
                () -> exports.getFirst().closeAsync().await(Duration.ofSeconds(1)));
        String answer = removed.get(TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        assertTrue(answer != null && answer.contains("still being flushed and closed"), "removal: " + answer);
        assertEquals(fds, fx.imageFds(), "the image stays open under " + what);
        assertEquals(FileIo.F_WRLCK, fx.conflict(FileIo.F_RDLCK), "the image lock is still held");
        assertEquals(1, imageThreads(work), what + " still runs");
    }

    /** A new frontend of {@code socket} reads the first 64 KiB of the image, all {@code pattern}, unfenced. */
    private static void servesOnceTheFileSystemAnswers(Path socket, EventFd call, byte pattern) throws Exception {
        try (BlkTestDriver d = connect(socket, call)) {
            long buf = d.alloc(65536, 4096);
            assertEquals(VIRTIO_BLK_S_OK, d.awaitStatus(d.read(buf, 65536)), "served once the file system answers");
            for (long i = 0; i < 65536; i++) {
                assertEquals(pattern, d.ram.segment().get(ValueLayout.JAVA_BYTE, buf + i), "byte " + i);
            }
            assertEquals(0, d.fe.getStatus() & DeviceStatus.DEVICE_NEEDS_RESET, "no NEEDS_RESET");
        }
    }

    /** Starts export "other": a read-only raw image of 1 MiB on another file system (the test's directory). */
    private Path startOtherExport() throws IOException {
        Path other = dir.resolve("other.raw");
        java.nio.file.Files.write(other, new byte[1 << 20]);
        return startExport("other", other, ImageFormat.RAW, true);
    }

    /** Another export, on another file system, still serves. */
    private static void otherServes(Path otherSocket) throws Exception {
        try (EventFd otherCall = EventFd.create(true);
                BlkTestDriver o = connect(otherSocket, otherCall)) {
            assertEquals(VIRTIO_BLK_S_OK, o.awaitStatus(o.read(o.alloc(4096, 4096), 4096)), "the other export");
        }
    }

    private void assertCleanImage() throws Exception {
        QemuTools.Result check = QemuTools.run("qemu-img", "check", "-f", "qcow2", fx.image.toString());
        assertEquals(0, check.exit(), "a clean image: " + check.output());
    }

    /** The 64 KiB of 0xa5 the frontend wrote are in the image. */
    private void assertWritten() throws Exception {
        String read = QemuTools.ok("qemu-io", "-f", "qcow2", "-c", "read -P 0xa5 0 64k", fx.image.toString());
        assertFalse(read.contains("verification failed"), "the data written is in the image: " + read);
    }

    /** A frontend of {@code socket}, connected and its queue started on another thread, waited for. */
    private static BlkTestDriver connect(Path socket, EventFd call) throws Exception {
        return CompletableFuture.supplyAsync(() -> {
                    try {
                        return new BlkTestDriver(socket, 1 << 20, call);
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                })
                .get(TIMEOUT.toSeconds(), TimeUnit.SECONDS);
    }

    private Path startExport(String id, Path img, ImageFormat format, boolean readOnly) throws IOException {
        Path socket = dir.resolve(id + ".sock");
        exports.add(fx.closeFirst(BlkExport.start(
                new BlkExport.Spec(id, img, socket, 1, readOnly, false, id, BlkDevice.IoEngine.SYNC, format),
                false,
                SocketAccess.ownerOnly(),
                false,
                ImageOpens.Wanted.ALWAYS,
                io.iovirt.storage.BackingPolicy.UNRESTRICTED)));
        return socket;
    }

    /** Threads of export "q" doing {@code work} on its image ("refresh": reading it again, "hand-over"). */
    private static long imageThreads(String work) {
        return Thread.getAllStackTraces().keySet().stream()
                .filter(t -> t.isAlive() && t.getName().equals("blk q " + work))
                .count();
    }
}
