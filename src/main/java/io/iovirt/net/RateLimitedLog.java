// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.util.concurrent.atomic.LongAdder;
import java.util.function.Supplier;

/**
 * A warning a peer can trigger per frame (a bad length, a write error): logged at most once per interval, with the
 * number of repeats suppressed since, so a hostile or broken peer cannot flood the log.
 */
public final class RateLimitedLog {
    private static final Logger LOG = System.getLogger("io.iovirt.net");
    private final long intervalNanos;
    /** When the last message was logged (System.nanoTime), Long.MIN_VALUE before the first. */
    private volatile long last = Long.MIN_VALUE;
    /** Messages not logged since the last one: a LongAdder, since several ports' threads may count at once. */
    private final LongAdder suppressed = new LongAdder();

    public RateLimitedLog(long intervalMillis) {
        this.intervalNanos = intervalMillis * 1_000_000L;
    }

    /**
     * Whether a message would be logged now; when not, it is counted as suppressed. No lock and no allocation: a
     * per-frame caller asks first and builds its message (a string, a capturing lambda) only when this says yes —
     * {@code if (log.due()) log.warn(...)} — so a peer that sends bad frames at line rate costs no allocation per
     * frame, and ports sharing one log (the switch's) take no shared lock per frame.
     */
    public boolean due() {
        long l = last;
        if (l != Long.MIN_VALUE && System.nanoTime() - l < intervalNanos) {
            suppressed.increment();
            return false;
        }
        return true;
    }

    /** Logs {@code message} unless one was logged within the interval. */
    public void warn(String message) {
        warn(() -> message);
    }

    /** Like {@link #warn(String)}, building the message only when it is logged (for per-frame callers). */
    public void warn(Supplier<String> message) {
        if (!due()) {
            return;
        }
        String text;
        synchronized (this) { // one logger at a time: the others count as suppressed
            long now = System.nanoTime();
            if (last != Long.MIN_VALUE && now - last < intervalNanos) {
                suppressed.increment();
                return;
            }
            last = now;
            long n = suppressed.sumThenReset(); // approximate under concurrent counting: a log line's remark
            text = message.get() + (n > 0 ? " (" + n + " similar messages suppressed)" : "");
        }
        LOG.log(Level.WARNING, text);
    }

    public static void warning(String message) {
        LOG.log(Level.WARNING, message);
    }
}
