// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/**
 * {@link StopOnce}, the state both servers' stops share (VhostUserServer, NbdServer): a stop that a control request,
 * a reload and the daemon's stop may each run, at the same time, is begun once and ended once — a concurrent call
 * neither runs a step again nor waits for the one under way — and a stop that has ended is not begun again.
 */
class StopOnceTest {
    /**
     * A platform thread per task: the common pool may have one worker on a 2-core machine, and a task of an earlier
     * test still blocked there would leave this one queued behind it.
     */
    private static final java.util.concurrent.Executor OWN_THREAD =
            r -> Thread.ofPlatform().daemon().start(r);

    @Test
    void theFirstStepRunsOnceAndAConcurrentBeginDoesNotWaitForIt() throws Exception {
        AtomicInteger firsts = new AtomicInteger();
        CountDownLatch inFirst = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        StopOnce stop = new StopOnce(
                () -> {
                    firsts.incrementAndGet();
                    inFirst.countDown();
                    await(release);
                },
                () -> {});
        assertFalse(stop.begun());
        CompletableFuture<Boolean> first = CompletableFuture.supplyAsync(stop::begin, OWN_THREAD);
        assertTrue(inFirst.await(10, TimeUnit.SECONDS), "the first begin runs the first step");
        assertTrue(stop.begun(), "begun as soon as the first call has changed the state");
        assertTrue(stop.begin(), "a second begin: the stop is under way");
        assertFalse(first.isDone(), "the first step is still running: the second begin did not wait for it");
        release.countDown();
        assertTrue(first.get(10, TimeUnit.SECONDS));
        assertTrue(stop.begin());
        assertEquals(1, firsts.get(), "the first step ran once");
    }

    @Test
    void theLastStepRunsOnceAndAStopThatEndedIsNotBegunAgain() throws Exception {
        AtomicInteger firsts = new AtomicInteger();
        AtomicInteger lasts = new AtomicInteger();
        CountDownLatch inLast = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        StopOnce stop = new StopOnce(firsts::incrementAndGet, () -> {
            lasts.incrementAndGet();
            inLast.countDown();
            await(release);
        });
        assertTrue(stop.begin());
        CompletableFuture<Void> ending = CompletableFuture.runAsync(stop::end, OWN_THREAD);
        assertTrue(inLast.await(10, TimeUnit.SECONDS), "the first end runs the last step");
        stop.end(); // returns at once: a concurrent stop is ending it
        assertFalse(stop.begin(), "ended: a later stopWithin or finishStop has nothing left to do");
        assertFalse(ending.isDone(), "the last step is still running: the second end did not wait for it");
        release.countDown();
        ending.get(10, TimeUnit.SECONDS);
        stop.end();
        assertFalse(stop.begin());
        assertTrue(stop.begun(), "still begun: nothing is accepted after the stop");
        assertEquals(1, firsts.get(), "the first step ran once");
        assertEquals(1, lasts.get(), "the last step ran once");
    }

    private static void await(CountDownLatch latch) {
        try {
            latch.await();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
