// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import java.time.Duration;
import java.util.Optional;
import java.util.function.BooleanSupplier;
import java.util.function.Supplier;

/**
 * The one way a test waits for something another thread or process does: poll a condition until it holds or a
 * timeout passes, then fail with a message that says what did not happen. Timeouts are safety nets for a loaded
 * machine, not assertions on speed: give them generous margins.
 *
 * <pre>{@code
 * Await.until(Duration.ofSeconds(20), "port 1 forwarded 3 frames", () -> port.stats().txPackets() == 3);
 * String line = Await.value(Duration.ofSeconds(60), "qsd listening", () -> log().lines().filter(...).findFirst());
 * }</pre>
 */
public final class Await {
    private static final long MAX_PAUSE_NANOS = 50_000_000;

    private Await() {}

    /** Polls {@code condition} (first after ~0, then backing off to 50 ms) until it holds; fails after {@code timeout}. */
    public static void until(Duration timeout, String what, BooleanSupplier condition) {
        until(timeout, () -> what, condition);
    }

    /** As {@link #until(Duration, String, BooleanSupplier)}, with a message computed at failure (e.g. a log tail). */
    public static void until(Duration timeout, Supplier<String> what, BooleanSupplier condition) {
        value(timeout, what, () -> condition.getAsBoolean() ? Optional.of(Boolean.TRUE) : Optional.empty());
    }

    /**
     * As {@link #until(Duration, String, BooleanSupplier)} while {@code process} (QEMU, qemu-storage-daemon, a backend)
     * must stay alive: fails at once if it exits first, and every failure carries the tail of its log and, if it died
     * from a signal, gdb's backtrace of its core.
     */
    public static void until(
            Duration timeout, String what, io.iovirt.vm.ChildProcess process, BooleanSupplier condition) {
        Supplier<String> state =
                () -> process + (process.isAlive() ? " is running" : " exited with " + process.exitValue())
                        + "; its log ends:\n" + process.logTail(30)
                        + (process.crashReport().isEmpty() ? "" : "\n" + process.crashReport());
        until(timeout, () -> what + "; " + state.get(), () -> {
            if (condition.getAsBoolean()) {
                return true;
            }
            if (!process.isAlive()) {
                throw new AssertionError(what + ": " + state.get());
            }
            return false;
        });
    }

    /** Polls {@code probe} until it yields a value and returns it; fails after {@code timeout}. */
    public static <T> T value(Duration timeout, String what, Supplier<Optional<T>> probe) {
        return value(timeout, () -> what, probe);
    }

    public static <T> T value(Duration timeout, Supplier<String> what, Supplier<Optional<T>> probe) {
        long deadline = System.nanoTime() + timeout.toNanos();
        long pause = 100_000;
        while (true) {
            Optional<T> v = probe.get();
            if (v.isPresent()) {
                return v.get();
            }
            if (System.nanoTime() - deadline > 0) {
                throw new AssertionError("timed out after " + timeout.toMillis() + " ms waiting for: " + what.get());
            }
            try {
                Thread.sleep(Duration.ofNanos(pause));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new AssertionError("interrupted while waiting for: " + what.get(), e);
            }
            pause = Math.min(pause * 2, MAX_PAUSE_NANOS);
        }
    }
}
