// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.invoke.MethodHandle;
import java.util.Arrays;
import java.util.Locale;

/**
 * The project's only downcalls into libc. Each function has one method handle, created the first time its group
 * (a nested holder class) is used. Every handle captures errno into a per-thread preallocated segment.
 *
 * <p>Convention: wrappers return the call's result, or {@code -errno} when it failed; calls that are safe to restart
 * are retried on EINTR here. Callers turn negative results into {@link LinuxException} with {@link #check} (or act
 * on specific errnos such as EAGAIN without paying for an exception).
 */
@SuppressWarnings("restricted") // the linux package is where native access is meant to happen
final class Syscalls {
    static final Linker LINKER = Linker.nativeLinker();
    private static final StructLayout CAPTURE_LAYOUT = Linker.Option.captureStateLayout();
    private static final long ERRNO_OFFSET = CAPTURE_LAYOUT.byteOffset(MemoryLayout.PathElement.groupElement("errno"));
    private static final Linker.Option CAPTURE = Linker.Option.captureCallState("errno");

    /** x86_64 packs some structs (epoll_event) and numbers some flags (O_DIRECT) differently from aarch64. */
    static final boolean X86_64;

    static {
        String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT);
        String arch = System.getProperty("os.arch", "").toLowerCase(Locale.ROOT);
        if (!os.startsWith("linux") || ADDRESS.byteSize() != 8) {
            throw new UnsupportedOperationException("iovirt needs 64-bit Linux; this is " + os + "/" + arch);
        }
        X86_64 = arch.equals("amd64") || arch.equals("x86_64");
        if (!X86_64 && !arch.equals("aarch64")) {
            throw new UnsupportedOperationException("iovirt supports x86_64 and aarch64; this is " + arch);
        }
    }

    /**
     * Per-thread scratch: the errno capture segment and 64 bytes for small in/out values (eventfd counters: bytes
     * 0..7, a pollfd at 8..15, an iovec at 48..63).
     */
    static final class PerThread {
        final MemorySegment capture;
        final MemorySegment scratch;
        /** One iovec (bytes 48..63 of scratch) naming scratch's first 8 bytes: {@link #read8NoWait}'s. */
        final MemorySegment scratchIov;
        /** One struct pollfd (bytes 8..15 of scratch): a look at one descriptor without allocating. */
        final MemorySegment scratchPollFd;

        private PerThread() {
            Arena arena = Arena.ofAuto();
            this.capture = arena.allocate(CAPTURE_LAYOUT);
            this.scratch = arena.allocate(64, 8);
            this.scratchIov = scratch.asSlice(48, 16);
            this.scratchPollFd = scratch.asSlice(8, 8);
            scratchIov.set(JAVA_LONG, 0, scratch.address());
            scratchIov.set(JAVA_LONG, 8, 8L);
        }

        int errno() {
            return capture.get(JAVA_INT, ERRNO_OFFSET);
        }
    }

    private static final ThreadLocal<PerThread> PER_THREAD = ThreadLocal.withInitial(PerThread::new);

    private Syscalls() {}

    static PerThread perThread() {
        return PER_THREAD.get();
    }

    /** Throws when {@code r} is a negative errno; returns {@code r} otherwise. */
    static long check(long r, String call, Object what) throws LinuxException {
        if (r < 0) {
            throw new LinuxException(call, what == null ? null : String.valueOf(what), (int) -r);
        }
        return r;
    }

    static int check(int r, String call, Object what) throws LinuxException {
        if (r < 0) {
            throw new LinuxException(call, what == null ? null : String.valueOf(what), -r);
        }
        return r;
    }

    static MethodHandle fn(String name, FunctionDescriptor desc, Linker.Option... extra) {
        MemorySegment addr =
                LINKER.defaultLookup().find(name).orElseThrow(() -> new UnsatisfiedLinkError("libc has no " + name));
        Linker.Option[] opts = Arrays.copyOf(extra, extra.length + 1);
        opts[extra.length] = CAPTURE;
        return LINKER.downcallHandle(addr, desc, opts);
    }

    /** Downcall handles never throw checked exceptions; anything else is a bug in the binding. */
    static AssertionError unexpected(Throwable t) {
        if (t instanceof RuntimeException re) {
            throw re; // e.g. IllegalStateException: the segment's arena was closed
        }
        if (t instanceof Error e) {
            throw e;
        }
        return new AssertionError("downcall failed unexpectedly", t);
    }

    private static int ret(int r, PerThread t) {
        return r < 0 ? -t.errno() : r;
    }

    private static long ret(long r, PerThread t) {
        return r < 0 ? -t.errno() : r;
    }

    // ---- core: read, write, close, fcntl, poll, sysconf ---------------------------------------------------------

    private static final class Core {
        static final MethodHandle READ = fn("read", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG));
        static final MethodHandle WRITE = fn("write", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG));
        static final MethodHandle CLOSE = fn("close", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        static final MethodHandle DUP3 = fn("dup3", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT));
        static final MethodHandle FCNTL = fn(
                "fcntl",
                FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT),
                Linker.Option.firstVariadicArg(2));
        /** fcntl with a pointer argument (struct flock for the OFD lock commands). */
        static final MethodHandle FCNTL_PTR = fn(
                "fcntl",
                FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS),
                Linker.Option.firstVariadicArg(2));

        static final MethodHandle POLL = fn("poll", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT));
        static final MethodHandle SYSCONF = fn("sysconf", FunctionDescriptor.of(JAVA_LONG, JAVA_INT));
    }

    static long read(int fd, MemorySegment buf, long len) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Core.READ.invokeExact(t.capture, fd, buf, len);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long write(int fd, MemorySegment buf, long len) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Core.WRITE.invokeExact(t.capture, fd, buf, len);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** Never retried: Linux releases the descriptor even when close reports EINTR. */
    static int close(int fd) {
        PerThread t = perThread();
        try {
            return ret((int) Core.CLOSE.invokeExact(t.capture, fd), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** Retried on EINTR; EBUSY (a race with open in another thread) is reported to the caller. */
    static int dup3(int oldfd, int newfd, int flags) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = (int) Core.DUP3.invokeExact(t.capture, oldfd, newfd, flags);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int fcntl(int fd, int cmd, int arg) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = (int) Core.FCNTL.invokeExact(t.capture, fd, cmd, arg);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** fcntl(2) whose third argument is a pointer; retried on EINTR. */
    static int fcntl(int fd, int cmd, MemorySegment arg) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = (int) Core.FCNTL_PTR.invokeExact(t.capture, fd, cmd, arg);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** EINTR is reported as 0 ready descriptors: callers loop anyway and re-arm their own deadline. */
    static int poll(MemorySegment fds, long nfds, int timeoutMs) {
        PerThread t = perThread();
        try {
            int r = (int) Core.POLL.invokeExact(t.capture, fds, nfds, timeoutMs);
            return r < 0 && t.errno() == Errno.EINTR ? 0 : ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long sysconf(int name) {
        PerThread t = perThread();
        try {
            return ret((long) Core.SYSCONF.invokeExact(t.capture, name), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    // ---- eventfd and epoll -----------------------------------------------------------------------------------

    private static final class Events {
        static final MethodHandle EVENTFD = fn("eventfd", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT));
        static final MethodHandle EPOLL_CREATE1 = fn("epoll_create1", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        static final MethodHandle EPOLL_CTL =
                fn("epoll_ctl", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS));
        static final MethodHandle EPOLL_WAIT =
                fn("epoll_wait", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT));
    }

    static int eventfd(int initval, int flags) {
        PerThread t = perThread();
        try {
            return ret((int) Events.EVENTFD.invokeExact(t.capture, initval, flags), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int epollCreate1(int flags) {
        PerThread t = perThread();
        try {
            return ret((int) Events.EPOLL_CREATE1.invokeExact(t.capture, flags), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int epollCtl(int epfd, int op, int fd, MemorySegment event) {
        PerThread t = perThread();
        try {
            return ret((int) Events.EPOLL_CTL.invokeExact(t.capture, epfd, op, fd, event), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** EINTR is reported as 0 events (a spurious wake-up), which every wait loop handles already. */
    static int epollWait(int epfd, MemorySegment events, int max, int timeoutMs) {
        PerThread t = perThread();
        try {
            int r = (int) Events.EPOLL_WAIT.invokeExact(t.capture, epfd, events, max, timeoutMs);
            return r < 0 && t.errno() == Errno.EINTR ? 0 : ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    // ---- memory: memfd, ftruncate, mmap --------------------------------------------------------------------------

    private static final class Mem {
        static final MethodHandle MEMFD_CREATE = fn("memfd_create", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT));
        static final MethodHandle FTRUNCATE = fn("ftruncate", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG));
        static final MethodHandle MMAP = fn(
                "mmap", FunctionDescriptor.of(JAVA_LONG, ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG));
        static final MethodHandle MUNMAP = fn("munmap", FunctionDescriptor.of(JAVA_INT, JAVA_LONG, JAVA_LONG));
        static final MethodHandle MADVISE =
                fn("madvise", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT));
    }

    static int memfdCreate(MemorySegment name, int flags) {
        PerThread t = perThread();
        try {
            return ret((int) Mem.MEMFD_CREATE.invokeExact(t.capture, name, flags), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int ftruncate(int fd, long size) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = (int) Mem.FTRUNCATE.invokeExact(t.capture, fd, size);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** Returns the mapping's address, or {@code -errno} (MAP_FAILED is -1, and no valid mapping is negative). */
    static long mmap(long length, int prot, int flags, int fd, long offset) {
        PerThread t = perThread();
        try {
            long r = (long) Mem.MMAP.invokeExact(t.capture, MemorySegment.NULL, length, prot, flags, fd, offset);
            return r == -1L ? -t.errno() : r;
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int munmap(long address, long length) {
        PerThread t = perThread();
        try {
            return ret((int) Mem.MUNMAP.invokeExact(t.capture, address, length), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int madvise(MemorySegment addr, long length, int advice) {
        PerThread t = perThread();
        try {
            return ret((int) Mem.MADVISE.invokeExact(t.capture, addr, length, advice), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    // ---- files ------------------------------------------------------------------------------------------------

    private static final class Files {
        static final MethodHandle OPEN = fn(
                "open",
                FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT),
                Linker.Option.firstVariadicArg(2));
        static final MethodHandle PREAD =
                fn("pread", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_LONG));
        static final MethodHandle PWRITE =
                fn("pwrite", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_LONG, JAVA_LONG));
        static final MethodHandle PREADV =
                fn("preadv", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_INT, JAVA_LONG));
        static final MethodHandle PWRITEV =
                fn("pwritev", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_INT, JAVA_LONG));
        static final MethodHandle PREADV2 =
                fn("preadv2", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_INT, JAVA_LONG, JAVA_INT));
        static final MethodHandle FSYNC = fn("fsync", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        static final MethodHandle FDATASYNC = fn("fdatasync", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        static final MethodHandle FALLOCATE =
                fn("fallocate", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_LONG));
        static final MethodHandle LSEEK = fn("lseek", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, JAVA_LONG, JAVA_INT));
        static final MethodHandle STATX =
                fn("statx", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT, ADDRESS));
        static final MethodHandle FSTATFS = fn("fstatfs", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS));
        static final MethodHandle OPENAT = fn(
                "openat",
                FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT),
                Linker.Option.firstVariadicArg(3));
        static final MethodHandle FCHMODAT =
                fn("fchmodat", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT));
        static final MethodHandle FCHOWNAT =
                fn("fchownat", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT, JAVA_INT));
        static final MethodHandle GETEUID = fn("geteuid", FunctionDescriptor.of(JAVA_INT));
        static final MethodHandle GETGRNAM = fn("getgrnam", FunctionDescriptor.of(ADDRESS, ADDRESS));
        static final MethodHandle GETPWNAM = fn("getpwnam", FunctionDescriptor.of(ADDRESS, ADDRESS));
    }

    static int openat(int dirfd, MemorySegment path, int flags, int mode) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = (int) Files.OPENAT.invokeExact(t.capture, dirfd, path, flags, mode);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int fchmodat(int dirfd, MemorySegment path, int mode, int flags) {
        PerThread t = perThread();
        try {
            return ret((int) Files.FCHMODAT.invokeExact(t.capture, dirfd, path, mode, flags), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int fchownat(int dirfd, MemorySegment path, int uid, int gid, int flags) {
        PerThread t = perThread();
        try {
            return ret((int) Files.FCHOWNAT.invokeExact(t.capture, dirfd, path, uid, gid, flags), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** geteuid(2), which cannot fail. */
    static int geteuid() {
        PerThread t = perThread();
        try {
            return (int) Files.GETEUID.invokeExact(t.capture);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /**
     * getpwnam(3) and getgrnam(3) return a pointer to one static struct of libc's, which the next call, from any
     * thread, overwrites: the struct is read under this lock, else a listener setting up a socket's group read the gid
     * of the group another thread looked up meanwhile (SocketAccess.apply).
     */
    private static final Object USER_DATABASE = new Object();

    /** The uid of user {@code name} (getpwnam), or -1 when there is no such user. */
    static int userId(MemorySegment name) {
        PerThread t = perThread();
        try {
            synchronized (USER_DATABASE) {
                MemorySegment u = (MemorySegment) Files.GETPWNAM.invokeExact(t.capture, name);
                if (u.equals(MemorySegment.NULL)) {
                    return -1;
                }
                // struct passwd { char *pw_name; char *pw_passwd; uid_t pw_uid; ...}
                return u.reinterpret(24).get(JAVA_INT, 16);
            }
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** The gid of group {@code name} (getgrnam), or -1 when there is none. */
    static int groupId(MemorySegment name) {
        PerThread t = perThread();
        try {
            synchronized (USER_DATABASE) {
                MemorySegment g = (MemorySegment) Files.GETGRNAM.invokeExact(t.capture, name);
                if (g.equals(MemorySegment.NULL)) {
                    return -1;
                }
                // struct group { char *gr_name; char *gr_passwd; gid_t gr_gid; ...}
                return g.reinterpret(24).get(JAVA_INT, 16);
            }
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int fstatfs(int fd, MemorySegment buf) {
        PerThread t = perThread();
        try {
            return ret((int) Files.FSTATFS.invokeExact(t.capture, fd, buf), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int open(MemorySegment path, int flags, int mode) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = (int) Files.OPEN.invokeExact(t.capture, path, flags, mode);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long pread(int fd, MemorySegment buf, long len, long offset) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Files.PREAD.invokeExact(t.capture, fd, buf, len, offset);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long pwrite(int fd, MemorySegment buf, long len, long offset) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Files.PWRITE.invokeExact(t.capture, fd, buf, len, offset);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long preadv(int fd, MemorySegment iov, int iovcnt, long offset) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Files.PREADV.invokeExact(t.capture, fd, iov, iovcnt, offset);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static final int RWF_NOWAIT = 0x8;

    /**
     * Reads 8 bytes into this thread's scratch (bytes 0..7) with preadv2(RWF_NOWAIT): -EAGAIN instead of waiting,
     * whatever O_NONBLOCK says; -EOPNOTSUPP from a file the kernel cannot read that way (an eventfd before Linux 5.11).
     */
    static long read8NoWait(int fd) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Files.PREADV2.invokeExact(t.capture, fd, t.scratchIov, 1, -1L, RWF_NOWAIT);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long pwritev(int fd, MemorySegment iov, int iovcnt, long offset) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Files.PWRITEV.invokeExact(t.capture, fd, iov, iovcnt, offset);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int fsync(int fd, boolean dataOnly) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = dataOnly
                        ? (int) Files.FDATASYNC.invokeExact(t.capture, fd)
                        : (int) Files.FSYNC.invokeExact(t.capture, fd);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int fallocate(int fd, int mode, long offset, long len) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = (int) Files.FALLOCATE.invokeExact(t.capture, fd, mode, offset, len);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long lseek(int fd, long offset, int whence) {
        PerThread t = perThread();
        try {
            return ret((long) Files.LSEEK.invokeExact(t.capture, fd, offset, whence), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int statx(int dirfd, MemorySegment path, int flags, int mask, MemorySegment buf) {
        PerThread t = perThread();
        try {
            return ret((int) Files.STATX.invokeExact(t.capture, dirfd, path, flags, mask, buf), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    // ---- sockets ----------------------------------------------------------------------------------------------

    private static final class Sockets {
        static final MethodHandle SOCKET = fn("socket", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT));
        static final MethodHandle SOCKETPAIR =
                fn("socketpair", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS));
        static final MethodHandle BIND = fn("bind", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT));
        static final MethodHandle LISTEN = fn("listen", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT));
        static final MethodHandle ACCEPT4 =
                fn("accept4", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, ADDRESS, JAVA_INT));
        static final MethodHandle CONNECT = fn("connect", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT));
        static final MethodHandle SENDMSG =
                fn("sendmsg", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_INT));
        static final MethodHandle RECVMSG =
                fn("recvmsg", FunctionDescriptor.of(JAVA_LONG, JAVA_INT, ADDRESS, JAVA_INT));
        static final MethodHandle SHUTDOWN = fn("shutdown", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT));
        static final MethodHandle SETSOCKOPT =
                fn("setsockopt", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT));
        static final MethodHandle GETSOCKOPT =
                fn("getsockopt", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS, ADDRESS));
        static final MethodHandle GETSOCKNAME =
                fn("getsockname", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS, ADDRESS));
    }

    static int socket(int domain, int type, int protocol) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.SOCKET.invokeExact(t.capture, domain, type, protocol), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int socketpair(int domain, int type, int protocol, MemorySegment sv) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.SOCKETPAIR.invokeExact(t.capture, domain, type, protocol, sv), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int bind(int fd, MemorySegment addr, int len) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.BIND.invokeExact(t.capture, fd, addr, len), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int listen(int fd, int backlog) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.LISTEN.invokeExact(t.capture, fd, backlog), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int accept4(int fd, int flags) {
        PerThread t = perThread();
        try {
            int r;
            do {
                r = (int) Sockets.ACCEPT4.invokeExact(t.capture, fd, MemorySegment.NULL, MemorySegment.NULL, flags);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** Not retried on EINTR: the connection attempt continues and a retry would report EALREADY/EISCONN. */
    static int connect(int fd, MemorySegment addr, int len) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.CONNECT.invokeExact(t.capture, fd, addr, len), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long sendmsg(int fd, MemorySegment msg, int flags) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Sockets.SENDMSG.invokeExact(t.capture, fd, msg, flags);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static long recvmsg(int fd, MemorySegment msg, int flags) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Sockets.RECVMSG.invokeExact(t.capture, fd, msg, flags);
            } while (r < 0 && t.errno() == Errno.EINTR);
            return ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int shutdown(int fd, int how) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.SHUTDOWN.invokeExact(t.capture, fd, how), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int setsockopt(int fd, int level, int name, MemorySegment value, int len) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.SETSOCKOPT.invokeExact(t.capture, fd, level, name, value, len), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int getsockopt(int fd, int level, int name, MemorySegment value, MemorySegment len) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.GETSOCKOPT.invokeExact(t.capture, fd, level, name, value, len), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int getsockname(int fd, MemorySegment addr, MemorySegment len) {
        PerThread t = perThread();
        try {
            return ret((int) Sockets.GETSOCKNAME.invokeExact(t.capture, fd, addr, len), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    // ---- io_uring: raw system calls (glibc has no wrappers; the numbers are the same on x86_64 and aarch64) ----

    private static final class Uring {
        static final long NR_SETUP = 425;
        static final long NR_ENTER = 426;
        static final long NR_REGISTER = 427;
        // syscall(2) is variadic: every argument goes as a 64-bit value so no register carries stale upper bits.
        static final MethodHandle SYSCALL3 = fn(
                "syscall",
                FunctionDescriptor.of(JAVA_LONG, JAVA_LONG, JAVA_LONG, ADDRESS),
                Linker.Option.firstVariadicArg(1));
        static final MethodHandle SYSCALL5 = fn(
                "syscall",
                FunctionDescriptor.of(JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, ADDRESS, JAVA_LONG),
                Linker.Option.firstVariadicArg(1));
        static final MethodHandle SYSCALL7 = fn(
                "syscall",
                FunctionDescriptor.of(
                        JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, JAVA_LONG, ADDRESS, JAVA_LONG),
                Linker.Option.firstVariadicArg(1));
    }

    /** io_uring_setup(2): the ring's descriptor, or -errno. {@code params} is the 120-byte struct io_uring_params. */
    static int ioUringSetup(int entries, MemorySegment params) {
        PerThread t = perThread();
        try {
            return (int) ret(
                    (long) Uring.SYSCALL3.invokeExact(
                            t.capture, Uring.NR_SETUP, Integer.toUnsignedLong(entries), params),
                    t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /**
     * io_uring_enter(2) without a signal mask: SQEs consumed, or -errno. Not retried on EINTR here: the caller
     * recomputes what is left to submit and wait for.
     */
    static int ioUringEnter(int fd, int toSubmit, int minComplete, int flags) {
        PerThread t = perThread();
        try {
            return (int) ret(
                    (long) Uring.SYSCALL7.invokeExact(
                            t.capture,
                            Uring.NR_ENTER,
                            (long) fd,
                            Integer.toUnsignedLong(toSubmit),
                            Integer.toUnsignedLong(minComplete),
                            Integer.toUnsignedLong(flags),
                            MemorySegment.NULL,
                            0L),
                    t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** io_uring_register(2): the opcode's result, or -errno. */
    static int ioUringRegister(int fd, int opcode, MemorySegment arg, int nrArgs) {
        PerThread t = perThread();
        try {
            long r;
            do {
                r = (long) Uring.SYSCALL5.invokeExact(
                        t.capture,
                        Uring.NR_REGISTER,
                        (long) fd,
                        Integer.toUnsignedLong(opcode),
                        arg,
                        Integer.toUnsignedLong(nrArgs));
            } while (r < 0 && t.errno() == Errno.EINTR);
            return (int) ret(r, t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    // ---- scheduling: CPU affinity of the calling thread -------------------------------------------------------

    private static final class Sched {
        static final MethodHandle SETAFFINITY =
                fn("sched_setaffinity", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG, ADDRESS));
        static final MethodHandle GETAFFINITY =
                fn("sched_getaffinity", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG, ADDRESS));
    }

    /** sched_setaffinity(2) of thread {@code tid} (0: the calling thread) to the CPUs set in {@code mask}. */
    static int schedSetaffinity(int tid, MemorySegment mask) {
        PerThread t = perThread();
        try {
            return ret((int) Sched.SETAFFINITY.invokeExact(t.capture, tid, mask.byteSize(), mask), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    /** sched_getaffinity(2) of thread {@code tid} (0: the calling thread) into {@code mask}: 0 (glibc's wrapper). */
    static int schedGetaffinity(int tid, MemorySegment mask) {
        PerThread t = perThread();
        try {
            return ret((int) Sched.GETAFFINITY.invokeExact(t.capture, tid, mask.byteSize(), mask), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    // ---- ioctl: one handle per argument shape -----------------------------------------------------------------

    private static final class Ioctls {
        private static FunctionDescriptor shape(MemoryLayout arg) {
            return FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_LONG, arg);
        }

        static final MethodHandle INT = fn("ioctl", shape(JAVA_INT), Linker.Option.firstVariadicArg(2));
        static final MethodHandle LONG = fn("ioctl", shape(JAVA_LONG), Linker.Option.firstVariadicArg(2));
        static final MethodHandle PTR = fn("ioctl", shape(ADDRESS), Linker.Option.firstVariadicArg(2));
    }

    /** ioctl is never retried: not every request is idempotent. */
    static int ioctl(int fd, long request, int arg) {
        PerThread t = perThread();
        try {
            return ret((int) Ioctls.INT.invokeExact(t.capture, fd, request, arg), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int ioctl(int fd, long request, long arg) {
        PerThread t = perThread();
        try {
            return ret((int) Ioctls.LONG.invokeExact(t.capture, fd, request, arg), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }

    static int ioctl(int fd, long request, MemorySegment arg) {
        PerThread t = perThread();
        try {
            return ret((int) Ioctls.PTR.invokeExact(t.capture, fd, request, arg), t);
        } catch (Throwable e) {
            throw unexpected(e);
        }
    }
}
