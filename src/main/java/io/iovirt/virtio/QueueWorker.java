// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import io.iovirt.util.LogLimiter;
import java.lang.System.Logger.Level;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.atomic.LongAdder;

/**
 * The thread of one queue: the one event loop every data-path thread of iovirt runs (virtio-blk and virtio-net
 * queues, the switch ports' receive loops). A device implements only {@link Handler} — "process this queue" — and
 * the worker owns everything around it:
 *
 * <ul>
 * <li>a platform thread (it blocks in native calls, which would pin a virtual thread's carrier);
 * <li>its wake-up sources in one epoll set: a stop eventfd of its own, the frontend's kick eventfd (read with
 *     {@link EventFd#consume}, which a hostile frontend cannot make block for long), and any descriptors the device
 *     adds ({@link Builder#source}, {@link #watch});
 * <li>the idle strategy: sleep at once, or spin (polling {@link Handler#hasWork}) for a bounded time first
 *     ({@link Builder#spin}), or spin for a time that adapts to how soon work comes back ({@link
 *     Builder#adaptiveSpin}); spins and sleeps are counted ({@link #stats});
 * <li>batching: {@link Handler#process} does one batch and says whether work is left, and the worker calls it again
 *     before it considers sleeping — the stop source is checked between batches, so a flooding guest cannot keep
 *     the thread from stopping;
 * <li>the failure policy: any {@link Throwable} out of the handler (a {@link VirtqueueException}, a bug, an
 *     {@link InternalError} from a SIGBUS when a frontend truncated its memory file, an OutOfMemoryError) fails this
 *     queue only: one log line naming the queue (its name names the frontend/guest and the queue), the err eventfd
 *     signalled (QEMU logs "vhost vring error"), the device's {@link Builder#onFailure} listener called (it raises
 *     DEVICE_NEEDS_RESET). The process and every other queue go on.
 * <li>bounded stop: {@link #stop(Duration)} signals the stop eventfd and waits at most that long; {@link
 *     #stopAndWait} is the stop of a device that hands its ring back on return, which never returns while the thread
 *     still runs unless it says so.
 * </ul>
 *
 * <p>Guest memory is quiesced by reference, not by stopping: a virtqueue pins the memory snapshot it works from
 * ({@link io.iovirt.memory.GuestMemoryHolder.Reader}) and {@link RingHandler} unpins it before the thread sleeps,
 * so a memory table change never waits for or restarts a queue.
 *
 * <p>A worker either owns its thread (the default) or is served by a shared thread of a {@link WorkerGroup}
 * ({@link Builder#group}): the same handler contract, failure policy, stop bound and stats, but one thread round-robins
 * batches over many queues (OVS-DPDK's PMD threads, rust-vmm's one epoll loop over several vrings).
 *
 * <p>Models: rust-vmm vhost-user-backend's per-queue event loop, Cloud Hypervisor's EpollHelper and
 * spawn_virtio_thread, Agrona's AgentRunner with an IdleStrategy.
 */
public final class QueueWorker {
    private static final System.Logger LOG = System.getLogger(QueueWorker.class.getName());
    /** Longest spin allowed: spinning costs a core, so it is bounded whatever the configuration says. */
    public static final long MAX_SPIN_NANOS = 1_000_000_000L;
    /** The adaptive polling bound blk and net queues get by default: QEMU's iothreads' poll-max-ns default. */
    public static final long DEFAULT_ADAPTIVE_SPIN_NANOS = 32_000;
    /** Where adaptive polling starts when it begins to poll at all, and below which it stops polling. */
    public static final long ADAPTIVE_MIN_SPIN_NANOS = 4_000;

    /** Wait used by {@link #stop()}. */
    public static final Duration STOP_TIMEOUT = Duration.ofSeconds(3);

    /**
     * How long in all {@link #stopAndWait} waits for a queue thread that is still finishing the requests it took.
     * A guest can make that slow (a virtio-blk request may move seg_max × size_max, about 1 GiB, and a queue holds
     * hundreds); a frontend may make it endless (e.g. guest memory in a file whose page faults it does not answer).
     * Past this the device gives the queue up rather than hold its control thread (and the process's shutdown) for
     * ever.
     */
    public static final Duration STOP_WAIT_LIMIT = Duration.ofSeconds(30);

    /**
     * How long a worker sleeps after its queue last had work before it looks at the ring once more ({@link
     * Handler#recheck}); after that look it sleeps until woken. A driver that orders its own stores and loads of the
     * shared ring wrongly can miss our interrupt or skip its kick (the two sides' store-then-load handshakes both see
     * the other's old value), and the guest then waits for ever. QEMU's TCG with one vCPU is such a driver up to 8.0
     * (Debian 12 ships 7.2): it leaves out the guest's memory barriers when there is no other vCPU to order against, so
     * the host CPU may run the guest's load of used.idx ahead of its store of used_event (fixed in QEMU 8.1, "tcg: Do
     * not elide memory barriers for !CF_PARALLEL in system mode": I/O threads run in parallel too). Seen here
     * (scripts/without-kvm.sh, the disk demo looped with both cores also busy): the guest (TCG, -smp 1) stalled for
     * good in 2 of 17 runs, every request completed, no signal lost to a full eventfd, used.idx 16 past the used_event
     * it last wrote; with this recheck no run of 36 stalled, and it interrupted the guest 22 times in 16 of 30 runs
     * (ring states logged: used_event 16 and 6 behind); asking only where entries were returned silently since the
     * last interrupt, 44 of 44 runs, 10 rechecks in 8 of 24. Once per busy-to-idle transition it costs one wake-up,
     * and an interrupt only when entries were returned silently since the last one and the driver now asks for one
     * among them ({@link Virtqueue#driverMayBeWaiting}); a lost one costs the guest this long.
     */
    public static final int RECHECK_MILLIS = 250;

    private static final long STOP = Long.MIN_VALUE;
    private static final long KICK = Long.MIN_VALUE + 1;

    /**
     * What a device implements. All methods run on the worker thread, one at a time. Anything thrown fails the queue.
     */
    public interface Handler {
        /** The worker was built for this handler (before its thread starts). */
        default void attached(QueueWorker worker) {}

        /**
         * Does the work that is ready, at most one batch.
         *
         * @return true when work is left (the batch bound was reached): the worker calls again before sleeping
         */
        boolean process() throws Exception;

        /** A source the device registered became ready (its token and epoll events); {@link #process} follows. */
        default void event(long token, int events) throws Exception {}

        /** True when work is ready without a wake-up; spinning idle strategies poll this. */
        default boolean hasWork() throws Exception {
            return false;
        }

        /**
         * The worker is about to sleep: re-enable notifications and look again.
         *
         * @return true when work arrived meanwhile: do not sleep
         */
        default boolean prepareToSleep() throws Exception {
            return false;
        }

        /**
         * The queue had work, then slept {@link #RECHECK_MILLIS} ms without a wake-up: interrupt the driver once if it
         * may be waiting for one it missed. {@link #process} follows (a kick that never came is answered there).
         */
        default void recheck() throws Exception {}

        /**
         * The loop ended (stopped, or failed when {@code failed}): finish or abandon what is in flight (bounded), unpin
         * guest memory, release per-queue resources. Called exactly once, on the worker thread.
         */
        default void stopped(boolean failed) {}
    }

    /** Told once, on the worker thread, that the queue failed (after the log line and the err signal). */
    @FunctionalInterface
    public interface FailureListener {
        void failed(String reason);
    }

    /**
     * Counters readable from any thread (the control API, metrics). A device that restarts its queues on every
     * frontend connection passes one object per queue to each new worker ({@link Builder#stats}), so the counts run
     * on across reconnects, as the Prometheus counters made from them must.
     */
    public static final class Stats {
        /** Handler batches run. */
        public final LongAdder batches = new LongAdder();
        /** Times the thread slept in epoll. */
        public final LongAdder sleeps = new LongAdder();
        /** Times spinning found work before the spin time ran out (a sleep and a wake-up saved). */
        public final LongAdder spinHits = new LongAdder();
        /** Notifications to the driver that could not be delivered because its call eventfd was full. */
        public final LongAdder lostSignals = new LongAdder();
        /** Interrupts sent after an idle spell to a driver that may have missed one ({@link Handler#recheck}). */
        public final LongAdder recheckSignals = new LongAdder();

        /** The counters now. */
        public Totals totals() {
            return new Totals(batches.sum(), sleeps.sum(), spinHits.sum(), lostSignals.sum(), recheckSignals.sum());
        }
    }

    /**
     * A snapshot of {@link Stats}: what the idle strategy did. Batches per second against requests per second is the
     * batch size the queue runs at; every sleep cost the driver a kick and the backend a wake-up, every spin hit
     * saved both for a moment of polling.
     */
    public record Totals(long batches, long sleeps, long spinHits, long lostSignals, long recheckSignals) {
        /** For log lines: {@code "1200 batches, 3 sleeps, 0 spin hits"} (lost notifications when there are any). */
        @Override
        public String toString() {
            return batches + " batches, " + sleeps + " sleeps, " + spinHits + " spin hits"
                    + (lostSignals == 0 ? "" : ", " + lostSignals + " lost notifications")
                    + (recheckSignals == 0 ? "" : ", " + recheckSignals + " interrupts sent again after an idle spell");
        }
    }

    /** Builds and starts a worker. */
    public static final class Builder {
        private final String name;
        private EventFd kick;
        private EventFd err;
        private long spinNanos;
        private boolean adaptive;
        private int pollMillis = -1;
        private FailureListener onFailure = reason -> {};
        private LogLimiter failureLog;
        private final List<Object[]> sources = new ArrayList<>();
        private WorkerGroup group;
        private Stats stats;

        private Builder(String name) {
            this.name = Objects.requireNonNull(name);
        }

        /** The frontend's kick eventfd (may be null: the device polls, e.g. with {@link #spin}). */
        public Builder kick(EventFd kick) {
            this.kick = kick;
            return this;
        }

        /** The frontend's err eventfd, signalled when the queue fails (may be null). */
        public Builder err(EventFd err) {
            this.err = err;
            return this;
        }

        /** Spin up to {@code nanos} (at most {@link #MAX_SPIN_NANOS}) polling for work before sleeping; 0 sleeps at once. */
        public Builder spin(long nanos) {
            if (nanos < 0 || nanos > MAX_SPIN_NANOS) {
                throw new IllegalArgumentException("spin time must be 0.." + MAX_SPIN_NANOS + " ns: " + nanos);
            }
            this.spinNanos = nanos;
            this.adaptive = false;
            return this;
        }

        /**
         * Adaptive polling, at most {@code maxNanos} (≤ {@link #MAX_SPIN_NANOS}): the queue starts out sleeping at
         * once; when it slept and work came back within {@code maxNanos} of the ring running dry — so a longer poll
         * would have caught it without a kick — the next poll is longer (from {@link #ADAPTIVE_MIN_SPIN_NANOS},
         * doubling up to the bound); when the wait was longer than the bound, the poll halves (and stops below the
         * minimum). A busy queue whose driver pauses briefly between bursts polls through the pauses and takes no
         * kicks; an idle one costs no CPU. QEMU's iothreads poll the same way (poll-max-ns, 32 µs by default), as
         * KVM's halt polling does for vCPUs. On a shared thread ({@link #group}) the bound is used as a fixed spin.
         */
        public Builder adaptiveSpin(long maxNanos) {
            spin(maxNanos);
            this.adaptive = maxNanos > 0;
            return this;
        }

        /** {@link #adaptiveSpin} when {@code adaptive}, else {@link #spin}. */
        public Builder poll(long nanos, boolean adaptive) {
            return adaptive ? adaptiveSpin(nanos) : spin(nanos);
        }

        /**
         * Without a kick (the frontend asked for polling), wake every {@code millis} ms to look at the ring; -1
         * (the default) sleeps until a source fires.
         */
        public Builder pollEvery(int millis) {
            if (millis < -1 || millis == 0) {
                throw new IllegalArgumentException("poll interval must be -1 or positive: " + millis);
            }
            this.pollMillis = millis;
            return this;
        }

        public Builder onFailure(FailureListener listener) {
            this.onFailure = Objects.requireNonNull(listener);
            return this;
        }

        /**
         * Log the queue's failure through {@code lines}, the device's bucket for lines its frontend can repeat at will
         * (a frontend that breaks its ring and restarts it in a loop: one failure, one line, per worker), instead of
         * unconditionally.
         */
        public Builder failureLog(LogLimiter lines) {
            this.failureLog = Objects.requireNonNull(lines);
            return this;
        }

        /** Count into {@code s} (kept by the device across this queue's workers) instead of a new {@link Stats}. */
        public Builder stats(Stats s) {
            this.stats = Objects.requireNonNull(s);
            return this;
        }

        /**
         * Serve the queue on a shared thread of {@code group} (null: a thread of its own, the default). The group
         * picks the thread with the fewest queues when the worker is built.
         */
        public Builder group(WorkerGroup group) {
            this.group = group;
            return this;
        }

        /**
         * Another descriptor to wake on; the handler gets {@code token} (0..2^47-1: a shared thread keeps the queue's
         * slot in the upper bits of epoll's data) in {@link Handler#event}.
         */
        public Builder source(Fd fd, int events, long token) {
            checkToken(token);
            sources.add(new Object[] {fd, events, token});
            return this;
        }

        /** Creates the worker (its epoll set and stop eventfd) without starting it. */
        public QueueWorker build(Handler handler) throws LinuxException {
            return new QueueWorker(this, Objects.requireNonNull(handler));
        }

        /** Creates the worker and starts its thread. */
        public QueueWorker start(Handler handler) throws LinuxException {
            QueueWorker w = build(handler);
            w.start();
            return w;
        }
    }

    public static Builder builder(String name) {
        return new Builder(name);
    }

    /** Largest handler token. */
    static final long MAX_TOKEN = (1L << 47) - 1;

    private static void checkToken(long token) {
        if (token < 0 || token > MAX_TOKEN) {
            throw new IllegalArgumentException("tokens are 0.." + MAX_TOKEN + ": " + token);
        }
    }

    private final String name;
    private final Handler handler;
    private final EventFd err;
    private final long spinNanos;
    private final boolean adaptive;
    /** Adaptive polling: how long the next idle moment polls (0..spinNanos); written by the loop thread only. */
    private volatile long pollWindow;

    private final int pollMillis;
    private final FailureListener onFailure;
    /** The device's bucket for the failure line, or null: logged unconditionally. */
    private final LogLimiter failureLog;

    private final EventFd stopFd;
    private final Epoll epoll;
    private final Thread thread;
    private final Stats stats;
    private final EventFd kick;
    private volatile boolean stopRequested;
    /** When a stop was first asked for (System.nanoTime, never 0), 0 before: {@link #stopAndWait} counts from it. */
    private volatile long stopAskedAt;

    private volatile String failure;
    private volatile boolean ended;
    /** {@link #stopAndWait} gave up on the thread: the ring went back to the frontend while the thread still runs. */
    private volatile boolean givenUp;
    // shared mode: the group's thread that serves this queue, and the queue's slot on it (see WorkerGroup.Loop)
    private final WorkerGroup.Loop loop;
    final int slot;
    final List<Object[]> sources;
    /** Shared mode: counted down when the loop thread has detached the queue (stopped or failed). */
    final java.util.concurrent.CountDownLatch detached = new java.util.concurrent.CountDownLatch(1);

    volatile boolean started;
    /** Shared mode: descriptors the handler added with {@link #watch} (guarded by itself). */
    final List<Fd> watched = new ArrayList<>();
    /** What {@link #closeWhenEnded} was given (guarded by parkedLock); null once the thread has ended: closed. */
    private List<AutoCloseable> parked = new ArrayList<>();

    private final Object parkedLock = new Object();

    private QueueWorker(Builder b, Handler handler) throws LinuxException {
        this.name = b.name;
        this.handler = handler;
        this.err = b.err;
        this.spinNanos = b.spinNanos;
        this.adaptive = b.adaptive;
        this.stats = b.stats != null ? b.stats : new Stats();
        this.pollMillis = b.pollMillis;
        this.kick = b.kick;
        this.onFailure = b.onFailure;
        this.failureLog = b.failureLog;
        this.sources = List.copyOf(b.sources);
        if (b.group != null) {
            // shared: no thread, epoll set or stop eventfd of its own; the group registers kick and sources now
            // (inert until start()), so a descriptor the loop cannot watch fails here, where the caller can say so
            this.stopFd = null;
            this.epoll = null;
            this.thread = null;
            WorkerGroup.Loop l = b.group.pick();
            this.slot = l.register(this);
            this.loop = l;
            handler.attached(this);
            return;
        }
        this.loop = null;
        this.slot = -1;
        EventFd stop = EventFd.create(true);
        Epoll ep = null;
        try {
            ep = Epoll.create(16);
            ep.add(stop.fd(), Epoll.EPOLLIN, STOP);
            if (b.kick != null) {
                // Level-triggered and read, as libvhost-user and rust-vmm do. (An edge-triggered, never-read kick was
                // tried: the reboot guest test failed with it in three runs and passed level-triggered; not
                // root-caused, so the conventional way stays.)
                ep.add(b.kick.fd(), Epoll.EPOLLIN, KICK);
            }
            for (Object[] s : b.sources) {
                ep.add((Fd) s[0], (Integer) s[1], (Long) s[2]);
            }
        } catch (LinuxException | RuntimeException e) {
            if (ep != null) {
                ep.close();
            }
            stop.close();
            throw e;
        }
        this.stopFd = stop;
        this.epoll = ep;
        this.thread = Thread.ofPlatform().name("iovirt " + name).daemon().unstarted(this::run);
        handler.attached(this);
    }

    public void start() {
        if (loop != null) {
            loop.activate(this);
        } else {
            thread.start();
        }
    }

    // ---- what a group's loop thread uses (shared mode) ----------------------------------------------------------

    Handler handler() {
        return handler;
    }

    EventFd kick() {
        return kick;
    }

    long spinNanos() {
        return spinNanos;
    }

    int pollMillis() {
        return pollMillis;
    }

    /** A stop was asked for: a handler stops taking new requests and finishes those it took. */
    public boolean stopRequested() {
        return stopRequested;
    }

    /**
     * {@link #stopAndWait} gave up on the thread: the ring position went back to the frontend while the thread still
     * runs, so it may only finish what it had taken ({@link Virtqueue#servedBy}).
     */
    public boolean givenUp() {
        return givenUp;
    }

    /** The loop thread detached the queue: nothing of it runs any more. */
    void markEnded() {
        closeParked();
        ended = true;
        detached.countDown();
    }

    /** The failure policy, for the loop thread of a group (one log line, err, the listener). */
    void failed(Throwable t) {
        fail(t);
    }

    /** The name used in log lines, e.g. {@code "blk /run/vm1.sock q0"}. */
    public String name() {
        return name;
    }

    /** Why the queue failed, or null. */
    public String failure() {
        return failure;
    }

    /** True until the loop has ended (stopped or failed). */
    public boolean running() {
        return !ended;
    }

    public Stats stats() {
        return stats;
    }

    /** True when called on this worker's thread (in shared mode: the group thread that serves it). */
    public boolean onWorkerThread() {
        return loop != null ? loop.onLoopThread() : Thread.currentThread() == thread;
    }

    /** True when a shared thread of a {@link WorkerGroup} serves this queue. */
    public boolean shared() {
        return loop != null;
    }

    /** Adds a descriptor to wake on (any thread; the handler sees {@code token} in {@link Handler#event}). */
    public void watch(Fd fd, int events, long token) throws LinuxException {
        checkToken(token);
        if (loop != null) {
            loop.watch(this, fd, events, token);
        } else {
            epoll.add(fd, events, token);
        }
    }

    /** Changes the events watched for {@code fd}. */
    public void modify(Fd fd, int events, long token) throws LinuxException {
        checkToken(token);
        if (loop != null) {
            loop.modify(this, fd, events, token);
        } else {
            epoll.modify(fd, events, token);
        }
    }

    /** Stops watching {@code fd} (before closing it). */
    public void unwatch(Fd fd) throws LinuxException {
        if (loop != null) {
            loop.unwatch(this, fd);
        } else {
            epoll.delete(fd);
        }
    }

    /**
     * Tells the driver about used buffers through its call eventfd, never blocking: a full counter (or one the
     * frontend made blocking and full, which the eventfd watchdog ends) is counted and reported as the frontend's
     * fault by a rate-limited line, and the queue goes on.
     */
    public void signal(EventFd call) throws LinuxException {
        if (call != null && !call.trySignal()) {
            stats.lostSignals.increment();
            long now = System.nanoTime();
            if (lastSignalLog == 0 || now - lastSignalLog > 5_000_000_000L) { // a hostile frontend cannot flood the log
                lastSignalLog = now | 1;
                LOG.log(
                        Level.WARNING,
                        "{0}: the frontend''s call eventfd is full or was made blocking; interrupts"
                                + " dropped ({1} so far)",
                        name,
                        stats.lostSignals.sum());
            }
        }
    }

    private long lastSignalLog;

    /**
     * {@link Handler#recheck} of a device on one virtqueue: interrupts the driver again if it may be waiting for an
     * interrupt it missed ({@link Virtqueue#driverMayBeWaiting}), and counts it.
     */
    public void recheck(Virtqueue queue, EventFd call) throws VirtqueueException, LinuxException {
        if (queue.driverMayBeWaiting()) {
            stats.recheckSignals.increment();
            LOG.log(Level.DEBUG, "{0}: interrupting the driver again after an idle spell", name);
            signal(call);
        }
    }

    private void run() {
        boolean failed = false;
        try {
            Throwable failure;
            try {
                try {
                    loop();
                    failure = null;
                } catch (Throwable t) {
                    Mmap.surfaceFaults(); // a memory fault that sent the handler down an error path is the cause
                    failure = t;
                }
            } catch (InternalError fault) { // see WorkerGroup's call: HotSpot delivers it late
                failure = fault;
            }
            if (failure != null) {
                failed = true;
                fail(failure);
            }
        } finally {
            try {
                handler.stopped(failed);
            } catch (Throwable t) {
                LOG.log(Level.ERROR, "{0}: cleaning up after the queue stopped: {1}", name, t.toString());
            }
            closeParked(); // nothing of this thread uses them any more
            ended = true;
        }
    }

    private final IdleRecheck idleRecheck = new IdleRecheck();

    private void loop() throws Exception {
        for (; ; ) {
            // Work made available before the first wake-up (a reconnect, a restart) is served at once; the stop
            // request is looked at after each batch, so a flooding guest cannot keep the thread from stopping.
            stats.batches.increment();
            boolean more = handler.process();
            if (stopRequested) {
                return;
            }
            if (more) {
                continue;
            }
            long window = adaptive ? pollWindow : spinNanos;
            long idleSince = adaptive ? System.nanoTime() : 0;
            if (window > 0 && spin(window)) {
                continue; // polled long enough: no kick, no wake-up
            }
            if (stopRequested) {
                return;
            }
            if (handler.prepareToSleep()) {
                continue;
            }
            stats.sleeps.increment();
            int n = epoll.wait(idleRecheck.timeout(pollMillis));
            if (adaptive) {
                adapt(System.nanoTime() - idleSince);
            }
            if (idleRecheck.due(n)) {
                handler.recheck();
            }
            for (int i = 0; i < n; i++) {
                long token = epoll.data(i);
                if (token == STOP) {
                    stopRequested = true;
                } else if (token == KICK) {
                    kick.consume(); // never blocks for long, see EventFd.consume; process() below looks at the ring
                } else {
                    handler.event(token, epoll.events(i));
                }
            }
        }
    }

    /**
     * Adaptive polling after a sleep: the ring ran dry {@code idleNanos} ago. Work that came back within the bound
     * would have been caught by a longer poll, so poll longer next time; work that took longer than the bound could
     * not have been, so poll less.
     */
    private void adapt(long idleNanos) {
        long w = pollWindow;
        if (idleNanos <= w) {
            return;
        }
        if (idleNanos > spinNanos) {
            w /= 2;
            pollWindow = w < ADAPTIVE_MIN_SPIN_NANOS ? 0 : w;
        } else {
            pollWindow = w == 0 ? Math.min(ADAPTIVE_MIN_SPIN_NANOS, spinNanos) : Math.min(spinNanos, w * 2);
        }
    }

    /** Adaptive polling: how long the worker polls the next time its ring runs dry (0: it sleeps at once). */
    public long pollWindowNanos() {
        return pollWindow;
    }

    private boolean spin(long nanos) throws Exception {
        long end = System.nanoTime() + nanos;
        do {
            if (handler.hasWork()) {
                stats.spinHits.increment();
                return true;
            }
            Thread.onSpinWait();
        } while (System.nanoTime() - end < 0 && !stopRequested);
        return false;
    }

    /** Fails the queue (any thread may call it for the worker's queue, e.g. a device that noticed a broken ring). */
    private void fail(Throwable t) {
        String why = describe(t);
        if (failureLog != null) {
            failureLog.log(Level.ERROR, name + ": " + why + "; queue stopped until the driver resets the device");
        } else {
            LOG.log(Level.ERROR, "{0}: {1}; queue stopped until the driver resets the device", name, why);
        }
        if (!(t instanceof VirtqueueException) && !(t instanceof LinuxException) && !(t instanceof InternalError)) {
            LOG.log(Level.DEBUG, name + ": failure", t);
        }
        if (err != null) {
            try {
                err.trySignal(); // QEMU reports "vhost vring error" for the queue
            } catch (LinuxException | RuntimeException ignored) {
                // the frontend closed or broke its err fd: the log line above is all we can do
            }
        }
        try {
            onFailure.failed(why);
        } catch (Throwable listenerFailure) {
            LOG.log(Level.ERROR, "{0}: reporting the failure: {1}", name, listenerFailure.toString());
        }
        failure = why; // last: whoever sees it also sees what the listener recorded
    }

    /** One line for the log: what went wrong, in terms of the guest or frontend when it is theirs. */
    public static String describe(Throwable t) {
        if (t instanceof VirtqueueException) {
            return t.getMessage();
        }
        if (t instanceof InternalError) {
            return "guest memory access faulted (" + t.getMessage()
                    + "): the frontend truncated or unmapped its memory file";
        }
        if (t instanceof LinuxException) {
            return "cannot wait for work: " + t.getMessage();
        }
        if (t instanceof OutOfMemoryError) {
            return "out of memory: " + t.getMessage();
        }
        if (t instanceof Exception && !(t instanceof RuntimeException)) {
            return t.getMessage(); // a device's checked exception: its message explains the guest's fault
        }
        return "internal error: " + t;
    }

    /**
     * Stops the loop and waits at most {@code timeout} for the thread to end. On true the handler's
     * {@link Handler#stopped} has run: nothing of this queue touches the ring or guest memory any more.
     *
     * @return false when the thread did not end in time (it is stuck in a native call: its guest memory stays
     *         pinned, so nothing is unmapped under it; the caller reports it)
     */
    public boolean stop(Duration timeout) {
        return stop(timeout, true);
    }

    /**
     * Asks the loop to stop and returns at once: it ends after its current batch, the handler completing what it
     * took. For a device that stops several queues together (a disconnect, a reset): it asks each first and then
     * waits for each with {@link #stopAndWait}, whose bound counts from the first request — so N queues a frontend
     * holds up cost one bound, not N in a row. Not from the worker's own thread; nothing once the loop has ended.
     */
    public void requestStop() {
        if (stopAskedAt == 0) {
            stopAskedAt = System.nanoTime() | 1;
        }
        stopRequested = true;
        if (!running()) {
            return;
        }
        if (loop != null) {
            loop.requestStop(this);
            return;
        }
        try {
            stopFd.signal();
        } catch (LinuxException e) {
            LOG.log(Level.WARNING, "{0}: cannot wake the queue thread: {1}", name, e.getMessage());
        }
    }

    /** {@link #stop(Duration)}, with its log line when the thread did not end only when {@code report}. */
    private boolean stop(Duration timeout, boolean report) {
        if (loop != null) {
            stopRequested = true;
            return loop.stop(this, timeout, report);
        }
        requestStop();
        boolean interrupted = false;
        long deadline = System.nanoTime() + timeout.toNanos();
        try {
            while (thread.isAlive()) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    break;
                }
                try {
                    thread.join(Duration.ofNanos(left));
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
        } finally {
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
        if (thread.isAlive() && thread.getState() != Thread.State.NEW) {
            if (report) {
                LOG.log(
                        Level.ERROR,
                        "{0}: the queue thread did not stop within {1} ms; leaving it",
                        name,
                        timeout.toMillis());
            }
            return false;
        }
        epoll.close();
        stopFd.close();
        closeParked(); // a thread that never started (its own end closes them otherwise)
        return true;
    }

    /** {@link #stop(Duration)} with {@link #STOP_TIMEOUT}. */
    public boolean stop() {
        return stop(STOP_TIMEOUT);
    }

    /**
     * The stop of a device that hands its ring back when it returns (vhost-user's GET_VRING_BASE): returning while
     * the thread still runs would hand back a ring position that still moves and let a second worker start on the
     * same ring. Stops the loop (it ends after its current batch, and the handler completes what it took) and waits
     * for the thread: after {@link #STOP_TIMEOUT} with one warning line naming the queue, up to {@code limit} in all,
     * both counted from the first stop request ({@link #requestStop}: queues stopped together share one bound). Not
     * from the worker's own thread.
     *
     * @return true when the thread ended: {@link Handler#stopped} has run and nothing of this queue touches the ring
     *         or guest memory any more. False when it still runs after {@code limit}: the caller keeps the queue (no
     *         other worker on its ring, the resources it uses held), fails the device and says so; {@link #reap}
     *         tells later whether the thread has ended since.
     */
    public boolean stopAndWait(Duration limit) {
        if (onWorkerThread()) {
            throw new IllegalStateException(name + ": a queue thread cannot wait for its own stop");
        }
        boolean interrupted = Thread.interrupted(); // a pending interrupt would end every wait at once
        requestStop();
        long start = stopAskedAt;
        long deadline = start + limit.toNanos();
        try {
            Duration first = STOP_TIMEOUT.compareTo(limit) < 0 ? STOP_TIMEOUT : limit;
            if (stop(Duration.ofNanos(Math.max(0, start + first.toNanos() - System.nanoTime())), false)) {
                return true;
            }
            interrupted |= Thread.interrupted();
            LOG.log(
                    Level.WARNING,
                    "{0}: the queue thread has not stopped within {1} ms: it finishes the requests it took first"
                            + " (a slow disk, or very large requests); the queue is not handed back before it has"
                            + " (waiting up to {2} s in all)",
                    name,
                    Long.toString(first.toMillis()),
                    Long.toString(limit.toSeconds()));
            for (; ; ) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    givenUp = true;
                    unwatchKick();
                    return false;
                }
                if (stop(Duration.ofNanos(left), false)) {
                    LOG.log(
                            Level.WARNING,
                            "{0}: the queue thread stopped after {1} ms",
                            name,
                            Long.toString((System.nanoTime() - start) / 1_000_000));
                    return true;
                }
                interrupted |= Thread.interrupted();
            }
        } finally {
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /**
     * A worker given up on stops watching its kick: its thread does not wait for work any more, and the descriptor's
     * owner may point the number at another file ({@link Fd#replaceWith}) — epoll keys a registration by file and
     * number, so the old file's registration would otherwise stay in the set (a shared thread's, under a slot another
     * queue may get next) for as long as the frontend keeps that file, and wake the thread with its kicks.
     */
    private void unwatchKick() {
        if (kick == null) {
            return;
        }
        if (loop != null) {
            loop.unwatchKick(this);
            return;
        }
        try {
            epoll.delete(kick.fd());
        } catch (LinuxException | RuntimeException e) {
            // closed by its owner already (the kernel dropped it from the set with its last reference) or not added
        }
    }

    /**
     * For a worker {@link #stopAndWait} gave up on: takes over {@code resources} its thread may still use and closes
     * them once that thread has ended (or a shared thread has let go of the queue) — at once when it has already. The
     * vhost-user layer hands over the ring's kick, call and err descriptors this way, each number pointed at an
     * eventfd of its own first: closed earlier, a number could be reused by an unrelated open (another guest's image
     * file or socket) while the thread still reads or writes 8 bytes through it.
     */
    public void closeWhenEnded(List<? extends AutoCloseable> resources) {
        synchronized (parkedLock) {
            if (parked != null) {
                parked.addAll(resources);
                return;
            }
        }
        closeAll(resources);
    }

    /** The thread has ended: what {@link #closeWhenEnded} was given is closed, once. */
    private void closeParked() {
        List<AutoCloseable> list;
        synchronized (parkedLock) {
            list = parked;
            parked = null;
        }
        if (list != null) {
            closeAll(list);
        }
    }

    private void closeAll(List<? extends AutoCloseable> resources) {
        for (AutoCloseable r : resources) {
            try {
                r.close();
            } catch (Exception e) {
                LOG.log(Level.WARNING, "{0}: closing {1} after the queue thread ended: {2}", name, r, e.toString());
            }
        }
    }

    /**
     * For a worker {@link #stopAndWait} gave up on: true once its thread has ended (its resources are then released,
     * as a stop that succeeded releases them), false while it still runs. Does not wait.
     */
    public boolean reap() {
        return stop(Duration.ZERO, false);
    }

    @Override
    public String toString() {
        return "QueueWorker[" + name + (failure != null ? ", failed: " + failure : "") + "]";
    }
}
