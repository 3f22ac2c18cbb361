// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.virtio.QueueWorker;
import java.util.concurrent.atomic.LongAdder;

/**
 * One queue's counters (a device sums its queues), updated by the queue's thread without contention (LongAdder
 * cells): requests by kind, bytes, errors by reason, requests in flight and a latency histogram from the moment a
 * request leaves the ring to the moment its status is written.
 */
public final class BlkStats {
    /**
     * Upper bounds of the latency histogram's buckets, in nanoseconds (the last bucket is +Inf). From 10 µs (an
     * io_uring page-cache hit measured here) to 1 s (a stalled device).
     */
    public static final long[] LATENCY_BOUNDS_NANOS = {
        10_000,
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        1_000_000_000
    };

    final LongAdder reads = new LongAdder();
    final LongAdder writes = new LongAdder();
    final LongAdder flushes = new LongAdder();
    final LongAdder discards = new LongAdder();
    final LongAdder bytesRead = new LongAdder();
    final LongAdder bytesWritten = new LongAdder();
    final LongAdder ioErrors = new LongAdder();
    final LongAdder requestErrors = new LongAdder();
    final LongAdder unsupported = new LongAdder();
    final LongAdder queueFailures = new LongAdder();
    final LongAdder started = new LongAdder();
    final LongAdder completed = new LongAdder();
    /** Started requests a failed queue dropped, unanswered, once the kernel was done with them: not in flight. */
    final LongAdder dropped = new LongAdder();

    final LongAdder latencySumNanos = new LongAdder();
    final LongAdder[] latencyBuckets = new LongAdder[LATENCY_BOUNDS_NANOS.length + 1];
    /** What the queue's worker did (batches, sleeps, spin hits), across the workers of every connection. */
    final QueueWorker.Stats worker = new QueueWorker.Stats();

    public BlkStats() {
        for (int i = 0; i < latencyBuckets.length; i++) {
            latencyBuckets[i] = new LongAdder();
        }
    }

    void started() {
        started.increment();
    }

    void dropped() {
        dropped.increment();
    }

    void finished(boolean unsupportedRequest, long nanos) {
        if (unsupportedRequest) {
            unsupported.increment();
        }
        completed.increment();
        latencySumNanos.add(nanos);
        int i = 0;
        while (i < LATENCY_BOUNDS_NANOS.length && nanos > LATENCY_BOUNDS_NANOS[i]) {
            i++;
        }
        latencyBuckets[i].increment();
    }

    /** A point-in-time copy, for reports and metrics. */
    public record Snapshot(
            long reads,
            long writes,
            long flushes,
            long discards,
            long bytesRead,
            long bytesWritten,
            long ioErrors,
            long badRequests,
            long unsupported,
            long queueFailures,
            long requests,
            long inFlight,
            long latencySumNanos,
            long[] latencyBuckets) {
        /** The sum of several queues' snapshots. */
        public static Snapshot sum(Iterable<Snapshot> parts) {
            long[] v = new long[13];
            long[] b = new long[LATENCY_BOUNDS_NANOS.length + 1];
            for (Snapshot s : parts) {
                long[] x = {
                    s.reads,
                    s.writes,
                    s.flushes,
                    s.discards,
                    s.bytesRead,
                    s.bytesWritten,
                    s.ioErrors,
                    s.badRequests,
                    s.unsupported,
                    s.queueFailures,
                    s.requests,
                    s.inFlight,
                    s.latencySumNanos
                };
                for (int i = 0; i < v.length; i++) {
                    v[i] += x[i];
                }
                for (int i = 0; i < b.length; i++) {
                    b[i] += s.latencyBuckets[i];
                }
            }
            return new Snapshot(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], b);
        }

        @Override
        public String toString() {
            return String.format(
                    "requests=%d reads=%d writes=%d flushes=%d discards=%d read=%dB written=%dB io-errors=%d"
                            + " bad-requests=%d unsupported=%d queue-failures=%d",
                    requests,
                    reads,
                    writes,
                    flushes,
                    discards,
                    bytesRead,
                    bytesWritten,
                    ioErrors,
                    badRequests,
                    unsupported,
                    queueFailures);
        }
    }

    public Snapshot snapshot() {
        long[] b = new long[latencyBuckets.length];
        for (int i = 0; i < b.length; i++) {
            b[i] = latencyBuckets[i].sum();
        }
        long done = completed.sum();
        // started is read after completed and dropped: a request ending in between is not counted as negative
        // in-flight. Requests a stopped queue gave up on in the kernel stay counted: they may still run.
        long ended = done + dropped.sum();
        long inFlight = Math.max(0, started.sum() - ended);
        return new Snapshot(
                reads.sum(),
                writes.sum(),
                flushes.sum(),
                discards.sum(),
                bytesRead.sum(),
                bytesWritten.sum(),
                ioErrors.sum(),
                requestErrors.sum(),
                unsupported.sum(),
                queueFailures.sum(),
                done,
                inFlight,
                latencySumNanos.sum(),
                b);
    }

    /** The counters as {@link Snapshot#toString} writes them. */
    @Override
    public String toString() {
        return snapshot().toString();
    }
}
