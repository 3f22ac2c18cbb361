// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import java.lang.System.Logger.Level;
import java.time.Duration;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;

/**
 * A fixed number of shared poll threads that serve the queues of many devices: OVS-DPDK's PMD threads, DPDK's lcores
 * polling several ports, rust-vmm's one epoll loop over several vrings. A {@link QueueWorker} built with
 * {@link QueueWorker.Builder#group} has no thread of its own: the group gives it to the thread with the fewest queues,
 * and that thread runs one loop over all of its queues —
 *
 * <ul>
 * <li>rounds: each active queue gets at most one {@link QueueWorker.Handler#process} batch per round, so a flooding
 *     guest cannot starve another queue on the same thread (it waits at most one batch of each other queue);
 * <li>one idle strategy for all: when no queue has work left, spin (polling every queue's
 *     {@link QueueWorker.Handler#hasWork}) for the longest spin time any of them asked for (each bounded by
 *     {@link QueueWorker#MAX_SPIN_NANOS}), then let every queue re-enable notifications and unpin guest memory
 *     ({@link QueueWorker.Handler#prepareToSleep}) and sleep in one epoll set that holds every queue's kick and
 *     sources, plus the thread's own wake-up eventfd;
 * <li>per queue, QueueWorker's contract: a {@link Throwable} out of one handler fails that queue only (its log
 *     line, err eventfd and failure listener; its registrations leave the epoll set, its
 *     {@link QueueWorker.Handler#stopped}{@code (true)} runs) and the thread goes on with the others;
 *     {@link QueueWorker#stop(Duration)} of one queue detaches it at the next round, runs its
 *     {@code stopped(false)} on the loop thread and returns once the handler can no longer touch the ring; the
 *     stats are the queue's own.
 * </ul>
 *
 * <p>Queues attach and detach at any time (a frontend connects, resets, reconnects): the control thread registers
 * them ({@link QueueWorker.Builder#build}, which may fail with the epoll error) and the loop thread activates them
 * ({@link QueueWorker#start}) between rounds. Nothing on the data path allocates or takes a lock: the queue list is
 * the loop thread's own, changed only between rounds from a command queue.
 *
 * <p>A handler that blocks stalls every queue of its thread, so only non-blocking handlers belong in a group (the
 * virtio-net transmit queues: copy, switch, copy).
 */
public final class WorkerGroup implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(WorkerGroup.class.getName());
    /** Most queues one thread serves (the slot is kept in 15 bits of epoll's data). */
    static final int MAX_QUEUES_PER_THREAD = 4096;
    /** Most threads in a group. */
    public static final int MAX_THREADS = 256;

    private static final long WAKE = 0;
    private static final long KICK_BIT = 1L << 47;
    private static final int SLOT_SHIFT = 48;

    // Loop.call's operations and answers
    private static final int PROCESS = 0;
    private static final int HAS_WORK = 1;
    private static final int PREPARE = 2;
    private static final int KICK = 3;
    private static final int EVENT = 4;
    private static final int RECHECK = 5;
    private static final int NO = 0;
    private static final int YES = 1;
    private static final int RETIRED = -1;

    private final String name;
    private final Loop[] loops;
    private boolean closed;

    private WorkerGroup(String name, int threads) throws LinuxException {
        this.name = name;
        this.loops = new Loop[threads];
        try {
            for (int i = 0; i < threads; i++) {
                loops[i] = new Loop(name + " " + i);
            }
        } catch (LinuxException | RuntimeException e) {
            for (Loop l : loops) {
                if (l != null) {
                    l.closeResources();
                }
            }
            throw e;
        }
        for (Loop l : loops) {
            l.thread.start(); // asleep in epoll until a queue is attached
        }
    }

    /** Starts {@code threads} shared threads named "iovirt NAME i". */
    public static WorkerGroup create(String name, int threads) throws LinuxException {
        if (threads < 1 || threads > MAX_THREADS) {
            throw new IllegalArgumentException("a worker group has 1.." + MAX_THREADS + " threads: " + threads);
        }
        return new WorkerGroup(name, threads);
    }

    public String name() {
        return name;
    }

    public int threads() {
        return loops.length;
    }

    /** Queues attached to thread {@code i} (registered and not yet detached). */
    public int queues(int i) {
        return loops[i].load();
    }

    /** The thread with the fewest queues (the first of equals). */
    synchronized Loop pick() {
        if (closed) {
            throw new IllegalStateException("worker group " + name + " is closed");
        }
        Loop best = loops[0];
        for (Loop l : loops) {
            if (l.load() < best.load()) {
                best = l;
            }
        }
        return best;
    }

    /**
     * Stops every thread: queues still attached are stopped first ({@code stopped(false)} on their thread). Waits at
     * most {@link QueueWorker#STOP_TIMEOUT} per thread.
     */
    @Override
    public void close() {
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
        }
        for (Loop l : loops) {
            l.shutdown();
        }
        for (Loop l : loops) {
            try {
                l.thread.join(QueueWorker.STOP_TIMEOUT);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            if (l.thread.isAlive()) {
                LOG.log(
                        Level.ERROR,
                        "{0}: the thread did not stop within {1} ms; leaving it",
                        l.name,
                        QueueWorker.STOP_TIMEOUT.toMillis());
            } else {
                l.closeResources();
            }
        }
    }

    private static long data(int slot, long token) {
        return ((long) (slot + 1) << SLOT_SHIFT) | token;
    }

    /** One shared thread and its epoll set. */
    static final class Loop {
        private final String name;
        private final Thread thread;
        private final Epoll epoll;
        private final EventFd wake;
        /** Attach and stop requests, drained by the loop thread between rounds. */
        private final ConcurrentLinkedQueue<QueueWorker> toActivate = new ConcurrentLinkedQueue<>();

        private volatile boolean commands;
        private volatile boolean shuttingDown;
        // registered queues by slot; slots are handed out and freed under this lock (control path only)
        private final QueueWorker[] registered = new QueueWorker[MAX_QUEUES_PER_THREAD];
        private int registeredCount;
        // the loop thread's own: active queues in round order, and by slot for epoll dispatch
        private QueueWorker[] active = new QueueWorker[8];
        private int activeCount;
        private final QueueWorker[] bySlot = new QueueWorker[MAX_QUEUES_PER_THREAD];
        private long spinNanos;
        private int pollMillis = -1;

        Loop(String name) throws LinuxException {
            this.name = name;
            EventFd w = EventFd.create(true);
            try {
                this.epoll = Epoll.create(64);
            } catch (LinuxException | RuntimeException e) {
                w.close();
                throw e;
            }
            this.wake = w;
            try {
                epoll.add(w.fd(), Epoll.EPOLLIN, WAKE);
            } catch (LinuxException e) {
                closeResources();
                throw e;
            }
            this.thread = Thread.ofPlatform().name("iovirt " + name).daemon().unstarted(this::run);
        }

        synchronized int load() {
            return registeredCount;
        }

        boolean onLoopThread() {
            return Thread.currentThread() == thread;
        }

        /**
         * Reserves a slot for {@code w} and adds its kick and sources to the epoll set with no events (inert until
         * {@link #activate}): the epoll errors reach the caller that builds the worker.
         */
        int register(QueueWorker w) throws LinuxException {
            int slot;
            synchronized (this) {
                if (shuttingDown) {
                    throw new IllegalStateException("worker group thread " + name + " is stopping");
                }
                slot = -1;
                for (int i = 0; i < registered.length; i++) {
                    if (registered[i] == null) {
                        slot = i;
                        break;
                    }
                }
                if (slot < 0) {
                    throw new IllegalStateException(
                            name + " serves " + MAX_QUEUES_PER_THREAD + " queues already; use more threads");
                }
                registered[slot] = w;
                registeredCount++;
            }
            int added = 0;
            try {
                if (w.kick() != null) {
                    epoll.add(w.kick().fd(), 0, data(slot, KICK_BIT));
                    added++;
                }
                for (Object[] s : w.sources) {
                    epoll.add((Fd) s[0], 0, data(slot, (Long) s[2]));
                    added++;
                }
            } catch (LinuxException | RuntimeException e) {
                unregister(w, slot, added);
                throw e;
            }
            return slot;
        }

        /** Removes the first {@code count} registrations of {@code w} (kick, then sources) and frees its slot. */
        private void unregister(QueueWorker w, int slot, int count) {
            int i = 0;
            if (w.kick() != null && i++ < count) {
                quietDelete(w.kick().fd());
            }
            for (Object[] s : w.sources) {
                if (i++ >= count) {
                    break;
                }
                quietDelete((Fd) s[0]);
            }
            synchronized (w.watched) {
                for (Fd fd : w.watched) {
                    quietDelete(fd);
                }
                w.watched.clear();
            }
            synchronized (this) {
                registered[slot] = null;
                registeredCount--;
            }
        }

        private void quietDelete(Fd fd) {
            try {
                epoll.delete(fd);
            } catch (LinuxException | RuntimeException e) {
                // already closed (the kernel dropped it from the set) or never added: nothing left to remove
            }
        }

        /** A queue given up on ({@link QueueWorker#stopAndWait}) leaves the epoll set with its kick at once. */
        void unwatchKick(QueueWorker w) {
            quietDelete(w.kick().fd());
        }

        private int registrations(QueueWorker w) {
            return (w.kick() != null ? 1 : 0) + w.sources.size();
        }

        /** The worker's start(): the loop thread makes it part of its rounds before the next one. */
        void activate(QueueWorker w) {
            w.started = true;
            toActivate.add(w);
            poke();
        }

        private void poke() {
            commands = true;
            try {
                wake.signal();
            } catch (LinuxException e) {
                LOG.log(Level.WARNING, "{0}: cannot wake the thread: {1}", name, e.getMessage());
            }
        }

        void watch(QueueWorker w, Fd fd, int events, long token) throws LinuxException {
            epoll.add(fd, events, data(w.slot, token));
            synchronized (w.watched) {
                w.watched.add(fd); // removed when the queue detaches, so a reused slot never sees its events
            }
        }

        void modify(QueueWorker w, Fd fd, int events, long token) throws LinuxException {
            epoll.modify(fd, events, data(w.slot, token));
        }

        void unwatch(QueueWorker w, Fd fd) throws LinuxException {
            synchronized (w.watched) {
                w.watched.remove(fd);
            }
            epoll.delete(fd);
        }

        /**
         * {@link QueueWorker#stop(Duration)} of a queue on this thread (its stop flag is already set); a queue not let
         * go of in time is logged only when {@code report}.
         */
        boolean stop(QueueWorker w, Duration timeout, boolean report) {
            if (!w.running()) {
                return true; // failed, stopped before, or ended with the group
            }
            if (!w.started) { // built, never started: the loop never saw it
                if (w.running()) {
                    unregister(w, w.slot, registrations(w));
                    w.markEnded();
                }
                return true;
            }
            if (onLoopThread()) {
                // the loop thread cannot wait for itself: detached at the next round
                commands = true;
                return !w.running();
            }
            poke();
            boolean done;
            try {
                done = w.detached.await(timeout.toNanos(), TimeUnit.NANOSECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                done = !w.running();
            }
            if (!done && report) {
                LOG.log(
                        Level.ERROR,
                        "{0}: the shared thread {1} did not let go of the queue within {2} ms; leaving it",
                        w.name(),
                        name,
                        timeout.toMillis());
            }
            return done;
        }

        /** {@link QueueWorker#requestStop} of a queue on this thread (its stop flag is set): detached next round. */
        void requestStop(QueueWorker w) {
            if (w.started) {
                poke();
            }
        }

        void shutdown() {
            synchronized (this) {
                shuttingDown = true;
            }
            poke();
        }

        void closeResources() {
            if (epoll != null) {
                epoll.close();
            }
            if (wake != null) {
                wake.close();
            }
        }

        // ---- the loop thread ---------------------------------------------------------------------------------

        private void run() {
            try {
                loop();
            } catch (Throwable t) {
                // only the loop's own epoll_wait can get here (every handler call is caught per queue): fail every
                // queue it serves, each with its own log line and signals, rather than leave them unserved silently
                LOG.log(Level.ERROR, "{0}: the shared thread failed: {1}", name, t.toString());
                for (int i = activeCount - 1; i >= 0; i--) {
                    retire(active[i], t);
                }
            } finally {
                for (int i = activeCount - 1; i >= 0; i--) {
                    retire(active[i], null);
                }
                QueueWorker w;
                while ((w = toActivate.poll()) != null) { // started after the last round: end them too
                    finish(w, null);
                }
            }
        }

        private final IdleRecheck idleRecheck = new IdleRecheck();

        private void loop() throws Exception {
            for (; ; ) {
                if (commands) {
                    if (shuttingDown) {
                        return;
                    }
                    applyCommands();
                }
                // one round: at most one batch per queue
                boolean more = false;
                for (int i = 0; i < activeCount; i++) {
                    QueueWorker w = active[i];
                    w.stats().batches.increment();
                    int r = call(w, PROCESS, 0, 0);
                    if (r == RETIRED) {
                        i--; // retire moved the last queue into this place
                    } else if (r == YES) {
                        more = true;
                    }
                }
                if (more || commands) {
                    continue;
                }
                if (spinNanos > 0 && spin()) {
                    continue;
                }
                if (commands || !prepareToSleep()) {
                    continue;
                }
                for (int i = 0; i < activeCount; i++) {
                    active[i].stats().sleeps.increment();
                }
                int n = epoll.wait(idleRecheck.timeout(pollMillis));
                for (int i = 0; i < n; i++) {
                    dispatch(epoll.data(i), epoll.events(i));
                }
                if (idleRecheck.due(n)) {
                    for (int i = 0; i < activeCount; i++) {
                        if (call(active[i], RECHECK, 0, 0) == RETIRED) {
                            i--;
                        }
                    }
                }
            }
        }

        /** True when any queue found work while spinning (or a command arrived). */
        private boolean spin() {
            long end = System.nanoTime() + spinNanos;
            do {
                for (int i = 0; i < activeCount; i++) {
                    QueueWorker w = active[i];
                    int r = call(w, HAS_WORK, 0, 0);
                    if (r == YES) {
                        w.stats().spinHits.increment();
                    }
                    if (r != NO) {
                        return true;
                    }
                }
                Thread.onSpinWait();
            } while (System.nanoTime() - end < 0 && !commands);
            return commands;
        }

        /** Every queue re-enables notifications and unpins memory; false when one found work meanwhile. */
        private boolean prepareToSleep() {
            boolean sleep = true;
            for (int i = 0; i < activeCount; i++) {
                int r = call(active[i], PREPARE, 0, 0);
                if (r == RETIRED) {
                    i--;
                }
                if (r != NO) {
                    sleep = false;
                }
            }
            return sleep;
        }

        private void dispatch(long data, int events) throws LinuxException {
            if (data == WAKE) {
                wake.read();
                return;
            }
            int slot = (int) (data >>> SLOT_SHIFT) - 1;
            QueueWorker w = slot >= 0 && slot < bySlot.length ? bySlot[slot] : null;
            if (w == null) {
                return; // an event of a queue detached earlier in this batch
            }
            call(w, (data & KICK_BIT) != 0 ? KICK : EVENT, data & QueueWorker.MAX_TOKEN, events);
        }

        /**
         * One handler call for queue {@code w} ({@link #PROCESS}, {@link #HAS_WORK}, {@link #PREPARE}, {@link #KICK}
         * or {@link #EVENT}): {@link #YES} or {@link #NO} as the handler answered, {@link #RETIRED} when it threw —
         * the queue then fails (and is detached) and the thread goes on with the others.
         *
         * <p>The one place where the thread's failure policy meets guest memory faults. A SIGBUS in a truncated
         * memory file reaches Java as an InternalError that HotSpot delivers late, at the thread's next safepoint
         * poll; the handler may meanwhile have acted on the garbage the faulting load returned and thrown something
         * else. So the fault is surfaced ({@link Mmap#surfaceFaults}) at the end of the call and again first thing
         * in the handler, and a fault that surfaces there is caught by the outer try: either way it is charged to
         * this queue, never to the next queue of the round nor to the loop itself (measured in a C2-warmed loop whose
         * handler acts on the faulting load's value: with only the first fence, 5 of 24 runs delivered the fault
         * inside the handler's catch block, i.e. outside any try; with both, 0 of 32).
         */
        private int call(QueueWorker w, int op, long token, int events) {
            Throwable failure;
            try {
                try {
                    QueueWorker.Handler h = w.handler();
                    boolean yes = switch (op) {
                        case PROCESS -> h.process();
                        case HAS_WORK -> h.hasWork();
                        case PREPARE -> h.prepareToSleep();
                        case RECHECK -> {
                            h.recheck();
                            yield false;
                        }
                        case KICK -> {
                            w.kick().consume(); // never blocks for long; the next round looks at the ring
                            yield false;
                        }
                        default -> {
                            h.event(token, events);
                            yield false;
                        }
                    };
                    Mmap.surfaceFaults();
                    return yes ? YES : NO;
                } catch (Throwable t) {
                    Mmap.surfaceFaults(); // a fault that sent the handler down an error path: the real cause
                    failure = t;
                }
            } catch (InternalError fault) {
                failure = fault;
            }
            retire(w, failure);
            return RETIRED;
        }

        /** Between rounds: activate started queues, detach stopped ones, recompute the idle strategy. */
        private void applyCommands() {
            commands = false; // before draining: a command queued after this is seen at the next round
            QueueWorker w;
            while ((w = toActivate.poll()) != null) {
                if (w.stopRequested()) {
                    finish(w, null);
                    continue;
                }
                try {
                    if (w.kick() != null) {
                        epoll.modify(w.kick().fd(), Epoll.EPOLLIN, data(w.slot, KICK_BIT));
                    }
                    for (Object[] s : w.sources) {
                        epoll.modify((Fd) s[0], (Integer) s[1], data(w.slot, (Long) s[2]));
                    }
                } catch (Throwable t) {
                    finish(w, t);
                    continue;
                }
                if (activeCount == active.length) {
                    active = java.util.Arrays.copyOf(active, activeCount * 2); // control path, not per batch
                }
                active[activeCount++] = w;
                bySlot[w.slot] = w;
            }
            for (int i = 0; i < activeCount; i++) {
                if (active[i].stopRequested()) {
                    retire(active[i], null);
                    i--;
                }
            }
            idleStrategy();
        }

        private void idleStrategy() {
            long spin = 0;
            int poll = -1;
            for (int i = 0; i < activeCount; i++) {
                QueueWorker w = active[i];
                spin = Math.max(spin, w.spinNanos());
                int p = w.pollMillis();
                if (p > 0 && (poll < 0 || p < poll)) {
                    poll = p;
                }
            }
            spinNanos = spin;
            pollMillis = poll;
        }

        /**
         * Detaches active queue {@code w}: failed with {@code t}, or stopped when t is null. Moves the last active
         * queue into its place (the caller re-examines that index).
         */
        private void retire(QueueWorker w, Throwable t) {
            for (int i = 0; i < activeCount; i++) {
                if (active[i] == w) {
                    active[i] = active[--activeCount];
                    active[activeCount] = null;
                    break;
                }
            }
            bySlot[w.slot] = null;
            finish(w, t);
            idleStrategy();
        }

        /** Failure policy and stop of one queue, on the loop thread: it leaves the epoll set first. */
        private void finish(QueueWorker w, Throwable t) {
            unregister(w, w.slot, registrations(w));
            if (t != null) {
                w.failed(t);
            }
            try {
                w.handler().stopped(t != null);
            } catch (Throwable cleanup) {
                LOG.log(Level.ERROR, "{0}: cleaning up after the queue stopped: {1}", w.name(), cleanup.toString());
            }
            w.markEnded();
        }
    }
}
