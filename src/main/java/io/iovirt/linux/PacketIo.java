// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
import java.lang.ref.Reference;
import java.util.Objects;

/**
 * Packet-rate I/O on sockets, TAP devices and pipes: read/write/send into a range of a native buffer without
 * allocating and without throwing for "try again". The network data path calls these once or more per frame, so
 * they take the buffer range as (segment, offset, length) and pass a raw address to the kernel: no slice object,
 * no exception on EAGAIN.
 *
 * <p>The range is bounds-checked against the segment here, and the segment is kept reachable until the call
 * returns. The caller must not close the segment's arena during the call (the data path owns its buffers).
 */
@SuppressWarnings("restricted")
public final class PacketIo {
    /** Returned instead of a byte count when the descriptor is non-blocking and the call would block (EAGAIN). */
    public static final long WOULD_BLOCK = -1;

    private static final int MSG_DONTWAIT = 0x40;
    private static final int MSG_NOSIGNAL = 0x4000;

    private static final class Handles {
        static final MethodHandle READ =
                Syscalls.fn("read", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, JAVA_LONG, JAVA_LONG));
        static final MethodHandle WRITE =
                Syscalls.fn("write", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, JAVA_LONG, JAVA_LONG));
        static final MethodHandle SEND =
                Syscalls.fn("send", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, JAVA_LONG, JAVA_LONG, JAVA_INT));
    }

    private PacketIo() {}

    /**
     * One read(2) into {@code buf[offset, offset+length)}.
     *
     * @return bytes read (0: end of file / peer closed), or {@link #WOULD_BLOCK}
     * @throws LinuxException any other failure (EINTR is retried)
     */
    public static long read(Fd fd, MemorySegment buf, long offset, long length) throws LinuxException {
        return transfer(Handles.READ, "read", fd, buf, offset, length);
    }

    /**
     * One write(2) from {@code buf[offset, offset+length)}. On a TAP device one call is one frame.
     *
     * @return bytes written (a stream socket may take fewer), or {@link #WOULD_BLOCK}
     */
    public static long write(Fd fd, MemorySegment buf, long offset, long length) throws LinuxException {
        return transfer(Handles.WRITE, "write", fd, buf, offset, length);
    }

    /** read(2) or write(2) ({@code call}, its handle): one call, EINTR retried. */
    private static long transfer(MethodHandle handle, String call, Fd fd, MemorySegment buf, long offset, long length)
            throws LinuxException {
        long address = address(buf, offset, length);
        int f = fd.get();
        Syscalls.PerThread t = Syscalls.perThread();
        try {
            long r;
            do {
                r = (long) handle.invokeExact(t.capture, f, address, length);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return result(r, t, call, f);
        } catch (LinuxException e) {
            throw e;
        } catch (Throwable e) {
            throw Syscalls.unexpected(e);
        } finally {
            Reference.reachabilityFence(buf);
        }
    }

    /**
     * One send(2) on a socket with MSG_DONTWAIT|MSG_NOSIGNAL: never blocks, never raises SIGPIPE (a closed peer
     * gives EPIPE), whatever the descriptor's own blocking mode.
     *
     * @return bytes sent (possibly fewer than {@code length}), or {@link #WOULD_BLOCK}
     */
    public static long send(Fd fd, MemorySegment buf, long offset, long length) throws LinuxException {
        // transfer's loop, not transfer: send(2) has a fifth argument, and invokeExact needs the call's exact shape
        long address = address(buf, offset, length);
        int f = fd.get();
        Syscalls.PerThread t = Syscalls.perThread();
        try {
            long r;
            do {
                r = (long) Handles.SEND.invokeExact(t.capture, f, address, length, MSG_DONTWAIT | MSG_NOSIGNAL);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return result(r, t, "send", f);
        } catch (LinuxException e) {
            throw e;
        } catch (Throwable e) {
            throw Syscalls.unexpected(e);
        } finally {
            Reference.reachabilityFence(buf);
        }
    }

    private static long address(MemorySegment buf, long offset, long length) {
        if (!buf.isNative()) {
            throw new IllegalArgumentException("packet buffers must be native memory");
        }
        Objects.checkFromIndexSize(offset, length, buf.byteSize());
        return buf.address() + offset;
    }

    private static long result(long r, Syscalls.PerThread t, String call, int fd) throws LinuxException {
        if (r >= 0) {
            return r;
        }
        int errno = t.errno();
        if (errno == Errno.EAGAIN) {
            return WOULD_BLOCK;
        }
        throw new LinuxException(call, "fd " + fd, errno);
    }
}
