// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import picocli.CommandLine;
import picocli.CommandLine.Option;

/**
 * {@code --stats-interval} for the servers (a {@code @Mixin} next to {@link LogOptions}): paces the periodic counters
 * lines ({@link #start}); a negative value is a usage error when parsed.
 */
public final class StatsOptions {
    @CommandLine.Spec(CommandLine.Spec.Target.MIXEE)
    CommandLine.Model.CommandSpec mixee;

    private int interval;

    @Option(
            names = "--stats-interval",
            paramLabel = "S",
            defaultValue = "0",
            description = "Log the counters every S seconds (0: only at exit); with --log-format json each such line "
                    + "also carries them as a \"stats\" object (schema in docs/cli.md).")
    void interval(int seconds) {
        if (seconds < 0) {
            throw Contract.usage(mixee, "--stats-interval must not be negative, got " + seconds);
        }
        this.interval = seconds;
    }

    /**
     * Runs {@code report} every --stats-interval seconds on a daemon thread until {@link #stop} ends it; null when
     * the interval is 0.
     */
    public Thread start(Runnable report) {
        if (interval == 0) {
            return null;
        }
        return Thread.ofPlatform().daemon().name("stats").start(() -> {
            try {
                while (true) {
                    Thread.sleep(interval * 1000L);
                    report.run();
                }
            } catch (InterruptedException e) {
                // stopping
            }
        });
    }

    /** Stops what {@link #start} started, waiting for a line being written to finish. */
    public static void stop(Thread stats) throws InterruptedException {
        if (stats != null) {
            stats.interrupt();
            stats.join();
        }
    }
}
