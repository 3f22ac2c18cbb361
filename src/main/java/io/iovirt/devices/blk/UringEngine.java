// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.Errno;
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

/**
 * Serves a virtio-blk queue through its own io_uring: up to queue-size requests in flight at once. Each in-flight
 * request owns a slot (its chain object, its iovec array; all preallocated), its I/O goes straight between the image
 * and the guest buffers, and completions, in whatever order the kernel finishes them, are pushed as they are
 * reaped. The ring signals an eventfd of ours per completion (IORING_REGISTER_EVENTFD), which the queue's
 * {@link QueueWorker} watches next to the kick and stop sources, so the worker sleeps in one epoll_wait for
 * whichever comes first. A FLUSH is an asynchronous fdatasync: it covers the writes completed before it was
 * submitted, which includes every write already pushed to the used ring — all that VIRTIO 1.2 §5.2.6 asks.
 *
 * <p>When the frontend kicks (the usual case) the worker does not sleep in epoll: the engine reads the kick eventfd
 * through the ring itself (an 8-byte READ, re-armed when it completes) and polls the worker's stop eventfd there, so
 * one {@code io_uring_enter} per wake-up both submits the new I/O and sleeps until the next completion or kick
 * (before: {@code epoll_wait}, a {@code read} of the completion eventfd and an {@code io_uring_enter}). That ring is
 * set up with {@code IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN} (completion work runs in that same
 * call instead of interrupting the thread), started disabled and enabled on the worker thread. A kick descriptor
 * whose read returns anything but an eventfd's 8 bytes fails the queue with a message saying so.
 *
 * <p>Guest memory: the queue pins the snapshot its requests were popped from; an older snapshot is unpinned only
 * when no request is in flight ({@link Virtqueue#quiesceMemory}), so a memory table change never unmaps a buffer the
 * kernel is still reading or writing. When the queue stops, every request in flight completes and is pushed first.
 */
final class UringEngine implements QueueWorker.Handler {
    private static final System.Logger LOG = System.getLogger(UringEngine.class.getName());
    private static final long COMPLETIONS = 0;
    /** user_data of the ring's own wake-up operations (requests use their slot number). */
    private static final long KICK_READ = 1L << 62;
    private static final long STOP_POLL = KICK_READ + 1;
    /**
     * {@code -Diovirt.blk.uringWait=epoll}: sleep in epoll on a completion eventfd as before (a plain ring), for
     * measuring the difference (docs/benchmarks.md); the default sleeps in the ring.
     */
    static final boolean EPOLL_WAIT = "epoll".equals(System.getProperty("iovirt.blk.uringWait"));
    /** Setup flags of a ring the engine sleeps in ({@link #ringWait}); without them on kernels before 6.1. */
    static final int RING_WAIT_SETUP = IoUring.SETUP_SINGLE_ISSUER | IoUring.SETUP_DEFER_TASKRUN | IoUring.SETUP_R_DISABLED;

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
    private boolean kicksOff;
    private boolean failed;
    private QueueWorker worker;
    private final IoUring.CompletionHandler<Exception> onCompletion = this::completion;
    /** The worker sleeps in the ring (see the class comment); else in epoll on {@link #completions}. */
    private final boolean ringWait;
    /** The ring was set up disabled: enabled on the worker thread (SINGLE_ISSUER makes that thread the submitter). */
    private final boolean disabled;
    private EventFd kick;
    private MemorySegment kickValue;
    private boolean kickArmed;

    /** SQ entries a ring needs to serve a queue of {@code queueSize}: one per request. */
    static int ringEntries(int queueSize) {
        return queueSize;
    }

    /** Takes ownership of {@code ring} (closed when the queue stops, or now if this throws); sleeps in epoll. */
    UringEngine(Virtqueue queue, BlkQueueHandler handler, EventFd call, RequestLog log, IoUring ring) throws LinuxException {
        this(queue, handler, call, log, ring, false, false);
    }

    /**
     * @param ringWait  sleep in the ring (the worker must have a kick or no poll interval), see the class comment
     * @param disabled  the ring was set up with IORING_SETUP_R_DISABLED ({@link #RING_WAIT_SETUP})
     */
    UringEngine(Virtqueue queue, BlkQueueHandler handler, EventFd call, RequestLog log, IoUring ring, boolean ringWait,
                boolean disabled) throws LinuxException {
        this.ringWait = ringWait;
        this.disabled = disabled;
        this.queue = queue;
        this.handler = handler;
        this.call = call;
        this.log = log;
        this.ring = ring;
        int n = queue.size();
        EventFd efd = null;
        Arena arena = null;
        try {
            if (ring.sqEntries() < ringEntries(n) || ring.capacity() < ringEntries(n)) {
                throw new IllegalArgumentException(ring + " is too small for a queue of " + n);
            }
            if (!ringWait) {
                efd = EventFd.create(true);
                ring.registerEventFd(efd);
            }
            arena = Arena.ofShared();
            this.slots = newSlots(queue, handler, arena);
            this.kickValue = arena.allocate(8, 8);
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

    /** The source the worker must watch: the ring's completion eventfd. */
    void register(QueueWorker.Builder b) {
        if (!ringWait) {
            b.source(completions.fd(), Epoll.EPOLLIN, COMPLETIONS);
        }
    }

    @Override
    public boolean sleepsItself(EventFd stop, EventFd kickFd) throws LinuxException {
        if (disabled) {
            ring.enable(); // on the worker thread: with SINGLE_ISSUER it becomes the ring's only submitter
        }
        if (!ringWait) {
            return false;
        }
        ring.poll(stop.fd(), Epoll.EPOLLIN, STOP_POLL); // never consumed: the loop ends after it
        kick = kickFd;
        armKick();
        ring.submit();
        return true;
    }

    /** Queues the next 8-byte read of the kick eventfd: it completes when the frontend kicks. */
    private void armKick() {
        if (kick != null && !kickArmed) {
            ring.read(kick.fd(), kickValue, 0, KICK_READ);
            kickArmed = true;
        }
    }

    @Override
    public void sleep() throws Exception {
        ring.submitAndWaitOne(); // submits what process() queued and sleeps, in one system call
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

    @Override
    public void attached(QueueWorker w) {
        worker = w;
    }

    @Override
    public void event(long token, int events) throws LinuxException {
        if (completions != null) {
            completions.read(); // ours, non-blocking; read before reaping so no completion's wake-up is lost
        }
    }

    /**
     * Reaps completions, then pops and queues new requests while slots are free, pushes those that need no I/O, hands
     * the queued I/O to the kernel and interrupts the driver once for everything pushed.
     */
    @Override
    public boolean process() throws Exception {
        ring.reap(onCompletion);
        if (!kicksOff) {
            queue.disableNotifications();
            kicksOff = true;
        }
        armKick(); // before the requests: its SQ slot is never short
        // a sleeping ring submits with its wait; the SQ holds the kick read next to a queue's worth of requests
        while (freeCount > 0 && (!ringWait || ring.free() > 0)) {
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
        if (!ringWait && ring.unsubmitted() > 0) {
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

    @Override
    public boolean hasWork() throws Exception {
        return ring.ready() > 0 || (freeCount > 0 && queue.hasAvailable());
    }

    /**
     * With every slot busy kicks stay suppressed: the next completion wakes the worker. Otherwise kicks are
     * re-enabled and the ring looked at again.
     */
    @Override
    public boolean prepareToSleep() throws Exception {
        if (ring.ready() > 0) {
            return submitIfAwake(true);
        }
        if (freeCount == 0) {
            return false;
        }
        kicksOff = false;
        if (queue.enableNotifications()) {
            return submitIfAwake(true);
        }
        if (ringRequests == 0) {
            queue.releaseMemory();
        }
        return false;
    }

    /** The worker goes round again instead of sleeping: what process() queued for a sleeping ring goes in now. */
    private boolean submitIfAwake(boolean awake) throws LinuxException {
        if (ringWait && ring.unsubmitted() > 0) {
            ring.submit();
        }
        return awake;
    }

    private void completion(long userData, int result, int flags) throws Exception {
        if (userData >= KICK_READ) {
            ownCompletion(userData, result);
            return;
        }
        BlkQueueHandler.Request r = slots[(int) userData];
        ringRequests--;
        if (failed) { // a failed queue cannot push: the request is dropped once its I/O is over
            r.io.clear();
            return;
        }
        handler.completed(r, result);
        complete(r);
    }

    /** The kick read or the stop poll completed. */
    private void ownCompletion(long userData, int result) throws LinuxException {
        if (userData != KICK_READ) {
            return; // the stop eventfd: the worker already knows (its flag is set before the eventfd is written)
        }
        kickArmed = false;
        if (result == 8 || result == -Errno.ECANCELED || failed) {
            return; // kicked (process() re-arms it), or cancelled because the ring is going away
        }
        throw new LinuxException("read", "the frontend's kick descriptor " + kick.fd() + " (an eventfd read returns 8 bytes,"
                + " this one " + (result < 0 ? "failed" : "returned " + result) + "): it is not a usable eventfd",
                result < 0 ? -result : Errno.EINVAL);
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
                try {
                    ring.reap(onCompletion);
                } catch (Exception e) {
                    failed = true; // the ring broke while pushing: drop the rest once their I/O is over
                }
            }
            if (!failed && queue.needsNotification()) {
                worker.signal(call);
            }
        } catch (LinuxException | VirtqueueException | RuntimeException e) {
            // Closing the ring makes the kernel cancel or finish what is left; their pages stay pinned until then.
            LOG.log(Level.ERROR, "{0}: cannot wait for {1} requests in flight: {2}", worker.name(), ringRequests,
                    e.getMessage());
        } finally {
            ring.close();
            for (BlkQueueHandler.Request r : slots) {
                r.io.close();
            }
            slotArena.close();
            if (completions != null) {
                completions.close();
            }
            queue.releaseMemory();
            handler.close();
        }
    }
}
