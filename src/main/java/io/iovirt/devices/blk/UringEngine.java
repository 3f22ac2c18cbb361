// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import io.iovirt.virtio.QueueWorker;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.lang.System.Logger.Level;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.locks.LockSupport;

/**
 * Serves a virtio-blk queue through its own io_uring: up to queue-size requests in flight at once. Each in-flight
 * request owns a slot (its chain object, its iovec array; all preallocated), its I/O goes straight between the image
 * and the guest buffers, and completions, in whatever order the kernel finishes them, are pushed as they are
 * reaped. The ring signals an eventfd of ours per completion (IORING_REGISTER_EVENTFD), which the queue's
 * {@link QueueWorker} watches next to the kick and stop sources, so the worker sleeps in one epoll_wait for
 * whichever comes first.
 *
 * <p>The ring is cooperative ({@link IoUring#create(int, int, boolean)}): an O_DIRECT completion, which the kernel
 * finishes in the disk's interrupt and hands to this thread as task work, no longer interrupts the thread with an
 * IPI (on a VM usually an exit on the sending and the receiving vCPU) but waits for its next system call and raises a flag
 * in the SQ ring that {@link #hasWork} and {@link #prepareToSleep} look at, and {@link #process} enters the kernel
 * for it. Asleep in epoll_wait the thread is still woken. Measured against the plain ring, interleaved
 * (docs/benchmarks.md, 2026-12-05): O_DIRECT randread QD 1 25.3–26.2k vs 19.5–20.8k IOPS (p50 35–38 vs 44–48 µs)
 * with less CPU per request, QD 32 +7–12 %; buffered I/O, which completes inline, unchanged.
 *
 * <p>A FLUSH is an asynchronous fdatasync: it covers the writes completed before it was
 * submitted, which includes every write already pushed to the used ring — all that VIRTIO 1.2 §5.2.6 asks.
 *
 * <p>Guest memory: the queue pins the snapshot its requests were popped from; an older snapshot is unpinned only
 * when no request is in flight ({@link Virtqueue#quiesceMemory}), so a memory table change never unmaps a buffer the
 * kernel is still reading or writing. When the queue stops, every request in flight completes and is pushed first.
 */
final class UringEngine implements QueueWorker.Handler {
    private static final System.Logger LOG = System.getLogger(UringEngine.class.getName());
    private static final long COMPLETIONS = 0;

    private final Virtqueue queue;
    private final BlkQueueHandler handler;
    private final EventFd call;
    private final RequestLog log;
    private final IoUring ring;
    private final EventFd completions;
    private final Arena slotArena;
    private final BlkQueueHandler.Request[] slots;
    private final int[] freeSlots;
    private int freeCount;
    /** Requests whose I/O the ring holds (submitted or queued, not yet reaped). */
    private int ringRequests;

    /**
     * A buffered write that is the only request of the queue (nothing in the ring, nothing more available) runs as a
     * pwritev on the queue thread. ext4 cannot do most buffered writes without blocking (a clean page needs a
     * journal handle), so io_uring hands them to an io-wq worker: a thread wake-up, two context switches and a
     * completion eventfd wake-up per write, where the synchronous write is one syscall. Measured on a qcow2 image
     * (4 KiB randwrite QD 1, buffered): see the commit message. With other requests in flight writes still go
     * through the ring, so a write that blocks (dirty-page throttling) never holds up reads already queued.
     */
    private final boolean inlineLoneWrites;

    /**
     * When popped requests go to the kernel. Buffered: once per batch (a read the page cache holds completes inside
     * io_uring_enter, so more calls only add syscalls). O_DIRECT: the first request of a batch at once, then in
     * doubling steps (1, 2, 4, ... {@value #MAX_SUBMIT_STEP}): a device-bound disk completes requests in bursts
     * (its interrupt coalesces), the driver answers with a burst of new ones, and submitting the whole burst only
     * after the last was popped left the device idle meanwhile — 31 requests per io_uring_enter and 0.83× qsd's
     * IOPS at O_DIRECT randread QD 32, where qsd submits each request as it comes (docs/benchmarks.md).
     */
    private final int firstSubmit;

    private static final int MAX_SUBMIT_STEP = 8;
    private int submitAt;

    private boolean kicksOff;
    private boolean failed;
    private QueueWorker worker;
    private final IoUring.CompletionHandler<VirtqueueException> onCompletion = this::completion;

    /** SQ entries a ring needs to serve a queue of {@code queueSize}: one per request. */
    static int ringEntries(int queueSize) {
        return queueSize;
    }

    /** Takes ownership of {@code ring} (closed when the queue stops, or now if this throws). */
    UringEngine(Virtqueue queue, BlkQueueHandler handler, EventFd call, RequestLog log, IoUring ring)
            throws LinuxException {
        this.queue = queue;
        this.handler = handler;
        this.call = call;
        this.log = log;
        this.ring = ring;
        this.inlineLoneWrites = !handler.image().direct();
        this.firstSubmit = handler.image().direct() ? 1 : Integer.MAX_VALUE;
        this.submitAt = firstSubmit;
        int n = queue.size();
        EventFd efd = null;
        Arena arena = null;
        try {
            if (ring.sqEntries() < ringEntries(n) || ring.capacity() < ringEntries(n)) {
                throw new IllegalArgumentException(ring + " is too small for a queue of " + n);
            }
            efd = EventFd.create(true);
            ring.registerEventFd(efd);
            registerFiles(ring, handler);
            arena = Arena.ofShared();
            this.slots = newSlots(queue, handler, arena);
        } catch (LinuxException | RuntimeException e) {
            if (arena != null) {
                arena.close();
            }
            if (efd != null) {
                efd.close();
            }
            ring.close();
            throw e;
        }
        this.completions = efd;
        this.slotArena = arena;
        this.freeSlots = new int[n];
        for (int i = 0; i < n; i++) {
            freeSlots[i] = n - 1 - i;
        }
        this.freeCount = n;
    }

    /**
     * Registers the image's file with the ring: its reads and writes then name it by index, and the kernel takes no
     * file reference per request (fio's --registerfiles). A kernel or limit that refuses it costs only that.
     */
    private static void registerFiles(IoUring ring, BlkQueueHandler handler) {
        try {
            ring.registerFiles(handler.image().ringFiles());
        } catch (LinuxException e) {
            LOG.log(
                    Level.INFO,
                    "{0}: I/O goes by descriptor: {1}",
                    handler.image().path(),
                    e.getMessage());
        }
    }

    /**
     * The worker could not be built around this engine (out of descriptors, an epoll that refuses a source): closes
     * what the engine owns — ring, completion eventfd, slot buffers — as {@link #stopped} would have. No request was
     * taken, so nothing of the guest's is in the ring.
     */
    void discard() {
        closeRing();
    }

    private void closeRing() {
        ring.close();
        for (BlkQueueHandler.Request r : slots) {
            r.io.close();
        }
        slotArena.close(); // iovec arrays: the kernel copied them when it took the SQEs
        completions.close();
    }

    /** The source the worker must watch: the ring's completion eventfd. */
    void register(QueueWorker.Builder b) {
        b.source(completions.fd(), Epoll.EPOLLIN, COMPLETIONS);
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
                ? Mmap.anonymous(Math.max(limits.bounceBytes(), handler.image().blockSize()), arena)
                : null;
        BlkQueueHandler.Request[] slots = new BlkQueueHandler.Request[n];
        for (int i = 0; i < n; i++) {
            IoVec iov = IoVec.over(iovs.asSlice(i * iovBytes, iovBytes));
            slots[i] = new BlkQueueHandler.Request(
                    i, queue.newChain(), handler.image().newContext(iov, bounce));
        }
        return slots;
    }

    @Override
    public void attached(QueueWorker w) {
        worker = w;
        queue.servedBy(w); // a stopped worker takes no new requests (see process), wherever its thread was blocked
    }

    @Override
    public void event(long token, int events) throws LinuxException {
        completions.read(); // ours, non-blocking; read before reaping so no completion's wake-up is lost
    }

    /**
     * Reaps completions, then pops and queues new requests while slots are free, pushes those that need no I/O, hands
     * the queued I/O to the kernel and interrupts the driver once for everything pushed.
     */
    @Override
    public boolean process() throws Exception {
        if (ring.taskWorkPending()) { // completions waiting for this thread to enter the kernel (cooperative ring)
            ring.runTaskWork();
        }
        ring.reap(onCompletion);
        if (!kicksOff) {
            queue.disableNotifications();
            kicksOff = true;
        }
        // Stopping: the rest stay for whoever takes the ring next. Not the requests the in-flight record still holds
        // (a backend restart) though: the position handed back (Virtqueue.vringBase) lies after them, so whoever
        // takes the ring next - a migration's destination - would never serve them and the guest would wait for them
        // for ever. pop hands them out first and the slots (one per ring entry) hold them all, so the first batch
        // takes them all even when the stop came before it (the worker always runs one).
        while (freeCount > 0 && (!worker.stopRequested() || queue.resubmitsPending() > 0)) {
            BlkQueueHandler.Request r = slots[freeSlots[freeCount - 1]];
            if (!queue.pop(r.chain)) {
                break;
            }
            freeCount--;
            int kind = handler.start(r);
            if (kind == BlkQueueHandler.DONE) {
                complete(r);
            } else if (kind == BlkQueueHandler.WRITE
                    && inlineLoneWrites
                    && ringRequests == 0
                    && !queue.hasAvailable()) {
                handler.runSync(r); // the only request: pwritev here beats the io-wq round trip (see inlineLoneWrites)
                complete(r);
            } else if (submitToRing(r)) {
                if (ring.unsubmitted() >= submitAt) { // O_DIRECT: the device starts on the first ones now
                    ring.submit();
                    submitAt = Math.min(submitAt * 2, MAX_SUBMIT_STEP);
                }
            } else {
                complete(r);
            }
        }
        submitAt = firstSubmit;
        if (ring.unsubmitted() > 0) {
            ring.submit();
        }
        if (queue.needsNotification()) {
            worker.signal(call);
        }
        if (ringRequests == 0) {
            queue.quiesceMemory();
        }
        return false;
    }

    /**
     * Completions to reap, or requests to pop, or SQEs the kernel did not take: io_uring_enter may consume fewer than
     * it was given, or none (EAGAIN, EBUSY: it is short of memory), and leave the rest in the SQ. No completion
     * wakes the worker for those, so they are work until {@link #process} got them in: with nothing else in flight
     * the worker would sleep, and a request among them (a lone FLUSH the guest waits on) would wait for the next kick.
     */
    @Override
    public boolean hasWork() throws Exception {
        return ring.ready() > 0
                || ring.taskWorkPending()
                || ring.unsubmitted() > 0
                || (freeCount > 0 && queue.hasAvailable());
    }

    /**
     * SQEs the kernel did not take (see {@link #hasWork}) keep the worker awake. With every slot busy kicks stay
     * suppressed: the next completion wakes the worker. Otherwise kicks are re-enabled and the ring looked at again.
     */
    @Override
    public boolean prepareToSleep() throws Exception {
        if (ring.ready() > 0 || ring.taskWorkPending() || ring.unsubmitted() > 0) {
            return true;
        }
        if (freeCount == 0) {
            return false;
        }
        kicksOff = false;
        if (queue.enableNotifications()) {
            return true;
        }
        if (ringRequests == 0) {
            queue.releaseMemory();
        }
        return false;
    }

    @Override
    public void recheck() throws Exception {
        worker.recheck(queue, call);
    }

    private void completion(long userData, int result, int flags) throws VirtqueueException {
        BlkQueueHandler.Request r = slots[(int) userData];
        r.inRing = false;
        ringRequests--;
        if (failed) { // a failed queue cannot push: the request is dropped once its I/O is over
            handler.dropped(r);
            freeSlots[freeCount++] = r.slot; // out of the kernel (see stopped); a stopping queue pops nothing more
            return;
        }
        handler.completed(r, result);
        complete(r);
    }

    private void complete(BlkQueueHandler.Request r) throws VirtqueueException {
        long written = handler.finish(r);
        if (r.error != null) {
            log.requestFailed(r.error);
        }
        freeSlots[freeCount++] = r.slot;
        queue.push(r.chain, written);
    }

    /**
     * Before the ring goes away: waits until the kernel is done with every request (their buffers are guest memory;
     * a failed queue drops them), pushes them and interrupts the driver, then unpins guest memory.
     */
    @Override
    public void stopped(boolean failedQueue) {
        failed = failedQueue;
        try {
            while (ringRequests > 0) {
                ring.submitAndWait(1);
                if (ring.ready() == 0 && !ring.taskWorkPending()) {
                    // The kernel took nothing and waited for nothing (EAGAIN, EBUSY: short of memory): back off
                    // instead of spinning on io_uring_enter until it has memory again. 1 ms: far below what a
                    // stop takes otherwise, far above a system call.
                    LockSupport.parkNanos(1_000_000);
                    continue;
                }
                reapWhileStopping();
            }
            if (!failed && queue.needsNotification()) {
                worker.signal(call);
            }
        } catch (LinuxException | VirtqueueException | RuntimeException e) {
            // io_uring_enter itself failed (a bug: EBADF, EFAULT, ...), or interrupting the driver did.
            LOG.log(
                    Level.ERROR,
                    "{0}: cannot wait for {1} requests in flight: {2}",
                    worker.name(),
                    ringRequests,
                    e.getMessage());
        } finally {
            dropStranded();
            int abandoned = ringRequests;
            if (abandoned > 0) {
                // before the close: a write among them may land after it, so the queue must not count as drained
                // for a switch to read-only waiting to make the image lock shared
                handler.abandonInKernel();
                abandonBusySlots();
            }
            closeRing(); // the kernel cancels what is left, or lets it finish: in the background either way
            if (abandoned == 0) {
                queue.releaseMemory();
            } else {
                // Unpinned, the memory could be unmapped and its addresses reused while an io-wq worker still
                // copies a read into them. Leaking the mapping is the lesser harm.
                LOG.log(
                        Level.ERROR,
                        "{0}: {1} requests may still be in the kernel; their guest memory stays mapped until the"
                                + " process exits",
                        worker.name(),
                        abandoned);
            }
            handler.close();
        }
    }

    /**
     * Queues {@code r}'s I/O on the ring; true when it is there. A request whose entry is prepared counts as in the
     * ring even when something throws after the preparation, so that the stop waits for it (or gives up on it) and
     * never takes it for one the kernel does not hold ({@link #dropStranded}) while guest memory is released under
     * it. The likeliest such throw is a late {@link InternalError} for a SIGBUS in this request's guest memory (a
     * frontend that truncated its memory file), which HotSpot delivers at a later safepoint poll, possibly a return
     * inside the submit after the entry is prepared: it is surfaced first, while nothing is prepared.
     */
    private boolean submitToRing(BlkQueueHandler.Request r) {
        Mmap.surfaceFaults();
        int before = ring.unsubmitted();
        try {
            if (!handler.submit(r, ring)) {
                return false; // nothing prepared: it ran synchronously
            }
        } catch (Throwable t) {
            if (ring.unsubmitted() != before) {
                inRing(r);
            }
            throw t;
        }
        inRing(r);
        return true;
    }

    private void inRing(BlkQueueHandler.Request r) {
        r.inRing = true;
        ringRequests++;
    }

    /**
     * Requests taken from the ring whose handling threw before they were finished or queued (the queue failed with
     * them: a frontend truncated the memory file under a header, a late fault, a bug): none is in the kernel, none
     * will be answered, so none is in flight any more. Those the kernel may still hold stay counted.
     */
    private void dropStranded() {
        for (BlkQueueHandler.Request r : slots) {
            if (r.counted && !r.inRing) {
                handler.dropped(r);
            }
        }
    }

    /**
     * The slots not free when the stop gives up whose requests are in the ring hold the requests the kernel may
     * still carry out: their contexts are told before the ring and they are closed
     * ({@link io.iovirt.storage.ImageIo#abandon}). A stranded request ({@link #dropStranded}) is not in the kernel:
     * its context is not told (a qcow2 context would quarantine clusters nothing may write). A context whose abandon
     * throws (out of memory while it records what it keeps) is logged and the stop goes on with the others, the ring's
     * close and the rest: that context keeps its request in flight for as long as the image is open.
     */
    private void abandonBusySlots() {
        boolean[] free = new boolean[slots.length];
        for (int i = 0; i < freeCount; i++) {
            free[freeSlots[i]] = true;
        }
        for (BlkQueueHandler.Request r : slots) {
            if (!free[r.slot] && r.inRing) {
                try {
                    r.io.abandon();
                } catch (RuntimeException | Error e) {
                    LOG.log(
                            Level.ERROR,
                            "{0}: giving up on request slot {1} in the kernel failed: {2}; it counts in flight for as"
                                    + " long as the image is open",
                            worker.name(),
                            r.slot,
                            String.valueOf(e));
                }
            }
        }
    }

    /**
     * Reaps while stopping. Pushing a completion can fail — the ring broke (a VirtqueueException), the frontend
     * truncated its memory file under a status byte (a SIGBUS, which HotSpot raises late as an InternalError), a bug
     * — and that must not end the wait: the kernel still reads and writes guest memory for the other requests in
     * flight, and nothing would wait for them once the ring is closed and guest memory released. From then on the
     * queue counts as failed: the rest are dropped, without touching guest memory, as their I/O ends.
     */
    private void reapWhileStopping() {
        try {
            try {
                ring.reap(onCompletion);
                Mmap.surfaceFaults(); // a fault in a status write surfaces here, not in the next wait
            } catch (Throwable t) {
                Mmap.surfaceFaults(); // one that sent the push down an error path
                pushFailed(t);
            }
        } catch (InternalError late) {
            pushFailed(late);
        }
    }

    private void pushFailed(Throwable t) {
        if (!failed) {
            LOG.log(
                    Level.ERROR,
                    "{0}: completing a request while stopping failed: {1}; the other {2} requests in flight are"
                            + " dropped once the kernel is done with them",
                    worker.name(),
                    QueueWorker.describe(t),
                    ringRequests);
        }
        failed = true;
    }
}
