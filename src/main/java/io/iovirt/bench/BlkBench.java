// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import io.iovirt.linux.UnixSocket;
import io.iovirt.util.LatencyHistogram;
import io.iovirt.virtio.VirtioFeatures;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.OptionalLong;

/**
 * Runs one benchmark against a vhost-user-blk backend: connect and negotiate ({@link VhostUserBlkDriver}), one
 * {@link QueueRunner} thread per queue, a warm-up, a measured phase bracketed by readings of the backend's CPU time,
 * then the drain (and read-back with verify) and an orderly stop of the rings.
 */
public final class BlkBench {
    /** The name our guest RAM has in the backend's /proc/PID/smaps (see FrontendMemory). */
    static final String GUEST_RAM_NAME = "memfd:iovirt-guest-ram";

    private static final Duration REPLY_TIMEOUT = Duration.ofSeconds(30);
    private static final long STALL_NANOS = 30_000_000_000L;

    private BlkBench() {}

    public static BlkBenchResult run(BlkBenchOptions o) throws IOException {
        try (VhostUserBlkDriver driver = VhostUserBlkDriver.connect(o.socket(), REPLY_TIMEOUT)) {
            UnixSocket socket = driver.socket();
            BackendProcess backend = new BackendProcess(socket.peerCredentials().pid());
            BackendProcess self = new BackendProcess(ProcessHandle.current().pid());
            VhostUserBlkDriver.Device dev = driver.negotiate(o.packed());
            boolean indirect = o.indirect() && dev.has(VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC);
            check(o, dev, indirect);

            List<DriverQueue> queues = driver.start(new VhostUserBlkDriver.Layout(
                    o.queues(), o.queueSize(), o.queueDepth(), o.blockBytes(), o.packed(), indirect));
            long blocks = dev.capacityBytes() / o.blockBytes();
            QueueRunner.Phase phase = new QueueRunner.Phase();
            List<QueueRunner> runners = new ArrayList<>();
            for (DriverQueue q : queues) {
                runners.add(new QueueRunner(
                        q,
                        new QueueRunner.Workload(
                                o.pattern().write(), o.interrupts(), o.verify(), o.seed(), o.queueDepth()),
                        new BlockSequence(blocks, o.pattern().random(), o.seed(), o.queues(), q.index()),
                        phase,
                        STALL_NANOS));
            }
            List<Thread> threads = new ArrayList<>();
            for (QueueRunner r : runners) {
                // platform threads: the loop busy-polls or blocks in epoll_wait, a native call
                threads.add(
                        Thread.ofPlatform().name("bench-blk-q" + threads.size()).start(r));
            }
            try {
                await(o.warmupSeconds(), runners, socket);
                OptionalLong cpu0 = backend.cpuNanos();
                OptionalLong self0 = self.cpuNanos();
                long t0 = System.nanoTime();
                phase.value = QueueRunner.MEASURE;
                await(o.seconds(), runners, socket);
                long t1 = System.nanoTime();
                phase.value = QueueRunner.STOP;
                OptionalLong cpu1 = backend.cpuNanos();
                OptionalLong self1 = self.cpuNanos();
                BackendProcess.Memory memory = backend.memory(GUEST_RAM_NAME);
                join(threads, runners, socket);
                driver.stop();

                LatencyHistogram latency = new LatencyHistogram();
                long ios = 0, verified = 0, allocated = 0, clientCpu = 0;
                double lowestCore = Double.POSITIVE_INFINITY;
                for (QueueRunner r : runners) {
                    latency.add(r.histogram());
                    ios += r.completed();
                    verified += r.verifiedBlocks();
                    allocated = allocated < 0 || r.allocatedWhileMeasuring() < 0
                            ? -1
                            : allocated + r.allocatedWhileMeasuring();
                    long cpu = r.cpuWhileMeasuring();
                    clientCpu = clientCpu < 0 || cpu < 0 ? -1 : clientCpu + cpu;
                    lowestCore = cpu < 0 || r.wallWhileMeasuring() <= 0
                            ? Double.NaN
                            : Math.min(lowestCore, 100.0 * cpu / r.wallWhileMeasuring());
                }
                return new BlkBenchResult(
                        o,
                        dev,
                        indirect,
                        backend.pid(),
                        backend.name(),
                        backend.pid() == self.pid(),
                        (t1 - t0) / 1e9,
                        ios,
                        latency,
                        BackendProcess.elapsed(cpu0, cpu1),
                        clientCpu < 0 ? OptionalLong.empty() : OptionalLong.of(clientCpu),
                        lowestCore,
                        BackendProcess.elapsed(self0, self1),
                        memory,
                        driver.sharedMemoryBytes(),
                        allocated,
                        verified);
            } finally {
                phase.value = QueueRunner.ABORT; // after a failure: leave requests in flight, the connection closes
                for (Thread t : threads) {
                    joinQuietly(t);
                }
            }
        }
    }

    private static void check(BlkBenchOptions o, VhostUserBlkDriver.Device dev, boolean indirect) {
        if (o.pattern().write() && dev.readOnly()) {
            throw new IllegalArgumentException(
                    "the backend's disk is read-only (VIRTIO_BLK_F_RO): use --rw read or randread");
        }
        if (o.blockBytes() % dev.blockSize() != 0) {
            throw new IllegalArgumentException(
                    "--bs " + o.blockBytes() + " is not a multiple of the disk's block size " + dev.blockSize());
        }
        if (dev.capacityBytes() < o.blockBytes()) {
            throw new IllegalArgumentException(
                    "the disk has " + dev.capacityBytes() + " bytes, less than one --bs block");
        }
        if (o.queues() > dev.numQueues()) {
            throw new IllegalArgumentException(
                    "--queues " + o.queues() + " but the backend offers " + dev.numQueues() + " queue(s)");
        }
        int segs = VhostUserBlkDriver.dataSegments(dev, o.blockBytes());
        if (dev.segMax() > 0 && segs > dev.segMax()) {
            throw new IllegalArgumentException("--bs " + o.blockBytes() + " needs " + segs + " segments of at most "
                    + dev.sizeMax() + " bytes, the backend accepts " + dev.segMax());
        }
        int perRequest = indirect ? 1 : segs + 2;
        if ((long) o.queueDepth() * perRequest > o.queueSize()) {
            throw new IllegalArgumentException("--qd " + o.queueDepth() + " needs " + (long) o.queueDepth() * perRequest
                    + " descriptors" + (indirect ? "" : " (" + perRequest + " per request, no indirect descriptors)")
                    + " but --queue-size is " + o.queueSize());
        }
    }

    /** Sleeps through a phase, ending the run early when a queue failed or the backend hung up. */
    private static void await(double seconds, List<QueueRunner> runners, UnixSocket socket) throws IOException {
        long end = System.nanoTime() + (long) (seconds * 1e9);
        for (long left; (left = end - System.nanoTime()) > 0; ) {
            checkRunners(runners);
            if (socket.peerHungUp()) {
                throw new IOException("the backend closed the connection during the run (did it crash? see its log)");
            }
            try {
                Thread.sleep(Math.min(left / 1_000_000 + 1, 100));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted", e);
            }
        }
        checkRunners(runners);
    }

    private static void checkRunners(List<QueueRunner> runners) throws IOException {
        for (QueueRunner r : runners) {
            String why = r.failure();
            if (why != null) {
                throw new IOException(why);
            }
        }
    }

    /** Waits for the runners to drain (and verify); each fails by itself when the backend stalls. */
    private static void join(List<Thread> threads, List<QueueRunner> runners, UnixSocket socket) throws IOException {
        for (Thread t : threads) {
            while (t.isAlive()) {
                checkRunners(runners);
                if (socket.peerHungUp()) {
                    throw new IOException("the backend closed the connection while requests were completing");
                }
                try {
                    t.join(100);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new IOException("interrupted", e);
                }
            }
        }
        checkRunners(runners);
    }

    private static void joinQuietly(Thread t) {
        boolean interrupted = false;
        while (t.isAlive()) {
            try {
                t.join();
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }
}
