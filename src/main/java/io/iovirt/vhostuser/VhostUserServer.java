// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Acceptor;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.SocketAccess;
import io.iovirt.linux.SocketPaths;
import io.iovirt.linux.UnixSocket;
import io.iovirt.util.LogLimiter;
import io.iovirt.util.StopOnce;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;

/**
 * Serves one {@link VhostUserBackend} on a UNIX socket path that the frontend (QEMU: {@code -chardev
 * socket,path=...}) connects to. One frontend at a time, as qemu-storage-daemon's vhost-user server does: while one
 * is served, the server does not accept, so a second one waits in the listen backlog (its connect succeeds, its
 * first request gets no answer yet) and is served as soon as the first disconnects; the server logs a warning
 * naming the frontend it waits for, and {@link #frontendWaiting()} says so for status and statistics. Closing a
 * second connection instead would leave its QEMU with nothing but a connection reset. When a frontend disconnects,
 * for whatever reason, its queues are stopped, guest memory is unmapped and the device is reset; the next
 * connection (a restarted VM) is served without restarting anything.
 *
 * <p>Threads: one platform thread accepts, one serves the current connection with blocking receives. A protocol
 * violation closes only that connection, logged in one line with the socket path. {@link #close()} wakes both
 * threads through socket shutdown (interrupts cannot break a blocked native call) and waits for them; {@link
 * #stopWithin} waits a bounded time (a session thread may be stuck in a device callback) and leaves the rest, socket
 * file included, to {@link #finishStop}.
 */
public final class VhostUserServer implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.vhostuser");
    private static final Duration STOP_WAIT = Duration.ofSeconds(30);
    /** How often {@link #finishStop} names the session it still waits for ({@link #STOP_WAIT}; tests shorten it). */
    private volatile Duration stopWarnEvery = STOP_WAIT;

    private final Path path;
    private final String name;
    private final VhostUserBackend backend;
    /**
     * The descriptor checks this device's frontends may have waiting at once: one share for every connection, so a
     * frontend cannot reconnect its way to more.
     */
    private final PeerFile.Quota checks = new PeerFile.Quota();
    /** What this device's frontends did to the eventfds they sent, kept across their reconnects. */
    private final EventFd.PeerConduct eventFds = new EventFd.PeerConduct();

    private final UnixSocket listener;
    /** The socket file this server made ({@link SocketPaths#fileKey}): the one its stop removes, and no other. */
    private final Object socketFile;

    private final SocketAccess access;
    private final Acceptor<UnixSocket> acceptor;
    /** Protocol errors, refusals and the handler's lines a hostile frontend can repeat at will: one bucket. */
    private final LogLimiter errorLog = new LogLimiter(LOG);
    /**
     * A frontend's connected, disconnected and connection-failed lines, which a frontend connecting in a loop makes at
     * will: a bucket of their own, so such a loop neither floods the log nor hides protocol errors.
     */
    private final LogLimiter connectionLog = new LogLimiter(LOG);

    private final Object lock = new Object();
    /**
     * Begun: nothing is accepted (the listener shut down). Ended: the session thread too, the listener closed and the
     * socket file removed.
     */
    private final StopOnce stop = new StopOnce(this::shutDownListener, this::closeListener);

    private Session current; // guarded by lock
    /** A connection is waiting in the backlog while {@link #current} is served. */
    private volatile boolean waiting;
    /** How many times a frontend was found waiting for the current one (each served session counts once). */
    private final java.util.concurrent.atomic.AtomicLong waits = new java.util.concurrent.atomic.AtomicLong();

    private final class Session {
        final Connection connection;
        final String peer;
        final Thread thread;
        volatile boolean ended;

        final Runnable release;
        /**
         * The request the session thread handles (a device callback may wait, e.g. a queue's stop for requests stuck
         * on a file system that does not answer); null while it waits for the next one. With {@link #resetting}, for
         * the line that names a stop still waiting.
         */
        volatile MessageType handling;
        /** The connection has ended and the session thread resets the device (its queues stop). */
        volatile boolean resetting;

        Session(UnixSocket socket, String peer, Runnable release) {
            this.connection = new Connection(socket, Connection.Role.BACKEND, name);
            this.peer = peer;
            this.release = release;
            this.thread = Thread.ofPlatform().name("vhost-user " + path).unstarted(this::serve);
        }

        private void serve() {
            Handler handler = new Handler(backend, name, checks, errorLog, eventFds);
            try {
                Message m;
                while ((m = connection.receiveRequest()) != null) {
                    handling = m.type();
                    handler.handle(m, connection);
                    handling = null;
                }
                connectionLog.log(System.Logger.Level.INFO, name + ": frontend " + peer + " disconnected");
            } catch (ProtocolException e) {
                errorLog.log(
                        System.Logger.Level.ERROR,
                        name + ": protocol error from frontend " + peer + ": " + e.getMessage()
                                + "; closing the connection");
            } catch (IOException e) {
                if (!stop.begun()) {
                    connectionLog.log(
                            System.Logger.Level.WARNING,
                            name + ": connection to frontend " + peer + " failed: " + e.getMessage() + "; closing it");
                }
            } catch (RuntimeException | Error e) {
                LOG.log(
                        System.Logger.Level.ERROR,
                        name + ": internal error serving frontend " + peer + "; closing the connection",
                        e);
            } finally {
                // The frontend sees the hang-up at once, cleanup may take a moment; shut down before saying the
                // session ended, so that whoever sees it ended (blk.info's "connected") also finds it hung up.
                connection.shutdown();
                ended = true;
                resetting = true;
                try {
                    handler.close();
                } catch (RuntimeException | Error e) {
                    LOG.log(System.Logger.Level.ERROR, name + ": resetting the device after the connection failed", e);
                } finally {
                    connection.close();
                    release.run();
                }
            }
        }

        /** What the session thread is in, for the line that names a stop still waiting for it. */
        String doing() {
            MessageType m = handling;
            return resetting
                    ? "the device's reset after the disconnect (each queue's stop waits for the requests it took)"
                    : m != null ? "the device's handling of " + m.specName() : "the device";
        }

        /** True when this session is over or its frontend has gone (the session thread may not have noticed yet). */
        boolean finishing() {
            if (ended) {
                return true;
            }
            try {
                return connection.socket().peerHungUp();
            } catch (IOException | IllegalStateException e) {
                return true; // already closed by the session thread
            }
        }
    }

    private VhostUserServer(Path path, VhostUserBackend backend, UnixSocket listener, SocketAccess access) {
        this.path = path;
        this.name = "vhost-user " + path;
        this.backend = backend;
        this.listener = listener;
        this.socketFile = SocketPaths.fileKey(path);
        this.access = access;
        this.acceptor = Acceptor.builder(name, LOG, this::acceptWhenFree, stop::begun)
                .threadName("vhost-user accept " + path)
                .peerCheck(Acceptor.peerCheck(access), (s, why) -> {
                    errorLog.log(
                            System.Logger.Level.WARNING,
                            name + ": refusing frontend " + why + " (" + access
                                    + "; serve with --allow-uid UID or --allow-user NAME to add it)");
                    s.close();
                })
                .build(this::admit);
    }

    /**
     * Listens on {@code socketPath} and serves {@code backend}. A leftover socket file nobody listens on is
     * replaced; a live one (another server) or a non-socket file is an error.
     */
    public static VhostUserServer start(Path socketPath, VhostUserBackend backend) throws IOException {
        return start(socketPath, backend, SocketAccess.ownerOnly());
    }

    /**
     * As {@link #start(Path, VhostUserBackend)}, with the socket file's mode/group and the peer uids served taken
     * from {@code access}.
     */
    public static VhostUserServer start(Path socketPath, VhostUserBackend backend, SocketAccess access)
            throws IOException {
        new Handler(
                backend,
                socketPath.toString(),
                new PeerFile.Quota()); // validates the device's queue count, sizes and features now
        UnixSocket listener = SocketPaths.listen(socketPath, 4, access, "socket path");
        VhostUserServer server = new VhostUserServer(socketPath, backend, listener, access);
        server.acceptor.start();
        LOG.log(System.Logger.Level.INFO, server.name + ": listening");
        return server;
    }

    public Path socketPath() {
        return path;
    }

    /** True while a frontend is connected and being served. */
    public boolean connected() {
        synchronized (lock) {
            return current != null && !current.ended;
        }
    }

    /** The connected frontend's process id (SO_PEERCRED at connect time), or -1 when none is connected. */
    public int frontendPid() {
        synchronized (lock) {
            if (current == null || current.ended) {
                return -1;
            }
            try {
                return current.connection.socket().peerCredentials().pid();
            } catch (java.io.IOException | IllegalStateException e) {
                return -1;
            }
        }
    }

    /** True while another frontend waits in the listen backlog for the connected one to disconnect. */
    public boolean frontendWaiting() {
        return waiting;
    }

    /** How many frontends had to wait for an earlier one since the server started. */
    public long frontendsWaited() {
        return waits.get();
    }

    /** "frontend pid 12 uid 0 connected, another waiting" and the like, for status and statistics lines. */
    public String frontendSummary() {
        String who;
        synchronized (lock) {
            who = current == null || current.ended ? "no frontend" : "frontend " + current.peer;
        }
        return who
                + (waiting ? ", another frontend waiting for it" : "")
                + (waits.get() > 0 ? " (" + waits.get() + " waited so far)" : "");
    }

    /**
     * Waits until no frontend is being served and the last one's cleanup (queues stopped, memory unmapped, device
     * reset) has finished. Returns false if that did not happen within {@code timeout}.
     */
    public boolean awaitIdle(Duration timeout) throws InterruptedException {
        Session s;
        synchronized (lock) {
            s = current;
        }
        return s == null || s.thread.join(timeout);
    }

    /** Serves an accepted frontend whose uid is allowed (on the acceptor thread). */
    private void admit(UnixSocket socket, Runnable release) {
        String peer;
        try {
            UnixSocket.Credentials cred = socket.peerCredentials();
            peer = "pid " + cred.pid() + " uid " + cred.uid();
        } catch (LinuxException e) {
            peer = "(credentials unreadable)";
        }
        Session previous;
        synchronized (lock) {
            if (stop.begun()) {
                release.run();
                socket.close();
                return;
            }
            previous = current;
        }
        if (previous != null) {
            // acceptWhenFree accepted only after the previous session's thread ended; this join is the guarantee
            joinQuietly(previous.thread);
        }
        Session s = new Session(socket, peer, release);
        synchronized (lock) {
            if (stop.begun()) {
                release.run();
                socket.close();
                return;
            }
            current = s;
            connectionLog.log(System.Logger.Level.INFO, name + ": frontend " + peer + " connected");
            s.thread.start();
        }
    }

    /**
     * The acceptor's listener: does not accept while a frontend is served, so a second one stays in the listen
     * backlog (logged once when it appears) and is accepted when the first has disconnected and been cleaned up.
     */
    private UnixSocket acceptWhenFree() throws IOException {
        Session s;
        synchronized (lock) {
            s = current;
        }
        java.util.concurrent.CountDownLatch hold = acceptHeldBy;
        if (hold != null && s != null) {
            try {
                hold.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        if (s != null && !serveUntilDisconnected(s)) {
            throw new IOException("closing");
        }
        return listener.accept();
    }

    /**
     * Waits while {@code s} is served; a connection that appears meanwhile stays in the backlog. Returns when the
     * session's thread has finished (its cleanup included), or false when the server is closing.
     */
    private boolean serveUntilDisconnected(Session s) {
        boolean told = false;
        try {
            while (s.thread.isAlive()) {
                if (stop.begun()) {
                    return false;
                }
                if (!told) {
                    // Sleeps in poll until a connection arrives (or 500 ms pass, to notice the session's end).
                    if (listener.connectionPending(500) && !stop.begun()) {
                        if (s.finishing()) { // a frontend reconnecting: served once the old session is cleaned up
                            s.thread.join(Duration.ofMillis(500));
                            continue;
                        }
                        told = true;
                        waiting = true;
                        waits.incrementAndGet();
                        connectionLog.log(
                                System.Logger.Level.WARNING,
                                name + ": another frontend is connecting while frontend "
                                        + s.peer
                                        + " is served; it waits (its connection stays in the listen backlog) and is "
                                        + "served when that one disconnects — one frontend per socket");
                    }
                } else {
                    s.thread.join(Duration.ofMillis(500));
                    waiting = listener.connectionPending(0); // it may have given up
                }
            }
            return !stop.begun();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        } catch (LinuxException e) {
            errorLog.log(
                    System.Logger.Level.ERROR,
                    name + ": polling the listener failed: " + e.getMessage() + "; waiting for frontend " + s.peer
                            + " to disconnect");
            // as long as the session lasts, but no longer than the server: close() must not wait for this thread
            // on top of the session's
            while (s.thread.isAlive() && !stop.begun()) {
                try {
                    s.thread.join(Duration.ofMillis(500));
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    return false;
                }
            }
            return !stop.begun();
        } finally {
            waiting = false;
        }
    }

    /**
     * Stops accepting, disconnects the frontend (its queues stop, memory is unmapped, the device reset) and removes the
     * socket file; waits for all of that as long as it takes (a WARNING every 30 s names what it waits for). A caller
     * that must answer within a bound uses {@link #stopWithin} instead.
     */
    @Override
    public void close() {
        if (stopWithin(STOP_WAIT) != null) {
            finishStop();
        }
    }

    /**
     * Begins the stop as {@link #close} does — the listener and the frontend's connection are shut down at once — and
     * waits at most {@code limit} for the frontend's session to end. Returns null when the server has stopped (as
     * {@link #close} leaves it: the socket file is gone). Otherwise the session thread is still inside a device
     * callback (say a queue's stop, waiting for requests stuck on a file system or disk that does not answer): that
     * is logged as a WARNING naming the socket and what the thread is in, and returned as a phrase for the caller's
     * own line; nothing is accepted any more, but the listener stays open and its socket file in place until
     * {@link #finishStop} — which the caller must run, on a thread of its own — has seen that thread end. The listener,
     * shut down, refuses connections, so to another process the path looks free meanwhile ({@link
     * SocketPaths#listen}): the caller keeps it taken in its own process (the daemon's claims), and a server that took
     * it over all the same keeps its socket file ({@link #finishStop} removes only the one this server made).
     */
    public String stopWithin(Duration limit) {
        long deadline = System.nanoTime() + limit.toNanos();
        if (!stop.begin()) {
            return null;
        }
        // No session starts once the stop has begun (admit checks it under the lock it sets current under):
        // the one there now is the last, and its connection is shut down whether or not the accept thread ends in time.
        Session s;
        synchronized (lock) {
            s = current;
        }
        if (s != null) {
            s.connection.shutdown();
        }
        String left;
        if (!joinUntil(acceptor.thread(), deadline)) {
            left = "its accept thread has not ended";
        } else if (s == null || joinUntil(s.thread, deadline)) {
            left = null;
        } else {
            left = "the session of frontend " + s.peer + " has not ended: its thread (" + s.thread.getName()
                    + ") is still in " + s.doing();
        }
        if (left == null) {
            stop.end();
            return null;
        }
        LOG.log(
                System.Logger.Level.WARNING,
                name + ": stopping: after " + limit.toMillis() + " ms, " + left + " — a device callback that waits,"
                        + " e.g. a queue's stop for requests on a file system or disk that does not answer. "
                        + (s != null
                                ? "The connection of frontend " + s.peer + " is shut down"
                                : "No frontend was" + " connected")
                        + " and no other is accepted, but the socket file stays until that thread has ended");
        return left;
    }

    /**
     * Ends a stop that {@link #stopWithin} left under way: waits for the session thread as long as it takes (a WARNING
     * every 30 s), then closes the listener and removes the socket file — if it is still the one this server made —
     * in that order. Nothing when already done.
     */
    public void finishStop() {
        if (!stop.begin()) {
            return;
        }
        joinQuietly(acceptor.thread());
        Session s;
        synchronized (lock) {
            s = current;
        }
        if (s != null) {
            s.connection.shutdown();
            awaitSession(s);
        }
        stop.end(); // once: a concurrent stop may have ended it
    }

    /** The stop's last step ({@link #stop}): the listener closed, the socket file removed if it is this server's. */
    private void closeListener() {
        listener.close();
        try {
            if (!SocketPaths.removeIfSame(path, socketFile)) {
                // its listener, shut down while the session ran, refused connections: the path looked free
                LOG.log(
                        System.Logger.Level.INFO,
                        name + ": another server took the path over while this one was stopping; its socket file"
                                + " stays");
            }
        } catch (IOException e) {
            LOG.log(
                    System.Logger.Level.WARNING,
                    name + ": could not remove the socket file: " + e.getMessage() + "; a server started on the path"
                            + " replaces it (nothing listens on it)");
        }
        LOG.log(System.Logger.Level.INFO, name + ": stopped");
    }

    /** The stop's first step ({@link #stop}): nothing is accepted from now on; wakes the accept thread. */
    private void shutDownListener() {
        LOG.log(System.Logger.Level.INFO, name + ": stopping");
        try {
            listener.shutdown(UnixSocket.SHUT_RDWR); // wakes accept with EINVAL
        } catch (LinuxException e) {
            LOG.log(System.Logger.Level.WARNING, name + ": shutting down the listener: " + e.getMessage());
        }
    }

    /**
     * Waits for the session's thread as long as it takes (the stop's rest, {@link #finishStop}), naming every {@link
     * #stopWarnEvery} what it is still in, why the socket file is still there and what to do.
     */
    private void awaitSession(Session s) {
        if (s.thread == Thread.currentThread()) {
            return;
        }
        boolean interrupted = false;
        try {
            while (true) {
                try {
                    if (s.thread.join(stopWarnEvery)) {
                        return;
                    }
                    LOG.log(
                            System.Logger.Level.WARNING,
                            name + ": stopping: still waiting for the session of frontend " + s.peer + ": its thread ("
                                    + s.thread.getName() + ") is still in " + s.doing() + ". The socket file stays"
                                    + " until it has ended. Such a wait is on a file system or disk that does not"
                                    + " answer: make it answer again (a hung NFS server or FUSE daemon, a failing"
                                    + " disk)");
                } catch (InterruptedException e) {
                    interrupted = true; // the session must still be waited for: the device may still use the image
                }
            }
        } finally {
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /**
     * Tests: once a frontend has been admitted, the accept thread waits for this latch before each further accept (a
     * thread slow to see the stop). Never before the first: the accept thread may not have reached its first accept
     * when a test sets this, and a hold there left the test's frontend unserved.
     */
    private volatile java.util.concurrent.CountDownLatch acceptHeldBy;

    /** Tests: holds the accept thread before its next accept after a frontend's, until {@code latch} counts down. */
    void holdAcceptThread(java.util.concurrent.CountDownLatch latch) {
        acceptHeldBy = latch;
    }

    /** How often {@link #finishStop} names the session it still waits for (tests). */
    void stopWarnEvery(Duration d) {
        stopWarnEvery = d;
    }

    /** Waits for {@code t} until {@code deadline} ({@link System#nanoTime}); whether it has ended. */
    private static boolean joinUntil(Thread t, long deadline) {
        if (t == Thread.currentThread()) {
            return true;
        }
        boolean interrupted = false;
        try {
            while (true) {
                try {
                    return t.join(Duration.ofNanos(Math.max(1, deadline - System.nanoTime())));
                } catch (InterruptedException e) {
                    interrupted = true; // the stop's bound still holds: an interrupt does not shorten it
                }
            }
        } finally {
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private void joinQuietly(Thread t) {
        if (t == Thread.currentThread()) {
            return;
        }
        boolean interrupted = false;
        while (true) {
            try {
                if (!t.join(STOP_WAIT)) {
                    LOG.log(System.Logger.Level.WARNING, name + ": still waiting for " + t.getName() + " to finish");
                    continue;
                }
                break;
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    private static void sleepQuietly(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
