// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import java.io.IOException;
import java.time.Duration;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * An accept thread that lives but fails every accept (out of descriptors) shows it to a watchdog: its failing streak
 * is reported while it lasts and cleared by the next accept that succeeds.
 */
@Timeout(60)
class AcceptorFailingStreakTest {
    @Test
    void aStreakOfFailedAcceptsIsReportedUntilOneSucceeds() throws Exception {
        AtomicBoolean failing = new AtomicBoolean(true);
        AtomicBoolean closed = new AtomicBoolean();
        AtomicInteger served = new AtomicInteger();
        Acceptor<AutoCloseable> a = Acceptor.<AutoCloseable>builder(
                        "test listener",
                        System.getLogger("test"),
                        () -> {
                            if (failing.get()) {
                                throw new IOException("Too many open files");
                            }
                            java.util.concurrent.locks.LockSupport.parkNanos(5_000_000); // one now and then
                            return () -> {};
                        },
                        closed::get)
                .daemon(true)
                .build((c, release) -> {
                    served.incrementAndGet();
                    release.run();
                });
        assertEquals(0, a.failingForNanos(), "nothing failed before it started");
        a.start();
        try {
            Await.until(Duration.ofSeconds(30), "the failing streak is reported", () -> a.failingForNanos() > 0);
            assertTrue(a.thread().isAlive(), "the thread lives through the streak (it backs off)");
            long first = a.failingForNanos();
            Await.until(Duration.ofSeconds(30), "the streak grows", () -> a.failingForNanos() > first);
            failing.set(false);
            Await.until(Duration.ofSeconds(30), "a connection is served again", () -> served.get() > 0);
            assertEquals(0, a.failingForNanos(), "an accept that succeeded ends the streak");
        } finally {
            closed.set(true);
            failing.set(true); // the loop sees closed at its next failure
            a.join(Duration.ofSeconds(30));
        }
    }
}
