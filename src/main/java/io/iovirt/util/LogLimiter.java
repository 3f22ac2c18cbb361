// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

/**
 * Log lines a peer can cause at will — a connection's start or end, a protocol error, a refused peer — through a
 * token bucket: bursts of up to {@link #BURST} lines, then one a second; the lines dropped are counted and the count
 * is said with the next line logged, so a client connecting in a loop cannot flood the log, and the log still says
 * how much happened. One per server: its connections share the bucket. Not for per-frame paths (it takes a lock and
 * its callers build their message first): those use {@code io.iovirt.net.RateLimitedLog}.
 */
public final class LogLimiter {
    public static final int BURST = 20;

    private final System.Logger log;
    private double tokens = BURST;
    private long last = System.nanoTime();
    private long suppressed;

    public LogLimiter(System.Logger log) {
        this.log = log;
    }

    /**
     * Logs {@code message} at {@code level} if the bucket has a token, else counts it. A line the logger would drop
     * anyway (its level disabled, e.g. INFO under {@code --log-level warn}) takes no token and is not counted: lines
     * nobody sees must not use up the bucket and silence the ones that are shown.
     */
    public void log(System.Logger.Level level, String message) {
        if (!log.isLoggable(level)) {
            return;
        }
        String line;
        synchronized (this) {
            long now = System.nanoTime();
            tokens = Math.min(BURST, tokens + (now - last) / 1e9);
            last = now;
            if (tokens < 1) {
                suppressed++;
                return;
            }
            tokens -= 1;
            line = suppressed > 0 ? message + " (" + suppressed + " similar lines suppressed)" : message;
            suppressed = 0;
        }
        log.log(level, line);
    }
}
