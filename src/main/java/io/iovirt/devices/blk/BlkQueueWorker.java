package io.iovirt.devices.blk;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.Errno;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.lang.System.Logger.Level;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * The thread that serves one virtio-blk queue: waits for kicks, drains the ring with kicks suppressed, completes
 * requests and interrupts the driver only when it asked (EVENT_IDX or flags), once per batch.
 *
 * <p>Two ways to serve, chosen when the queue starts:
 * <ul>
 * <li>synchronously: the thread blocks in epoll on the kick eventfd, and each request's preadv/pwritev/fdatasync
 *     runs on it before the next is popped;
 * <li>through an io_uring: up to queue-size requests in flight at once. Each in-flight request owns a slot (its
 *     chain object, its iovec array; all preallocated), its I/O goes straight between the image and the guest
 *     buffers, and completions, in whatever order the kernel finishes them, are pushed as they are reaped. The kick
 *     and stop eventfds are polled through the same ring, so one io_uring_enter per wake-up both submits the new
 *     requests and sleeps until the next completion, kick or stop. (The kick counter is never read in this mode:
 *     only the wake-ups matter, a 64-bit counter does not overflow, and QEMU's kick eventfds are non-blocking,
 *     which a ring read would turn into a stream of -EAGAIN completions.) A FLUSH is an asynchronous fdatasync: it covers
 *     the writes completed before it was submitted, which includes every write already pushed to the used ring —
 *     all that VIRTIO 1.2 §5.2.6 asks; writes still in flight are not waited for.
 * </ul>
 *
 * <p>A platform thread: it blocks in native calls, which would pin a virtual thread's carrier. It is stopped through
 * its own eventfd, since interrupting a thread does not break a native call. Before the thread ends, every request
 * in flight has completed and been pushed, and the ring's poll of the kick eventfd is cancelled, so when {@link #stop()} returns the ring position is final and no I/O
 * still targets guest memory.
 */
final class BlkQueueWorker implements Runnable {
    private static final System.Logger LOG = System.getLogger(BlkQueueWorker.class.getName());
    private static final long KICK = 0;
    private static final long STOP = 1;
    /** Ring operations besides the requests: the kick poll, the stop poll and a cancel. */
    private static final int CONTROL_OPS = 3;

    private final String name;
    private final Virtqueue queue;
    private final BlkQueueHandler handler;
    private final EventFd kick;
    private final EventFd call;
    private final EventFd err;
    private final BlkStats stats;
    private final EventFd stopFd;
    private final Thread thread;
    private volatile String failure;

    // synchronous mode only
    private final Epoll epoll;

    // io_uring mode only (ring == null: synchronous)
    private final IoUring ring;
    /** Owns the slots' iovec arrays, the bounce buffer and the eventfd read buffers; touched only where used. */
    private final Arena slotArena;
    private final BlkQueueHandler.Request[] slots;
    private final int[] freeSlots;
    private int freeCount;
    /** Requests whose I/O the ring holds (submitted or queued, not yet reaped). */
    private int ringRequests;
    /** User data of the control operations: after the slot indices. */
    private final long kickPoll;
    private final long stopPoll;
    private final long cancelKick;
    private boolean kickArmed;
    private boolean cancelPending;
    private boolean stopRequested;
    private String controlError;
    private final IoUring.CompletionHandler<VirtqueueException> onCompletion = this::completion;

    /**
     * A queue served synchronously.
     *
     * @param name identifies the device and queue in log lines, e.g. {@code "blk /run/vub.sock q0"}
     * @param call may be null when the driver polls
     * @param err  may be null; signalled when the queue fails
     */
    BlkQueueWorker(String name, Virtqueue queue, BlkQueueHandler handler, EventFd kick, EventFd call, EventFd err,
                   BlkStats stats) throws LinuxException {
        this(name, queue, handler, kick, call, err, stats, null);
    }

    /**
     * A queue served through {@code ring} when it is not null; the worker owns the ring from now on (closes it when
     * the thread ends). The ring needs {@link #ringEntries} SQ entries for the queue size.
     */
    BlkQueueWorker(String name, Virtqueue queue, BlkQueueHandler handler, EventFd kick, EventFd call, EventFd err,
                   BlkStats stats, IoUring ring) throws LinuxException {
        this.name = name;
        this.queue = queue;
        this.handler = handler;
        this.kick = kick;
        this.call = call;
        this.err = err;
        this.stats = stats;
        this.ring = ring;
        int n = queue.size();
        this.kickPoll = n;
        this.stopPoll = n + 1L;
        this.cancelKick = n + 2L;
        EventFd stop = null;
        Epoll ep = null;
        Arena arena = null;
        try {
            stop = EventFd.create(true);
            if (ring == null) {
                ep = Epoll.create(2);
                ep.add(kick.fd(), Epoll.EPOLLIN, KICK);
                ep.add(stop.fd(), Epoll.EPOLLIN, STOP);
                this.slots = null;
                this.freeSlots = null;
            } else {
                if (ring.sqEntries() < ringEntries(n) || ring.capacity() < ringEntries(n)) {
                    throw new IllegalArgumentException(ring + " is too small for a queue of " + n);
                }
                arena = Arena.ofShared();
                this.slots = newSlots(queue, handler, arena);
                this.freeSlots = new int[n];
                for (int i = 0; i < n; i++) {
                    freeSlots[i] = n - 1 - i;
                }
                this.freeCount = n;
            }
        } catch (LinuxException | RuntimeException e) {
            for (AutoCloseable c : new AutoCloseable[] {ep, stop, arena, ring}) {
                closeQuietly(c);
            }
            throw e;
        }
        this.stopFd = stop;
        this.epoll = ep;
        this.slotArena = arena;
        this.thread = Thread.ofPlatform().name("iovirt-" + name).daemon().unstarted(this);
    }

    /** SQ entries a ring needs to serve a queue of {@code queueSize}: one per request, plus the control polls. */
    static int ringEntries(int queueSize) {
        return queueSize + CONTROL_OPS;
    }

    private static BlkQueueHandler.Request[] newSlots(Virtqueue queue, BlkQueueHandler handler, Arena arena)
            throws LinuxException {
        int n = queue.size();
        BlkLimits limits = handler.limits();
        int iovEntries = Math.min(limits.segMax(), IoVec.IOV_MAX);
        long iovBytes = IoVec.bytes(iovEntries);
        // One mapping for all iovec arrays: a 4 KiB request touches one page of its slot's 16 KiB array.
        MemorySegment iovs = Mmap.anonymous(iovBytes * n, arena);
        MemorySegment bounce = handler.image().direct()
                ? Mmap.anonymous(Math.max(limits.bounceBytes(), handler.image().blockSize()), arena) : null;
        BlkQueueHandler.Request[] slots = new BlkQueueHandler.Request[n];
        for (int i = 0; i < n; i++) {
            IoVec iov = IoVec.over(iovs.asSlice(i * iovBytes, iovBytes));
            slots[i] = new BlkQueueHandler.Request(i, queue.newChain(), handler.image().newContext(iov, bounce));
        }
        return slots;
    }

    void start() {
        thread.start();
    }

    /** Why the queue stopped serving requests, or null. */
    String failure() {
        return failure;
    }

    /** True when requests go through an io_uring. */
    boolean asynchronous() {
        return ring != null;
    }

    @Override
    public void run() {
        try {
            if (ring == null) {
                runSynchronously();
            } else {
                runAsynchronously();
            }
        } catch (LinuxException e) {
            fail("cannot wait for kicks or completions: " + e.getMessage());
        } catch (RuntimeException | InternalError e) {
            // InternalError: the frontend shrank a file we had mapped (SIGBUS caught by the JVM). This queue stops;
            // the process and the other devices go on.
            LOG.log(Level.ERROR, name + ": internal error", e);
            fail("internal error: " + e);
        } finally {
            if (ring != null) {
                quiesce();
                ring.close();
                for (BlkQueueHandler.Request r : slots) {
                    r.io.close();
                }
                slotArena.close();
            }
            handler.close();
        }
    }

    // ---- synchronous --------------------------------------------------------------------------------------------

    private void runSynchronously() throws LinuxException {
        serve(); // requests made available before the first kick (e.g. after a reconnect) are served at once
        for (;;) {
            int n = epoll.wait(-1);
            for (int i = 0; i < n; i++) {
                if (epoll.data(i) == STOP) {
                    return;
                }
                kick.read();
            }
            if (n > 0 && failure == null) {
                serve();
            }
        }
    }

    /** Serves everything available; re-checks after enabling kicks so a request published meanwhile is not lost. */
    private void serve() throws LinuxException {
        if (failure != null) {
            return;
        }
        try {
            queue.disableNotifications();
            do {
                DescriptorChain c;
                while ((c = queue.pop()) != null) {
                    long written = handler.process(c);
                    String why = handler.lastError();
                    if (why != null) {
                        logRequestError(why);
                    }
                    queue.push(c, written);
                }
                if (call != null) {
                    queue.notifyIfNeeded(call::signal);
                }
            } while (queue.enableNotifications());
        } catch (VirtqueueException | BlkQueueHandler.UnanswerableRequest e) {
            fail(e.getMessage());
        }
    }

    // ---- io_uring ---------------------------------------------------------------------------------------------

    private void runAsynchronously() throws LinuxException {
        ring.poll(stopFd.fd(), Epoll.EPOLLIN, stopPoll);
        armKick();
        serveAsynchronously(); // requests made available before the first kick (e.g. after a reconnect)
        while (!stopRequested) {
            // The one system call per wake-up: hands over what the last batch queued, sleeps until something is done.
            ring.submitAndWait(1);
            reap();
            if (controlError != null) {
                fail(controlError);
                return;
            }
            if (!kickArmed && !stopRequested) {
                armKick();
            }
            if (failure == null && !stopRequested) {
                serveAsynchronously();
            }
        }
        // Stopping: requests in flight complete and are pushed; nothing new is popped.
        while (ringRequests > 0) {
            ring.submitAndWait(1);
            reap();
        }
        if (failure == null) {
            try {
                notifyDriver();
            } catch (VirtqueueException e) {
                fail(e.getMessage());
            }
        }
    }

    private void armKick() {
        ring.pollMultishot(kick.fd(), Epoll.EPOLLIN, kickPoll);
        kickArmed = true;
    }

    /** Takes every completion; a ring rule broken while pushing fails the queue (its other requests are dropped). */
    private void reap() {
        try {
            ring.reap(onCompletion);
        } catch (VirtqueueException e) {
            fail(e.getMessage());
        }
    }

    /**
     * Pops and queues new requests while slots are free, pushes those that need no I/O, and interrupts the driver
     * once for everything pushed since the last wake-up. With every slot busy, kicks stay suppressed: the next
     * completion brings us back. Queued I/O reaches the kernel with the next io_uring_enter.
     */
    private void serveAsynchronously() throws LinuxException {
        try {
            queue.disableNotifications();
            for (;;) {
                while (freeCount > 0) {
                    BlkQueueHandler.Request r = slots[freeSlots[freeCount - 1]];
                    if (!queue.pop(r.chain)) {
                        break;
                    }
                    freeCount--;
                    if (handler.start(r) != BlkQueueHandler.DONE && handler.submit(r, ring)) {
                        ringRequests++;
                    } else {
                        complete(r);
                    }
                }
                if (freeCount == 0 || !queue.enableNotifications()) {
                    break;
                }
                queue.disableNotifications();
            }
            notifyDriver();
        } catch (VirtqueueException | BlkQueueHandler.UnanswerableRequest e) {
            fail(e.getMessage());
        }
    }

    private void completion(long userData, int result, int flags) throws VirtqueueException {
        if (userData < slots.length) {
            BlkQueueHandler.Request r = slots[(int) userData];
            ringRequests--;
            if (failure != null) { // a failed queue cannot push: the request is dropped once its I/O is over
                r.io.clear();
                return;
            }
            handler.completed(r, result);
            complete(r);
        } else if (userData == kickPoll) {
            if ((flags & IoUring.CQE_F_MORE) == 0) {
                kickArmed = false; // ended: cancelled, failed, or ended by the kernel (re-armed by the loop)
                if (result < 0 && result != -Errno.ECANCELED) {
                    controlError = "cannot poll the kick eventfd: "
                            + IoUring.error(IoUring.OP_POLL_ADD, result, kick.toString()).getMessage();
                }
            }
        } else if (userData == stopPoll) {
            stopRequested = true;
            if (result < 0) {
                LOG.log(Level.ERROR, "{0}: polling the stop eventfd failed ({1}); stopping", name, Errno.name(-result));
            }
        } else if (userData == cancelKick) {
            cancelPending = false;
        }
    }

    private void complete(BlkQueueHandler.Request r) throws VirtqueueException {
        long written = handler.finish(r);
        if (r.error != null) {
            logRequestError(r.error);
        }
        freeSlots[freeCount++] = r.slot;
        queue.push(r.chain, written);
    }

    private void notifyDriver() throws LinuxException, VirtqueueException {
        if (call != null) {
            queue.notifyIfNeeded(call::signal);
        }
    }

    /**
     * Before the ring goes away: waits until the kernel is done with every request (their buffers are guest memory
     * that may be unmapped once we return; a failed queue drops them) and cancels the kick poll, so nothing of this
     * ring still watches the kick eventfd when a successor starts on it.
     */
    private void quiesce() {
        try {
            while (ringRequests > 0) {
                ring.submitAndWait(1);
                ring.reap(onCompletion);
            }
            if (kickArmed) {
                ring.cancel(kickPoll, cancelKick);
                cancelPending = true;
            }
            while (kickArmed || cancelPending) {
                ring.submitAndWait(1);
                ring.reap(onCompletion);
            }
        } catch (LinuxException | VirtqueueException | RuntimeException e) {
            // Closing the ring makes the kernel cancel or finish what is left; their pages stay pinned until then.
            LOG.log(Level.ERROR, "{0}: cannot wait for {1} requests in flight: {2}", name, ringRequests, e.getMessage());
        }
    }

    // ---- common -------------------------------------------------------------------------------------------------

    /** A broken ring: this queue stops (the device needs a reset); the process and other queues go on. */
    private void fail(String why) {
        failure = why;
        stats.queueFailures.increment();
        LOG.log(Level.ERROR, "{0}: {1}; queue stopped until the driver resets the device", name, why);
        if (err != null) {
            try {
                err.signal(); // QEMU reports "vhost vring error" for the queue
            } catch (LinuxException ignored) {
                // the frontend closed the error fd: the log line above is all we can do
            }
        }
    }

    private long lastRequestLog;
    private long suppressedRequestLogs;

    /** Bad requests are answered with an error status; log them at most once a second per queue. */
    private void logRequestError(String why) {
        long now = System.nanoTime();
        if (now - lastRequestLog < 1_000_000_000L && lastRequestLog != 0) {
            suppressedRequestLogs++;
            return;
        }
        String more = suppressedRequestLogs > 0 ? " (" + suppressedRequestLogs + " similar suppressed)" : "";
        LOG.log(Level.WARNING, "{0}: request failed: {1}{2}", name, why, more);
        lastRequestLog = now;
        suppressedRequestLogs = 0;
    }

    /**
     * Stops the thread and waits for it: afterwards every request popped has been pushed (or, on a failed queue,
     * abandoned after its I/O finished) and the queue's ring position is final.
     */
    void stop() {
        try {
            stopFd.signal();
        } catch (LinuxException e) {
            throw new IllegalStateException("cannot stop " + name, e);
        }
        boolean interrupted = false;
        while (thread.isAlive()) {
            try {
                thread.join();
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (epoll != null) {
            epoll.close();
        }
        stopFd.close();
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    int vringBase() {
        return queue.vringBase();
    }

    private static void closeQuietly(AutoCloseable c) {
        if (c != null) {
            try {
                c.close();
            } catch (Exception ignored) {
                // cleaning up after a failed constructor: the first error is the one to report
            }
        }
    }
}
