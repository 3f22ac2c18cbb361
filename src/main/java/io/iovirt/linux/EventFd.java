// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.MemorySegment;

/**
 * An eventfd(2) counter: the kick and call notifications of virtio queues, and the wake-up of blocked threads.
 * Reads and writes go through a per-thread 8-byte buffer, so signalling allocates nothing and any thread may do it.
 */
public final class EventFd implements AutoCloseable {
    public static final int EFD_SEMAPHORE = 1;
    public static final int EFD_NONBLOCK = 04000;
    public static final int EFD_CLOEXEC = 02000000;

    private final Fd fd;
    /** A peer's eventfd: its writes are watched ({@link #trySignal}). */
    private final boolean fromPeer;
    /**
     * Watched writes ({@link #trySignal}) and reads ({@link #consume}) begun and ended, counted atomically: several
     * threads may write one peer's eventfd at once (the senders filling one guest's receive queue), and each blocked
     * one must stay visible to the {@link Watchdog} until it has returned, whoever else's operation returned meanwhile.
     */
    private volatile long opsBegun;

    private volatile long opsEnded;
    /** Whether the operations are reads (a peer's eventfd is either read, a kick, or written, a call or err). */
    private volatile boolean opIsRead;
    // The watchdog thread's own: opsBegun when it first saw the operations in progress it watches, and since when
    // (0: none seen).
    private long watchedBegun;
    private long watchedSince;
    /** The watchdog's thread that ends a blocked operation is still at it. */
    private volatile boolean unblocking;
    /** The watchdog had to end a blocked operation (drain the counter for a write, bump it for a read). */
    private volatile boolean stuck;
    /**
     * A write of ours to this peer's eventfd blocked once (O_NONBLOCK cleared, the counter full): the watchdog ended
     * it, or one of its looks saw it blocked.
     */
    private volatile boolean quarantined;
    /** The record of the peer that sent this eventfd (null: ours), marked when a write to it blocked. */
    private final PeerConduct conduct;

    /**
     * What one peer (a device's frontends, across their reconnects) did to the eventfds it sent: once a write of ours
     * to one of them blocked, {@link #trySignal} looks before each write to every eventfd of that peer, the ones it
     * sent before and the ones it sends later. A peer thus costs a shared thread one blocked write (ended by the
     * watchdog) however many fresh eventfds it sends, while the eventfds of peers that never did are written without
     * a look: a poll per interrupt for every tenant measured 0.4–0.6 µs here (2-vCPU EPYC, 2 M signals x 14 rounds).
     */
    public static final class PeerConduct {
        private volatile boolean blockedAWrite;

        /** Whether a write of ours to an eventfd this peer sent ever blocked. */
        public boolean blockedAWrite() {
            return blockedAWrite;
        }
    }

    private static final java.lang.invoke.VarHandle OPS_BEGUN;
    private static final java.lang.invoke.VarHandle OPS_ENDED;

    static {
        try {
            java.lang.invoke.MethodHandles.Lookup l = java.lang.invoke.MethodHandles.lookup();
            OPS_BEGUN = l.findVarHandle(EventFd.class, "opsBegun", long.class);
            OPS_ENDED = l.findVarHandle(EventFd.class, "opsEnded", long.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    private EventFd(Fd fd) {
        this(fd, false, null);
    }

    private EventFd(Fd fd, boolean fromPeer, PeerConduct conduct) {
        this.fd = fd;
        this.fromPeer = fromPeer;
        if (fromPeer && conduct == null) { // the shared watchdog marks it: a null would end the watchdog for all
            throw new NullPointerException("a peer's eventfd needs its peer's record");
        }
        this.conduct = conduct;
    }

    /** A new close-on-exec eventfd with counter 0, blocking or not. */
    public static EventFd create(boolean nonBlocking) throws LinuxException {
        return create(0, EFD_CLOEXEC | (nonBlocking ? EFD_NONBLOCK : 0));
    }

    public static EventFd create(int initialValue, int flags) throws LinuxException {
        return new EventFd(Fd.adopt(Syscalls.check(Syscalls.eventfd(initialValue, flags), "eventfd", null)));
    }

    /**
     * A new non-blocking eventfd of ours that stands in for a peer's until the peer sends one, which is then swapped
     * in behind the same descriptor number ({@link Fd#replaceWith}) while other threads keep using this object: so
     * its reads and writes are watched from the start, as a peer's ({@link #adoptFromPeer}).
     */
    public static EventFd createStandIn() throws LinuxException {
        return createStandIn(new PeerConduct());
    }

    /** As {@link #createStandIn()}, standing in for the eventfds of the peer whose record is {@code conduct}. */
    public static EventFd createStandIn(PeerConduct conduct) throws LinuxException {
        EventFd e = new EventFd(
                Fd.adopt(Syscalls.check(Syscalls.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd", null)),
                true,
                conduct);
        Watchdog.watch(e);
        return e;
    }

    /** Wraps a descriptor we trust to be an eventfd (our own); this object now owns it. */
    public static EventFd adopt(Fd fd) {
        return new EventFd(fd);
    }

    /**
     * Wraps a descriptor a peer sent as an eventfd (a vhost-user kick, call or err fd) after checking that it is one:
     * the kernel names an eventfd's file {@code anon_inode:[eventfd]} (read back through /proc/self/fd), which no
     * socket, pipe, regular file or other anonymous inode can imitate. It is then made non-blocking. On failure the
     * descriptor is closed.
     *
     * <p>The non-blocking flag lives in the open file description, which the peer shares and could clear again; so
     * reads ({@link #consume}) and writes ({@link #trySignal}) of a peer's eventfd are watched, and one that blocks is
     * ended by the {@link Watchdog} within a fraction of a second; a write that would block is the peer's fault.
     *
     * @throws NotAnEventFd  when it is something else
     * @throws LinuxException when it cannot be inspected
     */
    public static EventFd adoptFromPeer(Fd fd, String what) throws LinuxException {
        return adoptFromPeer(fd, what, new PeerConduct());
    }

    /**
     * As {@link #adoptFromPeer(Fd, String)}, for a peer whose eventfds share {@code conduct}: quarantined from the
     * start when a write to an earlier one blocked.
     */
    public static EventFd adoptFromPeer(Fd fd, String what, PeerConduct conduct) throws LinuxException {
        try {
            String kind = kindOf(fd);
            if (!"anon_inode:[eventfd]".equals(kind)) {
                throw new NotAnEventFd(what + " is " + kind + ", not an eventfd");
            }
            fd.setNonBlocking(true);
            EventFd e = new EventFd(fd, true, conduct);
            Watchdog.watch(e);
            return e;
        } catch (LinuxException | RuntimeException e) {
            fd.close();
            throw e;
        }
    }

    /** A peer sent some other kind of descriptor where an eventfd belongs. */
    public static final class NotAnEventFd extends IllegalArgumentException {
        NotAnEventFd(String message) {
            super(message);
        }
    }

    /** What the kernel says the descriptor is (the /proc/self/fd link: a path, "socket:[N]", "anon_inode:[...]"). */
    public static String kindOf(Fd fd) throws LinuxException {
        int n = fd.get();
        try {
            return java.nio.file.Files.readSymbolicLink(java.nio.file.Path.of("/proc/self/fd/" + n))
                    .toString();
        } catch (java.io.IOException e) {
            throw new LinuxException(
                    "readlink", "/proc/self/fd/" + n + " (is /proc mounted?): " + e.getMessage(), Errno.EBADF);
        }
    }

    public Fd fd() {
        return fd;
    }

    /**
     * A second descriptor for the same eventfd, owned separately, as this one is watched (a peer's) or not. Lets an
     * owner keep a peer's eventfd while it points this descriptor's number elsewhere ({@link Fd#replaceWith}).
     */
    public EventFd duplicate() throws LinuxException {
        EventFd e = new EventFd(fd.dup(), fromPeer, conduct);
        e.quarantined = quarantined; // the peer made the file blocking once: it may again
        if (fromPeer) {
            Watchdog.watch(e);
        }
        return e;
    }

    /** Adds 1 to the counter, waking readers. An overflowing counter (EAGAIN) is already signalled: not an error. */
    public void signal() throws LinuxException {
        write(1);
    }

    /**
     * Adds 1 without waiting on the peer: false when the write would block (the counter is full) — the peer's fault,
     * which the caller reports (counts, or fails the queue).
     *
     * <p>A peer's descriptor was made non-blocking when adopted, but the peer shares the open file description and
     * may clear the flag again at any time, and fill the counter: a write would then block until somebody reads. The
     * threads that write a peer's eventfd serve other tenants too (the senders delivering into a guest's receive
     * queue, the shared receive recheck thread, shared poll threads). A watchdog thread ({@link Watchdog}) sees a
     * peer write that has not returned within {@link Watchdog#STUCK_NANOS} and drains the counter, which ends the
     * write; this call then returns false, and the peer's record ({@link PeerConduct}) is marked (as it is by a write
     * any look of the watchdog sees blocked, whoever ends it: a peer letting each write through itself just before
     * the watchdog would is marked as well, not left to hold our threads one short hold after another): from then on
     * each write to any eventfd of that peer first asks poll, without waiting, whether it would go through, and a full
     * counter returns false at once. What is left after that: the counter filled between the look and the write —
     * by the peer in that instant, or by another of our threads writing the same eventfd at once (the senders into
     * one receive queue; a descriptor the peer sent for several queues), which a peer arranges by leaving its counter
     * one write short of full: the look is not atomic with the write, and the watchdog ends each such write.
     */
    public boolean trySignal() throws LinuxException {
        int f = fd.get();
        Syscalls.PerThread t = Syscalls.perThread();
        t.scratch.set(JAVA_LONG, 0, 1L);
        long r;
        if (fromPeer) {
            if ((quarantined || conduct.blockedAWrite) && !writable(f, t)) {
                return false; // the counter is full: the write would block (or be dropped), the peer's fault
            }
            opIsRead = false;
            OPS_BEGUN.getAndAdd(this, 1L);
            r = Syscalls.write(f, t.scratch, 8);
            OPS_ENDED.getAndAdd(this, 1L);
            if (stuck) {
                stuck = false;
                quarantined = true;
                conduct.blockedAWrite = true;
                return false;
            }
        } else {
            r = Syscalls.write(f, t.scratch, 8);
        }
        if (r == -Errno.EAGAIN) {
            return false;
        }
        if (r < 0) {
            throw new LinuxException("write", "eventfd " + f, (int) -r);
        }
        return true;
    }

    private static final short POLLOUT = 0x4;

    /**
     * Whether a write of 1 would go through now (poll with no wait: an eventfd is writable while its counter is below
     * its limit). The peer could still fill the counter between this look and the write; the watchdog covers that.
     */
    private static boolean writable(int f, Syscalls.PerThread t) {
        MemorySegment pfd = t.scratchPollFd; // the value to write stays in bytes 0..7 of the scratch
        pfd.set(JAVA_INT, 0, f);
        pfd.set(JAVA_SHORT, 4, POLLOUT);
        pfd.set(JAVA_SHORT, 6, (short) 0);
        return Syscalls.poll(pfd, 1, 0) == 1 && (pfd.get(JAVA_SHORT, 6) & POLLOUT) != 0;
    }

    /** Whether a write of ours to this peer's eventfd ever blocked (see {@link #trySignal}). */
    public boolean quarantined() {
        return quarantined;
    }

    /**
     * Reads and resets the counter of a peer's eventfd (a kick), never blocking: 0 when nothing was pending. The read
     * is a preadv2 with RWF_NOWAIT, which returns EAGAIN on an empty counter whatever the file's O_NONBLOCK says (the
     * peer shares the open file description and may clear the flag). On a kernel that refuses RWF_NOWAIT for an
     * eventfd (before Linux 5.11) it is a plain read, watched: should the peer clear the flag and empty the counter
     * between our epoll wake-up and the read, the watchdog ends it by adding 1 (a spurious kick, harmless).
     */
    public long consume() throws LinuxException {
        int f = fd.get();
        Syscalls.PerThread t = Syscalls.perThread();
        long r;
        if (fromPeer) {
            r = nowaitReads ? Syscalls.read8NoWait(f) : -Errno.EOPNOTSUPP;
            if (r < 0 && r != -Errno.EAGAIN) { // refused (or failed): the watched read, which says why if it fails
                noNowaitReadsIf(r);
                opIsRead = true;
                OPS_BEGUN.getAndAdd(this, 1L);
                r = Syscalls.read(f, t.scratch, 8);
                OPS_ENDED.getAndAdd(this, 1L);
                stuck = false;
            }
        } else {
            r = Syscalls.read(f, t.scratch, 8);
        }
        if (r == -Errno.EAGAIN) {
            return 0;
        }
        if (r < 0) {
            throw new LinuxException("read", "eventfd " + f, (int) -r);
        }
        return t.scratch.get(JAVA_LONG, 0);
    }

    /**
     * Whether this kernel reads an eventfd with preadv2(RWF_NOWAIT) (Linux 5.11 and later): such a read never blocks,
     * so neither a kick read ({@link #consume}) nor the watchdog's drain of a counter a peer filled can be held by a
     * peer that clears O_NONBLOCK. False once the kernel refused it (EOPNOTSUPP).
     */
    private static volatile boolean nowaitReads = true;

    /**
     * Stops using RWF_NOWAIT reads when {@code r} says the kernel (or a seccomp filter: a container runtime's, a
     * unit's SystemCallFilter=) refuses them; other errors are the descriptor's and leave the choice alone.
     */
    private static void noNowaitReadsIf(long r) {
        if (r == -Errno.EOPNOTSUPP || r == -Errno.ENOSYS || r == -Errno.EPERM || r == -Errno.EINVAL) {
            nowaitReads = false;
        }
    }

    /** Tests: whether RWF_NOWAIT reads are used; set false to exercise the watched read and the unblock thread. */
    static boolean nowaitReads(boolean use) {
        boolean was = nowaitReads;
        nowaitReads = use;
        return was;
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
        if (fromPeer) {
            Watchdog.unwatch(this);
        }
        fd.close();
    }

    /**
     * Ends reads and writes of peers' eventfds that block (see {@link #trySignal}). One daemon thread checks the watched
     * descriptors ten times a second; the check is a volatile read per descriptor. A counter is drained on the
     * watchdog's thread with a read that cannot block ({@link #drainWithoutWaiting}); only where the kernel has no
     * such read does ending an operation run on a new daemon thread (only a hostile peer makes that happen), so the
     * watchdog itself never blocks on a peer's fd.
     */
    static final class Watchdog {
        static final long STUCK_NANOS = 200_000_000L;
        private static final java.util.Set<EventFd> WATCHED = java.util.concurrent.ConcurrentHashMap.newKeySet();
        private static volatile Thread thread;

        private Watchdog() {}

        static void watch(EventFd e) {
            WATCHED.add(e);
            if (thread == null) {
                synchronized (Watchdog.class) {
                    if (thread == null) {
                        thread = Thread.ofPlatform()
                                .daemon()
                                .name("iovirt eventfd watchdog")
                                .start(Watchdog::run);
                    }
                }
            }
        }

        static void unwatch(EventFd e) {
            WATCHED.remove(e);
        }

        private static void run() {
            for (; ; ) {
                try {
                    Thread.sleep(100);
                } catch (InterruptedException ignored) {
                    // a daemon: keeps watching
                }
                long now = System.nanoTime() | 1; // never 0, which means "none seen"
                for (EventFd e : WATCHED) {
                    look(e, now);
                }
            }
        }

        /**
         * One look at {@code e}: operations in progress that have not all returned within {@link #STUCK_NANOS} of the
         * first look that saw them, and that the kernel shows blocked, are ended. Counting operations rather than
         * timing one keeps every blocked operation in view: with several writers of one eventfd, one that returns does
         * not hide another that is still blocked, nor does a peer that lets them through one at a time.
         */
        private static void look(EventFd e, long now) {
            long ended = e.opsEnded; // before opsBegun: never more ended than begun
            long begun = e.opsBegun;
            if (begun == ended) {
                e.watchedSince = 0; // nothing in progress
                return;
            }
            // A write caught blocked by any look marks the peer, whoever ends it: a peer that lets each blocked write
            // through itself before STUCK_NANOS was never marked, and held a shared thread almost for good (a look
            // every 100 ms catches a peer holding writes h ms each after about 100/h of them: ~100 ms in all).
            if (!e.opIsRead && !e.conduct.blockedAWrite && wouldBlock(e, false)) {
                e.quarantined = true;
                e.conduct.blockedAWrite = true;
            }
            // First seen, or as many operations have returned as had begun when these were first seen: start over.
            // Not on any progress: a peer that lets one write of several through now and then (a semaphore-mode
            // counter read every 150 ms) would restart the count for ever while the others stay blocked.
            if (e.watchedSince == 0 || ended - e.watchedBegun >= 0) {
                e.watchedBegun = begun;
                e.watchedSince = now;
                return;
            }
            if (e.unblocking || now - e.watchedSince <= STUCK_NANOS) {
                return;
            }
            boolean read = e.opIsRead;
            // Late is not blocked: a thread descheduled on a loaded host (or held at a safepoint on its way back from
            // the system call) has often finished the write already. Draining then would read away a count the peer
            // has not consumed yet — an interrupt QEMU never injects (seen in the net demo at load 11-20). Only a
            // counter at its limit (write) or at 0 (read) blocks.
            if (!wouldBlock(e, read)) {
                return;
            }
            e.stuck = true;
            e.watchedSince = now; // an operation the peer blocks again is ended again after as long
            if (!read && drainWithoutWaiting(e)) {
                return;
            }
            e.unblocking = true;
            Thread.ofPlatform().daemon().name("iovirt eventfd unblock " + e.fd).start(() -> {
                try {
                    unblock(e, read);
                } finally {
                    e.unblocking = false;
                }
            });
        }

        /** The largest value an eventfd counter holds; a write that would pass it blocks. */
        static final long COUNTER_MAX = 0xffff_ffff_ffff_fffeL;

        /**
         * Whether an operation on {@code e} would block now, from the counter the kernel shows in
         * /proc/self/fdinfo (a read of our own process's table: it never waits on the peer): a write of 1 blocks
         * only at {@link #COUNTER_MAX}, a read only at 0. If the counter cannot be read (the descriptor was closed
         * meanwhile), no.
         */
        static boolean wouldBlock(EventFd e, boolean read) {
            int f = e.fd.borrow(); // a number closed and reused meanwhile would show another eventfd's counter
            if (f < 0) {
                return false;
            }
            long count;
            try {
                count = counter(f);
            } catch (java.io.IOException | NumberFormatException ex) {
                return false;
            } finally {
                e.fd.giveBack();
            }
            return read ? count == 0 : count == COUNTER_MAX;
        }

        /** The counter of eventfd {@code fd} of this process ("eventfd-count:" in fdinfo, hexadecimal). */
        static long counter(int fd) throws java.io.IOException {
            for (String line : java.nio.file.Files.readAllLines(java.nio.file.Path.of("/proc/self/fdinfo/" + fd))) {
                if (line.startsWith("eventfd-count:")) {
                    return Long.parseUnsignedLong(
                            line.substring("eventfd-count:".length()).strip(), 16);
                }
            }
            throw new java.io.IOException("fd " + fd + " is not an eventfd (no eventfd-count in its fdinfo)");
        }

        /**
         * Ends a blocked write here, on the watchdog's thread, by reading the counter to zero with a read that cannot
         * block (preadv2 RWF_NOWAIT: a peer clearing O_NONBLOCK and emptying the counter first makes it return
         * EAGAIN — the write has then gone through by itself). False when the read is refused (a kernel without it
         * for eventfds, a seccomp filter) or fails: {@link #unblock} on a thread of its own does it then. The number is borrowed as in {@link
         * #unblock}.
         */
        static boolean drainWithoutWaiting(EventFd e) {
            if (!nowaitReads) {
                return false;
            }
            int f = e.fd.borrow();
            if (f < 0) {
                return true; // closed meanwhile: the operation ended anyway
            }
            try {
                try {
                    Fd.setNonBlocking(f, true); // for the peer's next write; the drain does not depend on it
                } catch (LinuxException ignored) {
                    // the drain below does not need the flag
                }
                long r = Syscalls.read8NoWait(f);
                if (r < 0 && r != -Errno.EAGAIN) {
                    noNowaitReadsIf(r);
                    return false; // not drained here: the unblock thread's read does it
                }
                return true;
            } finally {
                e.fd.giveBack();
            }
        }

        /**
         * Ends a blocked write by reading the counter to zero, a blocked read by adding 1 — on a thread of its own,
         * only where {@link #drainWithoutWaiting} cannot be used (a blocked write on a kernel without RWF_NOWAIT
         * reads of an eventfd; a blocked read, which only such a kernel has). The number is borrowed
         * ({@link Fd#borrow}) for the three system calls: the owner may close the eventfd meanwhile (a queue stops),
         * and without the borrow the number could be reused by an unrelated open before our 8-byte read or write
         * reached it — another guest's image file or socket. The owner's close does not wait for us (the peer could
         * make our own read block, clearing O_NONBLOCK again); the number is closed when we are done.
         */
        static void unblock(EventFd e, boolean read) {
            int f = e.fd.borrow();
            if (f < 0) {
                return; // closed meanwhile: the operation ended anyway
            }
            try {
                Fd.setNonBlocking(f, true);
                Syscalls.PerThread t = Syscalls.perThread();
                if (read) {
                    t.scratch.set(JAVA_LONG, 0, 1L);
                    Syscalls.write(f, t.scratch, 8);
                } else {
                    Syscalls.read(f, t.scratch, 8);
                }
            } catch (LinuxException ignored) {
                // the peer's file refused the flag change: the blocked operation is ended by the next look
            } finally {
                e.fd.giveBack();
            }
        }
    }

    @Override
    public String toString() {
        return "eventfd(" + fd + ")";
    }
}
