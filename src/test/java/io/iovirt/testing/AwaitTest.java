// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.ChildProcess;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Optional;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class AwaitTest {
    @TempDir
    Path dir;

    @Test
    void returnsOnceTheConditionHolds() {
        AtomicInteger polls = new AtomicInteger();
        Await.until(Duration.ofSeconds(30), "the third poll", () -> polls.incrementAndGet() == 3);
        assertEquals(3, polls.get());
        assertEquals("v", Await.value(Duration.ofSeconds(30), "a value", () -> Optional.of("v")));
    }

    @Test
    void timeoutSaysWhatDidNotHappen() {
        AssertionError e = assertThrows(
                AssertionError.class, () -> Await.until(Duration.ofMillis(50), "the moon turns blue", () -> false));
        assertTrue(e.getMessage().matches("timed out after 50 ms waiting for: the moon turns blue"), e.getMessage());
    }

    /** A peer that exits while a test waits on it fails the wait at once, with its log; not after the timeout. */
    @Test
    void aPeerThatExitsFailsTheWaitAtOnceWithItsLog() {
        try (ChildProcess p = ChildProcess.builder("sh", "-c", "echo 'cannot open the image'; exit 2")
                .log(dir.resolve("peer.log"))
                .directory(dir)
                .start()) {
            long t0 = System.nanoTime();
            AssertionError e = assertThrows(
                    AssertionError.class,
                    () -> Await.until(Duration.ofMinutes(10), "the peer listens", p, () -> false));
            assertTrue(System.nanoTime() - t0 < Duration.ofMinutes(5).toNanos(), "waited for the timeout");
            assertTrue(
                    e.getMessage().startsWith("the peer listens: sh (pid " + p.pid() + ") exited with 2"),
                    e.getMessage());
            assertTrue(e.getMessage().contains("cannot open the image"), e.getMessage());
        }
    }

    @Test
    void requireFailsWithTheReason() {
        AssertionError e =
                assertThrows(AssertionError.class, () -> Require.that(false, "a unicorn (apt-get install unicorn)"));
        assertEquals("missing prerequisite: a unicorn (apt-get install unicorn)", e.getMessage());
        AssertionError p =
                assertThrows(AssertionError.class, () -> Require.program("no-such-program-xyz", "install it"));
        assertTrue(p.getMessage().contains("no-such-program-xyz is not on the PATH (install it)"), p.getMessage());
        assertTrue(Require.program("sh", "coreutils").toString().endsWith("/sh"));
    }
}
