// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.devices.blk.BlkStats;
import io.iovirt.devices.net.VirtioNetPort;
import io.iovirt.net.PortStat;
import io.iovirt.net.PortStats;
import io.iovirt.storage.DiskImage;
import io.iovirt.util.Json;
import io.iovirt.virtio.QueueWorker;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The JSON shapes of the daemon's answers about its devices: the list entries of blk.list, blk.info, nbd.list and
 * net.list, and the counters of stats — the last also the schema of the {@code serve} commands' JSON statistics lines
 * (through {@link Daemon#blkCounters} and its siblings, the public names). Only shaping: no lookups, no errors.
 *
 * <p>Locking: nothing here is guarded; the callers hold the daemon's registry lock around whatever reads a switch's
 * {@link NetSwitch#ports} map ({@link #netSummary}, {@link #netStats}, {@link #stats}), which that lock guards. The
 * counters themselves are read without a lock, as the data paths write them (each by its own thread).
 */
final class DeviceJson {
    private DeviceJson() {}

    /** A blk.list entry. */
    static Map<String, Object> blkSummary(BlkExport e) {
        Map<String, Object> m = exportSummary(e.spec.id(), e.spec.image(), e.spec.socket(), e.image);
        m.put("queues", e.spec.queues());
        m.put("readonly", e.image.readOnly());
        m.put("direct", e.spec.direct());
        m.put("connected", e.server.connected());
        m.put("frontend_pid", e.server.frontendPid());
        return m;
    }

    /** blk.info: the summary, plus what the device negotiated and its counters. */
    static Map<String, Object> blkInfo(BlkExport e) {
        Map<String, Object> m = blkSummary(e);
        m.put("serial", e.spec.serial());
        m.put("io", e.device.ioDescription());
        m.put("features_offered", hex(e.device.features()));
        m.put("features_acked", hex(e.device.ackedFeatures()));
        m.put("running_queues", e.device.runningQueues());
        m.put("origin", e.fromConfig ? "config" : "api");
        m.put("counters", blkCounters(e.device.stats()));
        return m;
    }

    private static String hex(long v) {
        return "0x" + HexFormat.of().toHexDigits(v).replaceFirst("^0+(?=.)", "");
    }

    /** An nbd.list entry. */
    static Map<String, Object> nbdSummary(NbdExportEntry e) {
        Map<String, Object> m = exportSummary(e.spec.id(), e.spec.image(), e.spec.socket(), e.image);
        m.put("readonly", e.spec.readOnly());
        m.put("connections", e.server.connectionCount());
        return m;
    }

    /** The first fields of a blk.list and an nbd.list entry, the same in both: what is exported, where, how big. */
    private static Map<String, Object> exportSummary(String id, Path image, Path socket, DiskImage disk) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", id);
        m.put("image", image.toString());
        m.put("socket", socket.toString());
        m.put("format", disk.format());
        m.put("size", disk.size());
        return m;
    }

    /** A net.list entry, its ports' summaries included (daemon's lock held: it reads {@link NetSwitch#ports}). */
    static Map<String, Object> netSummary(NetSwitch n) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", n.spec.id());
        m.put("mtu", n.spec.mtu());
        m.put("mac_aging", n.spec.macAgingSeconds());
        m.put("macs_per_port", n.spec.macsPerPort());
        m.put("poll_threads", n.spec.pollThreads());
        m.put("macs", n.sw.macTable().size());
        m.put("mac_table_overcommitted", n.sw.macTableOvercommit() != null);
        List<Object> ports = new ArrayList<>();
        for (NetSwitch.PortEntry e : n.ports.values()) {
            ports.add(portSummary(e));
        }
        m.put("ports", ports);
        return m;
    }

    /** A port of a net.list entry. */
    static Map<String, Object> portSummary(NetSwitch.PortEntry e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", e.spec().id());
        m.put("kind", e.spec().kind());
        m.put(e.spec().kind().equals("tap") ? "ifname" : "path", e.spec().path());
        m.put("number", e.port().index());
        m.put("link", e.port().isLinkUp() ? "up" : "down");
        if (e.port() instanceof VirtioNetPort v) {
            m.put("connected", v.connected());
            m.put("queue_pairs", v.options().queuePairs());
        }
        return m;
    }

    /** stats without an id: every device's (daemon's lock held: it reads the switches' ports). */
    static Map<String, Object> stats(
            Collection<BlkExport> blks, Collection<NetSwitch> nets, Collection<NbdExportEntry> nbds) {
        Map<String, Object> m = new LinkedHashMap<>();
        List<Object> b = new ArrayList<>();
        for (BlkExport e : blks) {
            b.add(blkStats(e));
        }
        List<Object> n = new ArrayList<>();
        for (NetSwitch s : nets) {
            n.add(netStats(s));
        }
        List<Object> nb = new ArrayList<>();
        for (NbdExportEntry e : nbds) {
            nb.add(nbdStats(e));
        }
        m.put("blk", b);
        m.put("net", n);
        m.put("nbd", nb);
        return m;
    }

    /** A disk's stats: its counters, and each queue's with its worker's. */
    static Map<String, Object> blkStats(BlkExport e) {
        Map<String, Object> m = Json.object("id", e.spec.id(), "kind", "blk");
        m.putAll(blkCounters(e.device.stats()));
        List<Object> qs = new ArrayList<>();
        for (int i = 0; i < e.spec.queues(); i++) {
            Map<String, Object> q = new LinkedHashMap<>();
            q.put("queue", i);
            q.putAll(blkCounters(e.device.queueStats(i)));
            q.put("worker", workerCounters(e.device.workerStats(i)));
            qs.add(q);
        }
        m.put("queues", qs);
        return m;
    }

    /** A switch's stats: its MAC table's size and each port's counters (daemon's lock held: it reads its ports). */
    static Map<String, Object> netStats(NetSwitch n) {
        Map<String, Object> m = Json.object("id", n.spec.id(), "kind", "net");
        m.put("macs", n.sw.macTable().size());
        List<Object> ports = new ArrayList<>();
        for (NetSwitch.PortEntry e : n.ports.values()) {
            ports.add(portCounters(e.spec().id(), e.port(), e.port().stats()));
        }
        m.put("ports", ports);
        return m;
    }

    /** An NBD export's stats: its counters. */
    static Map<String, Object> nbdStats(NbdExportEntry e) {
        io.iovirt.nbd.NbdExportStats s = e.export.stats();
        Map<String, Object> m = Json.object("id", e.spec.id(), "kind", "nbd");
        m.putAll(nbdCounters(s));
        return m;
    }

    /** {@link Daemon#blkCounters}. */
    static Map<String, Object> blkCounters(BlkStats.Snapshot s) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("requests", s.requests());
        m.put("reads", s.reads());
        m.put("writes", s.writes());
        m.put("flushes", s.flushes());
        m.put("discards", s.discards());
        m.put("bytes_read", s.bytesRead());
        m.put("bytes_written", s.bytesWritten());
        m.put("io_errors", s.ioErrors());
        m.put("bad_requests", s.badRequests());
        m.put("unsupported", s.unsupported());
        m.put("queue_failures", s.queueFailures());
        m.put("in_flight", s.inFlight());
        return m;
    }

    /** {@link Daemon#workerCounters}. */
    static Map<String, Object> workerCounters(QueueWorker.Totals t) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("batches", t.batches());
        m.put("sleeps", t.sleeps());
        m.put("spin_hits", t.spinHits());
        m.put("lost_notifications", t.lostSignals());
        m.put("recheck_interrupts", t.recheckSignals());
        return m;
    }

    /** {@link Daemon#portCounters}. */
    static Map<String, Object> portCounters(String id, io.iovirt.net.Port port, PortStats st) {
        Map<String, Object> pm = new LinkedHashMap<>();
        pm.put("port", id);
        for (PortStat s : PortStat.values()) {
            pm.put(s.label(), st.get(s));
        }
        if (port instanceof VirtioNetPort v) {
            List<Object> qs = new ArrayList<>();
            for (int i = 0; i < v.options().queuePairs(); i++) {
                Map<String, Object> q = new LinkedHashMap<>();
                q.put("queue", "tx" + i);
                q.put("worker", workerCounters(v.txWorkerStats(i)));
                qs.add(q);
            }
            for (int i = 0; i < v.options().queuePairs(); i++) {
                VirtioNetPort.RxQueueTotals t = v.rxQueueTotals(i);
                Map<String, Object> q = new LinkedHashMap<>();
                q.put("queue", "rx" + i);
                q.put("lost_notifications", t.lostSignals());
                q.put("recheck_interrupts", t.recheckSignals());
                qs.add(q);
            }
            pm.put("queues", qs);
        }
        return pm;
    }

    /** {@link Daemon#nbdCounters}. */
    static Map<String, Object> nbdCounters(io.iovirt.nbd.NbdExportStats s) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("connections", s.connections.get());
        m.put("reads", s.reads.sum());
        m.put("writes", s.writes.sum());
        m.put("flushes", s.flushes.sum());
        m.put("trims", s.trims.sum());
        m.put("write_zeroes", s.writeZeroes.sum());
        m.put("bytes_read", s.bytesRead.sum());
        m.put("bytes_written", s.bytesWritten.sum());
        m.put("errors", s.errors.sum());
        return m;
    }
}
