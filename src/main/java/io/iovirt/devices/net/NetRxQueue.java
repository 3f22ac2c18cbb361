// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import io.iovirt.net.Burst;
import io.iovirt.net.Counters;
import io.iovirt.net.Frame;
import io.iovirt.net.PortStat;
import io.iovirt.net.RateLimitedLog;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.LongAdder;

/**
 * A receive queue: frames from the switch into the guest's buffers. There is no thread: the receive thread of
 * whichever port the frame came from fills the guest's buffers under this queue's lock (one lock per queue, so
 * frames for different guests, or different queues of one guest, are copied in parallel), and interrupts the guest
 * once at the end of its burst ({@link #flush}). A burst's chains are taken with one batch pop, one per frame (a
 * frame spread over several merge buffers pops the ones it needs beyond those on its own), and returned in the order
 * they were taken, the frames' chains together at the end of the burst ({@link Virtqueue#pushBatched(DescriptorChain[],
 * long[], int)}); the burst's used entries — every chain of a multi-buffer frame (MRG_RXBUF) among them — become
 * visible to the driver together, with one used-index store, so the driver never sees part of a frame and the index's
 * cache line moves to the guest's core once per burst. When the guest has no buffer posted the frame is dropped and
 * counted at once; the switch never waits for a guest.
 *
 * <p>A burst is filled in two passes ({@link #plan}, then {@link #writePlanned}): first the bookkeeping of every frame
 * that fits the first buffer of its chain (which chain, how many bytes — this process's own memory), then the header
 * and frame of each into the guest's buffers, one frame after another with nothing in between. The guest's lines were
 * last written or read by the driver's core, so each store waits for the line to come over; the likely reason for the
 * gain is that stores wait in the core's store buffer, and the fewer other stores sit between them there, the more of
 * those transfers are under way at once (no hardware counters on the VM it was measured on). Measured port to port
 * (64 B, switched every 500 ms inside one backend): 1.08× the frames (median of 21 windows; 1.08× in the 17 of the
 * host's near vCPU placement, 1.20–1.46× in the 4 of the far one: docs/benchmarks.md, 2026-12-05 12:54 section). A
 * frame that does not fit its first buffer goes through {@link #fill} on its own, in its place.
 *
 * <p>The guest's call eventfd is never written under the lock: the decision to interrupt is made under it, the write
 * happens after it is released (a frontend that makes its eventfd blocking and full costs the writing thread one
 * write the eventfd watchdog ends within a fraction of a second, and from then on has each of its eventfds looked at
 * before each write, {@link EventFd#trySignal}; two senders writing one at once can still fill it between that look
 * and one's write, which the watchdog ends too; other senders are never held). Stopping waits for
 * such writes, so the descriptor is not closed under them. Anything that goes wrong with this guest's ring or memory on
 * the sender's thread — a broken ring, a SIGBUS (InternalError) because the frontend truncated its memory file — fails
 * this receive queue (NEEDS_RESET, one log line), never the sending port. HotSpot delivers a SIGBUS's InternalError
 * late (at the thread's next safepoint poll), so each method that touches the guest's memory first surfaces a fault
 * still pending from the sender's own memory (thrown to the sender), and surfaces its own at the end of its try block
 * and again first thing in its catch block (the faulting load may have sent the code down an error path), with an outer
 * try around both ({@link Mmap#surfaceFaults}): each fault is charged to the guest whose memory it was in.
 *
 * <p>Buffers too small for a frame (without MRG_RXBUF: one chain must hold header and frame; with it, at most
 * {@link #MAX_BUFFERS} chains of at most {@link #MAX_FRAME_DESCRIPTORS} descriptors in all) are returned to the guest
 * unused (length 0, which Linux counts as a length error
 * and reposts) and the frame is dropped and counted.
 */
final class NetRxQueue {
    private static final ValueLayout.OfLong LE64 = JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt LE32 = JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfShort LE16 = JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    /** Most chains one frame may be spread over with MRG_RXBUF (a 64 KiB frame over 1 KiB buffers). */
    static final int MAX_BUFFERS = 64;
    /**
     * Most descriptors one frame's chains may hold together (MRG_RXBUF): a frame that needs more is dropped as one
     * whose buffers are too small. Each chain is bounded on its own ({@link VirtioNetPort#MAX_CHAIN}), but a guest
     * posting a small first chain and then chains of 256 zero- or one-byte descriptors had every frame sent to it walk
     * 64 × 256 descriptors on the sender's thread — measured here at ~120-140 µs a frame (a 1500-byte frame normally
     * costs well under 1 µs), so a 32-frame burst held that thread, and every port sharing it, for about 4 ms. The same
     * bound as DPDK's vhost library (BUF_VECTOR_MAX, descriptors per packet across its buffers); drivers use one
     * descriptor per merge buffer (Linux, DPDK), so a 64 KiB frame needs at most {@link #MAX_BUFFERS}. Checked as each
     * chain is taken: a frame walks at most twice this many.
     */
    static final int MAX_FRAME_DESCRIPTORS = VirtioNetPort.MAX_CHAIN;
    /** A sender that never ends its burst still gets the guest interrupted every this many frames. */
    static final int MAX_UNNOTIFIED = 64;
    /** Most chains taken ahead for one burst. */
    static final int AHEAD = 64;
    /** {@link #maxFrame} when the guest takes every frame the switch forwards. */
    static final int NO_LIMIT = Integer.MAX_VALUE;

    final Object lock = new Object();
    private final int index;
    private final String name;
    private final Counters tx;
    private final RateLimitedLog log = new RateLimitedLog(5000);
    private final MemorySegment header = Arena.ofAuto().allocate(VirtioNet.HDR_SIZE, 8);
    // guarded by lock
    private Virtqueue vq;
    private EventFd call;
    /** Chains taken for a burst ahead of its frames, one {@link Virtqueue#pop(DescriptorChain[], int)}. */
    private DescriptorChain[] ahead;

    private int aheadTaken;
    private int aheadNext;
    /** A frame's i-th chain when {@link #ahead} has run out, popped on its own. */
    private DescriptorChain[] spare;
    /** The chains of the frame being filled, and what was written into each. */
    private final DescriptorChain[] use = new DescriptorChain[MAX_BUFFERS];

    private final long[] lengths = new long[MAX_BUFFERS];
    /** Chains of the burst's finished frames, returned together ({@link #returnDone}). */
    private final DescriptorChain[] done = new DescriptorChain[AHEAD];

    private final long[] doneLengths = new long[AHEAD];
    private int doneCount;
    /** Frames (and their bytes) whose chains wait in {@link #done}, written but not yet returned to the guest. */
    private int donePackets;

    private long doneBytes;
    /**
     * Frames (and their bytes) returned to the guest but not yet made visible to the driver ({@link
     * Virtqueue#publishUsed}). A frame counts as sent when its used entry is published; one that a failure kept from
     * the driver counts as an error instead ({@link #lostToFailure}): each frame is counted once, as what happened.
     */
    private long unpublishedPackets;

    private long unpublishedBytes;
    /** The frame being filled took a chain of {@link #spare}. */
    private boolean spareUsed;

    private int headerSize;
    /**
     * The longest frame the guest takes: its MTU plus Ethernet and VLAN headers. The device must pass no longer
     * frame once VIRTIO_NET_F_MTU is negotiated (VIRTIO 1.2 §5.1.4.2), and a guest may have a lower MTU than the
     * switch's (QEMU's host_mtu, sent as NET_SET_MTU); a longer frame is dropped as tx_dropped_oversize before it
     * takes a buffer. {@link #NO_LIMIT} when it is at least the switch's (the usual case: the switch already dropped
     * longer frames).
     */
    private int maxFrame = NO_LIMIT;

    private boolean mergeable;
    private boolean running;
    /** Frames delivered since the driver's notification state was last checked. */
    private int unnotified;
    /** Senders writing the call eventfd outside the lock; {@link #stop} waits for them. */
    private int signalling;
    /** A {@link #recheck} is pending (set when used entries are published, cleared when it runs). */
    private boolean recheckScheduled;
    /** Eventfd writes dropped (a full or blocking eventfd), and interrupts a {@link #recheck} sent; all connections. */
    private final LongAdder lostSignals = new LongAdder();

    private final LongAdder recheckSignals = new LongAdder();

    /**
     * Runs every receive queue's {@link #recheck}: these queues have no thread of their own (senders deliver on
     * theirs), so one daemon thread per process looks after them.
     */
    private static final ScheduledThreadPoolExecutor RECHECKS = new ScheduledThreadPoolExecutor(
            1, Thread.ofPlatform().daemon().name("iovirt-rx-recheck").factory());

    private VirtioNetPort port;
    private EventFd err;

    NetRxQueue(int index, String name, Counters tx) {
        this.index = index;
        this.name = name;
        this.tx = tx;
    }

    void start(
            VirtioNetPort owner,
            Virtqueue q,
            EventFd callFd,
            EventFd errFd,
            int hdrSize,
            boolean mrgRxBuf,
            int maxFrameLength)
            throws VirtqueueException {
        q.limitChain(VirtioNetPort.MAX_CHAIN);
        // Buffers are taken when a frame arrives, never waited for: the driver need not kick when it posts some
        // (one guest exit less per refill, and pop does not keep avail_event current in the shared ring).
        q.disableNotifications();
        DescriptorChain[] sp = newChains(q, mrgRxBuf ? MAX_BUFFERS : 1);
        DescriptorChain[] ah = newChains(q, AHEAD);
        synchronized (lock) {
            vq = q;
            call = callFd;
            err = errFd;
            port = owner;
            unnotified = 0;
            spare = sp;
            ahead = ah;
            aheadTaken = 0;
            aheadNext = 0;
            doneCount = 0;
            spareUsed = false;
            headerSize = hdrSize;
            mergeable = mrgRxBuf;
            maxFrame = maxFrameLength;
            running = true;
        }
    }

    /** The longest frame from now on (the frontend set the guest's MTU while the queue runs). */
    void maxFrame(int length) {
        synchronized (lock) {
            maxFrame = length;
        }
    }

    /** Stops filling buffers; returns the ring position to resume from. */
    int stop() {
        synchronized (lock) {
            running = false;
            boolean interrupted = false;
            while (signalling > 0) { // bounded: a blocked eventfd write is ended by the watchdog
                try {
                    lock.wait();
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
            Virtqueue q = vq;
            vq = null;
            call = null;
            err = null;
            if (q == null) {
                return 0;
            }
            if (q.failure() == null) {
                Throwable failure;
                try {
                    try {
                        q.publishUsed(); // what this burst delivered so far: the frontend reads used.idx when it stops
                        Mmap.surfaceFaults();
                        published();
                        failure = null;
                    } catch (RuntimeException | Error e) {
                        Mmap.surfaceFaults();
                        failure = e;
                    }
                } catch (InternalError fault) {
                    failure = fault;
                }
                if (failure != null) {
                    log.warn(name + " rx queue " + index + ": publishing the last frames failed: " + failure);
                }
            }
            lostToFailure(); // none if they were published
            q.releaseMemory();
            return q.vringBase();
        }
    }

    boolean running() {
        synchronized (lock) {
            return running;
        }
    }

    /** Copies one frame into the guest's buffers, or counts why not. Any thread; never blocks on the guest. */
    void transmit(Frame f) {
        Mmap.surfaceFaults(); // a fault still pending from the sender's own memory is the sender's, thrown to it
        EventFd toSignal = null;
        EventFd error = null;
        synchronized (lock) {
            if (!running) {
                tx.increment(PortStat.TX_DROPPED_LINK_DOWN);
                return;
            }
            Throwable failure;
            boolean counted = false; // as delivered (once published) or as a drop
            try {
                try {
                    aheadTaken = 0; // one frame: its chains are popped as it needs them
                    aheadNext = 0;
                    fill(f);
                    counted = true;
                    // the interrupt waits for the sender's end of burst (flush), but not for ever
                    if (++unnotified >= MAX_UNNOTIFIED) {
                        toSignal = decideInterrupt();
                    }
                    Mmap.surfaceFaults(); // a SIGBUS in this guest's memory is thrown here, inside this try
                    failure = null;
                } catch (VirtqueueException | RuntimeException | Error e) {
                    Mmap.surfaceFaults(); // ... or here, when it sent fill down an error path first
                    failure = e;
                }
            } catch (InternalError fault) {
                failure = fault;
            }
            if (failure != null) {
                if (!counted) {
                    tx.increment(PortStat.TX_DROPPED_ERROR);
                }
                error = failLocked(failure);
            }
        }
        signal(toSignal); // each counted in signalling: both are written, so stop() does not wait for ever
        signal(error);
    }

    /**
     * Copies frames {@code burst.selected(from)} .. {@code burst.selected(to - 1)} into the guest's buffers, in order,
     * or counts why not: what {@link #transmit(Frame)} does for each, under one acquisition of the lock, with one
     * running check and one fault check each side (the sender's at entry, this guest's at the end of the try block).
     * A failure fails this queue: the frame that met it counts as an error, the ones after it as link down, as they
     * would one by one, and the ones before it that were written but not yet shown to the driver as errors too.
     * Frames count as sent only once their used entries are published ({@link #published}).
     */
    void transmit(Burst burst, int from, int to) {
        Mmap.surfaceFaults(); // a fault still pending from the sender's own memory is the sender's, thrown to it
        EventFd interrupt = null;
        EventFd error = null;
        synchronized (lock) {
            if (!running) {
                tx.add(PortStat.TX_DROPPED_LINK_DOWN, to - from);
                return;
            }
            int k = from;
            int writing = -1; // the first frame of the planned run being written, while one is
            Throwable failure;
            try {
                try {
                    takeAhead(Math.min(maxFrame == NO_LIMIT ? to - from : fitting(burst, from, to), AHEAD));
                    MemorySegment frames = burst.memory();
                    while (k < to) {
                        int planned = plan(burst, k, to);
                        if (planned > 0) { // the second pass: the guest's memory only
                            // the run's counts in locals, added once after it: no store of this queue's own
                            // between the frames' stores into the guest's buffers
                            int c = doneCount - planned; // the planned frames' chains, in their order
                            long bytes = 0;
                            writing = k;
                            for (int end = k + planned; k < end; k++) {
                                int len = burst.selectedLength(k);
                                writePlanned(frames, burst.selectedOffset(k), len, done[c++]);
                                bytes += len;
                            }
                            writing = -1;
                            donePackets += planned;
                            doneBytes += bytes;
                            continue;
                        }
                        fill(burst.selected(k)); // does not fit one buffer, or no chain was taken ahead for it
                        k++;
                    }
                    returnDone();
                    unnotified += to - from;
                    // the interrupt waits for the sender's end of burst (flush), but not for ever
                    if (unnotified >= MAX_UNNOTIFIED) {
                        interrupt = decideInterrupt();
                    }
                    Mmap.surfaceFaults(); // a SIGBUS in this guest's memory is thrown here, inside this try
                    failure = null;
                } catch (VirtqueueException | RuntimeException | Error e) {
                    Mmap.surfaceFaults(); // ... or here, when it sent fill down an error path first
                    failure = e;
                }
            } catch (InternalError fault) {
                failure = fault;
            }
            if (failure != null) {
                if (writing >= 0) { // frames of the planned run before k were written: errors, as the others are
                    donePackets += k - writing;
                }
                if (k < to) { // frame k met it (frames before it are counted already, the later ones never tried)
                    tx.increment(PortStat.TX_DROPPED_ERROR);
                    tx.add(PortStat.TX_DROPPED_LINK_DOWN, to - k - 1);
                }
                error = failLocked(failure); // the frames written but never shown to the driver count as errors
            }
        }
        signal(interrupt);
        signal(error);
    }

    /** Interrupts the guest for what was delivered since the last time, if its driver wants that. */
    void flush() {
        Mmap.surfaceFaults(); // the sender's, as in transmit
        betweenBursts(false);
    }

    /**
     * Under the lock, on a running queue, between a sender's bursts: the end of a burst ({@link #flush}: the interrupt
     * decision for the frames delivered) or a {@link #recheck}; then guest memory is let go (nothing of the ring is in
     * use between bursts). A fault or a broken ring fails the queue. The eventfds are written after unlocking.
     */
    private void betweenBursts(boolean recheck) {
        EventFd interrupt = null;
        EventFd error = null;
        synchronized (lock) {
            if (recheck) {
                recheckScheduled = false;
            }
            // a recheck leaves a burst that waits for its flush alone: the flush decides anyway
            if (running && (!recheck || (call != null && unnotified == 0))) {
                Throwable failure;
                try {
                    try {
                        if (recheck) {
                            interrupt = recheckInterrupt();
                        } else if (unnotified > 0) {
                            interrupt = decideInterrupt(); // publishes the burst's used entries first
                        }
                        vq.releaseMemory();
                        Mmap.surfaceFaults();
                        failure = null;
                    } catch (VirtqueueException | RuntimeException | Error e) {
                        Mmap.surfaceFaults();
                        failure = e;
                    }
                } catch (InternalError fault) {
                    failure = fault;
                }
                if (failure != null) {
                    error = failLocked(failure);
                }
            }
        }
        signal(interrupt); // each counted in signalling: both are written, so stop() does not wait for ever
        signal(error);
    }

    /** Under the lock: the call eventfd to write after unlocking (counted in {@link #signalling}), or null. */
    private EventFd decideInterrupt() throws VirtqueueException {
        unnotified = 0;
        vq.publishUsed(); // the frames delivered since the last time, with one used-index store
        published();
        if (!recheckScheduled) { // at most one pending per queue: one task per RECHECK_MILLIS while frames flow
            recheckScheduled = true;
            RECHECKS.schedule(this::recheck, io.iovirt.virtio.QueueWorker.RECHECK_MILLIS, TimeUnit.MILLISECONDS);
        }
        if (call != null && vq.needsNotification()) {
            signalling++;
            return call;
        }
        return null;
    }

    /**
     * {@link io.iovirt.virtio.QueueWorker#RECHECK_MILLIS} after frames were returned: interrupts the guest again if
     * its driver may be waiting for an interrupt it missed (see there: a driver that orders its ring accesses wrongly
     * can miss one, and a receive queue gets no other chance — the next frame's decision does not cross an event
     * index the driver left behind). Skipped while a sender's burst waits for its flush, which decides anyway.
     */
    private void recheck() {
        betweenBursts(true);
    }

    /** Under the lock: the call eventfd (counted in signalling) when the driver may be waiting, else null. */
    private EventFd recheckInterrupt() throws VirtqueueException {
        if (vq.driverMayBeWaiting()) {
            signalling++;
            recheckSignals.increment();
            return call;
        }
        return null;
    }

    /**
     * Under the lock: this receive queue fails (the guest's fault, whatever thread found out); returns the err
     * eventfd to write after unlocking, or null.
     */
    private EventFd failLocked(Throwable e) {
        running = false; // the queue stays failed until the frontend restarts it
        lostToFailure();
        if (vq != null) {
            vq.releaseMemory();
        }
        if (port != null) {
            port.queueFailed(index, io.iovirt.virtio.QueueWorker.describe(e));
        }
        if (err != null) {
            signalling++;
            return err;
        }
        return null;
    }

    /** Writes a guest's eventfd outside the lock, never blocking for long; a full one is counted and logged. */
    private void signal(EventFd e) {
        if (e == null) {
            return;
        }
        try {
            if (!e.trySignal()) {
                lostSignals.increment();
                log.warn(name + " rx queue " + index + ": the frontend's eventfd is full or was made blocking;"
                        + " interrupt dropped");
            }
        } catch (LinuxException | RuntimeException x) {
            log.warn(name + " rx queue " + index + ": cannot interrupt the guest: " + x.getMessage());
        } finally {
            synchronized (lock) {
                if (--signalling == 0) {
                    lock.notifyAll();
                }
            }
        }
    }

    /** What this queue's interrupts did so far, see {@link VirtioNetPort#rxQueueTotals}. */
    VirtioNetPort.RxQueueTotals totals() {
        return new VirtioNetPort.RxQueueTotals(lostSignals.sum(), recheckSignals.sum());
    }

    private static DescriptorChain[] newChains(Virtqueue q, int n) {
        DescriptorChain[] cs = new DescriptorChain[n];
        for (int i = 0; i < n; i++) {
            cs[i] = q.newChain();
        }
        return cs;
    }

    /**
     * Takes up to {@code max} chains for the burst's frames (no more than it has frames: each frame takes at least one
     * chain, so none is left over) against one look at the memory snapshot.
     */
    private void takeAhead(int max) throws VirtqueueException {
        aheadNext = 0;
        aheadTaken = vq.pop(ahead, max);
    }

    /**
     * Frames of the burst no longer than {@link #maxFrame}: the others take no chain, and a chain taken ahead and not
     * used would stay popped.
     */
    private int fitting(Burst burst, int from, int to) {
        int n = 0;
        for (int k = from; k < to; k++) {
            n += burst.selectedLength(k) <= maxFrame ? 1 : 0;
        }
        return n;
    }

    /** The frame's {@code i}-th chain: the next one taken ahead, or one popped now; null when the ring is empty. */
    private DescriptorChain take(int i) throws VirtqueueException {
        if (aheadNext < aheadTaken) {
            return ahead[aheadNext++];
        }
        DescriptorChain c = spare[i];
        if (!vq.pop(c)) {
            return null;
        }
        spareUsed = true;
        return c;
    }

    /**
     * The frame's chains {@code use[0..n)} with {@code lengths[0..n)} go back in order: with the burst's other chains
     * at its end, or now when one of them is a spare (the next frame reuses it). {@code frameBytes}: the frame's length
     * when it was written into them (it counts as sent once published), -1 when they go back unused.
     */
    private void finish(int n, int frameBytes) throws VirtqueueException {
        if (spareUsed) {
            spareUsed = false;
            returnDone();
            for (int i = 0; i < n; i++) {
                vq.pushBatched(use[i], lengths[i]);
            }
            if (frameBytes >= 0) {
                unpublishedPackets++;
                unpublishedBytes += frameBytes;
            }
            return;
        }
        for (int i = 0; i < n; i++) {
            done[doneCount] = use[i];
            doneLengths[doneCount++] = lengths[i];
        }
        if (frameBytes >= 0) {
            donePackets++;
            doneBytes += frameBytes;
        }
    }

    /** Returns the chains of the frames finished so far, in order, with one look at the snapshot and the dirty log. */
    private void returnDone() throws VirtqueueException {
        if (doneCount > 0) {
            int n = doneCount;
            doneCount = 0;
            vq.pushBatched(done, doneLengths, n);
        }
        unpublishedPackets += donePackets;
        unpublishedBytes += doneBytes;
        donePackets = 0;
        doneBytes = 0;
    }

    /** Under the lock, once the used index was published: the frames returned since the last time count as sent. */
    private void published() {
        if (unpublishedPackets > 0) {
            tx.add(PortStat.TX_PACKETS, unpublishedPackets);
            tx.add(PortStat.TX_BYTES, unpublishedBytes);
            unpublishedPackets = 0;
            unpublishedBytes = 0;
        }
    }

    /**
     * Under the lock, when the queue failed or stopped: the frames written or returned but never published count as
     * errors (the driver never sees them), not as sent.
     */
    private void lostToFailure() {
        long lost = donePackets + unpublishedPackets;
        if (lost > 0) {
            tx.add(PortStat.TX_DROPPED_ERROR, lost);
        }
        donePackets = 0;
        doneBytes = 0;
        doneCount = 0;
        unpublishedPackets = 0;
        unpublishedBytes = 0;
    }

    /**
     * The first pass over a burst: for the frames from {@code from} on that each fit the first device-writable buffer
     * of the next chain taken ahead, the chain and the bytes it gets go onto the return list, up to the first frame
     * that does not fit (or has no chain taken ahead); returns how many. Reads the chains' buffer lengths only, never
     * the guest's memory.
     */
    private int plan(Burst burst, int from, int to) {
        int n = 0;
        int next = aheadNext; // locals, stored once at the end
        int d = doneCount;
        for (int k = from; k < to && next < aheadTaken; k++) {
            DescriptorChain c = ahead[next];
            int len = burst.selectedLength(k);
            long need = headerSize + (long) len;
            if (len > maxFrame || c.writableCount() == 0 || c.length(c.readableCount()) < need) {
                break;
            }
            next++;
            done[d] = c;
            doneLengths[d++] = need;
            n++;
        }
        aheadNext = next;
        doneCount = d;
        return n;
    }

    /**
     * The second pass, for one frame ({@code len} bytes at {@code src[srcOff..]}) {@link #plan} gave chain {@code c}:
     * the header and the frame into the chain's first device-writable buffer, which holds both. The header goes
     * first, so the guest's buffer is written in ascending address order: measured inside one backend against
     * frame-then-header
     * (docs/benchmarks.md, 2026-12-05 16:44), port to port, 64 B, the same in the near placement (0.996x, 27
     * windows) and 1.06x in all 12 far windows (1.011-1.090).
     */
    private void writePlanned(MemorySegment src, long srcOff, int len, DescriptorChain c) {
        int w = c.readableCount();
        MemorySegment m = c.mapping(w);
        long o = c.offset(w);
        putHeader(m, o, 1);
        Chains.copy(src, srcOff, m, o + headerSize, len);
    }

    /**
     * Returns true when the frame was written (counted as sent once its used entries are published); counts the drop
     * otherwise.
     */
    private boolean fill(Frame f) throws VirtqueueException {
        int len = f.length();
        if (len > maxFrame) {
            tx.increment(PortStat.TX_DROPPED_OVERSIZE);
            return false;
        }
        long need = headerSize + (long) len;
        DescriptorChain first = take(0);
        if (first == null) {
            tx.increment(PortStat.TX_DROPPED_NO_BUFFERS);
            return false;
        }
        use[0] = first;
        long cap = first.writableBytes();
        if (!mergeable) {
            if (cap < need) {
                returnUnused(1);
                tx.increment(PortStat.TX_DROPPED_BUFFER_TOO_SMALL);
                return false;
            }
            writeHeader(first, 1);
            Chains.scatter(first, headerSize, f.buffer(), f.offset(), len);
            lengths[0] = need;
            finish(1, len);
            return true;
        }
        if (cap < headerSize) { // §5.1.6.3.1: every merge buffer holds at least a header
            returnUnused(1);
            tx.increment(PortStat.TX_DROPPED_BUFFER_TOO_SMALL);
            return false;
        }
        long put = Math.min(cap - headerSize, len);
        Chains.scatter(first, headerSize, f.buffer(), f.offset(), put);
        lengths[0] = headerSize + put;
        int n = 1;
        int descriptors = first.count();
        while (put < len) {
            if (n == MAX_BUFFERS) {
                returnUnused(n);
                tx.increment(PortStat.TX_DROPPED_BUFFER_TOO_SMALL);
                return false;
            }
            DescriptorChain c = take(n);
            if (c == null) {
                returnUnused(n);
                tx.increment(PortStat.TX_DROPPED_NO_BUFFERS);
                return false;
            }
            use[n] = c;
            descriptors += c.count();
            if (descriptors > MAX_FRAME_DESCRIPTORS) { // before copying into it: the walk's cost stays bounded
                returnUnused(n + 1);
                tx.increment(PortStat.TX_DROPPED_BUFFER_TOO_SMALL);
                return false;
            }
            long k = Math.min(c.writableBytes(), len - put);
            Chains.scatter(c, 0, f.buffer(), f.offset() + put, k);
            lengths[n++] = k;
            put += k;
        }
        writeHeader(first, n);
        finish(n, len);
        return true;
    }

    /** Gives the frame's chains back untouched (length 0) so the guest can repost them. */
    private void returnUnused(int n) throws VirtqueueException {
        for (int i = 0; i < n; i++) {
            lengths[i] = 0;
        }
        finish(n, -1);
    }

    /** No offloads are negotiated: flags and GSO type 0, num_buffers as used (§5.1.6.4). */
    private void writeHeader(DescriptorChain c, int numBuffers) {
        int w = c.readableCount(); // the first device-writable buffer
        if (c.writableCount() > 0 && c.length(w) >= headerSize) { // the usual case: two stores into it
            putHeader(c.mapping(w), c.offset(w), numBuffers);
            return;
        }
        header.fill((byte) 0);
        if (headerSize == VirtioNet.HDR_SIZE) {
            header.set(LE16, VirtioNet.HDR_NUM_BUFFERS, (short) numBuffers); // virtio is little-endian
        }
        Chains.scatter(c, 0, header, 0, headerSize);
    }

    /** The header into {@code m} at {@code o}, which has room for it: two stores. */
    private void putHeader(MemorySegment m, long o, int numBuffers) {
        m.set(LE64, o, 0L); // flags, gso_type, hdr_len, gso_size, csum_start
        if (headerSize == VirtioNet.HDR_SIZE) {
            m.set(LE32, o + 8, numBuffers << 16); // csum_offset 0, num_buffers
        } else {
            m.set(LE16, o + 8, (short) 0); // csum_offset
        }
    }
}
