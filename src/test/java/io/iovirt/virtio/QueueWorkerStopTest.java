// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.testing.Await;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * {@link QueueWorker#stopAndWait} and {@link QueueWorker#reap} against a handler that is busy with a batch (it blocks
 * until the test lets it go), on a thread of its own and on a shared thread of a {@link WorkerGroup}.
 */
@Timeout(60)
class QueueWorkerStopTest {
    static final Duration TIMEOUT = Duration.ofSeconds(20);

    /** Blocks in the first batch after a kick until released. */
    static final class BusyHandler implements QueueWorker.Handler {
        final CountDownLatch entered = new CountDownLatch(1);
        final CountDownLatch release = new CountDownLatch(1);
        final AtomicInteger stopped = new AtomicInteger();
        volatile boolean kicked;

        @Override
        public boolean process() throws InterruptedException {
            if (kicked) {
                entered.countDown();
                release.await();
            }
            return false;
        }

        @Override
        public void stopped(boolean failed) {
            stopped.incrementAndGet();
        }
    }

    private static QueueWorker start(boolean shared, BusyHandler h, EventFd kick, WorkerGroup g) throws Exception {
        QueueWorker.Builder b = QueueWorker.builder("stop test").kick(kick);
        if (shared) {
            b.group(g);
        }
        QueueWorker w = b.start(h);
        h.kicked = true;
        kick.signal();
        assertTrue(h.entered.await(TIMEOUT.toSeconds(), TimeUnit.SECONDS), "the handler is busy");
        return w;
    }

    @ParameterizedTest(name = "shared={0}")
    @ValueSource(booleans = {false, true})
    void aBusyQueueIsWaitedForUntilItsThreadHasEnded(boolean shared) throws Exception {
        BusyHandler h = new BusyHandler();
        try (EventFd kick = EventFd.create(true);
                WorkerGroup g = WorkerGroup.create("stop test", 1)) {
            QueueWorker w = start(shared, h, kick, g);
            Thread releaser = Thread.ofPlatform().start(() -> {
                try {
                    Thread.sleep(500);
                } catch (InterruptedException ignored) {
                    // released at once then
                }
                h.release.countDown();
            });
            assertTrue(w.stopAndWait(TIMEOUT), "the thread ended within the limit");
            assertFalse(w.running());
            assertEquals(1, h.stopped.get(), "stopped() ran before stopAndWait returned");
            releaser.join();
        } finally {
            h.release.countDown();
        }
    }

    /**
     * Past the limit stopAndWait gives up and says so (false); reap tells when the thread has ended since. A pending
     * interrupt of the caller does not cut the wait short, and is there again afterwards.
     */
    @ParameterizedTest(name = "shared={0}")
    @ValueSource(booleans = {false, true})
    void aQueueStillBusyAtTheLimitIsGivenUpOnAndReapedOnceItEnds(boolean shared) throws Exception {
        BusyHandler h = new BusyHandler();
        try (EventFd kick = EventFd.create(true);
                WorkerGroup g = WorkerGroup.create("stop test", 1)) {
            QueueWorker w = start(shared, h, kick, g);
            Duration limit = Duration.ofMillis(700);
            Thread.currentThread().interrupt();
            long start = System.nanoTime();
            boolean ended = w.stopAndWait(limit);
            long waited = System.nanoTime() - start;
            assertTrue(Thread.interrupted(), "the caller's interrupt is kept");
            assertFalse(ended, "still busy");
            assertTrue(waited >= limit.toNanos(), "waited the whole limit: " + waited / 1_000_000 + " ms");
            assertTrue(w.stopRequested());
            assertTrue(w.running());
            assertFalse(w.reap(), "still running");
            assertEquals(0, h.stopped.get());

            h.release.countDown();
            Await.until(TIMEOUT, "reaped once the thread has ended", w::reap);
            assertFalse(w.running());
            assertEquals(1, h.stopped.get());
        } finally {
            h.release.countDown();
        }
    }

    @ParameterizedTest(name = "shared={0}")
    @ValueSource(booleans = {false, true})
    void aQueueThreadCannotWaitForItsOwnStop(boolean shared) throws Exception {
        try (EventFd kick = EventFd.create(true);
                WorkerGroup g = WorkerGroup.create("stop test", 1)) {
            java.util.concurrent.atomic.AtomicReference<Throwable> thrown =
                    new java.util.concurrent.atomic.AtomicReference<>();
            CountDownLatch done = new CountDownLatch(1);
            QueueWorker.Handler self = new QueueWorker.Handler() {
                QueueWorker worker;

                @Override
                public void attached(QueueWorker w) {
                    worker = w;
                }

                @Override
                public boolean process() {
                    if (done.getCount() > 0) {
                        thrown.set(assertThrows(IllegalStateException.class, () -> worker.stopAndWait(TIMEOUT)));
                        done.countDown();
                    }
                    return false;
                }
            };
            QueueWorker.Builder b = QueueWorker.builder("stop test").kick(kick);
            if (shared) {
                b.group(g);
            }
            QueueWorker w = b.start(self);
            assertTrue(done.await(TIMEOUT.toSeconds(), TimeUnit.SECONDS));
            assertTrue(
                    thrown.get().getMessage().contains("its own stop"),
                    thrown.get().getMessage());
            assertTrue(w.stop(TIMEOUT));
        }
    }
}
