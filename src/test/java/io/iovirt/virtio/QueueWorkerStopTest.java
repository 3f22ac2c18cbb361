// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.testing.Await;
import io.iovirt.testing.GuestFixture;
import io.iovirt.testing.OpenFiles;
import java.time.Duration;
import java.util.List;
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
            Thread releaser = releaseOnceWaiting(Thread.currentThread(), h);
            assertTrue(w.stopAndWait(TIMEOUT), "the thread ended within the limit");
            assertFalse(w.running());
            assertEquals(1, h.stopped.get(), "stopped() ran before stopAndWait returned");
            releaser.join();
        } finally {
            h.release.countDown();
        }
    }

    /**
     * A pending interrupt of the caller does not cut the wait short (the handler is let go only once the caller waits
     * inside stopAndWait, so a wait ended by the interrupt returns false), and is there again afterwards.
     */
    @ParameterizedTest(name = "shared={0}")
    @ValueSource(booleans = {false, true})
    void aPendingInterruptDoesNotCutTheWaitShort(boolean shared) throws Exception {
        BusyHandler h = new BusyHandler();
        try (EventFd kick = EventFd.create(true);
                WorkerGroup g = WorkerGroup.create("stop test", 1)) {
            QueueWorker w = start(shared, h, kick, g);
            Thread releaser = releaseOnceWaiting(Thread.currentThread(), h);
            Thread.currentThread().interrupt();
            boolean ended = w.stopAndWait(TIMEOUT);
            assertTrue(Thread.interrupted(), "the caller's interrupt is kept");
            assertTrue(ended, "waited, interrupt or not, until the thread had ended");
            assertEquals(1, h.stopped.get());
            releaser.join();
        } finally {
            h.release.countDown();
        }
    }

    /**
     * Lets {@code h} go once {@code caller} waits inside {@link QueueWorker#stopAndWait} (a condition, not a pause:
     * on a loaded machine a fixed sleep may end before the caller has begun to wait). A caller that never waits
     * there is never helped: its stopAndWait gives up, and the test's finally lets the handler go.
     */
    private static Thread releaseOnceWaiting(Thread caller, BusyHandler h) {
        return Thread.ofPlatform().start(() -> {
            try {
                Await.until(
                        TIMEOUT,
                        "the caller waiting in stopAndWait",
                        () -> caller.getState() == Thread.State.TIMED_WAITING
                                && java.util.Arrays.stream(caller.getStackTrace())
                                        .anyMatch(f -> f.getClassName().equals(QueueWorker.class.getName())
                                                && f.getMethodName().equals("stopAndWait")));
                h.release.countDown();
            } catch (AssertionError e) {
                // not waiting: the stopAndWait under test returns false and the test fails there
            }
        });
    }

    /** Past the limit stopAndWait gives up and says so (false); reap tells when the thread has ended since. */
    @ParameterizedTest(name = "shared={0}")
    @ValueSource(booleans = {false, true})
    void aQueueStillBusyAtTheLimitIsGivenUpOnAndReapedOnceItEnds(boolean shared) throws Exception {
        BusyHandler h = new BusyHandler();
        try (EventFd kick = EventFd.create(true);
                WorkerGroup g = WorkerGroup.create("stop test", 1)) {
            QueueWorker w = start(shared, h, kick, g);
            assertFalse(w.stopAndWait(Duration.ofMillis(700)), "still busy");
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

    /**
     * A worker given up on keeps what it is given ({@link QueueWorker#closeWhenEnded}: the vhost-user ring's kick, call
     * and err) open while its thread runs and closes it once the thread has ended; given after that, at once. It stops
     * watching its kick when given up on: the kick's owner points the number at another file, and a registration
     * left behind would stay keyed to the frontend's file (a shared thread's under a slot another queue gets next).
     */
    @ParameterizedTest(name = "shared={0}")
    @ValueSource(booleans = {false, true})
    void aQueueGivenUpOnClosesWhatItIsGivenOnlyOnceItsThreadHasEnded(boolean shared) throws Exception {
        BusyHandler h = new BusyHandler();
        try (EventFd kick = EventFd.create(true);
                WorkerGroup g = WorkerGroup.create("stop test", 1);
                EventFd call = EventFd.create(true);
                EventFd late = EventFd.create(true)) {
            QueueWorker w = start(shared, h, kick, g);
            assertTrue(OpenFiles.watchedByEpoll(kick.fd().get()), "the kick is watched while the queue runs");
            assertFalse(w.stopAndWait(Duration.ofMillis(300)), "still busy");
            assertFalse(OpenFiles.watchedByEpoll(kick.fd().get()), "given up on: the kick is no longer watched");

            w.closeWhenEnded(List.of(kick, call));
            assertTrue(kick.fd().isOpen() && call.fd().isOpen(), "open while the thread may still use them");
            h.release.countDown();
            Await.until(TIMEOUT, "the thread has ended", () -> !w.running());
            assertFalse(kick.fd().isOpen(), "closed when the thread ended");
            assertFalse(call.fd().isOpen(), "closed when the thread ended");
            w.closeWhenEnded(List.of(late));
            assertFalse(late.fd().isOpen(), "the thread had ended: closed at once");
            assertTrue(w.reap());
        } finally {
            h.release.countDown();
        }
    }

    /**
     * A worker given up on while its thread was held before it looked at the ring (here in the handler before the
     * pop; a guest memory access that blocks, or a shared thread held by another queue's batch, get there too) takes
     * nothing more from the ring once that thread comes back: the position handed back stays, and the request made
     * available meanwhile is left for whoever takes the ring next. It used to be popped and served.
     */
    @ParameterizedTest(name = "shared={0}")
    @ValueSource(booleans = {false, true})
    void aQueueGivenUpOnTakesNoNewRequestsWhenItsThreadComesBack(boolean shared) throws Exception {
        final int size = 16;
        BusyHandler held = new BusyHandler();
        try (GuestFixture gf = new GuestFixture();
                EventFd kick = EventFd.create(true);
                WorkerGroup g = WorkerGroup.create("stop test", 1)) {
            SplitDriverRing d =
                    SplitDriverRing.create(gf.memory, gf.alloc(SplitDriverRing.bytesNeeded(size), 16), size, false);
            Virtqueue q = Virtqueue.create(d.queueConfig(1, false), gf.holder);
            AtomicInteger served = new AtomicInteger();
            RingHandler ring = new RingHandler(q, null, 8, chain -> {
                served.incrementAndGet();
                return 0;
            });
            QueueWorker.Handler h = new QueueWorker.Handler() {
                @Override
                public void attached(QueueWorker w) {
                    ring.attached(w);
                }

                @Override
                public boolean process() throws Exception {
                    held.process(); // blocks after the kick until released
                    return ring.process();
                }

                @Override
                public boolean prepareToSleep() throws Exception {
                    return ring.prepareToSleep();
                }

                @Override
                public void stopped(boolean failed) {
                    ring.stopped(failed);
                }
            };
            QueueWorker.Builder b = QueueWorker.builder("stop test").kick(kick);
            if (shared) {
                b.group(g);
            }
            held.kicked = true; // its first batch holds, before the ring is looked at
            QueueWorker w = b.start(h);
            d.add(new long[] {gf.alloc(64, 8)}, new int[] {64}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
            kick.signal();
            assertTrue(held.entered.await(TIMEOUT.toSeconds(), TimeUnit.SECONDS), "held before it looked at the ring");
            assertFalse(w.stopAndWait(Duration.ofMillis(300)), "still held");
            int base = q.vringBase();

            held.release.countDown();
            Await.until(TIMEOUT, "the thread has ended", () -> !w.running());
            assertEquals(0, served.get(), "no request taken after the stop");
            assertEquals(base, q.vringBase(), "the position handed back stayed");
            assertEquals(-1, d.pollUsed(), "nothing returned");
            assertTrue(q.hasAvailable(), "the request is still there for the next owner of the ring");
        } finally {
            held.release.countDown();
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
