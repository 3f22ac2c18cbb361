// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.MemFd;
import io.iovirt.linux.Mmap;
import io.iovirt.testing.Await;
import io.iovirt.vhostuser.LogCapture;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The shared loop of a {@link WorkerGroup} with real kick and err eventfds: the queue "ring" is a counter of
 * requests the test (the driver) adds before it kicks, and each handler takes at most {@link #BATCH} per batch, as
 * a RingHandler does. Checks QueueWorker's per-queue contract on a shared thread: fairness between queues, the
 * failure of one handler, the stop of one queue while the others run, reattaching, spreading over threads.
 */
@Timeout(120)
class WorkerGroupTest {
    static final int BATCH = 4;
    static final Duration BOUND = Duration.ofSeconds(30);

    private final List<AutoCloseable> closeables = new ArrayList<>();

    @AfterEach
    void cleanUp() throws Exception {
        for (int i = closeables.size() - 1; i >= 0; i--) {
            closeables.get(i).close();
        }
    }

    private <T extends AutoCloseable> T closing(T c) {
        closeables.add(c);
        return c;
    }

    static void await(String what, BooleanSupplier c) {
        Await.until(BOUND, what, c);
    }

    /** A queue: requests pending, what the loop did with them, on which thread. */
    static class TestQueue implements QueueWorker.Handler {
        final String name;
        final AtomicLong pending = new AtomicLong();
        final AtomicLong served = new AtomicLong();
        final AtomicLong calls = new AtomicLong();
        final AtomicInteger stoppedCalls = new AtomicInteger();
        final AtomicReference<Boolean> stoppedFailed = new AtomicReference<>();
        final AtomicReference<Thread> thread = new AtomicReference<>();
        volatile Throwable throwOnCall; // thrown by the next process()
        volatile TestQueue rival; // fairness: most calls of this queue in a row without a call of the rival
        volatile long maxStreak;
        private long rivalSeen = -1;
        private long streak;
        QueueWorker worker;

        TestQueue(String name) {
            this.name = name;
        }

        @Override
        public void attached(QueueWorker w) {
            worker = w;
        }

        @Override
        public boolean process() throws Exception {
            thread.set(Thread.currentThread());
            long c = calls.incrementAndGet();
            Throwable t = throwOnCall;
            if (t != null) {
                throwOnCall = null;
                if (t instanceof Exception e) {
                    throw e;
                }
                throw (Error) t;
            }
            TestQueue r = rival;
            if (r != null) {
                long rc = r.calls.get();
                streak = rc == rivalSeen ? streak + 1 : 1;
                rivalSeen = rc;
                maxStreak = Math.max(maxStreak, streak);
            }
            long took = 0;
            while (took < BATCH && pending.get() > 0) {
                pending.decrementAndGet();
                took++;
            }
            served.addAndGet(took);
            return took == BATCH && pending.get() > 0;
        }

        @Override
        public boolean hasWork() {
            return pending.get() > 0;
        }

        @Override
        public boolean prepareToSleep() {
            return pending.get() > 0;
        }

        @Override
        public void stopped(boolean failed) {
            assertTrue(worker.onWorkerThread(), "stopped() runs on the loop thread");
            stoppedCalls.incrementAndGet();
            stoppedFailed.set(failed);
        }
    }

    /** A driver side: its kick and err eventfds. */
    final class Driver {
        final EventFd kick = closing(EventFd.create(true));
        final EventFd err = closing(EventFd.create(true));
        final AtomicReference<String> failure = new AtomicReference<>();

        Driver() throws Exception {}

        QueueWorker attach(WorkerGroup g, TestQueue q) throws Exception {
            return QueueWorker.builder(q.name)
                    .kick(kick)
                    .err(err)
                    .group(g)
                    .onFailure(failure::set)
                    .start(q);
        }

        void add(TestQueue q, long n) throws Exception {
            q.pending.addAndGet(n);
            kick.signal();
        }
    }

    @Test
    void aFloodingQueueCannotStarveAnotherOnTheSameThread() throws Exception {
        WorkerGroup g = closing(WorkerGroup.create("test", 1));
        Driver d1 = new Driver();
        Driver d2 = new Driver();
        TestQueue flood = new TestQueue("flood q0");
        TestQueue quiet = new TestQueue("quiet q1");
        QueueWorker w1 = d1.attach(g, flood);
        QueueWorker w2 = d2.attach(g, quiet);
        d2.add(quiet, 1);
        await("the quiet queue is active", () -> quiet.served.get() == 1);
        flood.rival = quiet; // from now on both are in every round
        d1.add(flood, Long.MAX_VALUE / 2); // never runs dry: the thread never sleeps
        await("the flooding queue is served", () -> flood.served.get() > 10_000);
        for (int round = 0; round < 20; round++) {
            long before = quiet.served.get(); // 1 + what earlier rounds added
            d2.add(quiet, 3 * BATCH + 1);
            await(
                    "the quiet queue is served while the other floods",
                    () -> quiet.served.get() == before + 3 * BATCH + 1);
        }
        assertSame(flood.thread.get(), quiet.thread.get(), "one shared thread serves both");
        // each round gives every active queue one batch: the flooding queue never gets two batches in a row without
        // the other being looked at, so the other waits at most one of its batches
        assertEquals(1, flood.maxStreak, "batches of the flooding queue in a row");
        assertTrue(w1.stats().batches.sum() > 1000 && w2.stats().batches.sum() > 1000);
        assertTrue(w1.stop(BOUND) && w2.stop(BOUND));
        assertEquals(Boolean.FALSE, flood.stoppedFailed.get());
        assertEquals(Boolean.FALSE, quiet.stoppedFailed.get());
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"runtime", "fault", "checked"})
    void aThrowingHandlerFailsOnlyItsQueueAndTheThreadServesTheOthers(String kind) throws Exception {
        WorkerGroup g = closing(WorkerGroup.create("test", 1));
        LogCapture log = closing(LogCapture.start("io.iovirt.virtio"));
        Driver d1 = new Driver();
        Driver d2 = new Driver();
        TestQueue bad = new TestQueue("guest-a tx1");
        TestQueue good = new TestQueue("guest-b tx1");
        QueueWorker wb = d1.attach(g, bad);
        QueueWorker wg = d2.attach(g, good);
        d1.add(bad, 10);
        d2.add(good, 10);
        await("both served", () -> bad.served.get() == 10 && good.served.get() == 10);
        bad.throwOnCall = switch (kind) {
            case "runtime" -> new IllegalStateException("a bug");
            // what a SIGBUS on guest memory the frontend truncated becomes
            case "fault" -> new InternalError("a fault occurred in an unsafe memory access");
            default ->
                new VirtqueueException(1, VirtqueueException.Reason.BAD_INDIRECT_TABLE, "descriptor 7 is out of range");
        };
        d1.add(bad, 1);
        String line = log.awaitLine("queue stopped until the driver resets the device");
        assertTrue(line.startsWith("guest-a tx1: "), line);
        await("the failed queue ends", () -> !wb.running());
        assertNotNull(wb.failure());
        assertNotNull(d1.failure.get(), "the failure listener was told");
        assertTrue(d1.err.consume() > 0, "the err eventfd was signalled");
        assertEquals(1, bad.stoppedCalls.get());
        assertEquals(Boolean.TRUE, bad.stoppedFailed.get());
        assertTrue(wg.running());
        // the failed queue's kick left the epoll set: kicking it wakes nothing of it; the other is still served
        long badCalls = bad.calls.get();
        d1.add(bad, 5);
        for (int i = 0; i < 5; i++) {
            long before = good.served.get();
            d2.add(good, 7);
            await("the other queue on the same thread is still served", () -> good.served.get() == before + 7);
        }
        assertEquals(badCalls, bad.calls.get(), "nothing runs the failed queue any more");
        assertTrue(wb.stop(BOUND), "stopping a failed queue returns at once");
        assertEquals(1, bad.stoppedCalls.get(), "stopped() runs exactly once");
        assertTrue(wg.stop(BOUND));
    }

    /**
     * A queue whose "ring" is real shared memory: each batch reads a word of it and acts on the value, as a ring walk
     * does (a wrong value is an error, thrown before the batch ends).
     */
    static final class MemoryQueue extends TestQueue {
        private static final IllegalStateException BAD_RING = new IllegalStateException("the ring holds garbage");
        final MemorySegment ring;

        MemoryQueue(String name, MemorySegment ring) {
            super(name);
            this.ring = ring;
        }

        @Override
        public boolean process() throws Exception {
            long at = 8192 + 8 * (calls.get() & 63); // the second and third pages
            if (ring.get(ValueLayout.JAVA_LONG, at) != at) {
                throw BAD_RING;
            }
            return super.process();
        }
    }

    @Test
    void aMemoryFaultThatSentTheHandlerDownAnErrorPathFailsOnlyItsQueue() throws Exception {
        WorkerGroup g = closing(WorkerGroup.create("test", 1));
        LogCapture log = closing(LogCapture.start("io.iovirt.virtio"));
        Driver dg = new Driver();
        TestQueue good = new TestQueue("guest-b tx1");
        QueueWorker wg = dg.attach(g, good);
        // Each trial: a guest whose memory is read by a handler warmed up by the JIT, then truncated by its frontend.
        // The faulting load returns garbage, the handler throws on it, and HotSpot delivers the SIGBUS's InternalError
        // late: it must still fail only this queue, never the thread (and with it the other guest's queue).
        for (int trial = 0; trial < 8; trial++) {
            try (Fd mem = MemFd.allocate("guest-a-ram", 1 << 16);
                    Mmap.Mapping m = Mmap.map(mem, 0, 1 << 16, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED)) {
                for (long at = 0; at < 1 << 16; at += 8) {
                    m.segment().set(ValueLayout.JAVA_LONG, at, at);
                }
                Driver d = new Driver();
                MemoryQueue bad = new MemoryQueue("guest-a" + trial + " tx1", m.segment());
                QueueWorker wb = d.attach(g, bad);
                d.add(bad, 200_000); // 50,000 batches: compiled by C2 by the end
                await("the guest's queue is served", () -> bad.served.get() == 200_000);
                MemFd.truncate(mem, 4096);
                d.add(bad, 1);
                await("the guest's queue fails", () -> !wb.running());
                assertNotNull(wb.failure());
                String line = log.awaitLine("guest-a" + trial + " tx1: ");
                assertTrue(line.contains("queue stopped until the driver resets the device"), line);
                long before = good.served.get();
                dg.add(good, 3);
                await(
                        "the other guest's queue on the same thread is still served",
                        () -> good.served.get() == before + 3);
                assertTrue(wg.running(), "trial " + trial);
            }
        }
        assertFalse(log.all().stream().anyMatch(l -> l.contains("the shared thread failed")), "the thread survived");
        assertTrue(wg.stop(BOUND));
    }

    @Test
    void stoppingOneQueueLeavesTheOthersRunningAndAReattachedQueueIsServed() throws Exception {
        WorkerGroup g = closing(WorkerGroup.create("test", 1));
        Driver d1 = new Driver();
        Driver d2 = new Driver();
        TestQueue flood = new TestQueue("flood");
        TestQueue victim = new TestQueue("stopped");
        QueueWorker w1 = d1.attach(g, flood);
        QueueWorker w2 = d2.attach(g, victim);
        d1.add(flood, Long.MAX_VALUE / 2);
        d2.add(victim, 5);
        await("both served", () -> victim.served.get() == 5 && flood.served.get() > 1000);
        assertEquals(2, g.queues(0));
        // stopped while the other queue keeps the thread busy: the stop bound holds, stopped(false) has run
        assertTrue(w2.stop(BOUND), "stop returns once the queue is detached");
        assertEquals(1, victim.stoppedCalls.get());
        assertEquals(Boolean.FALSE, victim.stoppedFailed.get());
        assertFalse(w2.running());
        assertEquals(1, g.queues(0));
        long calls = victim.calls.get();
        d2.add(victim, 5); // a kick of a detached queue
        long floodNow = flood.calls.get();
        await("the other queue goes on", () -> flood.calls.get() > floodNow + 1000);
        assertEquals(calls, victim.calls.get(), "the stopped handler is never called again");
        assertTrue(w1.running());
        // the frontend reconnects: a new worker for the same ring (the same driver kick) on the same group
        TestQueue again = new TestQueue("reattached");
        again.pending.set(victim.pending.getAndSet(0));
        QueueWorker w3 = d2.attach(g, again);
        await("work left before the reconnect is served at once", () -> again.served.get() == 5);
        d2.add(again, 9);
        await("the reattached queue is served", () -> again.served.get() == 14);
        assertSame(flood.thread.get(), again.thread.get());
        g.close(); // stops what is still attached, on the loop thread
        assertEquals(1, flood.stoppedCalls.get());
        assertEquals(1, again.stoppedCalls.get());
        assertFalse(w1.running() || w3.running());
        assertTrue(w1.stop(BOUND), "stop after the group closed returns at once");
    }

    @Test
    void queuesGoToTheLeastLoadedThread() throws Exception {
        WorkerGroup g = closing(WorkerGroup.create("test", 2));
        List<QueueWorker> ws = new ArrayList<>();
        List<TestQueue> qs = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            TestQueue q = new TestQueue("q" + i);
            qs.add(q);
            ws.add(new Driver().attach(g, q));
        }
        assertEquals(2, g.queues(0));
        assertEquals(1, g.queues(1));
        assertTrue(ws.get(0).stop(BOUND));
        assertEquals(1, g.queues(0));
        QueueWorker w = new Driver().attach(g, new TestQueue("q3"));
        assertEquals(2, g.queues(0), "the freed place is taken first");
        assertTrue(w.stop(BOUND));
        assertTrue(ws.get(1).stop(BOUND) && ws.get(2).stop(BOUND));
        assertEquals(0, g.queues(0) + g.queues(1));
    }

    @Test
    void oneSpinServesEveryQueueWithoutKicksAndIsBounded() throws Exception {
        WorkerGroup g = closing(WorkerGroup.create("test", 1));
        TestQueue q1 = new TestQueue("spinning q0");
        TestQueue q2 = new TestQueue("kicked q1");
        // q1 asks for the longest spin and has no kick (a polling driver); pollEvery(1) is its fallback should the
        // spin end; q2 sleeps at once on its own, but shares q1's spin on this thread
        QueueWorker w1 = QueueWorker.builder(q1.name)
                .spin(QueueWorker.MAX_SPIN_NANOS)
                .pollEvery(1)
                .group(g)
                .start(q1);
        Driver d2 = new Driver();
        QueueWorker w2 = d2.attach(g, q2);
        for (int i = 1; i <= 20; i++) {
            q1.pending.addAndGet(3); // no kick
            q2.pending.addAndGet(2); // no kick either: the shared spin looks at every queue
            long want1 = 3L * i;
            long want2 = 2L * i;
            await("served without a kick", () -> q1.served.get() == want1 && q2.served.get() == want2);
        }
        assertTrue(
                w1.stats().spinHits.sum() + w2.stats().spinHits.sum() > 0,
                "the spin found work: " + w1.stats().spinHits.sum() + " "
                        + w2.stats().spinHits.sum());
        // the spin is bounded: idle, the thread ends up in epoll
        long sleeps = w1.stats().sleeps.sum();
        await("the idle thread sleeps after its spin", () -> w1.stats().sleeps.sum() > sleeps);
        assertTrue(w1.stop(BOUND) && w2.stop(BOUND));
    }

    @Test
    void queuesComeAndGoWhileAnotherFloods() throws Exception {
        WorkerGroup g = closing(WorkerGroup.create("test", 1));
        Driver d1 = new Driver();
        TestQueue flood = new TestQueue("flood");
        QueueWorker w1 = d1.attach(g, flood);
        d1.add(flood, Long.MAX_VALUE / 2);
        Driver d2 = new Driver(); // one frontend that reconnects again and again
        for (int i = 0; i < 200; i++) {
            TestQueue q = new TestQueue("churn " + i);
            q.pending.set(i % 3); // work left from before the reconnect
            QueueWorker w = d2.attach(g, q);
            if (i % 2 == 0) {
                d2.add(q, 5);
                long want = i % 3 + 5;
                await("served", () -> q.served.get() == want);
            }
            assertTrue(w.stop(BOUND));
            long calls = q.calls.get();
            assertEquals(1, q.stoppedCalls.get(), "stopped() once, before stop returned");
            d2.kick.signal();
            assertEquals(calls, q.calls.get(), "nothing runs a stopped queue");
        }
        assertTrue(w1.running());
        assertEquals(1, g.queues(0));
        long now = flood.calls.get();
        await("the flooding queue was served throughout", () -> flood.calls.get() > now + 100);
        assertTrue(w1.stop(BOUND));
    }

    @Test
    void aQueueBuiltButNeverStartedIsReleasedByStop() throws Exception {
        WorkerGroup g = closing(WorkerGroup.create("test", 1));
        Driver d = new Driver();
        TestQueue q = new TestQueue("never started");
        QueueWorker w = QueueWorker.builder(q.name).kick(d.kick).group(g).build(q);
        assertEquals(1, g.queues(0));
        d.add(q, 3); // its kick is registered but inert
        assertTrue(w.stop(BOUND));
        assertEquals(0, g.queues(0));
        assertEquals(0, q.calls.get());
        assertEquals(0, q.stoppedCalls.get(), "stopped() only follows a started loop, as for a thread of its own");
    }
}
