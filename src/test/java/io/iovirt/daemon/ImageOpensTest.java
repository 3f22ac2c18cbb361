// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.vhostuser.LogCapture;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/**
 * An open that has not returned (its file system does not answer) is in the daemon's log, not only in its failed
 * request's answer: when its request gives up on it, and when the daemon stops while it is still under way. Neither
 * was logged: the daemon's log said nothing of an add whose open never returns. And an open that returns after its
 * request gave up hears so ({@link ImageOpens.Wanted}) before it starts anything.
 */
class ImageOpensTest {
    private static final Path IMAGE = Path.of("/hung/disk.raw");

    @Test
    void anOpenGivenUpOnIsLoggedThenAndWhenTheDaemonStops() throws Exception {
        ImageOpens opens = new ImageOpens();
        // the open returns only when the test lets it: the request's wait runs out first whatever the machine's load
        opens.waitFor(Duration.ofMillis(100));
        CountDownLatch answer = new CountDownLatch(1);
        AtomicBoolean closed = new AtomicBoolean();
        AtomicBoolean checked = new AtomicBoolean();
        AtomicBoolean started = new AtomicBoolean();
        AtomicInteger released = new AtomicInteger();
        try (LogCapture log = LogCapture.start("io.iovirt.daemon")) {
            RpcException e = assertThrows(
                    RpcException.class,
                    () -> opens.run(
                            "blk.add vm1",
                            IMAGE,
                            wanted -> {
                                try {
                                    answer.await();
                                } catch (InterruptedException ie) {
                                    throw new java.io.InterruptedIOException("the test ended");
                                }
                                checked.set(true);
                                wanted.check(); // given up on: throws, so nothing is started
                                started.set(true);
                                return () -> closed.set(true);
                            },
                            released::incrementAndGet));
            assertEquals(RpcException.FAILED, e.code(), e.getMessage());
            assertTrue(
                    log.all().stream()
                            .anyMatch(l -> l.contains("blk.add vm1: the open of image " + IMAGE + " has not returned")
                                    && l.contains("image open " + IMAGE)),
                    "given up on, and not logged: " + log.all());
            assertEquals(0, released.get(), "the claim stays until the open returns");

            opens.close(); // the daemon stops
            assertTrue(
                    log.all().stream()
                            .anyMatch(l -> l.contains("stopping while image opens have not returned: " + IMAGE)
                                    && l.contains("blk.add vm1")),
                    "the daemon stopped with an open under way, and did not say so: " + log.all());

            answer.countDown(); // the open returns late: it hears it was given up on, the claim is released once
            Await.until(Duration.ofSeconds(60), "the late open's claim released", () -> released.get() == 1);
            assertTrue(checked.get() && !started.get() && !closed.get(), "the late open started nothing");
            assertTrue(log.awaitLine("its id and socket are free again").contains("its export was not started"));
            assertEquals(1, released.get());
        }
    }

    @Test
    void stoppingWithNoOpenUnderWayLogsNothing() {
        ImageOpens opens = new ImageOpens();
        try (LogCapture log = LogCapture.start("io.iovirt.daemon")) {
            opens.close();
            assertFalse(
                    log.all().stream().anyMatch(l -> l.contains("image opens")),
                    log.all().toString());
        }
    }
}
