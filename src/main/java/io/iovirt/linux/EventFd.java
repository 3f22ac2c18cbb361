package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

/**
 * An eventfd(2) counter: the kick and call notifications of virtio queues, and the wake-up of blocked threads.
 * Reads and writes go through a per-thread 8-byte buffer, so signalling allocates nothing and any thread may do it.
 */
public final class EventFd implements AutoCloseable {
    public static final int EFD_SEMAPHORE = 1;
    public static final int EFD_NONBLOCK = 04000;
    public static final int EFD_CLOEXEC = 02000000;

    private final Fd fd;

    private EventFd(Fd fd) {
        this.fd = fd;
    }

    /** A new close-on-exec eventfd with counter 0, blocking or not. */
    public static EventFd create(boolean nonBlocking) throws LinuxException {
        return create(0, EFD_CLOEXEC | (nonBlocking ? EFD_NONBLOCK : 0));
    }

    public static EventFd create(int initialValue, int flags) throws LinuxException {
        return new EventFd(Fd.adopt(Syscalls.check(Syscalls.eventfd(initialValue, flags), "eventfd", null)));
    }

    /** Wraps a descriptor received from a peer (e.g. a vhost-user kick fd); this object now owns it. */
    public static EventFd adopt(Fd fd) {
        return new EventFd(fd);
    }

    public Fd fd() {
        return fd;
    }

    /** Adds 1 to the counter, waking readers. An overflowing counter (EAGAIN) is already signalled: not an error. */
    public void signal() throws LinuxException {
        write(1);
    }

    /**
     * Adds {@code value} to the counter. On a non-blocking eventfd whose counter would overflow, the write is
     * dropped (the reader is going to wake anyway).
     */
    public void write(long value) throws LinuxException {
        int f = fd.get();
        Syscalls.PerThread t = Syscalls.perThread();
        t.scratch.set(JAVA_LONG, 0, value);
        long r = Syscalls.write(f, t.scratch, 8);
        if (r < 0 && r != -Errno.EAGAIN) {
            throw new LinuxException("write", "eventfd " + f, (int) -r);
        }
    }

    /**
     * Reads and resets the counter (or decrements it by one with EFD_SEMAPHORE). Blocks on a blocking eventfd until
     * it is non-zero; returns 0 on a non-blocking eventfd that has nothing pending (a counter never reads as 0).
     */
    public long read() throws LinuxException {
        int f = fd.get();
        Syscalls.PerThread t = Syscalls.perThread();
        long r = Syscalls.read(f, t.scratch, 8);
        if (r == -Errno.EAGAIN) {
            return 0;
        }
        if (r < 0) { // no message string on the hot path
            throw new LinuxException("read", "eventfd " + f, (int) -r);
        }
        return t.scratch.get(JAVA_LONG, 0);
    }

    @Override
    public void close() {
        fd.close();
    }

    @Override
    public String toString() {
        return "eventfd(" + fd + ")";
    }
}
