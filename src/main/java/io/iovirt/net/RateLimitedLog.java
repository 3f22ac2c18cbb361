// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.util.function.Supplier;

/**
 * A warning a peer can trigger per frame (a bad length, a write error): logged at most once per interval, with the
 * number of repeats suppressed since, so a hostile or broken peer cannot flood the log.
 */
public final class RateLimitedLog {
    private static final Logger LOG = System.getLogger("io.iovirt.net");
    private final long intervalNanos;
    private long last = Long.MIN_VALUE;
    private long suppressed;

    public RateLimitedLog(long intervalMillis) {
        this.intervalNanos = intervalMillis * 1_000_000L;
    }

    /** Logs {@code message} unless one was logged within the interval. */
    public void warn(String message) {
        warn(() -> message);
    }

    /** Like {@link #warn(String)}, building the message only when it is logged (for per-frame callers). */
    public synchronized void warn(Supplier<String> message) {
        long now = System.nanoTime();
        if (last != Long.MIN_VALUE && now - last < intervalNanos) {
            suppressed++;
            return;
        }
        String extra = suppressed > 0 ? " (" + suppressed + " similar messages suppressed)" : "";
        last = now;
        suppressed = 0;
        LOG.log(Level.WARNING, message.get() + extra);
    }

    /** Logs unconditionally (state changes such as connect/disconnect). */
    public static void info(String message) {
        LOG.log(Level.INFO, message);
    }

    public static void warning(String message) {
        LOG.log(Level.WARNING, message);
    }
}
