// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
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
