// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import io.iovirt.linux.Acceptor;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collection;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
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
 * {@link #close} stops accepting, disconnects every client and waits for their threads. A client can only hurt
 * its own connection: malformed or hostile input gets the protocol's error reply or a disconnect, a client that
 * stalls in the handshake is dropped after {@link #HANDSHAKE_TIMEOUT_SECONDS}, and connections beyond the limit
 * are refused in the handshake with an error naming the limit.
 */
public final class NbdServer implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(NbdServer.class.getName());
    public static final int DEFAULT_MAX_CONNECTIONS = 16;
    static final int HANDSHAKE_TIMEOUT_SECONDS = 10;

    private final ServerSocketChannel listener;
    private final String address;
    private final Path socketPath;
    private final int maxConnections;
    private final ConcurrentHashMap<String, NbdExport> exports = new ConcurrentHashMap<>();
    private final Set<NbdConnection> connections = ConcurrentHashMap.newKeySet();
    private final AtomicInteger ids = new AtomicInteger();
    private final ScheduledExecutorService timer;
    private final Acceptor<SocketChannel> acceptor;
    private volatile boolean closed;

    private NbdServer(ServerSocketChannel listener, String address, Path socketPath, int maxConnections) {
        this.listener = listener;
        this.address = address;
        this.socketPath = socketPath;
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
        // Over the limit a connection is still served, only to be refused in the handshake with an error naming the
        // limit (a client that is merely closed would retry at once); those do not count against it.
        this.acceptor = Acceptor.builder("nbd " + address, LOG, listener::accept, () -> closed)
                .threadName("nbd-accept " + address)
                .daemon(true)
                .maxConnections(maxConnections, (ch, why) -> {
                    try {
                        serve(ch, maxConnections, () -> {});
                    } catch (OutOfMemoryError e) {
                        closeQuietly(ch);
                    }
                })
                .build((ch, release) -> serve(ch, 0, release));
    }

    /**
     * Listens on a UNIX socket. A stale socket file (nothing listening) is replaced; a live one is an error.
     */
    public static NbdServer startUnix(Path socket, int maxConnections) throws IOException {
        if (Files.exists(socket, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
            if (!Files.readAttributes(
                            socket,
                            java.nio.file.attribute.BasicFileAttributes.class,
                            java.nio.file.LinkOption.NOFOLLOW_LINKS)
                    .isOther()) { // never delete an image given by mistake
                throw new IOException(socket + " exists and is not a socket; remove it or choose another socket path");
            }
            boolean live;
            try {
                live = io.iovirt.linux.UnixSocket.listenedOn(socket);
            } catch (io.iovirt.linux.LinuxException e) {
                throw new IOException("cannot tell whether " + socket + " is in use: " + e.getMessage(), e);
            }
            if (live) {
                throw new IOException(
                        "another server already listens on " + socket + "; stop it or choose another " + "socket path");
            }
            Files.delete(socket); // stale: nobody accepts on it
        }
        ServerSocketChannel ch = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        try {
            ch.bind(UnixDomainSocketAddress.of(socket), 64);
        } catch (IOException e) {
            ch.close();
            throw new IOException("cannot listen on " + socket + ": " + e.getMessage(), e);
        }
        return start(ch, "unix:" + socket, socket, maxConnections);
    }

    /**
     * Listens on a loopback TCP address. NBD has no authentication, so any other address is refused: reach a
     * remote host through an SSH tunnel or a UNIX socket instead.
     */
    public static NbdServer startTcp(String host, int port, int maxConnections) throws IOException {
        InetAddress addr = InetAddress.getByName(host);
        if (!addr.isLoopbackAddress()) {
            throw new IOException("refusing to listen on " + host + ": NBD has no authentication, so iovirt listens on "
                    + "loopback addresses only (127.0.0.1, ::1); use --socket or an SSH tunnel for remote clients");
        }
        ServerSocketChannel ch = ServerSocketChannel.open();
        try {
            ch.bind(new InetSocketAddress(addr, port), 64);
        } catch (IOException e) {
            ch.close();
            throw new IOException("cannot listen on " + host + ":" + port + ": " + e.getMessage(), e);
        }
        return start(
                ch, "tcp:" + host + ":" + ((InetSocketAddress) ch.getLocalAddress()).getPort(), null, maxConnections);
    }

    private static NbdServer start(ServerSocketChannel ch, String address, Path socket, int maxConnections) {
        if (maxConnections < 1) {
            throw new IllegalArgumentException("maxConnections must be at least 1");
        }
        NbdServer s = new NbdServer(ch, address, socket, maxConnections);
        s.acceptor.start();
        return s;
    }

    /** "unix:/path" or "tcp:host:port" (the real port when 0 was asked for). */
    public String address() {
        return address;
    }

    /** The bound TCP port, or -1 for a UNIX socket. */
    public int port() {
        try {
            SocketAddress a = listener.getLocalAddress();
            return a instanceof InetSocketAddress i ? i.getPort() : -1;
        } catch (IOException e) {
            return -1;
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

    /** Runs a connection on its own thread; {@code refuseLimit} > 0 refuses it in the handshake (over the limit). */
    private void serve(SocketChannel ch, int refuseLimit, Runnable release) {
        NbdConnection c = new NbdConnection(this, ch, ids.incrementAndGet(), refuseLimit);
        connections.add(c);
        if (closed) {
            c.close();
            connections.remove(c);
            release.run();
            return;
        }
        ScheduledFuture<?> deadline = timer.schedule(c::handshakeDeadline, HANDSHAKE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
        try {
            Thread.ofPlatform().name("nbd " + address + " #" + c.id()).daemon().start(() -> {
                try {
                    c.run();
                } finally {
                    deadline.cancel(false);
                    connections.remove(c);
                    release.run();
                }
            });
        } catch (OutOfMemoryError e) { // no thread could be created
            deadline.cancel(false);
            connections.remove(c);
            throw e;
        }
    }

    private static void closeQuietly(SocketChannel ch) {
        try {
            ch.close();
        } catch (IOException e) {
            // gone
        }
    }

    private static void sleepQuietly() {
        try {
            Thread.sleep(100);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    String name() {
        return address;
    }

    /** Stops accepting, disconnects every client (their in-flight request completes first) and waits for them. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        try {
            listener.close();
        } catch (IOException e) {
            // closing
        }
        try {
            acceptor.join(java.time.Duration.ofSeconds(5));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        for (NbdConnection c : connections) {
            c.close();
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (!connections.isEmpty() && System.nanoTime() < deadline) {
            sleepQuietly();
        }
        timer.shutdownNow();
        if (socketPath != null) {
            try {
                Files.deleteIfExists(socketPath);
            } catch (IOException e) {
                // best effort
            }
        }
    }
}
