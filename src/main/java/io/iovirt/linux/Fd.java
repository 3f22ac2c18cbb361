// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;

/**
 * An owned file descriptor: closed exactly once, by whoever owns it. Every descriptor the project opens or receives
 * lives in one of these.
 *
 * <p>Closing a descriptor that another thread is blocked on does not wake that thread, and its number may be reused
 * at once by an unrelated open. Owners therefore wake users first (socket shutdown, an eventfd) and close after.
 */
public final class Fd implements AutoCloseable {
    private static final int CLOSED = -1;
    /** In {@link #borrows}: the owner closed the descriptor while borrowed; the last {@link #giveBack} closes it. */
    private static final int CLOSE_PENDING = 1 << 30;

    private static final VarHandle FD;
    private static final VarHandle BORROWS;

    static {
        try {
            FD = MethodHandles.lookup().findVarHandle(Fd.class, "fd", int.class);
            BORROWS = MethodHandles.lookup().findVarHandle(Fd.class, "borrows", int.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    static final int F_DUPFD_CLOEXEC = 1030;
    private static final int F_GETFD = 1;
    private static final int F_GETFL = 3;
    private static final int F_SETFL = 4;
    private static final int FD_CLOEXEC = 1;
    private static final int O_NONBLOCK = 04000;
    private static final int O_CLOEXEC = 02000000;

    @SuppressWarnings("unused") // accessed through FD
    private volatile int fd;

    /** {@link #borrow}s in progress, plus {@link #CLOSE_PENDING} once {@link #close} found some. */
    @SuppressWarnings("unused") // accessed through BORROWS
    private volatile int borrows;

    /** The number a close found borrowed, closed by the last {@link #giveBack} (published by the BORROWS update). */
    private int pendingClose = CLOSED;

    private Fd(int fd) {
        this.fd = fd;
    }

    /** Takes ownership of a raw descriptor (one returned by a call in this package, or handed over by a peer). */
    public static Fd adopt(int fd) {
        if (fd < 0) {
            throw new IllegalArgumentException("not a file descriptor: " + fd);
        }
        return new Fd(fd);
    }

    /** The raw number, for system calls. */
    public int get() {
        int v = fd;
        if (v == CLOSED) {
            throw new IllegalStateException("file descriptor is closed");
        }
        return v;
    }

    /**
     * The raw number, kept from being closed until {@link #giveBack}: a {@link #close} meanwhile returns at once but
     * leaves the number open — still this file, never reused by an unrelated open — and the last give-back closes
     * it. For a thread other than the owner's that uses the number without the owner's knowledge (the eventfd
     * watchdog), whose system calls may block for as long as a peer likes: a lock against close, as
     * {@link UnixSocket} holds for its shutdown, would hold the owner's close as long. Not for the data path, whose
     * users the owner stops before it closes. Returns -1 when the descriptor is closed (nothing to give back then).
     */
    public int borrow() {
        for (; ; ) {
            int b = borrows;
            if ((b & CLOSE_PENDING) != 0 || fd == CLOSED) {
                return -1;
            }
            if (BORROWS.compareAndSet(this, b, b + 1)) {
                int v = fd; // after the count: a close from now on sees the borrow and leaves the number open
                if (v == CLOSED) { // closed (or released) in between
                    giveBack();
                    return -1;
                }
                return v;
            }
        }
    }

    /** Ends a {@link #borrow} that returned a number; closes the descriptor if its owner closed it meanwhile. */
    public void giveBack() {
        int b = (int) BORROWS.getAndAdd(this, -1) - 1;
        if (b == CLOSE_PENDING) {
            Syscalls.close(pendingClose);
        }
    }

    public boolean isOpen() {
        return fd != CLOSED;
    }

    /**
     * Gives up ownership without closing; the caller now owns the returned raw descriptor. Not for a descriptor that
     * may be {@link #borrow}ed: the borrower's number would then be the new owner's to close.
     */
    public int release() {
        int v = (int) FD.getAndSet(this, CLOSED);
        if (v == CLOSED) {
            throw new IllegalStateException("file descriptor is closed");
        }
        return v;
    }

    /** A second descriptor for the same open file (close-on-exec), owned separately. */
    public Fd dup() throws LinuxException {
        int v = get();
        return adopt(Syscalls.check(Syscalls.fcntl(v, F_DUPFD_CLOEXEC, 0), "fcntl", "F_DUPFD_CLOEXEC, fd " + v));
    }

    /**
     * Makes this descriptor number refer to {@code source}'s open file (dup3), atomically: a thread writing to this
     * descriptor concurrently reaches either the old or the new file, never a closed or reused number. The old file
     * loses this reference; {@code source} stays open and owned by its caller. Used to swap a running queue's call
     * eventfd without stopping the queue.
     */
    public void replaceWith(Fd source) throws LinuxException {
        int target = get();
        int src = source.get();
        if (src == target) {
            return;
        }
        Syscalls.check(Syscalls.dup3(src, target, O_CLOEXEC), "dup3", "fd " + src + " onto fd " + target);
    }

    public boolean isCloseOnExec() throws LinuxException {
        int v = get();
        return (Syscalls.check(Syscalls.fcntl(v, F_GETFD, 0), "fcntl", "F_GETFD, fd " + v) & FD_CLOEXEC) != 0;
    }

    public boolean isNonBlocking() throws LinuxException {
        int v = get();
        return (Syscalls.check(Syscalls.fcntl(v, F_GETFL, 0), "fcntl", "F_GETFL, fd " + v) & O_NONBLOCK) != 0;
    }

    public void setNonBlocking(boolean on) throws LinuxException {
        setNonBlocking(get(), on);
    }

    /** {@link #setNonBlocking(boolean)} of a raw number (a {@link #borrow}ed one). */
    static void setNonBlocking(int v, boolean on) throws LinuxException {
        int flags = Syscalls.check(Syscalls.fcntl(v, F_GETFL, 0), "fcntl", "F_GETFL, fd " + v);
        int next = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
        if (next != flags) {
            Syscalls.check(Syscalls.fcntl(v, F_SETFL, next), "fcntl", "F_SETFL, fd " + v);
        }
    }

    /**
     * Closes once; later calls do nothing. Errors from close(2) are not reported: the descriptor is gone anyway. A
     * number {@link #borrow}ed at the time stays open until given back (the last give-back closes it); {@link #get}
     * fails from now on either way.
     */
    @Override
    public void close() {
        int v = (int) FD.getAndSet(this, CLOSED);
        if (v == CLOSED) {
            return;
        }
        pendingClose = v;
        if ((int) BORROWS.getAndAdd(this, CLOSE_PENDING) == 0) {
            Syscalls.close(v); // not borrowed; no borrow succeeds from now on
        }
    }

    /** Closes every non-null descriptor in {@code fds}. */
    public static void closeAll(Iterable<Fd> fds) {
        for (Fd f : fds) {
            if (f != null) {
                f.close();
            }
        }
    }

    @Override
    public String toString() {
        int v = fd;
        return v == CLOSED ? "fd(closed)" : "fd " + v;
    }
}
