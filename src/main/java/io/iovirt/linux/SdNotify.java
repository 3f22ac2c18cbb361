// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
import java.nio.charset.StandardCharsets;

/**
 * The service manager notification protocol (sd_notify(3)): one datagram of {@code KEY=VALUE} lines sent to the
 * AF_UNIX SOCK_DGRAM socket named by {@code $NOTIFY_SOCKET} — a path, or an abstract name when it starts with '@'.
 * Without the variable (not started by systemd) every call is a no-op, so a daemon can always call it.
 */
public final class SdNotify {
    private static final int AF_UNIX = 1;
    private static final int SOCK_DGRAM = 2;
    private static final int SOCK_CLOEXEC = 02000000;
    private static final int MSG_NOSIGNAL = 0x4000;
    private static final int SUN_PATH_MAX = 108;
    private static final MethodHandle SENDTO = Syscalls.fn(
            "sendto", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT, ADDRESS, JAVA_INT));
    private static final MethodHandle SOCKET =
            Syscalls.fn("socket", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT));

    private final String address;

    private SdNotify(String address) {
        this.address = address;
    }

    /** The notifier for this process's environment ({@code $NOTIFY_SOCKET}; unset: a notifier that sends nothing). */
    public static SdNotify fromEnvironment() {
        return of(System.getenv("NOTIFY_SOCKET"));
    }

    /** A notifier for {@code address} (null or empty: sends nothing). */
    public static SdNotify of(String address) {
        return new SdNotify(address == null || address.isEmpty() ? null : address);
    }

    public boolean enabled() {
        return address != null;
    }

    /**
     * The watchdog interval systemd asks for ({@code $WATCHDOG_USEC}, honoured only when {@code $WATCHDOG_PID} is
     * unset or this process), in microseconds; 0 when none.
     */
    public static long watchdogMicros() {
        String usec = System.getenv("WATCHDOG_USEC");
        String pid = System.getenv("WATCHDOG_PID");
        if (usec == null) {
            return 0;
        }
        if (pid != null && !pid.equals(Long.toString(ProcessHandle.current().pid()))) {
            return 0;
        }
        try {
            long v = Long.parseLong(usec.trim());
            return v > 0 ? v : 0;
        } catch (NumberFormatException e) {
            return 0;
        }
    }

    /**
     * Sends {@code state} (e.g. {@code "READY=1\nSTATUS=serving"}) in one datagram.
     *
     * @throws LinuxException the socket could not be reached (systemd gone, wrong path): callers log and go on
     */
    public void send(String state) throws LinuxException {
        if (address == null) {
            return;
        }
        byte[] path = address.getBytes(StandardCharsets.UTF_8);
        if (path.length < 2 && path[0] == '@' || path.length >= SUN_PATH_MAX || path[0] != '/' && path[0] != '@') {
            throw new LinuxException(
                    "sd_notify",
                    "NOTIFY_SOCKET=" + address + " (neither an absolute path nor an abstract @name)",
                    Errno.EINVAL);
        }
        byte[] msg = state.getBytes(StandardCharsets.UTF_8);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment addr = a.allocate(2 + path.length + 1, 8);
            addr.set(JAVA_SHORT, 0, (short) AF_UNIX);
            MemorySegment.copy(path, 0, addr, JAVA_BYTE, 2, path.length);
            int addrLen = 2 + path.length + 1;
            if (path[0] == '@') {
                addr.set(JAVA_BYTE, 2, (byte) 0); // abstract namespace: leading NUL, no trailing NUL counted
                addrLen = 2 + path.length;
            }
            MemorySegment buf = a.allocate(Math.max(1, msg.length));
            MemorySegment.copy(msg, 0, buf, JAVA_BYTE, 0, msg.length);
            Syscalls.PerThread t = Syscalls.perThread();
            int fd;
            try {
                fd = (int) SOCKET.invokeExact(t.capture, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            } catch (Throwable e) {
                throw Syscalls.unexpected(e);
            }
            if (fd < 0) {
                throw new LinuxException("socket(AF_UNIX, SOCK_DGRAM)", address, t.errno());
            }
            try (Fd owned = Fd.adopt(fd)) {
                long r;
                try {
                    r = (long) SENDTO.invokeExact(t.capture, fd, buf, (long) msg.length, MSG_NOSIGNAL, addr, addrLen);
                } catch (Throwable e) {
                    throw Syscalls.unexpected(e);
                }
                if (r < 0) {
                    throw new LinuxException("sendto", "NOTIFY_SOCKET " + address, t.errno());
                }
            }
        }
    }

    private static final MethodHandle BIND =
            Syscalls.fn("bind", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT));
    private static final MethodHandle RECV =
            Syscalls.fn("recv", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT));
    private static final MethodHandle SETSOCKOPT =
            Syscalls.fn("setsockopt", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT));

    /**
     * The service manager's end: a datagram socket bound to a path that receives notifications, as systemd's
     * $NOTIFY_SOCKET does. For supervising a daemon without systemd (and for testing the protocol).
     */
    public static final class Listener implements AutoCloseable {
        private final Fd fd;
        private final Arena arena = Arena.ofShared();
        private final MemorySegment buf = arena.allocate(4096);

        /** Binds {@code path} (which must not exist); receives wait at most {@code timeoutMillis}. */
        public Listener(java.nio.file.Path path, long timeoutMillis) throws LinuxException {
            Syscalls.PerThread t = Syscalls.perThread();
            int s;
            try {
                s = (int) SOCKET.invokeExact(t.capture, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            } catch (Throwable e) {
                throw Syscalls.unexpected(e);
            }
            if (s < 0) {
                throw new LinuxException("socket(AF_UNIX, SOCK_DGRAM)", path.toString(), t.errno());
            }
            fd = Fd.adopt(s);
            try (Arena a = Arena.ofConfined()) {
                byte[] p = path.toString().getBytes(StandardCharsets.UTF_8);
                if (p.length >= SUN_PATH_MAX) {
                    throw new LinuxException(
                            "bind", path + " (longer than " + (SUN_PATH_MAX - 1) + " bytes)", Errno.ENAMETOOLONG);
                }
                MemorySegment addr = a.allocate(2 + p.length + 1, 8);
                addr.set(JAVA_SHORT, 0, (short) AF_UNIX);
                MemorySegment.copy(p, 0, addr, JAVA_BYTE, 2, p.length);
                MemorySegment tv = a.allocate(16, 8);
                tv.set(JAVA_LONG, 0, timeoutMillis / 1000);
                tv.set(JAVA_LONG, 8, (timeoutMillis % 1000) * 1000);
                int r1;
                int r2;
                try {
                    r1 = (int) BIND.invokeExact(t.capture, s, addr, (int) addr.byteSize());
                    int e1 = r1 < 0 ? t.errno() : 0;
                    if (r1 < 0) {
                        throw new LinuxException("bind", path.toString(), e1);
                    }
                    r2 = (int) SETSOCKOPT.invokeExact(t.capture, s, 1 /* SOL_SOCKET */, 20 /* SO_RCVTIMEO */, tv, 16);
                } catch (LinuxException e) {
                    throw e;
                } catch (Throwable e) {
                    throw Syscalls.unexpected(e);
                }
                if (r2 < 0) {
                    throw new LinuxException("setsockopt(SO_RCVTIMEO)", path.toString(), t.errno());
                }
            } catch (LinuxException | RuntimeException e) {
                fd.close();
                arena.close();
                throw e;
            }
        }

        /** The next notification's text, or null when none arrived within the timeout. */
        public String receive() throws LinuxException {
            Syscalls.PerThread t = Syscalls.perThread();
            long n;
            int err;
            do {
                try {
                    n = (long) RECV.invokeExact(t.capture, fd.get(), buf, buf.byteSize(), 0);
                } catch (Throwable e) {
                    throw Syscalls.unexpected(e);
                }
                err = n < 0 ? t.errno() : 0;
            } while (n < 0 && err == Errno.EINTR);
            if (n < 0) {
                if (err == Errno.EAGAIN) {
                    return null;
                }
                throw new LinuxException("recv", "notify socket", err);
            }
            return new String(buf.asSlice(0, n).toArray(JAVA_BYTE), StandardCharsets.UTF_8);
        }

        @Override
        public void close() {
            fd.close();
            arena.close();
        }
    }
}
