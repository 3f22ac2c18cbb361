// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.devices.blk.BlkStats;
import io.iovirt.devices.net.VirtioNetPort;
import io.iovirt.linux.Acceptor;
import io.iovirt.net.PortStat;
import io.iovirt.net.PortStats;
import io.iovirt.net.RateLimitedLog;
import io.iovirt.util.HostPort;
import io.iovirt.virtio.QueueWorker;
import java.io.File;
import java.io.IOException;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.LongAdder;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Prometheus text exposition (format 0.0.4) at {@code http://HOST:PORT/metrics}, on a loopback address only: the
 * counters name sockets and images, which are not for the network. Every scrape reads the live counters; nothing
 * is cached. Names follow the Prometheus conventions (base units, {@code _total} counters, one family per name).
 *
 * <p>Any local user can connect to a loopback port, so the listener is bounded: at most {@code maxConnections}
 * (default {@value #DEFAULT_MAX_CONNECTIONS}) are open at once, each on a virtual thread of its own, and each is
 * closed {@link #CONNECTION_TIMEOUT} after it was accepted whatever it is doing (an idle client, half a request, a
 * client that does not read its answer). One more is answered 503 without a thread (a non-blocking write on the
 * accept thread) and closed, counted in {@code iovirt_metrics_connections_refused_total} and logged at most once a
 * minute. Unbounded, thousands of idle connections held by one user made the daemon hold thousands of descriptors,
 * and at RLIMIT_NOFILE every guest's backend in it broke (no vhost-user reconnect accepted, SCM_RIGHTS descriptors
 * dropped, no image opened). The JDK's HTTP server could not be bounded per server (its limit is a JVM-wide system
 * property, and a request was read on the exchange thread with no deadline), hence this small HTTP/1.1 server: one
 * request per connection ({@code Connection: close}), what Prometheus, curl and the JDK's client all handle.
 *
 * <p>A full listener is not a wedged one: the {@link Watchdog} asks {@link #unserved} — the accept thread runs and
 * a scrape can be rendered on a thread of the exchanges' kind — never a round trip through the port, which any
 * local user can fill (and had systemd restart the daemon, every guest's backend with it).
 */
public final class Metrics implements AutoCloseable {
    public static final int DEFAULT_MAX_CONNECTIONS = 32;
    /**
     * How long a connection may stay open, from accept to close. A Prometheus scrape of a loopback port takes well
     * under a second, and an answer was written long before this; a client still holding its slot then is slow or
     * hostile, and its slot goes to the next scrape.
     */
    public static final int CONNECTION_TIMEOUT_SECONDS = 5;

    public static final Duration CONNECTION_TIMEOUT = Duration.ofSeconds(CONNECTION_TIMEOUT_SECONDS);
    /** The most a request line with its headers may take: ours are a GET of one path. */
    static final int MAX_REQUEST_HEAD = 8192;

    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");
    private static final byte[] REFUSAL = response(
            503,
            "Service Unavailable",
            "Retry-After: 1\r\n",
            "iovirt daemon: too many metrics connections open at once; retry later\n"
                    .getBytes(StandardCharsets.US_ASCII),
            false);

    private final ServerSocketChannel listener;
    private final InetSocketAddress address;
    private final String url;
    private final Daemon daemon;
    private final int maxConnections;
    private final Acceptor<SocketChannel> acceptor;
    /** Runs each connection on a virtual thread of its own (package-private: a test breaks it to wedge the server). */
    final ExecutorService exchanges;
    /** Closes each connection at its deadline: one platform thread, asleep while no connection is open. */
    private final ScheduledThreadPoolExecutor deadlines;
    /** The connections open now (closed by {@link #close}). */
    private final Set<SocketChannel> open = ConcurrentHashMap.newKeySet();
    /** One render at a time for the clients: concurrent scrapes do not multiply the work. */
    private final ReentrantLock rendering = new ReentrantLock();

    private final LongAdder refused = new LongAdder();
    private final LongAdder timedOut = new LongAdder();
    private final RateLimitedLog refusedLog = new RateLimitedLog(60_000);
    private final RateLimitedLog timedOutLog = new RateLimitedLog(60_000);
    /** The refusal, written from the accept thread only (so one buffer serves every refused connection). */
    private final ByteBuffer refusal = ByteBuffer.wrap(REFUSAL);
    /** Where the accept thread drains what a refused client already sent. */
    private final ByteBuffer refusedInput = ByteBuffer.allocate(4096);
    /** The watchdog's last render: while it still runs, no other is started (the watchdog's thread only). */
    private Future<?> probe;

    private volatile boolean closed;

    private Metrics(ServerSocketChannel listener, Daemon daemon, int maxConnections) throws IOException {
        this.listener = listener;
        this.address = (InetSocketAddress) listener.getLocalAddress();
        this.url = "http://" + HostPort.format(address.getAddress(), address.getPort()) + "/metrics";
        this.daemon = daemon;
        this.maxConnections = maxConnections;
        this.exchanges = Executors.newThreadPerTaskExecutor(
                Thread.ofVirtual().name("metrics ", 0).factory());
        this.deadlines = new ScheduledThreadPoolExecutor(
                1, Thread.ofPlatform().daemon().name("metrics deadlines").factory());
        deadlines.setRemoveOnCancelPolicy(true); // a served connection's deadline goes at once, not at its time
        this.acceptor = Acceptor.builder("metrics listener " + url, LOG, listener::accept, () -> closed)
                .threadName("metrics accept")
                .daemon(true)
                .maxConnections(maxConnections, (s, why) -> refuse(s))
                .build(this::admit);
    }

    /** {@code hostPort}: {@code 127.0.0.1:9400}, {@code [::1]:9400} or {@code localhost:0} (any free port). */
    public static Metrics start(String hostPort, Daemon daemon) throws IOException {
        return start(hostPort, DEFAULT_MAX_CONNECTIONS, daemon);
    }

    /** As {@link #start(String, Daemon)}, serving at most {@code maxConnections} connections at once. */
    public static Metrics start(String hostPort, int maxConnections, Daemon daemon) throws IOException {
        if (maxConnections < 1) {
            throw new IOException("--metrics-max-connections " + maxConnections + ": at least 1 is needed to serve"
                    + " scrapes (the default is " + DEFAULT_MAX_CONNECTIONS + ")");
        }
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
        ServerSocketChannel l = ServerSocketChannel.open();
        try {
            l.setOption(StandardSocketOptions.SO_REUSEADDR, true); // a restart binds while old ones are in TIME_WAIT
            // a short backlog: connections waiting there hold no descriptor of ours, only the kernel's memory
            l.bind(new InetSocketAddress(addr, port), 16);
        } catch (IOException e) {
            l.close();
            throw new IOException(
                    "--metrics " + hostPort + ": cannot listen: " + e.getMessage()
                            + "; choose a free port (another daemon may use this one)",
                    e);
        }
        Metrics m;
        try {
            m = new Metrics(l, daemon, maxConnections);
        } catch (IOException | RuntimeException e) {
            l.close();
            throw e;
        }
        m.acceptor.start();
        return m;
    }

    public InetSocketAddress address() {
        return address;
    }

    /**
     * Why the server does not serve scrapes now, or null when it does: its accept thread runs and a scrape is
     * rendered, on a thread started the way each connection's is, within {@code timeoutMillis}. This is the
     * server's own liveness, not a round trip through its port: any local user can fill the port up to the limit
     * (then one more connection is refused, which is the server working), and a full server must not have systemd
     * restart the daemon. Runs on the watchdog's thread; a render still running from the last call is waited for,
     * not doubled.
     */
    String unserved(long timeoutMillis) throws InterruptedException {
        if (closed || !listener.isOpen()) {
            return "the metrics listener " + url + " is closed";
        }
        if (!acceptor.thread().isAlive()) {
            return "the metrics listener " + url + " no longer accepts connections (its accept thread ended)";
        }
        long failing = TimeUnit.NANOSECONDS.toMillis(acceptor.failingForNanos());
        if (failing >= 4 * timeoutMillis) { // a watchdog period: a streak of failed accepts, not one
            return "the metrics listener " + url + " has failed every accept for " + failing
                    + " ms (out of descriptors?)";
        }
        if (probe == null || probe.isDone()) {
            try {
                probe = exchanges.submit(() -> render(daemon, this).length());
            } catch (RejectedExecutionException e) {
                return "the metrics listener " + url + " cannot start a thread to serve a connection: " + e;
            }
        }
        try {
            probe.get(timeoutMillis, TimeUnit.MILLISECONDS);
            return null;
        } catch (TimeoutException e) {
            return "the metrics listener " + url + " has not rendered a scrape within " + timeoutMillis + " ms";
        } catch (ExecutionException e) {
            return "the metrics listener " + url + " cannot render a scrape: " + e.getCause();
        }
    }

    /**
     * An accepted connection within the limit: its deadline counts from now (on the accept thread, not when its
     * thread first runs), and its own virtual thread serves it.
     */
    private void admit(SocketChannel s, Runnable release) {
        long deadline = System.nanoTime() + CONNECTION_TIMEOUT.toNanos();
        AtomicBoolean answered = new AtomicBoolean(); // an answered client that lingers did not time out
        ScheduledFuture<?> expiry = null;
        open.add(s);
        try {
            expiry = deadlines.schedule(() -> expire(s, answered), CONNECTION_TIMEOUT.toNanos(), TimeUnit.NANOSECONDS);
            ScheduledFuture<?> e = expiry;
            exchanges.execute(() -> serve(s, release, deadline, answered, e));
        } catch (Throwable t) { // rejected, or no thread (OutOfMemoryError): the acceptor releases, closes and logs
            if (expiry != null) {
                expiry.cancel(false);
            }
            open.remove(s);
            throw t;
        }
    }

    /**
     * One more than the limit: 503 written without blocking (a fresh connection's send buffer is empty, so it all
     * goes; a client that never reads costs nothing), what the client already sent drained so that closing sends
     * it a FIN rather than a reset that could discard the answer, and closed. Runs on the accept thread.
     */
    private void refuse(SocketChannel s) {
        refused.increment();
        try {
            s.configureBlocking(false);
            s.write(refusal.rewind());
            s.shutdownOutput();
            for (int i = 0; i < 4 && s.read(refusedInput.clear()) > 0; i++) {
                // discarded
            }
        } catch (IOException e) {
            // the client is gone: nothing to tell
        } finally {
            closeQuietly(s);
        }
        refusedLog.warn(() -> "metrics listener " + url + ": refused a connection: " + maxConnections
                + " are open, the most allowed at once (--metrics-max-connections); each is closed "
                + CONNECTION_TIMEOUT.toSeconds() + " s after it was accepted. Logged at most once a minute;"
                + " iovirt_metrics_connections_refused_total counts them all");
    }

    /** A connection's deadline passed before it was answered: it is closed, and its thread ends. */
    private void expire(SocketChannel s, AtomicBoolean answered) {
        if (!answered.get()) {
            timedOut.increment();
            timedOutLog.warn(() -> "metrics listener " + url + ": closed a connection that was not answered within "
                    + CONNECTION_TIMEOUT.toSeconds() + " s (an idle client, or half a request). Logged at most once"
                    + " a minute; iovirt_metrics_connections_timed_out_total counts them all");
        }
        closeQuietly(s);
    }

    /** Reads one request, answers it and closes the connection; everything ends by the connection's deadline. */
    private void serve(
            SocketChannel s, Runnable release, long deadline, AtomicBoolean answered, ScheduledFuture<?> expiry) {
        try {
            ByteBuffer in = ByteBuffer.allocate(MAX_REQUEST_HEAD);
            byte[] answer = null;
            int scanned = 0;
            while (headEnd(in, scanned) < 0) {
                scanned = Math.max(0, in.position() - 3);
                if (!in.hasRemaining()) {
                    answer = response(
                            431,
                            "Request Header Fields Too Large",
                            "",
                            text("the request's head is longer" + " than " + MAX_REQUEST_HEAD
                                    + " bytes; ask for GET /metrics"),
                            false);
                    break;
                }
                if (s.read(in) < 0) {
                    return; // the client left without a request
                }
            }
            if (answer == null) {
                int lineStart = 0; // empty lines before the request line are ignored (RFC 9112 2.2)
                while (lineStart < in.position() && (in.get(lineStart) == '\r' || in.get(lineStart) == '\n')) {
                    lineStart++;
                }
                int lineEnd = lineStart;
                while (lineEnd < in.position() && in.get(lineEnd) != '\n') {
                    lineEnd++;
                }
                String[] parts = new String(in.array(), lineStart, lineEnd - lineStart, StandardCharsets.ISO_8859_1)
                        .strip()
                        .split(" ");
                answer = parts.length == 3 && parts[2].startsWith("HTTP/")
                        ? answer(parts[0], parts[1], deadline)
                        : response(
                                400, "Bad Request", "", text("not an HTTP request line: ask for GET /metrics"), false);
            }
            write(s, answer);
            answered.set(true);
            // Let the client read the answer and close first: closing with its unread bytes (a body, a pipelined
            // request) would send a reset, which can discard the answer at the client. Bounded by the deadline.
            s.shutdownOutput();
            while (s.read(in.clear()) >= 0) {
                // discarded
            }
        } catch (IOException e) {
            // closed at its deadline, or by the client
        } catch (RuntimeException | Error e) {
            LOG.log(System.Logger.Level.ERROR, "metrics listener " + url + ": internal error; connection closed", e);
        } finally {
            expiry.cancel(false);
            open.remove(s);
            closeQuietly(s);
            release.run();
        }
    }

    /** Where the request's head ends (after its blank line), or -1 while it has not all arrived. */
    private static int headEnd(ByteBuffer in, int from) {
        for (int i = from; i < in.position(); i++) {
            if (in.get(i) == '\n'
                    && ((i >= 1 && in.get(i - 1) == '\n')
                            || (i >= 2 && in.get(i - 1) == '\r' && in.get(i - 2) == '\n'))) {
                return i + 1;
            }
        }
        return -1;
    }

    /** The whole answer to {@code method target}; a render waits for the others only until the deadline. */
    private byte[] answer(String method, String target, long deadline) {
        String path = target;
        int scheme = path.indexOf("://"); // absolute form (RFC 9112 3.2.2): http://host:port/metrics
        if (scheme > 0 && (path.startsWith("http://") || path.startsWith("https://"))) {
            int slash = path.indexOf('/', scheme + 3);
            path = slash < 0 ? "/" : path.substring(slash);
        }
        int q = path.indexOf('?');
        path = q < 0 ? path : path.substring(0, q);
        boolean head = method.equals("HEAD");
        if (!path.equals("/metrics")) {
            return response(404, "Not Found", "", text("iovirt daemon: metrics are at /metrics"), head);
        }
        if (!head && !method.equals("GET")) {
            return response(405, "Method Not Allowed", "Allow: GET, HEAD\r\n", new byte[0], false);
        }
        try {
            if (!rendering.tryLock(deadline - System.nanoTime(), TimeUnit.NANOSECONDS)) {
                return response(
                        503,
                        "Service Unavailable",
                        "Retry-After: 1\r\n",
                        text("other scrapes kept the" + " renderer busy until this connection's deadline; retry"),
                        head);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return response(503, "Service Unavailable", "", text("the daemon is stopping"), head);
        }
        byte[] body;
        try {
            body = render(daemon, this).getBytes(StandardCharsets.UTF_8);
        } finally {
            rendering.unlock();
        }
        return response(200, "OK", "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n", body, head);
    }

    private static byte[] text(String s) {
        return (s + "\n").getBytes(StandardCharsets.UTF_8);
    }

    /** Status line, headers and (unless {@code head}) body; the connection closes after it. */
    private static byte[] response(int status, String reason, String headers, byte[] body, boolean head) {
        boolean typed = headers.startsWith("Content-Type");
        byte[] h = ("HTTP/1.1 " + status + " " + reason + "\r\n" + headers
                        + (typed || body.length == 0 ? "" : "Content-Type: text/plain; charset=utf-8\r\n")
                        + "Content-Length: " + body.length + "\r\nConnection: close\r\n\r\n")
                .getBytes(StandardCharsets.US_ASCII);
        if (head) {
            return h;
        }
        byte[] all = new byte[h.length + body.length];
        System.arraycopy(h, 0, all, 0, h.length);
        System.arraycopy(body, 0, all, h.length, body.length);
        return all;
    }

    private static void write(SocketChannel s, byte[] b) throws IOException {
        ByteBuffer buf = ByteBuffer.wrap(b);
        while (buf.hasRemaining()) {
            s.write(buf);
        }
    }

    private static void closeQuietly(SocketChannel s) {
        try {
            s.close();
        } catch (IOException e) {
            // nothing more to do with it
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

    /** The whole exposition now, without the listener's own families (they are {@link #render(Daemon, Metrics)}'s). */
    static String render(Daemon daemon) {
        return render(daemon, null);
    }

    /** The whole exposition now; {@code server}: the listener whose connections are counted too, or null. */
    static String render(Daemon daemon, Metrics server) {
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
                o,
                "iovirt_blk_in_flight_requests",
                "gauge",
                "Requests taken from the ring and not yet completed; requests a stopped queue gave up on in the kernel"
                        + " stay counted (they may still run), those a failed queue dropped once done do not.");
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

        // ---- the metrics listener itself: whether someone keeps it full
        if (server != null) {
            new Family(o, "iovirt_metrics_connections", "gauge", "Connections to this listener open now.")
                    .sample("", server.open.size());
            new Family(o, "iovirt_metrics_connections_max", "gauge", "The most connections served at once.")
                    .sample("", server.maxConnections);
            new Family(
                            o,
                            "iovirt_metrics_connections_refused_total",
                            "counter",
                            "Connections answered 503 and closed because the most allowed at once were open.")
                    .sample("", server.refused.sum());
            new Family(
                            o,
                            "iovirt_metrics_connections_timed_out_total",
                            "counter",
                            "Connections closed unanswered at their deadline (idle, or a request never completed).")
                    .sample("", server.timedOut.sum());
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

    /** Stops listening, closes every connection and ends the threads (without waiting for the exchanges). */
    @Override
    public void close() {
        closed = true;
        try {
            listener.close(); // the accept thread's accept() fails, and it sees closed
        } catch (IOException e) {
            // not listening any more
        }
        try {
            acceptor.join(Duration.ofSeconds(10));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        for (SocketChannel s : open) {
            closeQuietly(s); // its thread's read or write fails, and it ends
        }
        exchanges.shutdownNow();
        deadlines.shutdownNow();
    }
}
