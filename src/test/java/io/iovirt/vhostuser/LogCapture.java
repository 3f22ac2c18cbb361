// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.util.LogLimiter;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Predicate;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

/** Collects what a package logs (System.Logger goes to java.util.logging here), parameters filled in. */
public final class LogCapture extends Handler implements AutoCloseable {
    private final Logger logger;
    final LinkedBlockingQueue<String> lines = new LinkedBlockingQueue<>();
    /** Every line logged since the start, whether {@link #awaitLine} has taken it or not. */
    private final java.util.List<String> all = new java.util.concurrent.CopyOnWriteArrayList<>();

    private final java.util.logging.Formatter formatter = new java.util.logging.SimpleFormatter();

    private LogCapture(String name) {
        this.logger = Logger.getLogger(name);
    }

    /** What the vhost-user package logs. */
    public static LogCapture start() {
        return start("io.iovirt.vhostuser");
    }

    /** What {@code loggerName} and the loggers below it log (e.g. {@code "io.iovirt"}: everything). */
    public static LogCapture start(String loggerName) {
        LogCapture c = new LogCapture(loggerName);
        c.setLevel(Level.ALL);
        c.logger.addHandler(c);
        return c;
    }

    /** The next logged line containing {@code text}. */
    public String awaitLine(String text) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        StringBuilder seen = new StringBuilder();
        while (System.nanoTime() < deadline) {
            String l = lines.poll(100, TimeUnit.MILLISECONDS);
            if (l != null) {
                if (l.contains(text)) {
                    return l;
                }
                seen.append("\n  ").append(l);
            }
        }
        throw new AssertionError("no log line containing '" + text + "'; saw:" + seen);
    }

    /** Every line logged so far (at INFO or above). */
    public java.util.List<String> all() {
        return java.util.List.copyOf(all);
    }

    /** The lines logged so far (at INFO or above) that {@code kind} keeps. */
    public List<String> all(Predicate<String> kind) {
        return all().stream().filter(kind).toList();
    }

    /**
     * Asserts what a {@link LogLimiter} let through of the lines {@code kind} keeps, which something caused
     * {@code count} times ({@code what}: "connections", "refusals"...) since {@code startNanos}: at least one, and
     * at most the bucket's bound for that time — its burst, and one line a second since (whole seconds, rounded up).
     * Returns those lines.
     */
    public List<String> assertLimited(Predicate<String> kind, long startNanos, int count, String what) {
        long seconds = (System.nanoTime() - startNanos) / 1_000_000_000L + 1;
        List<String> lines = all(kind);
        assertTrue(
                lines.size() <= LogLimiter.BURST + seconds,
                lines.size() + " lines for " + count + " " + what + " in " + seconds + " s: " + lines);
        assertTrue(lines.size() >= 1, "the first of the " + what + " are logged");
        return lines;
    }

    /** One more cause of a line of the kind a test counts (a connection, a request). */
    @FunctionalInterface
    public interface Cause {
        void run() throws Exception;
    }

    /**
     * After {@link #assertLimited}: once the bucket has a token again, the next line says how many were left out.
     * Runs {@code cause} until a line {@code kind} keeps does (within a minute).
     */
    public void awaitSuppressedCount(Predicate<String> kind, Cause cause) {
        Await.until(Duration.ofSeconds(60), "a line counting the suppressed ones", () -> {
            try {
                cause.run();
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
            return all(kind).stream().anyMatch(l -> l.contains("similar lines suppressed)"));
        });
    }

    @Override
    public void publish(LogRecord r) {
        if (r.getLevel().intValue() >= Level.INFO.intValue()) {
            String line = formatter.formatMessage(r);
            all.add(line);
            lines.add(line);
        }
    }

    @Override
    public void flush() {}

    @Override
    public void close() {
        logger.removeHandler(this);
    }
}
