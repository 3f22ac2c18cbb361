// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import io.iovirt.util.HostPort;
import java.io.EOFException;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.net.Inet6Address;
import java.net.InetAddress;
import java.net.SocketTimeoutException;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/**
 * An AF_UNIX SOCK_STREAM socket done entirely through FFM (never mixed with the JDK's channels, which drop
 * SCM_RIGHTS descriptors), with file descriptor passing. Received descriptors are close-on-exec and owned by the
 * caller as {@link Fd}s; a message with more descriptors than the caller accepts closes them all and fails.
 *
 * <p>The NBD server's loopback TCP listener is one too ({@link #listenTcp}): accept, the stream calls, shutdown and
 * poll are the same system calls on a TCP socket, and a TCP connection then has the kernel's semantics of each — a
 * SHUT_RD whose reader still gets the bytes already received, which java.nio's {@code shutdownInput} throws away.
 *
 * <p>Buffers passed in must be native segments. Sending and receiving may happen on different threads; two threads
 * must not receive (or send) on one socket at the same time.
 */
public final class UnixSocket implements AutoCloseable {
    public static final int SHUT_RD = 0;
    public static final int SHUT_WR = 1;
    public static final int SHUT_RDWR = 2;
    /** The kernel's limit on descriptors per message (SCM_MAX_FD). */
    public static final int MAX_FDS_PER_MESSAGE = 253;

    private static final int AF_UNIX = 1;
    private static final int AF_INET = 2;
    private static final int AF_INET6 = 10;
    private static final int SO_REUSEADDR = 2;
    private static final int IPPROTO_TCP = 6;
    private static final int TCP_NODELAY = 1;
    private static final int MSG_DONTWAIT = 0x40;
    private static final int SOCK_STREAM = 1;
    private static final int SOCK_CLOEXEC = 02000000;
    private static final int SOCK_NONBLOCK = 04000;
    private static final int SOL_SOCKET = 1;
    private static final int SCM_RIGHTS = 1;
    private static final int SO_PEERCRED = 17;
    private static final int SO_RCVTIMEO = 20;
    private static final int SO_SNDTIMEO = 21;
    private static final int MSG_CTRUNC = 0x8;
    private static final int MSG_NOSIGNAL = 0x4000;
    private static final int MSG_CMSG_CLOEXEC = 0x40000000;
    private static final short POLLIN = 0x001;
    private static final short POLLHUP = 0x010;
    private static final short POLLRDHUP = 0x2000;

    // struct msghdr (LP64): name@0 namelen@8 iov@16 iovlen@24 control@32 controllen@40 flags@48, 56 bytes
    private static final long MSG_SIZE = 56;
    private static final long MSG_IOV = 16;
    private static final long MSG_IOVLEN = 24;
    private static final long MSG_CONTROL = 32;
    private static final long MSG_CONTROLLEN = 40;
    private static final long MSG_FLAGS = 48;
    // struct cmsghdr: len(size_t)@0 level@8 type@12 data@16
    private static final long CMSG_HDR = 16;
    private static final int SUN_PATH_MAX = 108;

    private final Fd fd;
    private final String name;
    private volatile long receiveTimeoutMs;
    /**
     * Held by {@link #shutdown}, {@link #peerHungUp} and {@link #close}: the calls other threads make on a socket
     * (to wake its users, or to look at it) against its owner's close. Without it a shutdown that had read the
     * descriptor number just before the close reached the kernel after it, on whatever the number had become: a
     * socket or file opened meanwhile by another thread (another frontend's connection).
     */
    private final Object closeLock = new Object();

    private UnixSocket(Fd fd, String name) {
        this.fd = fd;
        this.name = name;
    }

    /** Peer credentials of a connected socket, as the kernel recorded them at connect time. */
    public record Credentials(int pid, int uid, int gid) {}

    /**
     * What one receive produced: the number of bytes (0 means the peer closed its end before sending any) and the
     * descriptors that came with them, in order. The caller owns the descriptors.
     */
    public record Received(long bytes, List<Fd> fds) {
        public boolean eof() {
            return bytes == 0;
        }
    }

    /**
     * Binds and listens on {@code path} (which must not exist: remove a stale socket file first).
     */
    /** Listens with the socket file owner-only (mode 0600), whatever the umask. */
    public static UnixSocket listen(Path path, int backlog) throws LinuxException {
        return listen(path, backlog, SocketAccess.ownerOnly());
    }

    /**
     * Binds, sets the socket file's mode and group from {@code access} (before listen: nobody can connect while the
     * mode is still the umask's), then listens. Peer uids are the accepting code's to check
     * ({@link #peerCredentials}, {@link SocketAccess#allows}).
     */
    public static UnixSocket listen(Path path, int backlog, SocketAccess access) throws LinuxException {
        return listen(path, backlog, access, () -> {});
    }

    /**
     * As {@link #listen(Path, int, SocketAccess)}; {@code afterBind} runs between bind and setting the mode (tests:
     * what another user who may write the socket's directory could do in that window).
     */
    static UnixSocket listen(Path path, int backlog, SocketAccess access, Runnable afterBind) throws LinuxException {
        UnixSocket s = create(path.toString());
        boolean bound = false;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment addr = sockaddr(a, path);
            int f = s.fd.get();
            Syscalls.check(Syscalls.bind(f, addr, (int) addr.byteSize()), "bind", path);
            bound = true;
            afterBind.run();
            access.apply(s.fd, path);
            Syscalls.check(Syscalls.listen(f, backlog), "listen", path);
            return s;
        } catch (LinuxException | RuntimeException e) {
            s.close();
            if (bound) {
                try {
                    java.nio.file.Files.deleteIfExists(path);
                } catch (java.io.IOException ignored) {
                    // the caller reports the first error
                }
            }
            throw e;
        }
    }

    public static UnixSocket connect(Path path) throws LinuxException {
        UnixSocket s = create(path.toString());
        try (Arena a = Arena.ofConfined()) {
            MemorySegment addr = sockaddr(a, path);
            Syscalls.check(Syscalls.connect(s.fd.get(), addr, (int) addr.byteSize()), "connect", path);
            return s;
        } catch (LinuxException | RuntimeException e) {
            s.close();
            throw e;
        }
    }

    /**
     * Whether some process listens on the socket file {@code path}: a non-blocking connect that succeeds, or finds
     * the listen backlog full (EAGAIN: a live server that is not accepting right now), says yes; ECONNREFUSED (a
     * socket file left behind by a process that died) says no. A blocking connect would hang on a full backlog.
     */
    public static boolean listenedOn(Path path) throws LinuxException {
        int fd = Syscalls.check(
                Syscalls.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                "socket(AF_UNIX)",
                path.toString());
        try (UnixSocket s = new UnixSocket(Fd.adopt(fd), path.toString());
                Arena a = Arena.ofConfined()) {
            MemorySegment addr = sockaddr(a, path);
            try {
                Syscalls.check(Syscalls.connect(s.fd.get(), addr, (int) addr.byteSize()), "connect", path);
                return true;
            } catch (LinuxException e) {
                if (e.errno() == Errno.EAGAIN) {
                    return true;
                }
                if (e.errno() == Errno.ECONNREFUSED) {
                    return false;
                }
                throw e;
            }
        }
    }

    /**
     * A TCP socket listening on {@code host}:{@code port} (0: a port the kernel picks, see {@link #localPort}), with
     * SO_REUSEADDR as java.nio sets it (a restarted server can listen again while old connections linger in
     * TIME_WAIT). Its {@link #accept}ed connections are TCP sockets seen through this class's stream calls; what
     * is AF_UNIX only (descriptor passing, peer credentials) does not apply to them.
     */
    public static UnixSocket listenTcp(InetAddress host, int port, int backlog) throws LinuxException {
        if (port < 0 || port > 0xffff) {
            throw new IllegalArgumentException("TCP port out of range: " + port);
        }
        boolean v6 = host instanceof Inet6Address;
        String asked = "tcp:" + HostPort.format(host, port);
        Fd fd = Fd.adopt(Syscalls.check(
                Syscalls.socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0),
                v6 ? "socket(AF_INET6)" : "socket(AF_INET)",
                asked));
        try (Arena a = Arena.ofConfined()) {
            int f = fd.get();
            MemorySegment one = a.allocate(JAVA_INT);
            one.set(JAVA_INT, 0, 1);
            Syscalls.check(Syscalls.setsockopt(f, SOL_SOCKET, SO_REUSEADDR, one, 4), "setsockopt(SO_REUSEADDR)", asked);
            MemorySegment addr = a.allocate(SOCKADDR_IN6, 8); // zeroed: flowinfo, sin_zero
            byte[] ip = host.getAddress();
            addr.set(JAVA_SHORT, 0, (short) (v6 ? AF_INET6 : AF_INET));
            addr.set(JAVA_SHORT.withOrder(ByteOrder.BIG_ENDIAN), 2, (short) port);
            if (v6) {
                MemorySegment.copy(ip, 0, addr, JAVA_BYTE, 8, 16);
                addr.set(JAVA_INT, 24, ((Inet6Address) host).getScopeId());
            } else {
                MemorySegment.copy(ip, 0, addr, JAVA_BYTE, 4, 4);
            }
            Syscalls.check(Syscalls.bind(f, addr, v6 ? (int) SOCKADDR_IN6 : SOCKADDR_IN), "bind", asked);
            Syscalls.check(Syscalls.listen(f, backlog), "listen", asked);
            // named with the port bound (the kernel's pick when 0 was asked for): its accepted connections too
            return new UnixSocket(fd, "tcp:" + HostPort.format(host, localPort(fd, asked)));
        } catch (LinuxException | RuntimeException e) {
            fd.close();
            throw e;
        }
    }

    /** sizeof(struct sockaddr_in): family, port, address, padding. */
    private static final int SOCKADDR_IN = 16;
    /** sizeof(struct sockaddr_in6): family, port, flowinfo, address, scope id. */
    private static final long SOCKADDR_IN6 = 28;

    /** The port of a TCP socket ({@link #listenTcp}, or a connection it accepted), as getsockname gives it. */
    public int localPort() throws LinuxException {
        return localPort(fd, name);
    }

    private static int localPort(Fd fd, String name) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment addr = a.allocate(SOCKADDR_IN6, 8);
            MemorySegment len = a.allocate(JAVA_INT);
            len.set(JAVA_INT, 0, (int) SOCKADDR_IN6);
            Syscalls.check(Syscalls.getsockname(fd.get(), addr, len), "getsockname", name);
            short family = addr.get(JAVA_SHORT, 0);
            if (family != AF_INET && family != AF_INET6) {
                throw new IllegalStateException(name + " is not a TCP socket (address family " + family + ")");
            }
            return Short.toUnsignedInt(addr.get(JAVA_SHORT.withOrder(ByteOrder.BIG_ENDIAN), 2));
        }
    }

    /** On a TCP connection: sends each write at once, without waiting for the ACK of the last (TCP_NODELAY). */
    public void setNoDelay() throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment one = a.allocate(JAVA_INT);
            one.set(JAVA_INT, 0, 1);
            Syscalls.check(
                    Syscalls.setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, one, 4), "setsockopt(TCP_NODELAY)", name);
        }
    }

    /** Two connected sockets (socketpair). */
    public static UnixSocket[] pair() throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment sv = a.allocate(JAVA_INT, 2);
            Syscalls.check(Syscalls.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), "socketpair", null);
            return new UnixSocket[] {
                new UnixSocket(Fd.adopt(sv.getAtIndex(JAVA_INT, 0)), "socketpair[0]"),
                new UnixSocket(Fd.adopt(sv.getAtIndex(JAVA_INT, 1)), "socketpair[1]")
            };
        }
    }

    /** Wraps a connected or listening socket descriptor (e.g. one inherited from a parent); takes ownership. */
    public static UnixSocket adopt(Fd fd, String name) {
        return new UnixSocket(fd, name);
    }

    private static UnixSocket create(String name) throws LinuxException {
        return new UnixSocket(
                Fd.adopt(Syscalls.check(
                        Syscalls.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket(AF_UNIX)", name)),
                name);
    }

    private static MemorySegment sockaddr(Arena a, Path path) {
        byte[] p = path.toString().getBytes(StandardCharsets.UTF_8);
        if (p.length == 0 || p.length >= SUN_PATH_MAX) {
            throw new IllegalArgumentException("UNIX socket path must be 1.." + (SUN_PATH_MAX - 1)
                    + " bytes (use a shorter or relative path): " + path);
        }
        for (byte b : p) {
            if (b == 0) {
                throw new IllegalArgumentException("UNIX socket path contains a NUL byte: " + path);
            }
        }
        MemorySegment addr = a.allocate(2 + p.length + 1, 8); // sa_family, sun_path, NUL
        addr.set(JAVA_SHORT, 0, (short) AF_UNIX);
        MemorySegment.copy(p, 0, addr, JAVA_BYTE, 2, p.length);
        return addr;
    }

    public Fd fd() {
        return fd;
    }

    /** Waits for the next connection. After {@link #shutdown} of a listening socket this fails with EINVAL. */
    public UnixSocket accept() throws LinuxException {
        int r = Syscalls.check(Syscalls.accept4(fd.get(), SOCK_CLOEXEC), "accept", name);
        return new UnixSocket(Fd.adopt(r), name);
    }

    /**
     * Sends all of {@code data}, with {@code fds} attached to its first byte. Never raises SIGPIPE: a peer that
     * closed its end gives EPIPE.
     */
    public void send(MemorySegment data, List<Fd> fds) throws LinuxException {
        requireNative(data);
        if (fds.size() > MAX_FDS_PER_MESSAGE) {
            throw new IllegalArgumentException(
                    "at most " + MAX_FDS_PER_MESSAGE + " descriptors per message: " + fds.size());
        }
        if (data.byteSize() == 0) {
            throw new IllegalArgumentException("descriptors travel with data: send at least one byte");
        }
        int f = fd.get();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment msg = a.allocate(MSG_SIZE, 8);
            MemorySegment iov = a.allocate(16, 8);
            msg.set(ADDRESS, MSG_IOV, iov);
            msg.set(JAVA_LONG, MSG_IOVLEN, 1);
            if (!fds.isEmpty()) {
                long space = cmsgSpace(fds.size());
                MemorySegment control = a.allocate(space, 8);
                control.set(JAVA_LONG, 0, CMSG_HDR + 4L * fds.size());
                control.set(JAVA_INT, 8, SOL_SOCKET);
                control.set(JAVA_INT, 12, SCM_RIGHTS);
                for (int i = 0; i < fds.size(); i++) {
                    control.set(JAVA_INT, CMSG_HDR + 4L * i, fds.get(i).get());
                }
                msg.set(ADDRESS, MSG_CONTROL, control);
                msg.set(JAVA_LONG, MSG_CONTROLLEN, space);
            }
            long off = 0;
            long len = data.byteSize();
            while (off < len) {
                iov.set(ADDRESS, 0, data.asSlice(off));
                iov.set(JAVA_LONG, 8, len - off);
                long n = Syscalls.check(Syscalls.sendmsg(f, msg, MSG_NOSIGNAL), "sendmsg", name);
                off += n;
                msg.set(ADDRESS, MSG_CONTROL, MemorySegment.NULL); // descriptors go with the first chunk only
                msg.set(JAVA_LONG, MSG_CONTROLLEN, 0);
            }
        }
    }

    /**
     * Scratch for {@link #sendIovecs} and {@link #receiveIovecs}: a msghdr and {@code maxSegments} iovecs, allocated
     * once by the caller.
     */
    public static MemorySegment gatherScratch(Arena arena, int maxSegments) {
        return arena.allocate(MSG_SIZE + 16L * maxSegments, 8);
    }

    /**
     * Sets iovec {@code i} of {@code scratch} ({@link #gatherScratch}) to {@code length} bytes of native memory at
     * {@code address}. A raw address, so that a caller with a few long-lived buffers makes no segment per call: it
     * must keep that memory allocated (and, for a receive, not otherwise in use) until the call using it returned.
     */
    public static void iovec(MemorySegment scratch, int i, long address, long length) {
        if (address == 0 || length < 0) {
            throw new IllegalArgumentException(
                    "iovec " + i + ": " + length + " bytes at 0x" + Long.toHexString(address));
        }
        scratch.set(JAVA_LONG, MSG_SIZE + 16L * i, address); // out of the scratch's bounds past its iovecs: throws
        scratch.set(JAVA_LONG, MSG_SIZE + 16L * i + 8, length);
    }

    /**
     * One sendmsg of the first {@code n} iovecs of {@code scratch} ({@link #iovec}) as one gathered message: returns
     * the bytes the kernel took (possibly fewer than all). No allocation. Never raises SIGPIPE.
     */
    public long sendIovecs(MemorySegment scratch, int n) throws LinuxException {
        return Syscalls.check(Syscalls.sendmsg(fd.get(), msghdr(scratch, n), MSG_NOSIGNAL), "sendmsg", name);
    }

    /**
     * One recvmsg into the first {@code n} iovecs of {@code scratch} ({@link #iovec}): the bytes read, 0 at end of
     * stream. No allocation. No descriptors: any that come along are closed by the kernel, as with read(2).
     */
    public long receiveIovecs(MemorySegment scratch, int n) throws LinuxException {
        return Syscalls.check(Syscalls.recvmsg(fd.get(), msghdr(scratch, n), 0), "recvmsg", name);
    }

    /** The msghdr at the start of {@code scratch}, over its first {@code n} iovecs and without control data. */
    private static MemorySegment msghdr(MemorySegment scratch, int n) {
        if (n < 1 || MSG_SIZE + 16L * n > scratch.byteSize()) {
            throw new IllegalArgumentException(
                    n + " iovecs, the scratch has room for " + (scratch.byteSize() - MSG_SIZE) / 16);
        }
        for (long off = 0; off < MSG_SIZE; off += 8) { // name, namelen, control, controllen, flags: none
            scratch.set(JAVA_LONG, off, 0);
        }
        scratch.set(JAVA_LONG, MSG_IOV, scratch.address() + MSG_SIZE);
        scratch.set(JAVA_LONG, MSG_IOVLEN, n);
        return scratch;
    }

    /**
     * Reads and drops what the peer sent and nobody read, without waiting, through the first iovec of
     * {@code scratch} ({@link #iovec}), {@code max} bytes at most: the bytes dropped. Before closing a TCP socket: a
     * close with unread bytes received makes the kernel send a reset instead of the end of the stream, and discard
     * what it had not sent yet — the replies the peer was still to read among them (Linux; an AF_UNIX peer just sees
     * the end). Stops at the end of the stream, when nothing more waits, or on an error.
     */
    public long discardUnread(MemorySegment scratch, long max) {
        long total = 0;
        while (total < max) {
            long n;
            try {
                n = Syscalls.recvmsg(fd.get(), msghdr(scratch, 1), MSG_DONTWAIT);
            } catch (IllegalStateException e) {
                break; // closed
            }
            if (n <= 0) {
                break;
            }
            total += n;
        }
        return total;
    }

    /** One read(2) into {@code buf} (native): the bytes read, 0 at end of stream. No descriptors. */
    public long read(MemorySegment buf) throws LinuxException {
        requireNative(buf);
        return Syscalls.check(Syscalls.read(fd.get(), buf, buf.byteSize()), "read", name);
    }

    public void send(MemorySegment data, Fd... fds) throws LinuxException {
        send(data, List.of(fds));
    }

    /**
     * One recvmsg into {@code buf}: returns as soon as some bytes arrived (or the peer closed its end).
     *
     * @param maxFds how many descriptors the caller accepts with these bytes
     * @throws TooManyFdsException more descriptors arrived than {@code maxFds}; all were closed
     */
    public Received recv(MemorySegment buf, int maxFds) throws IOException {
        List<Fd> fds = new ArrayList<>(0);
        try {
            long n = recvInto(buf, maxFds, fds);
            return new Received(n, List.copyOf(fds));
        } catch (IOException | RuntimeException e) {
            Fd.closeAll(fds);
            throw e;
        }
    }

    /**
     * Fills all of {@code buf}, collecting the descriptors that arrive with any of its bytes.
     *
     * @return {@code bytes == 0} (eof) when the peer closed before the first byte, else {@code buf.byteSize()}
     * @throws EOFException the peer closed part-way through
     * @throws TooManyFdsException more than {@code maxFds} descriptors arrived in total; all were closed
     */
    public Received recvFully(MemorySegment buf, int maxFds) throws IOException {
        List<Fd> fds = new ArrayList<>(0);
        try {
            long len = buf.byteSize();
            long off = 0;
            while (off < len) {
                long n = recvInto(buf.asSlice(off), maxFds - fds.size(), fds);
                if (n == 0) {
                    if (off == 0) {
                        Fd.closeAll(fds);
                        return new Received(0, List.of());
                    }
                    throw new EOFException("peer closed " + name + " after " + off + " of " + len + " bytes");
                }
                off += n;
            }
            return new Received(len, List.copyOf(fds));
        } catch (IOException | RuntimeException e) {
            Fd.closeAll(fds);
            throw e;
        }
    }

    /** One recvmsg; appends received descriptors to {@code out} (closing all of them on overflow). */
    private long recvInto(MemorySegment buf, int maxFds, List<Fd> out) throws IOException {
        requireNative(buf);
        if (buf.byteSize() == 0) {
            throw new IllegalArgumentException("empty receive buffer");
        }
        int f = fd.get();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment msg = a.allocate(MSG_SIZE, 8);
            MemorySegment iov = a.allocate(16, 8);
            iov.set(ADDRESS, 0, buf);
            iov.set(JAVA_LONG, 8, buf.byteSize());
            msg.set(ADDRESS, MSG_IOV, iov);
            msg.set(JAVA_LONG, MSG_IOVLEN, 1);
            // Sized for the caller's maximum; CMSG_SPACE rounding may let one more in, which we catch below.
            // With no room at all the kernel discards any descriptors and reports MSG_CTRUNC.
            long space = maxFds > 0 ? cmsgSpace(maxFds) : 0;
            MemorySegment control = space > 0 ? a.allocate(space, 8) : MemorySegment.NULL;
            msg.set(ADDRESS, MSG_CONTROL, control);
            msg.set(JAVA_LONG, MSG_CONTROLLEN, space);
            long n = Syscalls.recvmsg(f, msg, MSG_CMSG_CLOEXEC);
            if (n == -Errno.EAGAIN && receiveTimeoutMs > 0) {
                throw new SocketTimeoutException("no data on " + name + " within " + receiveTimeoutMs + " ms");
            }
            Syscalls.check(n, "recvmsg", name);
            int before = out.size();
            long controlLen = msg.get(JAVA_LONG, MSG_CONTROLLEN);
            long off = 0;
            while (space > 0 && off + CMSG_HDR <= controlLen) {
                long cmsgLen = control.get(JAVA_LONG, off);
                if (cmsgLen < CMSG_HDR || off + cmsgLen > controlLen) {
                    break;
                }
                if (control.get(JAVA_INT, off + 8) == SOL_SOCKET && control.get(JAVA_INT, off + 12) == SCM_RIGHTS) {
                    long count = (cmsgLen - CMSG_HDR) / 4;
                    for (long i = 0; i < count; i++) {
                        out.add(Fd.adopt(control.get(JAVA_INT, off + CMSG_HDR + 4 * i)));
                    }
                }
                off += align8(cmsgLen);
            }
            boolean truncated = (msg.get(JAVA_INT, MSG_FLAGS) & MSG_CTRUNC) != 0;
            if (truncated || out.size() - before > Math.max(maxFds, 0)) {
                int got = out.size() - before;
                Fd.closeAll(out);
                out.clear();
                throw new TooManyFdsException(
                        "peer sent " + (truncated ? "more than " + got : String.valueOf(got))
                                + " file descriptors on " + name + " where at most " + Math.max(maxFds, 0)
                                + " are accepted; closed them",
                        Math.max(maxFds, 0));
            }
            return n;
        }
    }

    /**
     * Makes receives fail with {@link SocketTimeoutException} after {@code timeout} without data (zero: wait
     * forever). Used by clients that await replies from a peer that may misbehave.
     */
    public void setReceiveTimeout(Duration timeout) throws LinuxException {
        setTimeout(SO_RCVTIMEO, timeout);
        receiveTimeoutMs = timeout.toMillis();
    }

    public void setSendTimeout(Duration timeout) throws LinuxException {
        setTimeout(SO_SNDTIMEO, timeout);
    }

    private void setTimeout(int option, Duration timeout) throws LinuxException {
        if (timeout.isNegative()) {
            throw new IllegalArgumentException("negative timeout: " + timeout);
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment tv = a.allocate(16, 8); // struct timeval {time_t tv_sec; suseconds_t tv_usec}
            tv.set(JAVA_LONG, 0, timeout.toSeconds());
            tv.set(JAVA_LONG, 8, timeout.toNanosPart() / 1000);
            Syscalls.check(Syscalls.setsockopt(fd.get(), SOL_SOCKET, option, tv, 16), "setsockopt", name);
        }
    }

    public Credentials peerCredentials() throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment cred = a.allocate(12, 4);
            MemorySegment len = a.allocate(JAVA_INT);
            len.set(JAVA_INT, 0, 12);
            Syscalls.check(
                    Syscalls.getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, cred, len), "getsockopt(SO_PEERCRED)", name);
            return new Credentials(cred.get(JAVA_INT, 0), cred.get(JAVA_INT, 4), cred.get(JAVA_INT, 8));
        }
    }

    /**
     * True when the peer has closed or shut down its sending side (checked without blocking or consuming data).
     */
    public boolean peerHungUp() throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment pfd = a.allocate(8, 4); // struct pollfd {int fd; short events; short revents}
            pfd.set(JAVA_SHORT, 4, (short) (POLLIN | POLLRDHUP));
            int n;
            synchronized (closeLock) { // asked from other threads: the number must still be this socket's
                pfd.set(JAVA_INT, 0, fd.get());
                n = Syscalls.check(Syscalls.poll(pfd, 1, 0), "poll", name);
            }
            return n > 0 && (pfd.get(JAVA_SHORT, 6) & (POLLHUP | POLLRDHUP)) != 0;
        }
    }

    /**
     * Whether a read would not block: bytes the peer sent wait to be read, or its end of stream (checked without
     * blocking or consuming data; false once the socket is closed).
     */
    public boolean inputReady() throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment pfd = a.allocate(8, 4); // struct pollfd {int fd; short events; short revents}
            pfd.set(JAVA_SHORT, 4, POLLIN);
            int n;
            synchronized (closeLock) { // asked from other threads: the number must still be this socket's
                if (!fd.isOpen()) {
                    return false;
                }
                pfd.set(JAVA_INT, 0, fd.get());
                n = Syscalls.check(Syscalls.poll(pfd, 1, 0), "poll", name);
            }
            return n > 0 && (pfd.get(JAVA_SHORT, 6) & POLLIN) != 0;
        }
    }

    /**
     * On a listening socket: whether a connection is waiting in the backlog to be accepted, waiting up to
     * {@code timeoutMs} for one (0: just look). Also true once the listener has been shut down, so a caller blocked
     * here wakes up as one blocked in {@link #accept} does.
     */
    public boolean connectionPending(int timeoutMs) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment pfd = a.allocate(8, 4); // struct pollfd {int fd; short events; short revents}
            pfd.set(JAVA_INT, 0, fd.get());
            pfd.set(JAVA_SHORT, 4, (short) POLLIN);
            int n = Syscalls.check(Syscalls.poll(pfd, 1, timeoutMs), "poll", name);
            return n > 0 && pfd.get(JAVA_SHORT, 6) != 0;
        }
    }

    /**
     * Bytes this socket has sent that the peer has not read yet (SIOCOUTQ: for AF_UNIX, the memory of the queued
     * messages, so 0 exactly when the peer has read everything sent).
     */
    public int unreadByPeer() throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            Ioctl.call(fd, SIOCOUTQ, out);
            return out.get(JAVA_INT, 0);
        }
    }

    private static final long SIOCOUTQ = 0x5411; // TIOCOUTQ

    /**
     * Shuts down one or both directions. On a connected socket this wakes a thread blocked in recv (it sees EOF);
     * on a listening socket it wakes a thread blocked in accept (EINVAL). An unconnected socket is not an error, nor
     * is a socket already closed, by another thread too.
     */
    public void shutdown(int how) throws LinuxException {
        synchronized (closeLock) {
            if (!fd.isOpen()) {
                return;
            }
            int r = Syscalls.shutdown(fd.get(), how);
            if (r < 0 && r != -Errno.ENOTCONN) {
                Syscalls.check(r, "shutdown", name);
            }
        }
    }

    /** Closes the descriptor; waits for a {@link #shutdown} or {@link #peerHungUp} of another thread under way. */
    @Override
    public void close() {
        synchronized (closeLock) {
            fd.close();
        }
    }

    @Override
    public String toString() {
        return "unix:" + name + "(" + fd + ")";
    }

    private static long align8(long v) {
        return (v + 7) & ~7L;
    }

    /** CMSG_SPACE for {@code n} ints. */
    static long cmsgSpace(int n) {
        return CMSG_HDR + align8(4L * n);
    }

    private static void requireNative(MemorySegment s) {
        if (!s.isNative()) {
            throw new IllegalArgumentException("socket buffers must be native memory segments");
        }
    }
}
