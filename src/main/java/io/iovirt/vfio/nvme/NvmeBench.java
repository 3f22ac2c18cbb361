// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import io.iovirt.util.LatencyHistogram;
import io.iovirt.vfio.DmaBuffer;
import io.iovirt.vfio.VfioException;
import java.util.Locale;

/**
 * 4 KiB random reads at a fixed queue depth for a fixed time through the user-space driver, the same workload as
 * {@code fio --rw=randread --bs=4k --iodepth=N --direct=1} against the kernel's driver. Each completion immediately
 * submits the next read on the same command identifier and buffer; nothing is allocated while it runs.
 */
public final class NvmeBench {
    public static final int IO_SIZE = 4096;

    /** Latencies in microseconds; {@code interrupts} counts I/O-queue interrupts (0 when polling). */
    public record Result(
            int queueDepth,
            long ios,
            double seconds,
            double iops,
            double meanUs,
            double p50Us,
            double p99Us,
            double p999Us,
            double maxUs,
            String completion,
            long interrupts) {
        public String describe() {
            return String.format(
                    Locale.ROOT,
                    "randread 4k qd %d: %.0f IOPS, latency mean %.1f us, p50 %.1f us, "
                            + "p99 %.1f us, p99.9 %.1f us, max %.1f us (%d I/Os in %.1f s, completions by %s, %d interrupts)",
                    queueDepth,
                    iops,
                    meanUs,
                    p50Us,
                    p99Us,
                    p999Us,
                    maxUs,
                    ios,
                    seconds,
                    completion,
                    interrupts);
        }

        public String json() {
            return String.format(
                    Locale.ROOT,
                    "{\"rw\":\"randread\",\"bs\":4096,\"qd\":%d,\"ios\":%d,\"seconds\":%.3f,"
                            + "\"iops\":%.1f,\"lat_mean_us\":%.2f,\"lat_p50_us\":%.2f,\"lat_p99_us\":%.2f,\"lat_p999_us\":%.2f,"
                            + "\"lat_max_us\":%.2f,\"completion\":\"%s\",\"interrupts\":%d}",
                    queueDepth,
                    ios,
                    seconds,
                    iops,
                    meanUs,
                    p50Us,
                    p99Us,
                    p999Us,
                    maxUs,
                    completion,
                    interrupts);
        }
    }

    private NvmeBench() {}

    /**
     * Runs for {@code seconds} with {@code queueDepth} reads always outstanding, at random 4 KiB-aligned offsets.
     * Ends early with an error when the host takes the device back meanwhile.
     */
    public static Result randomRead(NvmeController c, int queueDepth, double seconds, long seed) throws VfioException {
        Result r;
        try {
            r = run(c, queueDepth, seconds, seed);
        } catch (VfioException | RuntimeException e) {
            NvmeException released = c.closedError("benchmark", e);
            if (released != null) {
                throw released;
            }
            throw e;
        }
        NvmeException released = c.quiescing() ? c.closedError("benchmark", null) : null;
        if (released != null) {
            throw released; // the reads drained early: no measurement of the time asked for
        }
        return r;
    }

    private static Result run(NvmeController c, int queueDepth, double seconds, long seed) throws VfioException {
        QueuePair q = c.ioQueue();
        if (queueDepth < 1 || queueDepth > q.maxOutstanding()) {
            throw new IllegalArgumentException("queue depth must be 1.." + q.maxOutstanding() + " (the I/O queue holds "
                    + q.depth + " entries; open the controller with a deeper queue)");
        }
        if (seconds <= 0 || seconds > 3600) {
            throw new IllegalArgumentException("seconds must be in (0, 3600]: " + seconds);
        }
        int bs = c.blockSize();
        if (bs > IO_SIZE) {
            throw new IllegalArgumentException("the namespace's " + bs + "-byte blocks are larger than 4 KiB");
        }
        long slots = c.namespace().size() / (IO_SIZE / bs);
        if (slots < 1) {
            throw new IllegalArgumentException("the namespace is smaller than 4 KiB");
        }
        DmaBuffer[] buffers = new DmaBuffer[q.maxOutstanding()];
        for (int i = 0; i < buffers.length; i++) {
            buffers[i] = c.allocateBuffer(IO_SIZE);
        }
        Runner r = new Runner(c, q, buffers, IO_SIZE / bs, slots, seed);
        CompletionWaiter w = c.ioWaiter();
        long interruptsBefore = w.interrupts();

        // warm-up: the JIT compiles the submit/reap path before anything is measured
        r.run(w, Math.min(queueDepth, 4), Math.min(0.5, seconds / 4), false);
        r.histogram = new LatencyHistogram();
        interruptsBefore = w.interrupts();
        long t0 = System.nanoTime();
        r.run(w, queueDepth, seconds, true);
        double elapsed = (System.nanoTime() - t0) / 1e9;
        LatencyHistogram h = r.histogram;
        return new Result(
                queueDepth,
                h.count(),
                elapsed,
                h.count() / elapsed,
                h.mean() / 1e3,
                h.valueAtQuantile(0.5) / 1e3,
                h.valueAtQuantile(0.99) / 1e3,
                h.valueAtQuantile(0.999) / 1e3,
                h.max() / 1e3,
                c.irqMode().name(),
                w.interrupts() - interruptsBefore);
    }

    /** The submit/complete loop; its handler is this object, so completions allocate nothing. */
    private static final class Runner implements QueuePair.CompletionHandler {
        private final NvmeController c;
        private final QueuePair q;
        private final DmaBuffer[] buffers;
        private final int blocks;
        private final long slots;
        private final long[] started;
        private final int nsid;
        private long rng;
        private long deadline;
        private boolean measuring;
        private int failedStatus = -1;
        LatencyHistogram histogram = new LatencyHistogram();

        Runner(NvmeController c, QueuePair q, DmaBuffer[] buffers, int blocks, long slots, long seed) {
            this.c = c;
            this.q = q;
            this.buffers = buffers;
            this.blocks = blocks;
            this.slots = slots;
            this.started = new long[buffers.length];
            this.nsid = c.namespace().nsid();
            this.rng = seed == 0 ? 0x9e3779b97f4a7c15L : seed;
        }

        void run(CompletionWaiter w, int depth, double seconds, boolean measure) throws VfioException {
            measuring = measure;
            long timeout = c.options().commandTimeout().toNanos();
            deadline = System.nanoTime() + (long) (seconds * 1e9);
            for (int i = 0; i < depth; i++) {
                submitOne();
            }
            long lastProgress = System.nanoTime();
            while (q.outstanding() > 0) {
                int n = q.reap(this);
                w.afterReap();
                if (failedStatus >= 0) {
                    drain(w, timeout);
                    throw NvmeException.failed("benchmark read", failedStatus);
                }
                long now = System.nanoTime();
                if (c.shutDown()) {
                    throw new NvmeException(
                            "benchmark: the controller was shut down with " + q.outstanding() + " reads in flight");
                }
                if (n > 0) {
                    lastProgress = now;
                } else if (now - lastProgress > timeout) {
                    c.markFailed();
                    throw new NvmeException("benchmark: no completion for " + timeout / 1_000_000 + " ms with "
                            + q.outstanding() + " reads outstanding — the controller stalled; it must be reset");
                } else {
                    w.await(Math.min(timeout, 10_000_000));
                }
            }
        }

        private void drain(CompletionWaiter w, long timeout) throws VfioException {
            deadline = 0; // completions no longer resubmit
            long end = System.nanoTime() + timeout;
            while (q.outstanding() > 0 && System.nanoTime() - end < 0) {
                if (q.reap(this) == 0) {
                    w.await(1_000_000);
                }
                w.afterReap();
            }
        }

        private void submitOne() {
            int cid = q.allocate();
            long x = rng; // xorshift64*
            x ^= x >>> 12;
            x ^= x << 25;
            x ^= x >>> 27;
            rng = x;
            long lba = Long.remainderUnsigned(x * 0x2545F4914F6CDD1DL, slots) * blocks;
            started[cid] = System.nanoTime();
            q.submit(
                    cid,
                    NvmeRegs.NVM_READ,
                    nsid,
                    buffers[cid].iova(),
                    0,
                    (int) lba,
                    (int) (lba >>> 32),
                    blocks - 1,
                    0,
                    0,
                    0);
        }

        @Override
        public void completed(int cid, int status, int dw0) {
            long now = System.nanoTime();
            if (!NvmeStatus.success(status)) {
                if (failedStatus < 0) {
                    failedStatus = status;
                }
                return;
            }
            histogram.record(now - started[cid]);
            // a controller being closed (SIGTERM) gets no new commands: the reads in flight drain, then run() returns
            if (failedStatus < 0 && now - deadline < 0 && !c.quiescing()) {
                submitOne();
            }
        }
    }
}
