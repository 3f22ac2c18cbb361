// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import io.iovirt.linux.Acceptor;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.SocketAccess;
import io.iovirt.linux.SocketPaths;
import io.iovirt.linux.UnixSocket;
import io.iovirt.linux.UnixSocketChannel;
import io.iovirt.util.LogLimiter;
import io.iovirt.util.StopOnce;
import java.io.IOException;
import java.net.InetAddress;
import java.nio.channels.ByteChannel;
import java.nio.channels.GatheringByteChannel;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Collection;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * An NBD server: one listener (a UNIX socket or a loopback TCP address), any number of named exports, one platform
 * thread per connection (image I/O is blocking FFM calls, which would pin a virtual thread's carrier).
 *
 * <p>Lifecycle: {@link #start} binds and accepts; {@link #addExport}/{@link #removeExport} change what new
 * connections can open (connections already using a removed export keep it until they disconnect);
 * {@link #close} stops accepting, lets the requests in flight be answered, answers later ones with NBD_ESHUTDOWN,
 * disconnects every client and waits for their threads for a while;
 * {@link #quiescent}/{@link #awaitQuiescent} tell when no thread of any connection can touch an export's image any
 * more (a request stuck in image I/O outlives its connection: the image must not be closed under it). A client can
 * only hurt its own connection: malformed or hostile input gets the protocol's error reply or a disconnect, a client
 * that stalls in the handshake is dropped after {@link #HANDSHAKE_TIMEOUT_SECONDS}, and connections beyond the limit
 * are refused in the handshake with an error naming the limit, without a thread of their own ({@link NbdRefusals}).
 */
public final class NbdServer implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(NbdServer.class.getName());
    public static final int DEFAULT_MAX_CONNECTIONS = 16;
    static final int HANDSHAKE_TIMEOUT_SECONDS = 10;

    /**
     * The TCP listener, or null: made through FFM like the UNIX one, not a java.nio channel, so that its connections
     * stop their input with the kernel's SHUT_RD (their reader still gets the bytes already received), which
     * java.nio's {@code shutdownInput} does not give ({@link NbdChannel#stopInput}).
     */
    private final UnixSocket tcpListener;
    /** The UNIX listener (mode set before listen, peers checked at accept), or null. */
    private final UnixSocket unixListener;

    private final String address;
    private final Path socketPath;
    /** The socket file this server made ({@link SocketPaths#fileKey}): the one its close removes, and no other. */
    private final Object socketFile;

    private final int maxConnections;
    private final ConcurrentHashMap<String, NbdExport> exports = new ConcurrentHashMap<>();
    private final Set<NbdConnection> connections = ConcurrentHashMap.newKeySet();
    /**
     * Connections that ended with workers given up on, still in image I/O ({@link NbdConnection#quiet()} false):
     * kept until those threads have ended, for {@link #quiescent}.
     */
    private final Set<NbdConnection> lingering = ConcurrentHashMap.newKeySet();
    /** Notified whenever a connection leaves {@link #connections} or {@link #lingering}. */
    private final Object ended = new Object();

    private final AtomicInteger ids = new AtomicInteger();
    private final ScheduledExecutorService timer;
    private final NbdRefusals refusals;
    private final Acceptor<?> acceptor;
    /**
     * Begun: nothing is accepted (the listener shut down). Ended: the timer stopped, the listener closed and the
     * socket file removed.
     */
    private final StopOnce stop = new StopOnce(this::shutDownListener, this::closeListener);
    /**
     * Lines about connections that a client can cause at will, one per connection (a refused peer, a client gone in
     * the handshake, a protocol violation...): shared by the server's connections, so a client connecting in a loop
     * makes a burst of lines, then one a second, each saying how many were left out.
     */
    private final LogLimiter connectionLog = new LogLimiter(System.getLogger(NbdConnection.class.getName()));

    private NbdServer(
            UnixSocket tcp, UnixSocket unix, SocketAccess access, String address, Path socketPath, int maxConnections) {
        this.tcpListener = tcp;
        this.unixListener = unix;
        this.address = address;
        this.socketPath = socketPath;
        this.socketFile = socketPath == null ? null : SocketPaths.fileKey(socketPath);
        this.maxConnections = maxConnections;
        ScheduledThreadPoolExecutor t = new ScheduledThreadPoolExecutor(1, r -> {
            Thread th = new Thread(r, "nbd-timer " + address);
            th.setDaemon(true);
            return th;
        });
        // A connection that ends cancels its handshake deadline, and the cancelled task leaves the queue at once:
        // otherwise a client connecting and hanging up in a loop keeps every connection (and its buffers)
        // reachable from the queue for the whole timeout.
        t.setRemoveOnCancelPolicy(true);
        this.timer = t;
        this.refusals = new NbdRefusals(address, maxConnections, t);
        if (tcp != null) {
            this.acceptor = acceptor(
                    Acceptor.builder("nbd " + address, LOG, tcp::accept, stop::begun),
                    NbdRefusals.Peer::of,
                    (s, release) -> {
                        // Without Nagle's algorithm: a reply that leaves while an earlier one is unacknowledged
                        // would wait for the client's delayed ACK — 40 ms a batch with 8 requests in flight (seen
                        // in NbdAllocationTest); QEMU's NBD server turns it off too.
                        s.setNoDelay(); // failing: the acceptor releases the place and closes the socket
                        UnixSocketChannel ch = new UnixSocketChannel(s);
                        serve(ch, release, ch::release);
                    });
        } else {
            // The same access control as the vhost-user servers: the socket's mode was set before listening, and
            // every peer's uid (SO_PEERCRED) is checked against the allow-list before a byte is exchanged.
            this.acceptor = acceptor(
                    Acceptor.builder("nbd " + address, LOG, unix::accept, stop::begun)
                            .peerCheck(Acceptor.peerCheck(access), (s, why) -> {
                                connectionLog.log(
                                        System.Logger.Level.WARNING,
                                        "nbd " + address + ": refused a client " + why + " (allowed: " + access
                                                + "; see --allow-uid and --allow-user)");
                                s.close();
                            }),
                    NbdRefusals.Peer::of,
                    (s, release) -> {
                        UnixSocketChannel ch = new UnixSocketChannel(s);
                        serve(ch, release, ch::release);
                    });
        }
    }

    /** An accepted connection seen as a refusal's non-blocking peer. */
    private interface AsPeer<S> {
        NbdRefusals.Peer of(S connection) throws IOException;
    }

    /**
     * The accept loop of either listener. Over the limit a connection is refused in the handshake with an error
     * naming the limit (a client that is merely closed would retry at once, and reports a broken server), by
     * {@link NbdRefusals}, which takes no thread; those do not count against the limit.
     */
    private <S extends AutoCloseable> Acceptor<S> acceptor(
            Acceptor.Builder<S> builder, AsPeer<S> asPeer, Acceptor.Server<S> serve) {
        return builder.threadName("nbd-accept " + address)
                .daemon(true)
                .maxConnections(maxConnections, (s, why) -> {
                    NbdRefusals.Peer peer;
                    try {
                        peer = asPeer.of(s);
                    } catch (IOException | RuntimeException e) {
                        closeQuietly(s);
                        return;
                    }
                    refusals.refuse(peer);
                })
                .build(serve);
    }

    /**
     * Listens on a UNIX socket, owner only (mode 0600; peers with our uid or root). A stale socket file (nothing
     * listening) is replaced; a live one is an error.
     */
    public static NbdServer startUnix(Path socket, int maxConnections) throws IOException {
        return startUnix(socket, maxConnections, SocketAccess.ownerOnly());
    }

    /**
     * Listens on a UNIX socket whose mode and group {@code access} sets before listening, serving only the peer uids
     * it allows. A stale socket file (nothing listening) is replaced; a live one is an error.
     */
    public static NbdServer startUnix(Path socket, int maxConnections, SocketAccess access) throws IOException {
        checkLimit(maxConnections);
        UnixSocket l = SocketPaths.listen(socket, 64, access, "socket path");
        try {
            NbdServer s = new NbdServer(null, l, access, "unix:" + socket, socket, maxConnections);
            s.acceptor.start();
            return s;
        } catch (RuntimeException | Error e) {
            l.close();
            throw e;
        }
    }

    /**
     * Listens on a loopback TCP address. NBD has no authentication, so any other address is refused: reach a
     * remote host through an SSH tunnel or a UNIX socket instead.
     */
    public static NbdServer startTcp(String host, int port, int maxConnections) throws IOException {
        checkLimit(maxConnections);
        InetAddress addr;
        try {
            addr = InetAddress.getByName(host);
        } catch (java.net.UnknownHostException e) {
            // the resolver's own words ("nohost: Name or service not known") were the whole error line
            throw new IOException(
                    "cannot listen on " + host + ": no such host (it does not resolve); give a loopback"
                            + " address, e.g. 127.0.0.1, ::1 or localhost",
                    e);
        }
        if (!addr.isLoopbackAddress()) {
            throw new IOException("refusing to listen on " + host + ": NBD has no authentication, so iovirt listens on "
                    + "loopback addresses only (127.0.0.1, ::1); use --socket or an SSH tunnel for remote clients");
        }
        UnixSocket l;
        int bound;
        try {
            l = UnixSocket.listenTcp(addr, port, 64);
        } catch (LinuxException | IllegalArgumentException e) {
            throw new IOException("cannot listen on " + host + ":" + port + ": " + e.getMessage(), e);
        }
        try {
            bound = l.localPort();
            NbdServer s = new NbdServer(
                    l, null, null, "tcp:" + io.iovirt.util.HostPort.format(addr, bound), null, maxConnections);
            s.acceptor.start();
            return s;
        } catch (IOException | RuntimeException | Error e) {
            l.close();
            throw e;
        }
    }

    private static void checkLimit(int maxConnections) {
        if (maxConnections < 1) {
            throw new IllegalArgumentException("maxConnections must be at least 1");
        }
    }

    /** "unix:/path" or "tcp:host:port", an IPv6 host in brackets (the real port when 0 was asked for). */
    public String address() {
        return address;
    }

    /** The bound TCP port, or -1 for a UNIX socket. */
    public int port() {
        if (tcpListener == null) {
            return -1;
        }
        try {
            return tcpListener.localPort();
        } catch (LinuxException | IllegalStateException e) {
            return -1; // closed
        }
    }

    /** Adds (or replaces) an export; new connections can open it at once. */
    public void addExport(NbdExport export) {
        exports.put(export.name(), export);
    }

    /** Removes an export from the list new connections see; returns it, or null. */
    public NbdExport removeExport(String name) {
        return exports.remove(name);
    }

    public Collection<NbdExport> exports() {
        return exports.values();
    }

    NbdExport export(String name) {
        return exports.get(name);
    }

    /** Connections open now (handshake or transmission). */
    public int connectionCount() {
        return connections.size();
    }

    /**
     * Whether no thread of any connection can touch an export's image any more: no connection is open, and every
     * worker given up on at a disconnect (a request stuck in image I/O: a hung NFS or FUSE file, a dying disk) has
     * ended. Only then may the owner of the images close them: a descriptor closed under such a thread could be
     * reused by another open (another tenant's image or socket) and take that request's writes.
     */
    public boolean quiescent() {
        return connections.isEmpty() && lingering.isEmpty();
    }

    /** Waits until {@link #quiescent} (after {@link #close}, nothing new starts), at most {@code timeout}. */
    public boolean awaitQuiescent(Duration timeout) throws InterruptedException {
        return await(this::quiescent, timeout);
    }

    private boolean await(java.util.function.BooleanSupplier done, Duration timeout) throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        synchronized (ended) {
            while (!done.getAsBoolean()) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    return false;
                }
                TimeUnit.NANOSECONDS.timedWait(ended, left);
            }
            return true;
        }
    }

    /** A connection left {@link #connections} or {@link #lingering}. */
    private void ended() {
        synchronized (ended) {
            ended.notifyAll();
        }
    }

    /** Connections over the limit being refused now (waiting for their client's options). */
    int pendingRefusals() {
        return refusals.pending();
    }

    /**
     * Runs a connection on its own thread. {@code dispose} frees the channel once no thread of the connection can
     * use it any more.
     */
    private <C extends ByteChannel & GatheringByteChannel> void serve(C ch, Runnable release, Runnable dispose) {
        refusals.admitted();
        NbdConnection c = new NbdConnection(this, ch, ids.incrementAndGet());
        connections.add(c);
        if (stop.begun()) {
            unadmit(c, release, dispose);
            return;
        }
        holdAdmission();
        ScheduledFuture<?> deadline;
        try {
            deadline = timer.schedule(c::handshakeDeadline, HANDSHAKE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
        } catch (RejectedExecutionException e) {
            // The stop ended (its timer shut down) while this thread was between the check above and here: a stop
            // gives up on the accept thread after ACCEPTOR_JOIN. Serving now would leave the connection counted with
            // nobody to end it, and the images that wait for the count to reach zero would never close.
            unadmit(c, release, dispose);
            return;
        }
        try {
            Thread.ofPlatform().name("nbd " + address + " #" + c.id()).daemon().start(() -> {
                try {
                    c.run();
                } finally {
                    deadline.cancel(false);
                    if (c.quiet()) {
                        dispose.run();
                    } else {
                        // A worker stuck in image I/O may still use the image and reply on the socket: both stay
                        // until it has ended (the socket's descriptor too, or its number could be reused).
                        lingering.add(c); // before it leaves connections, so quiescent() never misses it
                        c.whenWorkersEnded(() -> {
                            dispose.run();
                            lingering.remove(c);
                            ended();
                        });
                    }
                    connections.remove(c);
                    ended();
                    release.run();
                }
            });
        } catch (OutOfMemoryError e) { // no thread could be created
            deadline.cancel(false);
            connections.remove(c);
            ended();
            dispose.run();
            throw e;
        }
    }

    /** Undoes {@link #serve}'s admission of {@code c}, which is not served: its socket is closed, its place freed. */
    private void unadmit(NbdConnection c, Runnable release, Runnable dispose) {
        c.close();
        connections.remove(c);
        ended();
        dispose.run();
        release.run();
    }

    /**
     * Tests: the accept thread, admitting a connection past the stop's check, counts {@code [0]} down and waits for
     * {@code [1]} before it goes on (a thread slow to get there while a stop gives up on it).
     */
    private volatile java.util.concurrent.CountDownLatch[] admissionHeldBy;

    /** Tests: holds the accept thread in its next admission (see {@link #admissionHeldBy}). */
    void holdAdmission(java.util.concurrent.CountDownLatch reached, java.util.concurrent.CountDownLatch mayGoOn) {
        admissionHeldBy = new java.util.concurrent.CountDownLatch[] {reached, mayGoOn};
    }

    private void holdAdmission() {
        java.util.concurrent.CountDownLatch[] h = admissionHeldBy;
        if (h == null) {
            return;
        }
        admissionHeldBy = null;
        h[0].countDown();
        boolean interrupted = false;
        while (true) {
            try {
                h[1].await();
                break;
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    private static void closeQuietly(AutoCloseable ch) {
        try {
            ch.close();
        } catch (Exception e) {
            // gone
        }
    }

    String name() {
        return address;
    }

    /** Where the connections' lines that a client can repeat at will go ({@link NbdConnection#event}). */
    LogLimiter connectionLog() {
        return connectionLog;
    }

    /** For tests that need longer than {@link #SHUTDOWN_GRACE} before the connections still busy are closed. */
    void shutdownGrace(Duration grace) {
        shutdownGrace = grace;
    }

    /** Whether {@link #close} has told every connection that the server is shutting down (for tests). */
    boolean draining() {
        return draining;
    }

    /**
     * How long {@link #close} lets the requests in flight be served (their clients answered) before it disconnects
     * the connections still busy — and then again how long it waits for those to end.
     */
    static final Duration SHUTDOWN_GRACE = Duration.ofSeconds(5);

    /** {@link #SHUTDOWN_GRACE}, or what a test set. */
    private volatile Duration shutdownGrace = SHUTDOWN_GRACE;

    /** Set once {@link #close} has told every connection that the server is shutting down. */
    private volatile boolean draining;

    /**
     * Stops accepting and ends every connection as doc/proto.md asks of a server shutting down: requests in flight
     * are served and answered, requests (and handshake options) received from now on are answered with
     * NBD_ESHUTDOWN (NBD_REP_ERR_SHUTDOWN), upon which the client must disconnect, and each connection is closed as
     * soon as none of its requests is in flight — at once for an idle one ({@link NbdConnection#shutdown}); a client
     * that goes on sending after being told is answered {@link NbdConnection#SHUTDOWN_ANSWERS} times at most, then
     * disconnected once its requests in flight are answered. After
     * {@link #SHUTDOWN_GRACE} the connections still busy (a request stuck in image I/O, a client slow to send a
     * write's payload) are disconnected, and their end awaited for as long again: 10 s at most in all, and up to 5 s
     * before that for the accept thread. A request stuck in image I/O can outlast that: close the images only once
     * {@link #quiescent}. A caller that must answer within a bound uses {@link #stopWithin} instead.
     */
    @Override
    public void close() {
        if (stopWithin(shutdownGrace) != null) {
            finishStop();
        }
    }

    /** How long a stop waits for the accept thread, in {@link #finishStop} (it has been woken: it ends at once). */
    private static final Duration ACCEPTOR_JOIN = Duration.ofSeconds(5);

    /** Guards {@link #drainStarted}'s first setting. */
    private final Object drainLock = new Object();

    /** When the connections were told that the server is shutting down ({@link System#nanoTime}), for the grace. */
    private long drainStarted; // guarded by drainLock

    /**
     * Begins the stop as {@link #close} does — nothing is accepted any more, every connection is told that the server
     * is shutting down — and waits at most {@code limit} for the connections to end. Returns null when the server has
     * stopped (as {@link #close} leaves it: the socket file is gone). Otherwise returns what is still under way, a
     * phrase for the caller's answer (how many connections are still finishing their requests in flight); then
     * {@link #finishStop} — which the caller must run, on a thread of its own — ends the stop as {@link #close} would
     * have: the grace, the disconnect of the connections still busy, the socket file's removal.
     */
    public String stopWithin(Duration limit) {
        long deadline = System.nanoTime() + limit.toNanos();
        if (!stop.begin()) {
            return null;
        }
        tellConnections(); // before any wait: the grace for their requests counts from here
        boolean acceptorEnded;
        try {
            acceptorEnded = acceptor.join(Duration.ofNanos(Math.max(1, deadline - System.nanoTime())));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            acceptorEnded = false;
        }
        tellConnections(); // again: one the acceptor admitted meanwhile
        boolean drained;
        try {
            drained = await(connections::isEmpty, Duration.ofNanos(Math.max(0, deadline - System.nanoTime())));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            drained = false;
        }
        int busy = connections.size();
        if (acceptorEnded && (drained || busy == 0)) { // the last one may have left just after the wait ended
            stop.end();
            return null;
        }
        if (busy == 0) {
            return "its accept thread has not ended";
        }
        return busy
                + (busy == 1
                        ? " client connection is still finishing the requests it had in flight"
                        : " client connections are still finishing the requests they had in flight")
                + " (each is answered, then its client is disconnected; those still busy after "
                + shutdownGrace.toSeconds() + " s are disconnected)";
    }

    /**
     * Ends a stop that {@link #stopWithin} left under way, as {@link #close} would: waits for the accept thread, lets
     * the connections still busy finish their requests until {@link #SHUTDOWN_GRACE} after they were told, then
     * disconnects those left and waits for them as long again; closes the listener and removes the socket file if it
     * is still the one this server made. Nothing when already done.
     */
    public void finishStop() {
        if (!stop.begin()) {
            return;
        }
        try {
            acceptor.join(ACCEPTOR_JOIN);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        tellConnections();
        long graceEnds;
        synchronized (drainLock) {
            graceEnds = drainStarted + shutdownGrace.toNanos();
        }
        try {
            if (!await(connections::isEmpty, Duration.ofNanos(Math.max(0, graceEnds - System.nanoTime())))) {
                for (NbdConnection c : connections) {
                    c.close(); // still busy after the grace: disconnected
                }
                await(connections::isEmpty, shutdownGrace);
            }
        } catch (InterruptedException e) {
            for (NbdConnection c : connections) {
                c.close();
            }
            Thread.currentThread().interrupt();
        }
        stop.end();
    }

    /** The stop's first step ({@link #stop}): nothing is accepted from now on; wakes the acceptor. */
    private void shutDownListener() {
        try {
            listener().shutdown(UnixSocket.SHUT_RDWR); // wakes the acceptor (EINVAL), then it is closed
        } catch (LinuxException e) {
            // not listening any more
        }
    }

    /** Tells every connection that the server is shutting down (a second time changes nothing for one). */
    private void tellConnections() {
        refusals.close();
        for (NbdConnection c : connections) {
            c.shutdown();
        }
        synchronized (drainLock) {
            if (!draining) { // the first telling starts the grace; a later one (or a concurrent stop) keeps it
                drainStarted = System.nanoTime();
                draining = true;
            }
        }
    }

    /** The stop's last step ({@link #stop}): the timer stops, the listener is closed and the socket file removed. */
    private void closeListener() {
        timer.shutdownNow();
        listener().close();
        if (socketPath != null) {
            try {
                // not another server's: the listener, shut down while the connections drained, refused connections,
                // so the path looked free to another process meanwhile
                SocketPaths.removeIfSame(socketPath, socketFile);
            } catch (IOException e) {
                // best effort
            }
        }
    }

    private UnixSocket listener() {
        return tcpListener != null ? tcpListener : unixListener;
    }
}
