// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import io.iovirt.devices.blk.BlkStats;
import io.iovirt.devices.net.VirtioNetPort;
import io.iovirt.net.PortStat;
import io.iovirt.net.PortStats;
import io.iovirt.virtio.QueueWorker;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.net.Inet6Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Prometheus text exposition (format 0.0.4) at {@code http://HOST:PORT/metrics}, on a loopback address only: the
 * counters name sockets and images, which are not for the network. Every scrape reads the live counters; nothing
 * is cached. Names follow the Prometheus conventions (base units, {@code _total} counters, one family per name).
 *
 * <p>Each connection's exchange runs on a virtual thread of its own: the JDK's server reads a request with blocking
 * reads on the thread it hands the connection to, and any local user can reach a loopback port, so on one shared
 * thread a client that sent half a request stalled every scrape after it — and, now that the {@link Watchdog} asks
 * the listener to answer, would have had systemd restart the daemon. Renders still run one at a time.
 */
public final class Metrics implements AutoCloseable {
    private final HttpServer server;
    private final Daemon daemon;
    /** Runs each exchange on a virtual thread of its own (package-private: a test breaks it to wedge the listener). */
    final ExecutorService exchanges;
    /** One render at a time, as when one thread served every scrape: concurrent scrapes do not multiply the work. */
    private final ReentrantLock rendering = new ReentrantLock();

    private Metrics(HttpServer server, Daemon daemon, ExecutorService exchanges) {
        this.server = server;
        this.daemon = daemon;
        this.exchanges = exchanges;
    }

    /** {@code hostPort}: {@code 127.0.0.1:9400}, {@code [::1]:9400} or {@code localhost:0} (any free port). */
    public static Metrics start(String hostPort, Daemon daemon) throws IOException {
        int colon = hostPort.lastIndexOf(':');
        if (colon < 0) {
            throw new IOException("--metrics " + hostPort + ": want HOST:PORT, e.g. 127.0.0.1:9400");
        }
        String host = hostPort.substring(0, colon).replace("[", "").replace("]", "");
        int port;
        try {
            port = Integer.parseInt(hostPort.substring(colon + 1));
        } catch (NumberFormatException e) {
            throw new IOException("--metrics " + hostPort + ": the port is not a number");
        }
        InetAddress addr = InetAddress.getByName(host);
        if (!addr.isLoopbackAddress()) {
            throw new IOException(
                    "--metrics " + hostPort + ": " + host + " is not a loopback address; metrics name "
                            + "images and sockets, so they are served on 127.0.0.1 or ::1 only (put a proxy in front to export them)");
        }
        HttpServer s = HttpServer.create(new InetSocketAddress(addr, port), 8);
        Metrics m = new Metrics(
                s,
                daemon,
                Executors.newThreadPerTaskExecutor(
                        Thread.ofVirtual().name("metrics ", 0).factory()));
        s.createContext("/metrics", m::handle);
        s.createContext("/", ex -> {
            byte[] b = "iovirt daemon: metrics are at /metrics\n".getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(404, b.length);
            try (OutputStream o = ex.getResponseBody()) {
                o.write(b);
            }
        });
        s.setExecutor(m.exchanges);
        s.start();
        return m;
    }

    /**
     * Why the listener does not answer now, or null when it does: a request for {@code /} (the short 404, nothing
     * rendered) must have its status line back within {@code timeoutMillis}. A TCP connect alone proves nothing — the
     * kernel completes it from the backlog whether or not the server's dispatcher thread still accepts — so this
     * goes through the dispatcher and an exchange thread. Runs on the caller's thread with the socket's own
     * timeouts (no thread of its own, nothing left behind); one slow client cannot fail it, since every exchange has
     * its own thread.
     */
    String unanswered(long timeoutMillis) {
        InetSocketAddress a = server.getAddress();
        String url = "http://"
                + (a.getAddress() instanceof Inet6Address
                        ? "[" + a.getAddress().getHostAddress() + "]"
                        : a.getAddress().getHostAddress())
                + ":" + a.getPort() + "/";
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
        try (Socket sock = new Socket()) {
            sock.connect(a, (int) Math.max(1, timeoutMillis));
            sock.getOutputStream()
                    .write("GET / HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n"
                            .getBytes(StandardCharsets.US_ASCII));
            StringBuilder status = new StringBuilder();
            InputStream in = sock.getInputStream();
            while (status.indexOf("\n") < 0) {
                long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
                if (left <= 0) {
                    throw new SocketTimeoutException();
                }
                sock.setSoTimeout((int) left);
                int c = in.read();
                if (c < 0) {
                    return "the metrics listener " + url + " closed the connection without an answer";
                }
                status.append((char) c);
            }
            return status.toString().startsWith("HTTP/1.1 404")
                    ? null
                    : "the metrics listener " + url + " answered "
                            + status.toString().strip() + " for /, not 404";
        } catch (SocketTimeoutException e) {
            return "the metrics listener " + url + " did not answer within " + timeoutMillis + " ms";
        } catch (IOException e) {
            return "the metrics listener " + url + " no longer answers: " + e.getMessage();
        }
    }

    public InetSocketAddress address() {
        return server.getAddress();
    }

    private void handle(HttpExchange ex) throws IOException {
        try (ex) {
            if (!ex.getRequestMethod().equals("GET") && !ex.getRequestMethod().equals("HEAD")) {
                ex.sendResponseHeaders(405, -1);
                return;
            }
            byte[] body;
            rendering.lock();
            try {
                body = render(daemon).getBytes(StandardCharsets.UTF_8);
            } finally {
                rendering.unlock();
            }
            ex.getResponseHeaders().set("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
            ex.sendResponseHeaders(200, ex.getRequestMethod().equals("HEAD") ? -1 : body.length);
            if (!ex.getRequestMethod().equals("HEAD")) {
                try (OutputStream o = ex.getResponseBody()) {
                    o.write(body);
                }
            }
        }
    }

    /** A family of samples: HELP and TYPE once, then its lines. */
    private static final class Family {
        final StringBuilder out = new StringBuilder();
        final String name;

        /** Registers itself in {@code all}: families are written in creation order, each with its own samples. */
        Family(List<Family> all, String name, String type, String help) {
            all.add(this);
            this.name = name;
            out.append("# HELP ").append(name).append(' ').append(help).append('\n');
            out.append("# TYPE ").append(name).append(' ').append(type).append('\n');
        }

        Family sample(String suffix, String labels, double value) {
            out.append(name).append(suffix);
            if (!labels.isEmpty()) {
                out.append('{').append(labels).append('}');
            }
            out.append(' ').append(format(value)).append('\n');
            return this;
        }

        Family sample(String labels, double value) {
            return sample("", labels, value);
        }
    }

    /** The five families of a kind of queue worker ({@link QueueWorker.Totals}), named {@code PREFIX_..._total}. */
    private static final class WorkerFamilies {
        final Family batches;
        final Family sleeps;
        final Family spinHits;
        final Family lost;
        final Family rechecks;

        WorkerFamilies(List<Family> o, String prefix) {
            batches = new Family(
                    o,
                    prefix + "_batches_total",
                    "counter",
                    "Rounds of the queue's worker, each taking what the ring holds up to its batch size: requests over"
                            + " batches is the batch size the queue runs at.");
            sleeps = new Family(
                    o,
                    prefix + "_sleeps_total",
                    "counter",
                    "Times the worker found the ring empty and slept until a kick: each one cost the guest a"
                            + " notification and the backend a wake-up.");
            spinHits = new Family(
                    o,
                    prefix + "_spin_hits_total",
                    "counter",
                    "Times the worker's bounded polling (poll-us) found work before it would have slept.");
            lost = new Family(
                    o,
                    prefix + "_lost_notifications_total",
                    "counter",
                    "Interrupts to the guest that could not be delivered because its call eventfd was full.");
            rechecks = new Family(
                    o,
                    prefix + "_recheck_interrupts_total",
                    "counter",
                    "Interrupts sent again after the queue was idle for a while, to a guest that may have missed one"
                            + " (a driver that orders its ring accesses wrongly, e.g. QEMU TCG with one vCPU).");
        }

        void sample(String labels, QueueWorker.Totals t) {
            batches.sample(labels, t.batches());
            sleeps.sample(labels, t.sleeps());
            spinHits.sample(labels, t.spinHits());
            lost.sample(labels, t.lostSignals());
            rechecks.sample(labels, t.recheckSignals());
        }
    }

    private static String format(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) {
            return Long.toString((long) v);
        }
        return Double.toString(v);
    }

    static String label(String name, String value) {
        StringBuilder b = new StringBuilder(name).append("=\"");
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            switch (c) {
                case '\\' -> b.append("\\\\");
                case '"' -> b.append("\\\"");
                case '\n' -> b.append("\\n");
                default -> b.append(c);
            }
        }
        return b.append('"').toString();
    }

    /** The whole exposition now. */
    static String render(Daemon daemon) {
        List<Family> o = new ArrayList<>();
        List<BlkExport> blks = daemon.blkExports();
        Map<NetSwitch, List<NetSwitch.PortEntry>> nets = daemon.switchPorts(); // copied under the daemon's lock

        Family info = new Family(o, "iovirt_build_info", "gauge", "The daemon's version (value is always 1).");
        info.sample(label("version", Daemon.VERSION), 1);

        // ---- blk
        Family size = new Family(o, "iovirt_blk_size_bytes", "gauge", "Disk size the guest is offered.");
        for (BlkExport e : blks) {
            size.sample(label("device", e.spec.id()), e.image.size());
        }
        Family ro = new Family(o, "iovirt_blk_read_only", "gauge", "1 when the disk refuses writes.");
        for (BlkExport e : blks) {
            ro.sample(label("device", e.spec.id()), e.image.readOnly() ? 1 : 0);
        }
        Family conn =
                new Family(o, "iovirt_blk_frontend_connected", "gauge", "1 while a vhost-user frontend is connected.");
        for (BlkExport e : blks) {
            conn.sample(label("device", e.spec.id()), e.server.connected() ? 1 : 0);
        }
        Map<String, BlkStats.Snapshot[]> snaps = new HashMap<>();
        for (BlkExport e : blks) {
            BlkStats.Snapshot[] q = new BlkStats.Snapshot[e.spec.queues()];
            for (int i = 0; i < q.length; i++) {
                q[i] = e.device.queueStats(i);
            }
            snaps.put(e.spec.id(), q);
        }
        Family req = new Family(o, "iovirt_blk_requests_total", "counter", "Requests completed, by queue.");
        Family ops = new Family(o, "iovirt_blk_operations_total", "counter", "Successful requests by operation.");
        Family bytes = new Family(o, "iovirt_blk_bytes_total", "counter", "Bytes transferred by successful requests.");
        Family errs = new Family(
                o,
                "iovirt_blk_errors_total",
                "counter",
                "Failed requests by reason (io: the image failed; bad_request: malformed or out of range; unsupported: unknown type; queue_failure: the queue broke the ring rules and was stopped).");
        Family infl = new Family(
                o, "iovirt_blk_in_flight_requests", "gauge", "Requests taken from the ring and not yet completed.");
        Family lat = new Family(
                o,
                "iovirt_blk_request_duration_seconds",
                "histogram",
                "Time from taking a request off the ring to writing its status.");
        for (BlkExport e : blks) {
            BlkStats.Snapshot[] qs = snaps.get(e.spec.id());
            for (int i = 0; i < qs.length; i++) {
                BlkStats.Snapshot s = qs[i];
                String l = label("device", e.spec.id()) + "," + label("queue", Integer.toString(i));
                req.sample(l, s.requests());
                ops.sample(l + "," + label("op", "read"), s.reads());
                ops.sample(l + "," + label("op", "write"), s.writes());
                ops.sample(l + "," + label("op", "flush"), s.flushes());
                ops.sample(l + "," + label("op", "discard"), s.discards());
                bytes.sample(l + "," + label("direction", "read"), s.bytesRead());
                bytes.sample(l + "," + label("direction", "write"), s.bytesWritten());
                errs.sample(l + "," + label("reason", "io"), s.ioErrors());
                errs.sample(l + "," + label("reason", "bad_request"), s.badRequests());
                errs.sample(l + "," + label("reason", "unsupported"), s.unsupported());
                errs.sample(l + "," + label("reason", "queue_failure"), s.queueFailures());
                infl.sample(l, s.inFlight());
                long cum = 0;
                long[] b = s.latencyBuckets();
                for (int k = 0; k < BlkStats.LATENCY_BOUNDS_NANOS.length; k++) {
                    cum += b[k];
                    lat.sample(
                            "_bucket",
                            l + ","
                                    + label(
                                            "le",
                                            java.math.BigDecimal.valueOf(BlkStats.LATENCY_BOUNDS_NANOS[k])
                                                    .movePointLeft(9)
                                                    .stripTrailingZeros()
                                                    .toPlainString()),
                            cum);
                }
                cum += b[b.length - 1];
                lat.sample("_bucket", l + "," + label("le", "+Inf"), cum);
                lat.sample("_sum", l, s.latencySumNanos() / 1e9);
                lat.sample("_count", l, cum);
            }
        }

        WorkerFamilies bw = new WorkerFamilies(o, "iovirt_blk_queue");
        for (BlkExport e : blks) {
            for (int i = 0; i < e.spec.queues(); i++) {
                bw.sample(
                        label("device", e.spec.id()) + "," + label("queue", Integer.toString(i)),
                        e.device.workerStats(i));
            }
        }

        // ---- nbd
        List<NbdExportEntry> nbds = daemon.nbdExports();
        Family nconn = new Family(o, "iovirt_nbd_connections", "gauge", "NBD clients connected to the export.");
        Family nops = new Family(o, "iovirt_nbd_operations_total", "counter", "NBD commands completed, by command.");
        Family nbytes = new Family(o, "iovirt_nbd_bytes_total", "counter", "Bytes read and written through NBD.");
        Family nerr = new Family(o, "iovirt_nbd_errors_total", "counter", "NBD commands answered with an error.");
        for (NbdExportEntry e : nbds) {
            io.iovirt.nbd.NbdExportStats st = e.export.stats();
            String l = label("export", e.spec.id());
            nconn.sample(l, st.connections.get());
            nops.sample(l + "," + label("op", "read"), st.reads.sum());
            nops.sample(l + "," + label("op", "write"), st.writes.sum());
            nops.sample(l + "," + label("op", "flush"), st.flushes.sum());
            nops.sample(l + "," + label("op", "trim"), st.trims.sum());
            nops.sample(l + "," + label("op", "write_zeroes"), st.writeZeroes.sum());
            nbytes.sample(l + "," + label("direction", "read"), st.bytesRead.sum());
            nbytes.sample(l + "," + label("direction", "write"), st.bytesWritten.sum());
            nerr.sample(l, st.errors.sum());
        }

        // ---- net
        Family macs = new Family(o, "iovirt_net_mac_table_entries", "gauge", "Addresses the switch has learned.");
        for (NetSwitch n : nets.keySet()) {
            macs.sample(label("net", n.spec.id()), n.sw.macTable().size());
        }
        Family learned = new Family(o, "iovirt_net_port_learned_macs", "gauge", "Addresses learned on each port.");
        Family pinfo = new Family(
                o, "iovirt_net_port_info", "gauge", "A switch port's kind and where it listens (value is always 1).");
        Family link = new Family(o, "iovirt_net_port_link_up", "gauge", "1 when the port's peer is attached.");
        Family pk = new Family(
                o,
                "iovirt_net_port_packets_total",
                "counter",
                "Frames forwarded (rx: from the peer into the switch; tx: to the peer).");
        Family by = new Family(o, "iovirt_net_port_bytes_total", "counter", "Bytes of the frames forwarded.");
        Family dr =
                new Family(o, "iovirt_net_port_dropped_total", "counter", "Frames dropped, by direction and reason.");
        for (NetSwitch n : nets.keySet()) {
            Map<Integer, Integer> perPort = new HashMap<>();
            for (io.iovirt.net.MacTable.Entry e : n.sw.macTable().entries(n.sw.now())) {
                perPort.merge(e.port(), 1, Integer::sum);
            }
            for (NetSwitch.PortEntry pe : nets.get(n)) {
                String l = label("net", n.spec.id()) + ","
                        + label("port", pe.spec().id());
                learned.sample(l, perPort.getOrDefault(pe.port().index(), 0));
                pinfo.sample(
                        l + "," + label("kind", pe.spec().kind()) + ","
                                + label(
                                        pe.spec().kind().equals("tap") ? "ifname" : "path",
                                        pe.spec().path()),
                        1);
                link.sample(l, pe.port().isLinkUp() ? 1 : 0);
                PortStats st = pe.port().stats();
                pk.sample(l + "," + label("direction", "rx"), st.rxPackets());
                pk.sample(l + "," + label("direction", "tx"), st.txPackets());
                by.sample(l + "," + label("direction", "rx"), st.rxBytes());
                by.sample(l + "," + label("direction", "tx"), st.txBytes());
                for (PortStat s : PortStat.values()) {
                    if (s.isDrop()) {
                        String reason = s.label().substring(s.label().indexOf("dropped_") + "dropped_".length());
                        dr.sample(
                                l + "," + label("direction", s.isRx() ? "rx" : "tx") + "," + label("reason", reason),
                                st.get(s));
                    }
                }
            }
        }

        WorkerFamilies nw = new WorkerFamilies(o, "iovirt_net_port_queue");
        for (NetSwitch n : nets.keySet()) {
            for (NetSwitch.PortEntry pe : nets.get(n)) {
                if (pe.port() instanceof VirtioNetPort v) {
                    for (int i = 0; i < v.options().queuePairs(); i++) {
                        nw.sample(
                                label("net", n.spec.id()) + ","
                                        + label("port", pe.spec().id()) + "," + label("queue", "tx" + i),
                                v.txWorkerStats(i));
                    }
                    for (int i = 0; i < v.options().queuePairs(); i++) { // no worker: only its interrupts
                        VirtioNetPort.RxQueueTotals t = v.rxQueueTotals(i);
                        String l = label("net", n.spec.id()) + ","
                                + label("port", pe.spec().id()) + "," + label("queue", "rx" + i);
                        nw.lost.sample(l, t.lostSignals());
                        nw.rechecks.sample(l, t.recheckSignals());
                    }
                }
            }
        }

        // ---- process
        Family rss = new Family(o, "process_resident_memory_bytes", "gauge", "Resident set size.");
        rss.sample("", residentBytes());
        Family cpu = new Family(o, "process_cpu_seconds_total", "counter", "User and system CPU time.");
        java.lang.management.OperatingSystemMXBean os = ManagementFactory.getOperatingSystemMXBean();
        if (os instanceof com.sun.management.OperatingSystemMXBean sun) {
            cpu.sample("", sun.getProcessCpuTime() / 1e9);
        }
        Family start = new Family(o, "process_start_time_seconds", "gauge", "Start time since the Unix epoch.");
        start.sample("", ManagementFactory.getRuntimeMXBean().getStartTime() / 1000.0);
        Family fds = new Family(o, "process_open_fds", "gauge", "Open file descriptors.");
        fds.sample("", openFds());
        Family threads = new Family(
                o,
                "iovirt_process_threads",
                "gauge",
                "Threads in the daemon's JVM (each device queue and port has its own).");
        threads.sample("", ManagementFactory.getThreadMXBean().getThreadCount());
        Family gcc = new Family(o, "iovirt_jvm_gc_collections_total", "counter", "Garbage collections, by collector.");
        Family gct = new Family(
                o,
                "iovirt_jvm_gc_collection_seconds_total",
                "counter",
                "Time spent in garbage collection, by collector.");
        for (GarbageCollectorMXBean gc : ManagementFactory.getGarbageCollectorMXBeans()) {
            gcc.sample(label("gc", gc.getName()), Math.max(0, gc.getCollectionCount()));
            gct.sample(label("gc", gc.getName()), Math.max(0, gc.getCollectionTime()) / 1000.0);
        }
        Family heap = new Family(o, "iovirt_jvm_heap_used_bytes", "gauge", "Java heap in use.");
        heap.sample("", ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed());
        StringBuilder text = new StringBuilder(16 * 1024);
        for (Family f : o) {
            text.append(f.out);
        }
        return text.toString();
    }

    private static long residentBytes() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (line.startsWith("VmRSS:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", "")) * 1024;
                }
            }
        } catch (IOException | NumberFormatException e) {
            // not Linux /proc: report 0
        }
        return 0;
    }

    private static long openFds() {
        String[] l = new File("/proc/self/fd").list();
        return l == null ? 0 : l.length;
    }

    /** Stops listening and closes every connection, then ends the exchange threads (without waiting for them). */
    @Override
    public void close() {
        server.stop(0);
        exchanges.shutdownNow();
    }
}
