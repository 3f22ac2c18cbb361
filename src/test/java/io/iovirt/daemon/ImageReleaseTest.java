// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.Test;

/** An export's close: the image is let go of after the server's stop, even when that stop throws. */
class ImageReleaseTest {
    private static final Path IMAGE = Path.of("/nonexistent/disk.raw");

    @Test
    void stopThatThrowsStillClosesTheImageAndItsExceptionReachesTheCaller() throws Exception {
        List<String> steps = java.util.Collections.synchronizedList(new ArrayList<>());
        Release release = Release.blk().close(() -> steps.add("close"));
        IllegalStateException broken = new IllegalStateException("server close failed");
        IllegalStateException thrown = assertThrows(
                IllegalStateException.class,
                () -> release.afterStop(ImageRelease.ServerStop.bounded(() -> {
                    steps.add("stop");
                    throw broken;
                })));
        assertSame(broken, thrown);
        assertTrue(release.closing.flushed.get(1, TimeUnit.MINUTES), "the close ran, on its own thread");
        assertEquals(List.of("stop", "close"), steps, "the image is closed after the stop, though the stop threw");
    }

    @Test
    void stopThatThrowsWithRequestsStillInIoClosesTheImageOnlyOnceTheyEnd() throws Exception {
        CountDownLatch requestsEnded = new CountDownLatch(1);
        CountDownLatch closed = new CountDownLatch(1);
        Release release = Release.nbd()
                .quiescent(() -> false)
                .await(timeout -> requestsEnded.await(timeout.toMillis(), TimeUnit.MILLISECONDS))
                .close(() -> {
                    closed.countDown();
                    return true;
                });
        assertThrows(
                IllegalStateException.class,
                () -> release.afterStop(ImageRelease.ServerStop.bounded(() -> {
                    throw new IllegalStateException("server close failed");
                })));
        assertEquals(1, closed.getCount(), "the image is not closed under a request still in I/O");
        requestsEnded.countDown();
        assertTrue(closed.await(1, TimeUnit.MINUTES), "the image is closed once the last request has ended");
    }

    /**
     * A server stop that outlasts its bound (a vhost-user session stuck in a device callback) is ended on the close
     * thread, and only then is the image closed — even though no request is in image I/O: the stuck thread may still
     * use the image. Meanwhile the caller's wait names the server, not the image's flush.
     */
    @Test
    void aStopThatOutlastsItsBoundEndsOnTheCloseThreadBeforeTheImageCloses() throws Exception {
        List<String> steps = java.util.Collections.synchronizedList(new ArrayList<>());
        CountDownLatch sessionEnds = new CountDownLatch(1);
        ImageRelease.Closing closing = Release.blk()
                .close(() -> steps.add("close"))
                .afterStop(new ImageRelease.ServerStop(
                        () -> {
                            steps.add("stop");
                            return "its session is stuck";
                        },
                        () -> {
                            await(sessionEnds);
                            steps.add("stop ended");
                        }));
        String notice = closing.await(java.time.Duration.ofMillis(200));
        assertTrue(notice.contains("its server has not stopped") && notice.contains("its session is stuck"), notice);
        assertEquals(List.of("stop"), steps, "the image is not closed while its server's stop is under way");
        sessionEnds.countDown();
        assertTrue(closing.flushed.get(1, TimeUnit.MINUTES), "closed once the stop has ended");
        assertEquals(List.of("stop", "stop ended", "close"), steps);
    }

    /**
     * The daemon's stop, which exits once it has waited, is told what it exits without — the final flush — whether
     * the server or the flush is what is still under way; a removal is told instead that its close ends later and
     * its id, socket and image stay taken until then. The stop logged the removal's text: that adding the export
     * again is refused until a log line says how it ended, in a process about to exit without either.
     */
    @Test
    void theStopIsToldWhatItExitsWithoutNotThatItEndsLater() throws Exception {
        CountDownLatch ends = new CountDownLatch(1);
        try {
            ImageRelease.Closing stuckServer = Release.blk()
                    .afterStop(new ImageRelease.ServerStop(() -> "its session is stuck", () -> await(ends)));
            ImageRelease.Closing stuckFlush = Release.nbd()
                    .close(() -> {
                        await(ends);
                        return true;
                    })
                    .afterStop(ImageRelease.ServerStop.bounded(() -> {}));
            for (ImageRelease.Closing c : List.of(stuckServer, stuckFlush)) {
                String removal = c.await(java.time.Duration.ofMillis(100));
                assertTrue(removal.contains("adding it again is refused"), removal);
                String stop = c.awaitBeforeExit(java.time.Duration.ofMillis(100));
                assertTrue(stop.contains("the daemon exits without the final flush of " + IMAGE), stop);
                assertTrue(!stop.contains("adding it again is refused") && !stop.contains("a log line says"), stop);
            }
            assertTrue(stuckServer.awaitBeforeExit(java.time.Duration.ZERO).contains("its session is stuck"));
            assertTrue(stuckFlush.awaitBeforeExit(java.time.Duration.ZERO).contains("still being flushed"));
        } finally {
            ends.countDown();
        }
    }

    /**
     * A close thread that cannot be started (no memory, a thread limit) while a thread may still use the image — a
     * server whose stop is under way, a request still in I/O — leaves the image open (not closed under that thread)
     * and still ends the close: its callers are answered (the removal's claim stays: ClaimRegistryTest). It was never
     * completed: a removal waited for it, and the error reached the caller.
     */
    @Test
    void aCloseThreadThatCannotStartEndsTheCloseAndLeavesTheImageOpen() throws Exception {
        CountDownLatch never = new CountDownLatch(1);
        try {
            assertLeftOpen(
                    Release.blk(), new ImageRelease.ServerStop(() -> "its session is stuck", () -> await(never)));
            assertLeftOpen(Release.nbd().quiescent(() -> false), ImageRelease.ServerStop.bounded(() -> {}));
        } finally {
            never.countDown();
        }
        // no thread can use the image: it is closed here instead, as before
        List<String> steps = java.util.Collections.synchronizedList(new ArrayList<>());
        ImageRelease.Closing quiet = Release.blk()
                .close(() -> steps.add("close"))
                .noThread()
                .afterStop(ImageRelease.ServerStop.bounded(() -> {}));
        assertTrue(quiet.flushed.getNow(false), "closed without a thread");
        assertEquals(List.of("close"), steps);
    }

    /** {@code r}'s close after {@code stop}, with no close thread, ends leaving the image open and saying so. */
    private static void assertLeftOpen(Release r, ImageRelease.ServerStop stop) {
        List<String> steps = java.util.Collections.synchronizedList(new ArrayList<>());
        try (io.iovirt.vhostuser.LogCapture log = io.iovirt.vhostuser.LogCapture.start("io.iovirt.daemon")) {
            ImageRelease.Closing c =
                    r.close(() -> steps.add("close")).noThread().afterStop(stop);
            assertTrue(c.flushed.isCompletedExceptionally(), c.who + ": the close has ended");
            assertEquals(List.of(), steps, c.who + ": the image is not closed under a thread that may use it");
            String answer = c.await(java.time.Duration.ZERO);
            assertTrue(answer.startsWith("the export is removed, but its close thread cannot be started"), answer);
            assertTrue(answer.contains("stays open and locked") && answer.contains(IMAGE.toString()), answer);
            String exit = c.awaitBeforeExit(java.time.Duration.ZERO);
            assertTrue(exit.startsWith("its close thread cannot be started"), exit);
            assertTrue(
                    log.all().stream().anyMatch(l -> l.startsWith(c.who + ": its close thread cannot be started")),
                    "an ERROR line says so: " + log.all());
        }
    }

    /**
     * {@link ImageRelease#afterStop} of {@link #IMAGE} by export "blk t" or "nbd t", reuse refused until it ends: by
     * default no request is in image I/O and the image's close succeeds at once.
     */
    private static final class Release {
        private final String who;
        private final String stuck;
        final ImageRelease.Closing closing;
        private BooleanSupplier quiescent = () -> true;
        private ImageRelease.Await await = timeout -> true;
        private BooleanSupplier close = () -> true;
        private ImageRelease.CloseThread threads = ImageRelease::start;

        private Release(String who, String stuck) {
            this.who = who;
            this.stuck = stuck;
            this.closing = new ImageRelease.Closing(who, IMAGE);
        }

        static Release blk() {
            return new Release("blk t", "a request is");
        }

        static Release nbd() {
            return new Release("nbd t", "requests are");
        }

        Release quiescent(BooleanSupplier q) {
            quiescent = q;
            return this;
        }

        Release await(ImageRelease.Await a) {
            await = a;
            return this;
        }

        Release close(BooleanSupplier c) {
            close = c;
            return this;
        }

        /** Its close thread cannot be started (as when the process is out of memory or threads). */
        Release noThread() {
            threads = (name, c) -> {
                throw new OutOfMemoryError("unable to create native thread: possibly out of memory (test)");
            };
            return this;
        }

        /** Releases the image after {@code stop}; returns its closing. */
        ImageRelease.Closing afterStop(ImageRelease.ServerStop stop) {
            ImageRelease.afterStop(
                    stop, who, IMAGE, stuck, "reuse is refused", quiescent, await, close, closing, threads);
            return closing;
        }
    }

    private static void await(CountDownLatch l) {
        try {
            l.await();
        } catch (InterruptedException e) {
            throw new IllegalStateException(e);
        }
    }
}
