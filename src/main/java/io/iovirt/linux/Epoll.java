// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * An epoll instance with a preallocated event buffer: {@link #wait} fills it and {@link #events}/{@link #data} read
 * it, so a wait loop allocates nothing. One thread waits on an instance; any thread may add, modify or delete.
 *
 * <p>{@code struct epoll_event} is {@code __attribute__((packed))} on x86_64 (12 bytes, data at offset 4) and
 * naturally aligned elsewhere (16 bytes, data at offset 8).
 */
public final class Epoll implements AutoCloseable {
    public static final int EPOLLIN = 0x001;
    public static final int EPOLLPRI = 0x002;
    public static final int EPOLLOUT = 0x004;
    public static final int EPOLLERR = 0x008;
    public static final int EPOLLHUP = 0x010;
    public static final int EPOLLRDHUP = 0x2000;
    public static final int EPOLLONESHOT = 1 << 30;
    public static final int EPOLLET = 1 << 31;

    private static final int EPOLL_CLOEXEC = 02000000;
    private static final int EPOLL_CTL_ADD = 1;
    private static final int EPOLL_CTL_DEL = 2;
    private static final int EPOLL_CTL_MOD = 3;

    /** Bytes per {@code struct epoll_event} on this architecture. */
    static final long EVENT_SIZE = Syscalls.X86_64 ? 12 : 16;

    static final long DATA_OFFSET = Syscalls.X86_64 ? 4 : 8;

    private final Fd fd;
    private final MemorySegment buffer;
    private final int maxEvents;
    private int ready;

    private Epoll(Fd fd, int maxEvents) {
        this.fd = fd;
        this.maxEvents = maxEvents;
        // auto arena: a waiter blocked in epoll_wait keeps the buffer alive even if close() races with it
        this.buffer = Arena.ofAuto().allocate(EVENT_SIZE * maxEvents, 8);
    }

    /** A close-on-exec epoll instance that reports at most {@code maxEvents} per {@link #wait}. */
    public static Epoll create(int maxEvents) throws LinuxException {
        if (maxEvents < 1 || maxEvents > 4096) {
            throw new IllegalArgumentException("maxEvents must be 1..4096: " + maxEvents);
        }
        return new Epoll(
                Fd.adopt(Syscalls.check(Syscalls.epollCreate1(EPOLL_CLOEXEC), "epoll_create1", null)), maxEvents);
    }

    public Fd fd() {
        return fd;
    }

    /** Watches {@code target} for {@code events}; {@link #data} reports {@code data} when it is ready. */
    public void add(Fd target, int events, long data) throws LinuxException {
        ctl(EPOLL_CTL_ADD, target.get(), events, data, "EPOLL_CTL_ADD");
    }

    public void modify(Fd target, int events, long data) throws LinuxException {
        ctl(EPOLL_CTL_MOD, target.get(), events, data, "EPOLL_CTL_MOD");
    }

    public void delete(Fd target) throws LinuxException {
        ctl(EPOLL_CTL_DEL, target.get(), 0, 0, "EPOLL_CTL_DEL");
    }

    private void ctl(int op, int target, int events, long data, String name) throws LinuxException {
        try (Arena a = Arena.ofConfined()) { // ctl may run on any thread: never share the wait buffer
            MemorySegment ev = a.allocate(EVENT_SIZE, 8);
            ev.set(JAVA_INT_UNALIGNED, 0, events);
            ev.set(JAVA_LONG_UNALIGNED, DATA_OFFSET, data);
            Syscalls.check(Syscalls.epollCtl(fd.get(), op, target, ev), "epoll_ctl(" + name + ")", "fd " + target);
        }
    }

    /**
     * Waits up to {@code timeoutMs} (-1: forever, 0: poll) and returns how many events are ready (0 on timeout or
     * when a signal interrupted the wait).
     */
    public int wait(int timeoutMs) throws LinuxException {
        ready = 0;
        int n = Syscalls.check(Syscalls.epollWait(fd.get(), buffer, maxEvents, timeoutMs), "epoll_wait", fd);
        ready = n;
        return n;
    }

    /** The event mask of ready entry {@code i} (0 ≤ i < the last {@link #wait} result). */
    public int events(int i) {
        return buffer.get(JAVA_INT_UNALIGNED, index(i) * EVENT_SIZE);
    }

    /** The data registered with ready entry {@code i}. */
    public long data(int i) {
        return buffer.get(JAVA_LONG_UNALIGNED, index(i) * EVENT_SIZE + DATA_OFFSET);
    }

    private int index(int i) {
        if (i < 0 || i >= ready) {
            throw new IndexOutOfBoundsException("event " + i + " of " + ready);
        }
        return i;
    }

    @Override
    public void close() {
        fd.close();
    }
}
