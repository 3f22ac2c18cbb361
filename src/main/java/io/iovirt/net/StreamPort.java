// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static java.lang.System.Logger.Level.INFO;
import static java.lang.System.Logger.Level.WARNING;
import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.Errno;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.PacketIo;
import io.iovirt.linux.SocketAccess;
import io.iovirt.linux.SocketPaths;
import io.iovirt.linux.UnixSocket;
import io.iovirt.util.LogLimiter;
import io.iovirt.virtio.QueueWorker;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * {@code stream:PATH} — the peer is QEMU's {@code -netdev stream} on a UNIX socket (any emulated NIC behind it, e.g.
 * e1000): iovirt listens on PATH and QEMU connects
 * ({@code -netdev stream,id=n1,server=off,addr.type=unix,addr.path=PATH}). Each frame travels as a 4-byte big-endian
 * length followed by the frame, in both directions.
 *
 * <p>One {@link QueueWorker} per port (a platform thread in epoll) wakes on the listening socket and the connection. It
 * reads as many bytes as the socket has into a 256 KiB buffer, forwards every complete frame in place (a
 * {@link Frame} window onto that buffer), and keeps a partial frame for the next read. A length prefix above QEMU's
 * own limit (NET_BUFSIZE, 69632) means the stream lost its framing: that connection is counted and closed, and the
 * port waits for the next peer. One peer at a time; a second connection while one is active is refused.
 *
 * <p>Transmit (any port's thread) copies the prefix and frame into a private buffer and sends without blocking under
 * this port's lock. A full socket drops the frame (counted); a partial send keeps the rest, which this port's thread
 * completes when the socket becomes writable, dropping new frames until then, so framing is never broken.
 */
public final class StreamPort extends Port {
    /** QEMU's NET_BUFSIZE: QEMU neither sends nor accepts a longer stream frame. */
    public static final int MAX_STREAM_FRAME = 4096 + 65536;

    private static final int PREFIX = 4;
    private static final int RX_BUFFER = 256 * 1024;
    /** Reads of up to {@link #RX_BUFFER} bytes per readiness event, see {@link #readAvailable}. */
    private static final int READS_PER_EVENT = 8;

    private static final ValueLayout.OfInt LENGTH = JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
    private static final long LISTENER = 0;
    private static final long CONNECTION = 2;
    private static final int CONNECTION_EVENTS = Epoll.EPOLLIN | Epoll.EPOLLRDHUP;

    private final Path path;
    private final RateLimitedLog txLog = new RateLimitedLog(5000);
    private final Object txLock = new Object();
    private QueueWorker worker;
    private UnixSocket listener;
    private volatile boolean closing;
    /**
     * A peer's connections and their ends (connected, closed, refused, broken framing): a peer connecting in a loop
     * makes a burst of lines, then one a second with the count of those left out.
     */
    private final LogLimiter connectionLog = new LogLimiter(System.getLogger("io.iovirt.net"));

    // receive side: the port thread only
    private MemorySegment rxBuf;
    private Frame rxFrame;
    private int fill;
    private Ingress rx;
    private long connections;

    // transmit side: guarded by txLock
    private UnixSocket conn;
    private MemorySegment txBuf;
    private int pendingOff;
    private int pendingEnd;
    private Counters tx;
    private volatile boolean linkUp;

    private final SocketAccess access;

    public StreamPort(Path path) {
        this(path, SocketAccess.ownerOnly());
    }

    /** With the socket file's mode/group and the peer uids served taken from {@code access}. */
    public StreamPort(Path path, SocketAccess access) {
        super("stream:" + path);
        this.path = path;
        this.access = access;
    }

    public Path path() {
        return path;
    }

    /** Connections accepted so far (a reconnecting QEMU makes this grow). */
    public synchronized long connections() {
        return connections;
    }

    @Override
    public boolean isLinkUp() {
        return linkUp;
    }

    @Override
    protected void start() throws IOException {
        Arena arena = Arena.ofAuto(); // freed when the port is unreachable: no thread can still be using it then
        rxBuf = arena.allocate(RX_BUFFER, 64);
        txBuf = arena.allocate(PREFIX + maxFrame(), 64);
        rxFrame = new Frame(rxBuf);
        rx = newIngress();
        tx = newCounters();
        try {
            listener = SocketPaths.listen(path, access);
            worker = receiveWorker(
                    listener.fd(),
                    LISTENER,
                    (token, events) -> {
                        if (token == LISTENER) {
                            accept();
                        } else if (token == CONNECTION) {
                            if ((events & Epoll.EPOLLOUT) != 0) {
                                flushPending();
                            }
                            if ((events & (Epoll.EPOLLIN | Epoll.EPOLLHUP | Epoll.EPOLLERR | Epoll.EPOLLRDHUP)) != 0) {
                                readAvailable();
                            }
                        }
                    },
                    () -> disconnect(null));
        } catch (IOException | RuntimeException e) {
            close();
            throw e;
        }
        worker.start();
    }

    private void accept() throws LinuxException {
        UnixSocket s;
        try {
            s = listener.accept();
        } catch (LinuxException e) {
            if (e.errno() == Errno.EAGAIN) {
                return;
            }
            // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) or a connection that died in the
            // backlog: the port goes on; back off briefly so a level-triggered listener does not spin.
            connectionLog.log(WARNING, this + ": accept failed: " + e.getMessage() + "; retrying");
            try {
                Thread.sleep(50);
            } catch (InterruptedException ie) {
                Thread.currentThread().interrupt();
            }
            return;
        }
        UnixSocket current;
        synchronized (txLock) {
            current = conn;
        }
        if (current != null) {
            connectionLog.log(WARNING, this + ": refused a second connection while a peer is attached");
            s.close();
            return;
        }
        UnixSocket.Credentials cred;
        try {
            cred = s.peerCredentials();
        } catch (LinuxException e) {
            cred = null;
        }
        if (cred == null || !access.allows(cred.uid())) {
            connectionLog.log(
                    WARNING,
                    this + ": refused a peer with "
                            + (cred == null ? "unreadable credentials" : "uid " + cred.uid() + " (" + access + ")"));
            s.close();
            return;
        }
        s.fd().setNonBlocking(true);
        fill = 0;
        worker.watch(s.fd(), CONNECTION_EVENTS, CONNECTION);
        synchronized (txLock) {
            conn = s;
            pendingOff = pendingEnd = 0;
            linkUp = true;
        }
        synchronized (this) {
            connections++;
        }
        connectionLog.log(INFO, this + ": peer connected");
    }

    /**
     * Reads until the socket is empty or {@link #READS_PER_EVENT} reads were made, forwarding each complete frame. The
     * bound hands the thread back to its loop (level-triggered: a socket still readable is reported again at once),
     * so a peer that writes faster than the switch forwards cannot keep it from seeing a stop request or the socket
     * turning writable.
     */
    private void readAvailable() throws LinuxException {
        UnixSocket c;
        synchronized (txLock) {
            c = conn;
        }
        if (c == null) {
            return;
        }
        for (int reads = 0; reads < READS_PER_EVENT; reads++) {
            long n;
            try {
                n = PacketIo.read(c.fd(), rxBuf, fill, RX_BUFFER - fill);
            } catch (LinuxException e) {
                disconnect("read failed: " + e.getMessage());
                return;
            }
            if (n == PacketIo.WOULD_BLOCK) {
                return;
            }
            if (n == 0) {
                disconnect(fill == 0 ? "peer closed the connection" : "peer closed the connection inside a frame");
                return;
            }
            fill += (int) n;
            if (!deliverFrames()) {
                return;
            }
        }
    }

    /**
     * Forwards the complete frames at the start of the buffer and moves a trailing partial frame to the front.
     * Returns false when the stream is corrupt (the connection was closed).
     */
    private boolean deliverFrames() {
        int pos = 0;
        while (fill - pos >= PREFIX) {
            int len = rxBuf.get(LENGTH, pos);
            if (len < 0 || len > MAX_STREAM_FRAME) {
                rx.counters().increment(PortStat.RX_DROPPED_MALFORMED);
                endBurst(rx);
                disconnect("bogus frame length " + Integer.toUnsignedString(len) + " (QEMU sends at most "
                        + MAX_STREAM_FRAME + "): the stream lost its framing");
                return false;
            }
            if (fill - pos - PREFIX < len) {
                break;
            }
            receive(rx, rxFrame.set(pos + PREFIX, len)); // the switch counts runts and oversize frames
            pos += PREFIX + len;
        }
        endBurst(rx);
        if (pos > 0) {
            MemorySegment.copy(rxBuf, pos, rxBuf, 0, fill - pos);
            fill -= pos;
        }
        return true;
    }

    @Override
    protected void transmit(Frame frame) {
        synchronized (txLock) {
            UnixSocket c = conn;
            if (c == null) {
                tx.increment(PortStat.TX_DROPPED_LINK_DOWN);
                return;
            }
            if (pendingEnd != 0) {
                tx.increment(PortStat.TX_DROPPED_NO_BUFFERS); // still finishing a partly sent frame
                return;
            }
            int len = frame.length();
            txBuf.set(LENGTH, 0, len);
            frame.copyTo(txBuf, PREFIX);
            long n;
            try {
                n = PacketIo.send(c.fd(), txBuf, 0, PREFIX + len);
            } catch (LinuxException e) {
                tx.increment(PortStat.TX_DROPPED_ERROR); // the port thread sees the hang-up and disconnects
                txLog.warn(this + ": send failed: " + e.getMessage());
                return;
            }
            if (n == PacketIo.WOULD_BLOCK) {
                tx.increment(PortStat.TX_DROPPED_NO_BUFFERS);
                return;
            }
            tx.tx(len);
            if (n < PREFIX + len) {
                pendingOff = (int) n;
                pendingEnd = PREFIX + len;
                try {
                    worker.modify(c.fd(), CONNECTION_EVENTS | Epoll.EPOLLOUT, CONNECTION);
                } catch (LinuxException e) {
                    txLog.warn(this + ": cannot wait for the socket to drain: " + e.getMessage());
                }
            }
        }
    }

    /** Sends the rest of a partly sent frame (port thread, socket writable). */
    private void flushPending() {
        synchronized (txLock) {
            UnixSocket c = conn;
            if (c == null || pendingEnd == 0) {
                return;
            }
            try {
                long n = PacketIo.send(c.fd(), txBuf, pendingOff, pendingEnd - pendingOff);
                if (n == PacketIo.WOULD_BLOCK) {
                    return;
                }
                pendingOff += (int) n;
                if (pendingOff == pendingEnd) {
                    pendingOff = pendingEnd = 0;
                    worker.modify(c.fd(), CONNECTION_EVENTS, CONNECTION);
                }
            } catch (LinuxException e) {
                txLog.warn(this + ": send failed: " + e.getMessage());
            }
        }
    }

    /** Drops the current peer (if any) and forgets its addresses; the listener stays open for the next one. */
    private void disconnect(String why) {
        UnixSocket c;
        synchronized (txLock) {
            c = conn;
            conn = null;
            linkUp = false;
            pendingOff = pendingEnd = 0;
        }
        if (c == null) {
            return;
        }
        peerGone(); // before the peer sees the hang-up: its addresses are already forgotten then
        try {
            worker.unwatch(c.fd());
        } catch (LinuxException | IllegalStateException e) {
            // closing the socket removes it from the epoll set anyway
        }
        c.close();
        fill = 0;
        if (why != null) {
            connectionLog.log(INFO, this + ": " + why + "; waiting for the next peer");
        }
    }

    @Override
    public void close() {
        synchronized (this) {
            if (closing) {
                return;
            }
            closing = true;
        }
        stopReceiveWorker(worker); // bounded; disconnects the peer on its way out
        disconnect(null);
        if (listener != null) {
            listener.close();
            try {
                Files.deleteIfExists(path);
            } catch (IOException e) {
                // a leftover socket file is reused on the next start
            }
        }
    }
}
