// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import io.iovirt.util.LatencyHistogram;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.OptionalLong;

/**
 * What one run measured. Errors are not counted here: any request that does not complete with VIRTIO_BLK_S_OK ends
 * the run with an exception instead, so a result always means zero errors.
 *
 * @param sameProcess           the backend runs in this JVM: its CPU time and memory include the client's
 * @param backendCpuNanos       backend CPU time during the measured phase; empty when /proc did not tell
 * @param clientCpuNanos        CPU time of the queue threads (the client's work per request) in their measured windows;
 *                              empty when the JVM has no thread CPU clock
 * @param clientCorePercent     the lowest share of a core a queue thread had over its measured window (its CPU time
 *                              over its wall time): a busy-polling thread below ~95 % lost its core to something
 *                              else, and the run is noise-bound; NaN when unknown
 * @param clientProcessCpuNanos this whole process's CPU time during the measured phase: the queue threads plus the
 *                              JIT compiler, GC and coordinating threads
 * @param backendMemory         at the end of the measured phase; null when /proc did not tell
 * @param sharedMemoryBytes     size of the guest RAM we share (both memfd regions)
 * @param clientAllocatedBytes  heap allocated by the queue threads while measuring; -1 when the JVM cannot tell
 */
public record BlkBenchResult(
        BlkBenchOptions options,
        VhostUserBlkDriver.Device device,
        boolean indirect,
        long backendPid,
        String backendName,
        boolean sameProcess,
        double seconds,
        long ios,
        LatencyHistogram latency,
        OptionalLong backendCpuNanos,
        OptionalLong clientCpuNanos,
        double clientCorePercent,
        OptionalLong clientProcessCpuNanos,
        BackendProcess.Memory backendMemory,
        long sharedMemoryBytes,
        long clientAllocatedBytes,
        long verifiedBlocks) {

    public double iops() {
        return ios / seconds;
    }

    public double mibPerSecond() {
        return iops() * options.blockBytes() / (1 << 20);
    }

    /** Backend CPU microseconds per I/O, or NaN when unknown. */
    public double backendCpuMicrosPerIo() {
        return perIo(backendCpuNanos);
    }

    /** CPU microseconds per I/O of the queue threads, or NaN when unknown. */
    public double clientCpuMicrosPerIo() {
        return perIo(clientCpuNanos);
    }

    public double clientProcessCpuMicrosPerIo() {
        return perIo(clientProcessCpuNanos);
    }

    private double perIo(OptionalLong nanos) {
        return nanos.isPresent() && ios > 0 ? nanos.getAsLong() / 1e3 / ios : Double.NaN;
    }

    private static double micros(long nanos) {
        return nanos / 1e3;
    }

    public String text() {
        BlkBenchOptions o = options;
        StringBuilder b = new StringBuilder();
        b.append(String.format(
                Locale.ROOT,
                "workload: %s bs=%d qd=%d queues=%d, %s ring%s, %s; %.2f s measured after %.1f s warm-up%n",
                o.pattern().fioName(),
                o.blockBytes(),
                o.queueDepth(),
                o.queues(),
                o.packed() ? "packed" : "split",
                indirect ? ", indirect descriptors" : "",
                o.interrupts() ? "interrupts" : "polling",
                seconds,
                o.warmupSeconds()));
        b.append(String.format(
                Locale.ROOT,
                "backend:  %s (pid %d)%s; %d MiB disk, %d-byte blocks; features 0x%x, protocol features 0x%x%n",
                backendName,
                backendPid,
                sameProcess ? " — this process" : "",
                device.capacityBytes() >> 20,
                device.blockSize(),
                device.features(),
                device.protocolFeatures()));
        b.append(String.format(
                Locale.ROOT, "result:   %.0f IOPS, %.1f MiB/s, %d I/Os, 0 errors%n", iops(), mibPerSecond(), ios));
        b.append(String.format(
                Locale.ROOT,
                "latency:  min %.1f, mean %.1f, p50 %.1f, p99 %.1f, p99.9 %.1f, max %.1f µs%n",
                micros(latency.min()),
                latency.mean() / 1e3,
                micros(latency.valueAtQuantile(0.5)),
                micros(latency.valueAtQuantile(0.99)),
                micros(latency.valueAtQuantile(0.999)),
                micros(latency.max())));
        b.append("backend CPU: ")
                .append(cpu(backendCpuNanos))
                .append(sameProcess ? " (includes this client)" : "")
                .append('\n');
        b.append("client CPU:  ")
                .append(cpu(clientCpuNanos))
                .append(o.queues() > 1 ? " in the queue threads, the lowest at " : " in the queue thread, at ")
                .append(
                        Double.isNaN(clientCorePercent)
                                ? "n/a"
                                : String.format(Locale.ROOT, "%.1f %%", clientCorePercent))
                .append(" of its core; the whole client process ")
                .append(String.format(Locale.ROOT, "%.2f µs/IO", clientProcessCpuMicrosPerIo()))
                .append('\n');
        if (backendMemory == null) {
            b.append("backend memory: n/a (/proc/").append(backendPid).append(" not readable)\n");
        } else {
            b.append("backend memory: RSS ")
                    .append(kib(backendMemory.rssKiB()))
                    .append(", of it guest RAM mapped ")
                    .append(kib(backendMemory.guestMappingKiB()))
                    .append(" (we share ")
                    .append(kib(sharedMemoryBytes / 1024))
                    .append(") → ")
                    .append(kib(backendMemory.beyondGuestKiB()))
                    .append(" beyond guest mappings")
                    .append(sameProcess ? " (includes this client)" : "")
                    .append('\n');
        }
        if (clientAllocatedBytes >= 0) {
            b.append(String.format(
                    Locale.ROOT,
                    "client heap allocation while measuring: %.2f bytes/IO%n",
                    ios == 0 ? 0.0 : (double) clientAllocatedBytes / ios));
        }
        if (o.verify()) {
            b.append("verify:   ")
                    .append(verifiedBlocks)
                    .append(" written blocks read back and matched (seed ")
                    .append(o.seed())
                    .append(")\n");
        }
        return b.toString();
    }

    private String cpu(OptionalLong nanos) {
        if (nanos.isEmpty()) {
            return "n/a (not readable)";
        }
        return String.format(
                Locale.ROOT,
                "%.2f µs/IO (%.2f s in %.2f s, %.0f%% of a core)",
                perIo(nanos),
                nanos.getAsLong() / 1e9,
                seconds,
                100 * nanos.getAsLong() / 1e9 / seconds);
    }

    private static String kib(long kib) {
        return kib < 1024 ? kib + " KiB" : String.format(Locale.ROOT, "%.1f MiB", kib / 1024.0);
    }

    public Map<String, Object> json() {
        BlkBenchOptions o = options;
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("rw", o.pattern().fioName());
        m.put("bs", o.blockBytes());
        m.put("qd", o.queueDepth());
        m.put("queues", o.queues());
        m.put("queue_size", o.queueSize());
        m.put("ring", o.packed() ? "packed" : "split");
        m.put("indirect", indirect);
        m.put("completion", o.interrupts() ? "interrupts" : "polling");
        m.put("seconds", seconds);
        m.put("warmup_seconds", o.warmupSeconds());
        m.put("seed", o.seed());
        Map<String, Object> be = new LinkedHashMap<>();
        be.put("pid", backendPid);
        be.put("name", backendName);
        be.put("same_process", sameProcess);
        be.put("offered_features", hex(device.offeredFeatures()));
        be.put("features", hex(device.features()));
        be.put("protocol_features", hex(device.protocolFeatures()));
        be.put("capacity_bytes", device.capacityBytes());
        be.put("block_size", device.blockSize());
        be.put("num_queues", device.numQueues());
        m.put("backend", be);
        m.put("ios", ios);
        m.put("errors", 0);
        m.put("iops", iops());
        m.put("mib_per_s", mibPerSecond());
        Map<String, Object> lat = new LinkedHashMap<>();
        lat.put("min", latency.min());
        lat.put("mean", latency.mean());
        lat.put("p50", latency.valueAtQuantile(0.5));
        lat.put("p99", latency.valueAtQuantile(0.99));
        lat.put("p99_9", latency.valueAtQuantile(0.999));
        lat.put("max", latency.max());
        m.put("latency_ns", lat);
        // the whole curve, for percentile plots: [percentile, latency ns] pairs
        List<List<Object>> curve = new ArrayList<>();
        for (double q : CURVE_QUANTILES) {
            curve.add(List.of(q * 100, latency.valueAtQuantile(q)));
        }
        m.put("latency_curve_ns", curve);
        m.put("backend_cpu_seconds", backendCpuNanos.isPresent() ? backendCpuNanos.getAsLong() / 1e9 : null);
        m.put("backend_cpu_us_per_io", backendCpuMicrosPerIo());
        m.put("client_cpu_us_per_io", clientCpuMicrosPerIo());
        m.put("client_core_percent", clientCorePercent);
        m.put("client_process_cpu_us_per_io", clientProcessCpuMicrosPerIo());
        if (backendMemory == null) {
            m.put("backend_memory", null);
        } else {
            Map<String, Object> mem = new LinkedHashMap<>();
            mem.put("rss_kib", backendMemory.rssKiB());
            mem.put("anon_kib", backendMemory.anonKiB());
            mem.put("file_kib", backendMemory.fileKiB());
            mem.put("shmem_kib", backendMemory.shmemKiB());
            mem.put("guest_mapping_kib", backendMemory.guestMappingKiB());
            mem.put("beyond_guest_kib", backendMemory.beyondGuestKiB());
            m.put("backend_memory", mem);
        }
        m.put("shared_memory_bytes", sharedMemoryBytes);
        m.put(
                "client_allocated_bytes_per_io",
                clientAllocatedBytes < 0 || ios == 0 ? null : (double) clientAllocatedBytes / ios);
        m.put("verified_blocks", verifiedBlocks);
        return m;
    }

    /** Where the latency curve is sampled: denser towards the tail, which is where backends differ. */
    private static final double[] CURVE_QUANTILES = {
        0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999
    };

    private static String hex(long v) {
        return "0x" + Long.toHexString(v);
    }
}
