package io.iovirt.devices.blk;

import io.iovirt.linux.Epoll;
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
 * The thread that serves one virtio-blk queue: blocks in epoll on the kick eventfd, drains the ring with kicks
 * suppressed, completes requests and interrupts the driver only when it asked (EVENT_IDX or flags), once per batch.
 *
 * <p>Two ways to serve, chosen when the queue starts:
 * <ul>
 * <li>synchronously: each request's preadv/pwritev/fdatasync runs on this thread before the next is popped;
 * <li>through an io_uring: up to queue-size requests in flight at once. Each in-flight request owns a slot (its
 *     chain object, its iovec array; all preallocated), its I/O goes straight between the image and the guest
 *     buffers, and completions, in whatever order the kernel finishes them, are pushed as they are reaped. The
 *     ring's eventfd sits in the same epoll set as the kick. A FLUSH is an asynchronous fdatasync: it covers the
 *     writes completed before it was submitted, which includes every write already pushed to the used ring — all
 *     that VIRTIO 1.2 §5.2.6 asks; writes still in flight are not waited for.
 * </ul>
 *
 * <p>A platform thread: epoll_wait is a blocking native call and would pin a virtual thread's carrier. It is
 * stopped through its own eventfd, since interrupting a thread does not break a native call. Before the thread
 * ends, every request in flight has completed and been pushed, so when {@link #stop()} returns the ring position is
 * final and no I/O still targets guest memory.
 */
final class BlkQueueWorker implements Runnable {
    private static final System.Logger LOG = System.getLogger(BlkQueueWorker.class.getName());
    private static final long KICK = 0;
    private static final long STOP = 1;
    private static final long COMPLETION = 2;

    private final String name;
    private final Virtqueue queue;
    private final BlkQueueHandler handler;
    private final EventFd kick;
    private final EventFd call;
    private final EventFd err;
    private final BlkStats stats;
    private final EventFd stopFd;
    private final Epoll epoll;
    private final Thread thread;
    private volatile String failure;

    // io_uring mode only (ring == null: synchronous)
    private final IoUring ring;
    private final EventFd completions;
    /** Owns the slots' iovec arrays and the shared bounce buffer: anonymous memory, touched only where used. */
    private final Arena slotArena;
    private final BlkQueueHandler.Request[] slots;
    private final int[] freeSlots;
    private int freeCount;
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
     * the thread ends). The ring must take one operation per queue entry.
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
        EventFd stop = null;
        EventFd done = null;
        Epoll ep = null;
        Arena arena = null;
        try {
            stop = EventFd.create(true);
            ep = Epoll.create(3);
            ep.add(kick.fd(), Epoll.EPOLLIN, KICK);
            ep.add(stop.fd(), Epoll.EPOLLIN, STOP);
            if (ring != null) {
                if (ring.capacity() < queue.size() || ring.sqEntries() < queue.size()) {
                    throw new IllegalArgumentException(ring + " is too small for a queue of " + queue.size());
                }
                done = EventFd.create(true);
                ring.registerEventFd(done);
                ep.add(done.fd(), Epoll.EPOLLIN, COMPLETION);
                arena = Arena.ofShared();
                this.slots = newSlots(queue, handler, arena);
                this.freeSlots = new int[slots.length];
                for (int i = 0; i < slots.length; i++) {
                    freeSlots[i] = slots.length - 1 - i;
                }
                this.freeCount = slots.length;
            } else {
                this.slots = null;
                this.freeSlots = null;
            }
        } catch (LinuxException | RuntimeException e) {
            for (AutoCloseable c : new AutoCloseable[] {ep, stop, done, arena, ring}) {
                closeQuietly(c);
            }
            throw e;
        }
        this.stopFd = stop;
        this.completions = done;
        this.epoll = ep;
        this.slotArena = arena;
        this.thread = Thread.ofPlatform().name("iovirt-" + name).daemon().unstarted(this);
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
                abandonInFlight();
                ring.close();
                completions.close();
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
        boolean stopping = false;
        serveAsynchronously();
        while (!stopping) {
            // Submissions the kernel could not take (EAGAIN under memory pressure) are retried every millisecond.
            int n = epoll.wait(ring.unsubmitted() > 0 ? 1 : -1);
            for (int i = 0; i < n; i++) { // reset the eventfds before looking at the rings: no wake-up is lost
                long what = epoll.data(i);
                if (what == STOP) {
                    stopping = true;
                } else if (what == KICK) {
                    kick.read();
                } else {
                    completions.read();
                }
            }
            if (failure == null) {
                if (stopping) {
                    drain();
                } else {
                    serveAsynchronously();
                }
            }
        }
    }

    /**
     * Pushes what completed, then pops and submits new requests while slots are free, and interrupts the driver
     * once for the whole batch. With every slot busy, kicks stay suppressed: the next completion brings us back.
     */
    private void serveAsynchronously() throws LinuxException {
        try {
            ring.reap(onCompletion);
            queue.disableNotifications();
            for (;;) {
                while (freeCount > 0) {
                    BlkQueueHandler.Request r = slots[freeSlots[freeCount - 1]];
                    if (!queue.pop(r.chain)) {
                        break;
                    }
                    freeCount--;
                    if (handler.start(r) == BlkQueueHandler.DONE || !handler.submit(r, ring)) {
                        complete(r);
                    }
                }
                if (ring.unsubmitted() > 0) {
                    ring.submit();
                }
                ring.reap(onCompletion); // page-cache hits and errors complete during submission
                if (freeCount == 0 || !queue.enableNotifications()) {
                    break;
                }
                queue.disableNotifications();
            }
            notifyDriver();
        } catch (VirtqueueException | BlkQueueHandler.UnanswerableRequest e) {
            fail(e.getMessage());
            abandonInFlight();
        }
    }

    /** Waits for every request in flight and pushes it: the stop path. */
    private void drain() throws LinuxException {
        try {
            while (ring.outstanding() > 0) {
                if (ring.ready() == 0) {
                    ring.submitAndWait(1);
                }
                ring.reap(onCompletion);
            }
            notifyDriver();
        } catch (VirtqueueException e) {
            fail(e.getMessage());
            abandonInFlight();
        }
    }

    private void completion(long slot, int result, int flags) throws VirtqueueException {
        BlkQueueHandler.Request r = slots[(int) slot];
        handler.completed(r, result);
        complete(r);
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
     * After a failure: waits until the kernel is done with every request in flight (their buffers are guest memory
     * that may be unmapped once we return) and drops them; a failed queue cannot push.
     */
    private void abandonInFlight() {
        try {
            while (ring.outstanding() > 0) {
                if (ring.ready() == 0) {
                    ring.submitAndWait(1);
                }
                ring.reap((slot, result, flags) -> slots[(int) slot].io.clear());
            }
        } catch (LinuxException | RuntimeException e) {
            // Closing the ring makes the kernel cancel or finish them; their pages stay pinned until then.
            LOG.log(Level.ERROR, "{0}: cannot wait for {1} requests in flight: {2}", name, ring.outstanding(), e.getMessage());
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
        epoll.close();
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
