// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

import io.iovirt.linux.Affinity;
import io.iovirt.linux.LinuxException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;
import java.time.Duration;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * How long one cache line takes to go from one CPU to another and back: two threads, each pinned to its CPU, pass a
 * counter back and forth through one line (a ping-pong), as a vhost-user backend and its frontend pass ring indexes
 * and descriptors. Every vring access the other side just wrote costs one such transfer, so this number sets the
 * floor of a polled virtio path — and on a virtual machine it is the host's choice: two vCPUs that the host runs on
 * sibling hyperthreads, on two cores sharing a cache, or on cores that do not share one give different numbers
 * from one run to the next. Benchmarks record it beside their results (scripts/bench-net.sh) so that a slow run can
 * be told from a slow backend.
 */
public final class CoreToCore {
    private static final VarHandle LONG = JAVA_LONG.varHandle();
    /** How long the measuring thread waits for an answer before it gives up (a CPU that never runs the other). */
    static final Duration ANSWER_TIMEOUT = Duration.ofSeconds(10);

    /**
     * @param cpuA       the measuring thread's CPU
     * @param cpuB       the answering thread's CPU
     * @param roundTrips round trips per sample
     * @param samplesNs  each sample's mean round trip, in measurement order
     */
    public record Result(int cpuA, int cpuB, int roundTrips, double[] samplesNs) {
        public double min() {
            return Arrays.stream(samplesNs).min().orElse(Double.NaN);
        }

        public double max() {
            return Arrays.stream(samplesNs).max().orElse(Double.NaN);
        }

        public double median() {
            double[] s = samplesNs.clone();
            Arrays.sort(s);
            int n = s.length;
            return n == 0 ? Double.NaN : n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
        }

        public String text() {
            return String.format(
                    Locale.ROOT,
                    "cpu %d <-> cpu %d: cache-line round trip median %.0f ns (min %.0f, max %.0f) over %d samples of"
                            + " %d round trips%n",
                    cpuA,
                    cpuB,
                    median(),
                    min(),
                    max(),
                    samplesNs.length,
                    roundTrips);
        }

        public Map<String, Object> json() {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("cpus", List.of(cpuA, cpuB));
            m.put("samples", samplesNs.length);
            m.put("round_trips_per_sample", roundTrips);
            Map<String, Object> ns = new LinkedHashMap<>();
            ns.put("min", Math.round(min()));
            ns.put("median", Math.round(median()));
            ns.put("max", Math.round(max()));
            m.put("round_trip_ns", ns);
            m.put("samples_ns", Arrays.stream(samplesNs).mapToObj(Math::round).toList());
            return m;
        }
    }

    private CoreToCore() {}

    /**
     * Measures {@code samples} samples of {@code roundTrips} round trips each between {@code cpuA} (the measuring
     * thread) and {@code cpuB} (the answering thread), after as many unmeasured round trips as one sample for the
     * JIT.
     *
     * @throws LinuxException  when a thread cannot be pinned (EINVAL: the CPU is not online or not in this process's
     *                         cpuset)
     * @throws IllegalStateException when no answer comes for {@link #ANSWER_TIMEOUT}
     */
    public static Result measure(int cpuA, int cpuB, int samples, int roundTrips)
            throws LinuxException, InterruptedException {
        if (cpuA == cpuB) {
            throw new IllegalArgumentException("a round trip needs two different CPUs, not " + cpuA + " twice");
        }
        if (samples < 1 || samples > 100_000 || roundTrips < 1 || roundTrips > 10_000_000) {
            throw new IllegalArgumentException(
                    "samples must be 1..100000 and round trips 1..10000000: " + samples + ", " + roundTrips);
        }
        try (Arena arena = Arena.ofShared()) {
            // the counter alone in its line, so that nothing else shares the transfers
            MemorySegment line = arena.allocate(128, 128);
            AtomicBoolean stop = new AtomicBoolean();
            Throwable[] failed = new Throwable[2];
            double[] result = new double[samples];
            Thread answer = Thread.ofPlatform()
                    .name("iovirt c2c cpu " + cpuB)
                    .daemon()
                    .unstarted(() -> {
                        try {
                            Affinity.pinCurrentThread(cpuB);
                            answer(line, stop);
                        } catch (Throwable t) {
                            failed[1] = t;
                            stop.set(true); // the measuring side stops waiting
                        }
                    });
            Thread ask = Thread.ofPlatform()
                    .name("iovirt c2c cpu " + cpuA)
                    .daemon()
                    .unstarted(() -> {
                        try {
                            Affinity.pinCurrentThread(cpuA);
                            ask(line, roundTrips, result, stop);
                        } catch (Throwable t) {
                            failed[0] = t;
                        } finally {
                            stop.set(true);
                        }
                    });
            answer.start();
            ask.start();
            ask.join();
            answer.join();
            for (Throwable t : failed) { // a thread that could not be pinned is the cause of the other's failure
                if (t instanceof LinuxException le) {
                    throw le;
                }
            }
            Throwable t = failed[1] != null ? failed[1] : failed[0];
            if (t instanceof RuntimeException re) {
                throw re;
            }
            if (t != null) {
                throw new IllegalStateException(t);
            }
            return new Result(cpuA, cpuB, roundTrips, result);
        }
    }

    // Neither side pauses while it waits (Thread.onSpinWait): a PAUSE costs up to ~140 cycles on recent Intel cores,
    // which would be measured as transfer time; a polling backend's ring loop does not pause either.

    /** The answering side: turns every odd value into the next even one until told to stop. */
    private static void answer(MemorySegment line, AtomicBoolean stop) {
        long expect = 1;
        for (; ; ) {
            long v = (long) LONG.getAcquire(line, 0L);
            if (v == expect) {
                LONG.setRelease(line, 0L, v + 1);
                expect += 2;
            } else if (stop.get()) { // a line of its own that nobody writes until the end: read from L1
                return;
            }
        }
    }

    /** The measuring side: one unmeasured sample, then {@code result.length} timed ones. */
    private static void ask(MemorySegment line, int roundTrips, double[] result, AtomicBoolean stop) {
        long deadline = System.nanoTime() + ANSWER_TIMEOUT.toNanos();
        long seq = 0;
        for (int s = -1; s < result.length; s++) {
            long t0 = System.nanoTime();
            for (int r = 0; r < roundTrips; r++) {
                LONG.setRelease(line, 0L, seq + 1);
                long want = seq + 2;
                int spins = 0;
                while ((long) LONG.getAcquire(line, 0L) != want) {
                    if ((++spins & 0xfff) != 0) {
                        continue;
                    }
                    if (stop.get()) {
                        throw new IllegalStateException("the answering thread stopped");
                    }
                    if (System.nanoTime() - deadline > 0) {
                        throw new IllegalStateException("no answer from the other CPU within "
                                + ANSWER_TIMEOUT.toSeconds() + " s: is it busy with something else?");
                    }
                }
                seq = want;
            }
            long t1 = System.nanoTime();
            if (s >= 0) {
                result[s] = (double) (t1 - t0) / roundTrips;
            }
            deadline = t1 + ANSWER_TIMEOUT.toNanos();
        }
    }
}
