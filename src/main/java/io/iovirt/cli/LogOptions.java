// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.util.Json;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.logging.Formatter;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import java.util.logging.StreamHandler;
import picocli.CommandLine;
import picocli.CommandLine.Option;

/**
 * {@code --log-level} and {@code --log-format} for every long-running command (a {@code @Mixin}; call
 * {@link #apply} first thing in {@code call()}): logs go to stderr, one record a line, with a UTC timestamp — as text
 * or as JSON lines for a log collector (servers add {@link StatsOptions} for the periodic counters lines). Levels
 * are the usual names mapped onto java.util.logging: debug is FINE (the vhost-user protocol trace), trace is FINEST.
 */
public final class LogOptions {
    @CommandLine.Spec(CommandLine.Spec.Target.MIXEE)
    CommandLine.Model.CommandSpec mixee;

    @Option(
            names = "--log-level",
            paramLabel = "LEVEL",
            defaultValue = "info",
            description = "error, warn, info, debug (adds the vhost-user protocol trace) or trace. "
                    + "Default: ${DEFAULT-VALUE}.")
    String level;

    @Option(
            names = "--log-format",
            paramLabel = "text|json",
            defaultValue = "text",
            description = "Log lines on stderr as text, or as one JSON object a line. Default: ${DEFAULT-VALUE}.")
    String format;

    /**
     * A value a JSON log line carries under {@code key} next to the message (the text format shows only the
     * message): pass it as the record's only parameter, as {@link #log} does.
     */
    public record Field(String key, Object value) {}

    /** Logs {@code message}, with {@code field} added to the JSON form of the line. */
    public static void log(Logger logger, Level level, String message, Field field) {
        LogRecord r = new LogRecord(level, message);
        r.setLoggerName(logger.getName());
        r.setParameters(new Object[] {field});
        logger.log(r);
    }

    /** True when log lines are plain text (the default), not JSON. */
    boolean text() {
        return format.toLowerCase(Locale.ROOT).equals("text");
    }

    /** Configures logging for this process; a bad value is a usage error of the command. */
    public void apply() {
        Level jul = switch (level.toLowerCase(Locale.ROOT)) {
            case "error" -> Level.SEVERE;
            case "warn", "warning" -> Level.WARNING;
            case "info" -> Level.INFO;
            case "debug" -> Level.FINE;
            case "trace" -> Level.FINEST;
            default ->
                throw Contract.usage(
                        mixee, "--log-level must be error, warn, info, debug or trace, not '" + level + "'");
        };
        Formatter formatter = switch (format.toLowerCase(Locale.ROOT)) {
            case "text" -> new TextFormatter();
            case "json" -> new JsonFormatter();
            default -> throw Contract.usage(mixee, "--log-format must be text or json, not '" + format + "'");
        };
        configure(jul, formatter, System.err);
    }

    static void configure(Level level, Formatter formatter, PrintStream stream) {
        Logger root = Logger.getLogger("");
        for (Handler h : root.getHandlers()) {
            root.removeHandler(h);
        }
        // A StreamHandler that flushes each record: ConsoleHandler.setOutputStream would close System.err first.
        Handler h = new StreamHandler(stream, formatter) {
            @Override
            public synchronized void publish(LogRecord r) {
                super.publish(r);
                flush();
            }

            @Override
            public synchronized void close() {
                flush(); // never close stderr
            }
        };
        try {
            h.setEncoding(StandardCharsets.UTF_8.name());
        } catch (java.io.UnsupportedEncodingException e) {
            throw new AssertionError("UTF-8 is always supported", e);
        }
        h.setFormatter(formatter);
        h.setLevel(level);
        root.addHandler(h);
        root.setLevel(level);
    }

    static String levelName(Level l) {
        int v = l.intValue();
        return v >= Level.SEVERE.intValue()
                ? "error"
                : v >= Level.WARNING.intValue()
                        ? "warn"
                        : v >= Level.INFO.intValue() ? "info" : v >= Level.FINE.intValue() ? "debug" : "trace";
    }

    private static String thrown(LogRecord r) {
        if (r.getThrown() == null) {
            return null;
        }
        StringWriter sw = new StringWriter();
        r.getThrown().printStackTrace(new PrintWriter(sw));
        return sw.toString();
    }

    /**
     * {@code epochMilli} as ISO 8601 UTC with milliseconds, {@code 2026-12-03T10:34:12.123Z}. Not
     * {@code Instant.toString()}: that formats through java.time.format, whose ~60 classes a backend would load (and
     * its AOT cache hold) for its first log line (docs/benchmarks.md, "Footprint").
     */
    static String utc(long epochMilli) {
        long secs = Math.floorDiv(epochMilli, 1000L);
        long days = Math.floorDiv(secs, 86_400L);
        int secOfDay = (int) Math.floorMod(secs, 86_400L);
        // days since 1970-01-01 to year/month/day in the proleptic Gregorian calendar (H. Hinnant's civil_from_days)
        long z = days + 719_468;
        long era = Math.floorDiv(z, 146_097L);
        long doe = z - era * 146_097;
        long yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        long mp = (5 * doy + 2) / 153;
        long day = doy - (153 * mp + 2) / 5 + 1;
        long month = mp < 10 ? mp + 3 : mp - 9;
        long year = yoe + era * 400 + (month <= 2 ? 1 : 0);
        StringBuilder b = new StringBuilder(24);
        pad(b, year, 4).append('-');
        pad(b, month, 2).append('-');
        pad(b, day, 2).append('T');
        pad(b, secOfDay / 3600, 2).append(':');
        pad(b, secOfDay / 60 % 60, 2).append(':');
        pad(b, secOfDay % 60, 2).append('.');
        return pad(b, Math.floorMod(epochMilli, 1000L), 3).append('Z').toString();
    }

    private static StringBuilder pad(StringBuilder b, long v, int width) {
        String s = Long.toString(v);
        for (int i = s.length(); i < width; i++) {
            b.append('0');
        }
        return b.append(s);
    }

    /** {@code 2026-12-03T10:34:12.123Z info iovirt.serve: message}. */
    static final class TextFormatter extends Formatter {
        @Override
        public String format(LogRecord r) {
            String t = thrown(r);
            return utc(r.getMillis()) + " " + levelName(r.getLevel()) + " " + r.getLoggerName() + ": "
                    + formatMessage(r) + "\n" + (t == null ? "" : t);
        }
    }

    /** {@code {"time": ..., "level": ..., "logger": ..., "message": ..., "thrown"?: ...}} on one line. */
    static final class JsonFormatter extends Formatter {
        @Override
        public String format(LogRecord r) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("time", utc(r.getMillis()));
            m.put("level", levelName(r.getLevel()));
            m.put("logger", r.getLoggerName());
            m.put("message", formatMessage(r));
            if (r.getParameters() != null && r.getParameters().length == 1 && r.getParameters()[0] instanceof Field f) {
                m.put(f.key(), f.value());
            }
            String t = thrown(r);
            if (t != null) {
                m.put("thrown", t);
            }
            return Json.writeLine(m) + "\n";
        }
    }
}
