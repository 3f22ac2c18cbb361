// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.io.IOException;
import java.lang.System.Logger.Level;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;
import java.util.function.Function;

/**
 * The accept loop every server shares (vhost-user, the daemon's control socket, NBD): one platform thread accepts,
 * checks the peer, bounds the connections served at once and hands each admitted one to the server.
 *
 * <p>A failing {@code accept} never ends the loop. Running out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM) makes the pending connection's accept fail at once, every time, so retrying at once would spin a core: the
 * loop backs off, from {@value #MIN_BACKOFF_MS} ms doubling to {@value #MAX_BACKOFF_MS} ms, and starts again at the
 * bottom after the next success. The first failure of a streak is logged with the back-off, the rest only counted,
 * and the first success after it says how many attempts failed, so a long outage is two log lines, not thousands.
 *
 * @param <S> the accepted connection ({@link UnixSocket}, or a NIO channel)
 */
public final class Acceptor<S extends AutoCloseable> {
    public static final long MIN_BACKOFF_MS = 10;
    public static final long MAX_BACKOFF_MS = 1000;

    static {
        // What a failing accept needs is loaded now: with no descriptor left, loading a class from a directory or a
        // jar not yet open fails, and the JVM remembers that failure for good (seen: NoClassDefFoundError: Errno
        // from LinuxException's message, which ended the accept thread).
        Errno.name(Errno.EMFILE);
        new LinuxException("accept", Errno.EMFILE).getMessage();
    }

    /** Waits for the next connection; throws when the listener failed or was closed. */
    @FunctionalInterface
    public interface Listener<S> {
        S accept() throws IOException;
    }

    /**
     * Serves an admitted connection, on the acceptor's thread (start a thread for long work). {@code release} gives
     * its place back when it ends; it must be called exactly once, whatever happens (it is idempotent).
     */
    @FunctionalInterface
    public interface Server<S> {
        void serve(S connection, Runnable release) throws Exception;
    }

    /** A connection turned away (by the peer check or the limit); it must close it (after telling the peer). */
    @FunctionalInterface
    public interface Refusal<S> {
        void refuse(S connection, String why);
    }

    private final String name;
    private final System.Logger log;
    private final Listener<S> listener;
    private final BooleanSupplier closed;
    private final Function<S, String> peerCheck;
    private final Refusal<S> onRefused;
    private final int maxConnections;
    private final Refusal<S> onLimit;
    private final Server<S> server;
    private final Thread thread;
    private final AtomicInteger active = new AtomicInteger();
    private long failedAttempts; // acceptor thread only
    /** When the current streak of failed accepts began (System.nanoTime, never 0), or 0 while accepts succeed. */
    private volatile long failingSince;

    private Acceptor(Builder<S> b, Server<S> server) {
        this.name = b.name;
        this.log = b.log;
        this.listener = b.listener;
        this.closed = b.closed;
        this.peerCheck = b.peerCheck;
        this.onRefused = b.onRefused;
        this.maxConnections = b.maxConnections;
        this.onLimit = b.onLimit;
        this.server = server;
        this.thread = Thread.ofPlatform().name(b.threadName).daemon(b.daemon).unstarted(this::loop);
    }

    /**
     * @param name     how log lines name the server, e.g. {@code "vhost-user /run/vm1.sock"}
     * @param listener the blocking accept
     * @param closed   true once the server is closing: a failed accept then ends the loop quietly
     */
    public static <S extends AutoCloseable> Builder<S> builder(
            String name, System.Logger log, Listener<S> listener, BooleanSupplier closed) {
        return new Builder<>(name, log, listener, closed);
    }

    public static final class Builder<S extends AutoCloseable> {
        private final String name;
        private final System.Logger log;
        private final Listener<S> listener;
        private final BooleanSupplier closed;
        private String threadName;
        private boolean daemon;
        private Function<S, String> peerCheck = s -> null;
        private Refusal<S> onRefused;
        private int maxConnections = Integer.MAX_VALUE;
        private Refusal<S> onLimit;

        private Builder(String name, System.Logger log, Listener<S> listener, BooleanSupplier closed) {
            this.name = Objects.requireNonNull(name);
            this.log = Objects.requireNonNull(log);
            this.listener = Objects.requireNonNull(listener);
            this.closed = Objects.requireNonNull(closed);
            this.threadName = name + " accept";
            this.onRefused = (s, why) -> closeQuietly(s);
            this.onLimit = onRefused;
        }

        public Builder<S> threadName(String n) {
            this.threadName = n;
            return this;
        }

        public Builder<S> daemon(boolean d) {
            this.daemon = d;
            return this;
        }

        /**
         * Checks each connection's peer before anything else: {@code check} returns null to admit it, or why not;
         * {@code refused} then logs and closes it.
         */
        public Builder<S> peerCheck(Function<S, String> check, Refusal<S> refused) {
            this.peerCheck = Objects.requireNonNull(check);
            this.onRefused = Objects.requireNonNull(refused);
            return this;
        }

        /** At most {@code max} connections served at once; one more goes to {@code refused}, which closes it. */
        public Builder<S> maxConnections(int max, Refusal<S> refused) {
            if (max < 1) {
                throw new IllegalArgumentException("at least one connection must be allowed: " + max);
            }
            this.maxConnections = max;
            this.onLimit = Objects.requireNonNull(refused);
            return this;
        }

        /** The acceptor, not yet started. */
        public Acceptor<S> build(Server<S> server) {
            return new Acceptor<>(this, Objects.requireNonNull(server));
        }
    }

    /**
     * The peer check of a UNIX socket server: the peer's uid (SO_PEERCRED) against {@code access}. Returns null
     * (admit) or why not.
     */
    public static Function<UnixSocket, String> peerCheck(SocketAccess access) {
        return s -> {
            UnixSocket.Credentials cred;
            try {
                cred = s.peerCredentials();
            } catch (LinuxException e) {
                return "whose credentials cannot be read: " + e.getMessage();
            }
            return access.allows(cred.uid()) ? null : "pid " + cred.pid() + ": uid " + cred.uid() + " is not allowed";
        };
    }

    public Acceptor<S> start() {
        thread.start();
        return this;
    }

    public Thread thread() {
        return thread;
    }

    /**
     * How long every accept has failed (out of descriptors, out of memory), in nanoseconds; 0 while accepts succeed.
     * A watchdog reads it: the thread is alive, backing off, yet serves nobody.
     */
    public long failingForNanos() {
        long since = failingSince;
        return since == 0 ? 0 : Math.max(1, System.nanoTime() - since);
    }

    /** Connections admitted and not yet released. */
    public int active() {
        return active.get();
    }

    private void loop() {
        long backoff = MIN_BACKOFF_MS;
        while (!closed.getAsBoolean()) {
            S s;
            try {
                s = listener.accept();
            } catch (IOException | RuntimeException | Error e) {
                // Error too: out of descriptors, the JVM cannot open a class file either (a NoClassDefFoundError
                // from the failure path itself), and out of memory is as passing as out of descriptors.
                if (closed.getAsBoolean()) {
                    return;
                }
                if (failedAttempts++ == 0) {
                    failingSince = System.nanoTime() | 1;
                    log.log(
                            Level.ERROR,
                            name + ": accept failed: " + e.getMessage() + "; backing off (" + backoff
                                    + " ms, doubling up to " + MAX_BACKOFF_MS + " ms) and retrying until it succeeds");
                }
                sleep(backoff);
                backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
                continue;
            }
            if (failedAttempts > 0) {
                log.log(Level.WARNING, name + ": accepting again after " + failedAttempts + " failed attempts");
                failedAttempts = 0;
                failingSince = 0;
                backoff = MIN_BACKOFF_MS;
            }
            admit(s);
        }
    }

    private void admit(S s) {
        try {
            String why = peerCheck.apply(s);
            if (why != null) {
                onRefused.refuse(s, why);
                return;
            }
            if (active.incrementAndGet() > maxConnections) {
                active.decrementAndGet();
                onLimit.refuse(s, "already serving " + maxConnections + " connections, the most allowed at once");
                return;
            }
        } catch (RuntimeException e) {
            log.log(Level.ERROR, name + ": checking a new connection failed; closing it", e);
            closeQuietly(s);
            return;
        }
        Runnable release = new Runnable() {
            private boolean done;

            @Override
            public synchronized void run() {
                if (!done) {
                    done = true;
                    active.decrementAndGet();
                }
            }
        };
        try {
            server.serve(s, release);
        } catch (Exception | OutOfMemoryError e) { // OutOfMemoryError: no thread could be created
            release.run();
            closeQuietly(s);
            log.log(Level.ERROR, name + ": could not serve a new connection: " + e + "; closed it");
        }
    }

    /** Waits up to {@code timeout} for the loop to end (after the listener was shut down or closed). */
    public boolean join(Duration timeout) throws InterruptedException {
        return thread == Thread.currentThread() || !thread.isAlive() || thread.join(timeout);
    }

    private static void closeQuietly(AutoCloseable c) {
        try {
            c.close();
        } catch (Exception e) {
            // nothing more to do with it
        }
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            // The loop ends when the server closes, not on an interrupt: keeping the flag would make every later
            // back-off return at once, a spin.
        }
    }
}
