// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.LinuxException;
import io.iovirt.util.LatencyHistogram;
import io.iovirt.virtio.DriverRing;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.nio.ByteOrder;

/**
 * Drives one queue on its own platform thread: keeps exactly {@code qd} requests in flight, completes them by busy
 * polling the used ring (interrupts suppressed) or by sleeping on the call eventfd, checks every status byte, and
 * records each request's latency (submit to completion) while the run is in its measuring phase. With
 * {@code verify}, the written data carries {@link BlockPattern}, and after the timed phase every block the queue
 * wrote is read back and compared.
 *
 * <p>The loop allocates nothing: slots, descriptor arrays and the histogram exist before the first request.
 *
 * <p>The load is a closed loop: a request is made when a slot frees. Its latency is its own submit to completion,
 * so at QD > 1 the percentiles suffer from coordinated omission — while the backend stalls, the requests a steady
 * arrival rate would have made in the meantime are not made, so a stall shows as one long latency per slot and fewer
 * I/Os, not as the tail of late requests an open-loop client (requests at a fixed rate) would record. At QD 1 the
 * loop is the workload itself (each request waits for the last), and nothing is omitted.
 */
final class QueueRunner implements Runnable {
    static final int WARMUP = 0;
    static final int MEASURE = 1;
    static final int STOP = 2;
    static final int ABORT = 3;

    /** Set by the coordinating thread; every runner reads it once per batch of completions. */
    static final class Phase {
        volatile int value = WARMUP;
    }

    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final int T_IN = 0;
    private static final int T_OUT = 1;
    private static final byte STATUS_UNSET = (byte) 0xff;
    private static final int SPINS_PER_CLOCK_CHECK = 1024;

    private final DriverQueue q;
    private final DriverRing ring;
    private final Workload workload;
    private final BlockSequence sequence;
    private final Phase phase;
    private final long stallNanos;
    private final Epoll epoll;
    private final MemorySegment control;
    private final MemorySegment data;
    private final int qd;
    private final long sectorsPerBlock;
    private final int[] slotById;
    private final long[] submitted;
    private final long[] slotSector;
    private final boolean[] slotRead;
    private final com.sun.management.ThreadMXBean threads;
    private final java.lang.management.ThreadMXBean cpuClock;

    private final LatencyHistogram histogram = new LatencyHistogram();
    private long completedMeasured;
    private long next; // sequence position of the next request
    private boolean verifying;
    private long verified;
    private long lastProgress;
    private int idleSpins;
    private long allocatedAtMeasure = -1;
    private long allocatedAtStop = -1;
    // This thread's CPU clock and the wall clock where its measured window starts and ends (its first batch of
    // completions in MEASURE, and the moment it sees STOP): the window its completed() counts.
    private boolean measured;
    private long cpuAtMeasure = -1;
    private long cpuAtStop = -1;
    private long wallAtMeasure;
    private long wallAtStop;
    private volatile String failure;

    /** What the queue does: direction, completion mode, whether data is checked, depth (the order is the sequence's). */
    record Workload(boolean write, boolean interrupts, boolean verify, long seed, int qd) {}

    QueueRunner(DriverQueue q, Workload workload, BlockSequence sequence, Phase phase, long stallNanos)
            throws LinuxException {
        this.q = q;
        this.ring = q.ring();
        this.workload = workload;
        this.sequence = sequence;
        this.phase = phase;
        this.stallNanos = stallNanos;
        this.control = q.control();
        this.data = q.data();
        this.qd = workload.qd();
        this.sectorsPerBlock = q.blockBytes() / BlockPattern.SECTOR;
        this.slotById = new int[ring.size()];
        this.submitted = new long[qd];
        this.slotSector = new long[qd];
        this.slotRead = new boolean[qd];
        if (workload.interrupts()) {
            this.epoll = Epoll.create(1);
            epoll.add(q.call().fd(), Epoll.EPOLLIN, 0);
        } else {
            this.epoll = null;
        }
        this.threads = ManagementFactory.getThreadMXBean() instanceof com.sun.management.ThreadMXBean t
                        && t.isThreadAllocatedMemorySupported()
                ? t
                : null;
        java.lang.management.ThreadMXBean clock = ManagementFactory.getThreadMXBean();
        this.cpuClock = clock.isCurrentThreadCpuTimeSupported() ? clock : null;
        if (workload.write() && !workload.verify()) {
            // something other than zeros, once: a backend must not get away with detecting zero pages
            for (long off = 0; off + 8 <= data.byteSize(); off += 8) {
                data.set(LE64, off, BlockSequence.mix(off ^ workload.seed()));
            }
        }
    }

    @Override
    public void run() {
        try {
            runPhases();
        } catch (RunFailure e) {
            failure = e.getMessage();
        } catch (LinuxException | RuntimeException e) {
            failure = "queue " + q.index() + ": " + e;
        } finally {
            if (epoll != null) {
                epoll.close();
            }
        }
    }

    private void runPhases() throws LinuxException, RunFailure {
        if (!workload.interrupts()) {
            ring.disableInterrupts(); // we poll: ask the backend not to signal the call eventfd
        }
        lastProgress = System.nanoTime();
        for (int s = 0; s < qd; s++) {
            submitNext(s, !workload.write());
        }
        kickIfNeeded();
        int p;
        while ((p = phase.value) == WARMUP || p == MEASURE) {
            long used = ring.pollUsed();
            if (used == -1) {
                idle();
                continue;
            }
            boolean measuring = p == MEASURE;
            if (measuring && !measured) {
                measured = true;
                wallAtMeasure = System.nanoTime();
                cpuAtMeasure = cpuNanos();
                allocatedAtMeasure = allocatedBytes();
            }
            do {
                int s = complete(used, measuring);
                submitNext(s, !workload.write());
            } while ((used = ring.pollUsed()) != -1);
            kickIfNeeded();
        }
        allocatedAtStop = allocatedBytes();
        cpuAtStop = cpuNanos();
        wallAtStop = System.nanoTime();
        drain();
        if (workload.verify()) {
            verifyWritten();
        }
    }

    /** Makes the next request of the sequence in slot {@code s}. */
    private void submitNext(int s, boolean read) {
        long block = sequence.block(next++);
        submit(s, block * sectorsPerBlock, read);
    }

    private void submit(int s, long sector, boolean read) {
        long h = q.headerOffset[s];
        control.set(LE32, h, read ? T_IN : T_OUT);
        control.set(LE32, h + 4, 0);
        control.set(LE64, h + 8, sector);
        control.set(ValueLayout.JAVA_BYTE, q.statusOffset[s], STATUS_UNSET);
        if (!read && workload.verify()) {
            BlockPattern.fill(data, q.dataOffset[s], q.blockBytes(), workload.seed(), sector);
        }
        q.setDirection(s, read);
        slotSector[s] = sector;
        slotRead[s] = read;
        submitted[s] = System.nanoTime();
        int id = ring.add(q.addrs[s], q.lens[s], q.writable[s], q.descriptors(), q.indirectTable[s]);
        if (id < 0) {
            throw new IllegalStateException("queue " + q.index() + ": ring full with " + ring.inFlight()
                    + " requests in flight; the ring was sized for " + qd);
        }
        slotById[id] = s;
    }

    /** Checks a completed request and returns its slot. */
    private int complete(long used, boolean measuring) throws RunFailure {
        long now = System.nanoTime();
        int s = slotById[DriverRing.usedId(used)];
        byte status = control.get(ValueLayout.JAVA_BYTE, q.statusOffset[s]);
        if (status != 0) {
            throw new RunFailure(String.format(
                    "queue %d: %s of %d bytes at sector %d completed with %s",
                    q.index(), slotRead[s] ? "read" : "write", q.blockBytes(), slotSector[s], statusName(status)));
        }
        if (verifying) {
            String diff = BlockPattern.check(data, q.dataOffset[s], q.blockBytes(), workload.seed(), slotSector[s]);
            if (diff != null) {
                throw new RunFailure("queue " + q.index() + ": verify failed: the block written at sector "
                        + slotSector[s] + " reads back different: " + diff);
            }
            verified++;
        }
        if (measuring) {
            histogram.record(now - submitted[s]);
            completedMeasured++;
        }
        lastProgress = now;
        return s;
    }

    private static String statusName(byte status) {
        return switch (status) {
            case 1 -> "VIRTIO_BLK_S_IOERR (1): the backend failed it (see the backend's log)";
            case 2 -> "VIRTIO_BLK_S_UNSUPP (2): the backend does not support the request";
            case STATUS_UNSET -> "no status: the backend returned the request without writing its status byte";
            default -> "unknown status " + Byte.toUnsignedInt(status);
        };
    }

    private void kickIfNeeded() throws LinuxException {
        if (ring.kickNeeded()) {
            q.kick().signal();
        }
    }

    /**
     * Nothing completed: spin (polling), or re-enable interrupts and sleep on the call eventfd. Fails when nothing
     * has completed for the stall timeout while requests are in flight.
     */
    private void idle() throws LinuxException, RunFailure {
        if (epoll == null) {
            Thread.onSpinWait();
            if (++idleSpins < SPINS_PER_CLOCK_CHECK) {
                return;
            }
            idleSpins = 0;
        } else {
            if (!ring.enableInterrupts()) { // re-checks the ring after asking: no completion slips through
                if (epoll.wait(100) > 0) {
                    q.call().read();
                }
            }
            ring.disableInterrupts(); // completions are drained without further interrupts
        }
        if (phase.value == ABORT) {
            throw new RunFailure("queue " + q.index() + ": run aborted");
        }
        if (ring.inFlight() > 0 && System.nanoTime() - lastProgress > stallNanos) {
            throw new RunFailure(String.format(
                    "queue %d: no request completed for %d s with %d in flight: the "
                            + "backend stopped serving the queue (see its log)",
                    q.index(), stallNanos / 1_000_000_000L, ring.inFlight()));
        }
    }

    /** Completes what is in flight without making new requests. */
    private void drain() throws LinuxException, RunFailure {
        while (ring.inFlight() > 0) {
            long used = ring.pollUsed();
            if (used == -1) {
                idle();
            } else {
                complete(used, false);
            }
        }
    }

    /** Reads back, at the same queue depth, every block the write phase covered, and compares. */
    private void verifyWritten() throws LinuxException, RunFailure {
        long total = Math.min(next, sequence.blocksPerPass());
        verifying = true;
        next = 0;
        for (int s = 0; s < qd; s++) { // nothing of the written pattern may linger in this queue's buffers
            data.asSlice(q.dataOffset[s], q.blockBytes()).fill((byte) 0);
        }
        for (int s = 0; s < qd && next < total; s++) {
            submitNext(s, true);
        }
        kickIfNeeded();
        while (ring.inFlight() > 0) {
            long used = ring.pollUsed();
            if (used == -1) {
                idle();
                continue;
            }
            do {
                int s = complete(used, false);
                if (next < total) {
                    submitNext(s, true);
                }
            } while ((used = ring.pollUsed()) != -1);
            kickIfNeeded();
        }
        verifying = false;
    }

    private long allocatedBytes() {
        return threads == null ? -1 : threads.getCurrentThreadAllocatedBytes();
    }

    /** This thread's CPU time (user + system, CLOCK_THREAD_CPUTIME_ID: nanoseconds, not ticks), or -1. */
    private long cpuNanos() {
        return cpuClock == null ? -1 : cpuClock.getCurrentThreadCpuTime();
    }

    String failure() {
        return failure;
    }

    LatencyHistogram histogram() {
        return histogram;
    }

    /** Requests completed in the measuring phase (recorded in the histogram). */
    long completed() {
        return completedMeasured;
    }

    long verifiedBlocks() {
        return verified;
    }

    /**
     * CPU time this queue's thread used in its measured window — the client's work for the requests counted by
     * {@link #completed()}, without the rest of the client process (JIT compiler, GC, the coordinating thread) — or
     * -1 when the JVM cannot tell or nothing completed while measuring.
     */
    long cpuWhileMeasuring() {
        return cpuAtMeasure < 0 || cpuAtStop < 0 ? -1 : cpuAtStop - cpuAtMeasure;
    }

    /** Wall-clock length of this thread's measured window in nanoseconds; 0 when nothing completed while measuring. */
    long wallWhileMeasuring() {
        return measured ? wallAtStop - wallAtMeasure : 0;
    }

    /** Heap bytes this thread allocated between its first measured completion and the stop, or -1 if unknown. */
    long allocatedWhileMeasuring() {
        return allocatedAtMeasure < 0 || allocatedAtStop < 0 ? -1 : allocatedAtStop - allocatedAtMeasure;
    }

    /** A run-ending problem with a message for the user. */
    static final class RunFailure extends Exception {
        RunFailure(String message) {
            super(message, null, false, false);
        }
    }
}
