// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import io.iovirt.memory.AddressRanges;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryFault;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.GuestWriteLog;
import io.iovirt.virtio.VirtqueueException.Reason;
import java.lang.foreign.MemorySegment;
import java.util.Objects;

/**
 * The device side of one virtqueue, split (§2.7) or packed (§2.8) behind one API. Everything read from guest memory is
 * hostile: each value is read once, checked, and every buffer is translated through {@link GuestMemory}; a rule
 * violation throws {@link VirtqueueException} and leaves the queue failed.
 *
 * <p>One thread owns a queue (pop, push and the notification calls); nothing here locks. The guest memory snapshot is
 * re-read at each call through the queue's own {@link GuestMemoryHolder.Reader} (one volatile read), which pins it;
 * the ring areas are re-translated only when it changed. A snapshot the queue moved away from is unpinned as soon as
 * the last chain popped under it is returned, and the owner unpins the current one with {@link #releaseMemory} when
 * nothing popped is in flight any more (the queue worker does this before it sleeps), so a replaced snapshot is
 * unmapped once no chain popped from it can still be used, however busy the queue stays.
 *
 * <p>A worker loop that neither loses kicks nor takes needless ones:
 * <pre>{@code
 * for (;;) {                                  // woken by the kick eventfd
 *     q.disableNotifications();
 *     do {
 *         DescriptorChain c;
 *         while ((c = q.pop()) != null) {
 *             long written = device.process(c);
 *             q.push(c, written);
 *         }
 *         q.notifyIfNeeded(callEventFd::signal);
 *     } while (q.enableNotifications());     // re-check after enabling: the driver may have raced us
 *     waitForKick();
 * }
 * }</pre>
 */
public abstract sealed class Virtqueue permits SplitQueue, PackedQueue {
    /** Signals the driver (writes the call eventfd / raises the interrupt). */
    @FunctionalInterface
    public interface Notifier<E extends Exception> {
        void notifyDriver() throws E;
    }

    final QueueConfig config;
    final int index;
    final int size;
    final boolean eventIdx;
    final GuestMemoryHolder.Reader memory;
    /** Most buffers in one chain: the spec's bound, lowered by the device ({@link #limitChain}). */
    int maxChain;
    /** The snapshot the ring segments were translated from. */
    GuestMemory mapped;
    /** Which head indices / buffer IDs the device owns. */
    final boolean[] inFlight;

    int inFlightCount;
    /**
     * Memory snapshots this queue moved to ({@link #refresh}), and the one each chain in flight was popped under (by
     * id): a snapshot the queue moved away from stays pinned while a chain popped under it is in flight (its
     * buffers, which the kernel may be reading or writing, are in that snapshot's mappings), and no longer.
     */
    private int snapshotChanges;

    private final int[] poppedUnder;
    /** Chains in flight that were popped before the last snapshot change; at 0 the older snapshots are unpinned. */
    private int olderInFlight;
    /** Driver→device notifications wanted; pop keeps the event index current while true. */
    boolean notificationsEnabled = true;

    private VirtqueueException failure;
    private final DescriptorChain ownChain;

    Virtqueue(QueueConfig config, GuestMemoryHolder memory) throws VirtqueueException {
        this.config = config;
        this.index = config.index();
        this.size = config.size();
        this.eventIdx = config.eventIdx();
        this.memory = memory.newReader();
        if (size < 1 || size > VirtioRing.MAX_QUEUE_SIZE) {
            throw fail(Reason.BAD_CONFIG, "queue size " + size + " is outside 1.." + VirtioRing.MAX_QUEUE_SIZE);
        }
        this.inFlight = new boolean[size];
        this.poppedUnder = new int[size];
        this.maxChain = VirtioRing.maxChain(size);
        this.ownChain = new DescriptorChain(this, maxChain);
    }

    /**
     * Lowers the chain length bound to what the device can use (virtio-blk: seg_max + 2; virtio-net: what a 64 KiB
     * frame needs): a longer chain fails the queue (CHAIN_TOO_LONG) as soon as the walk reaches the bound, so neither
     * walking nor holding a request costs more than that. Call before the first pop and before {@link #newChain}.
     */
    public final Virtqueue limitChain(int max) {
        if (max < 1) {
            throw new IllegalArgumentException("chain bound must be positive: " + max);
        }
        maxChain = Math.min(maxChain, max);
        ownChain.reset();
        return this;
    }

    /** The chain length bound. */
    public final int maxChain() {
        return maxChain;
    }

    /** The worker whose thread pops this queue, or null ({@link #servedBy}). */
    private QueueWorker worker;

    /**
     * The worker whose thread pops this queue (before it starts): once that worker is asked to stop, pops take
     * nothing more. A stop hands the ring position back to the frontend, and a thread that does not end in time
     * ({@link QueueWorker#stopAndWait}) is given up on with that position; once its blocked call returns it may only
     * finish the requests it had taken — whatever path of its loop or handler it comes back through (a shared
     * thread's round, a look at the ring before sleeping) — or the ring would move on under whoever has it next. A
     * pop already under way when the stop comes (its reads of guest memory blocked) takes that one request.
     *
     * <p>Requests of the in-flight record still to be resubmitted ({@link #resubmitsPending}) are taken after a stop
     * too, until the worker is given up on ({@link QueueWorker#givenUp}): the position handed back counts them as
     * consumed ({@link #vringBase}), so the stop serves them before the ring goes back.
     */
    public final void servedBy(QueueWorker w) {
        this.worker = w;
    }

    /** The serving worker was asked to stop: no new requests are taken (but see {@link #servedBy}). */
    private boolean stopping() {
        QueueWorker w = worker;
        return w != null && w.stopRequested() && (resubmitsPending() == 0 || w.givenUp());
    }

    /** Dirty logging: null unless migration asked for it. */
    GuestWriteLog writeLog;

    /**
     * Reports every guest memory write of this queue to {@code log} from now on (null: stop). See
     * {@link GuestWriteLog} for what is reported and when.
     */
    public final void setWriteLog(GuestWriteLog log) {
        this.writeLog = log;
    }

    /**
     * The log writes go to: this queue's own ({@link #setWriteLog}), else the one the vhost-user layer installs in
     * the device's memory holder while a migration logs dirty pages (issue 11); null (one volatile read) otherwise.
     */
    final GuestWriteLog log() {
        GuestWriteLog l = writeLog;
        return l != null ? l : memory.writeLog();
    }

    /** A device-side write to a ring area at guest address {@code gpa}. */
    final void logged(long gpa, long len) {
        GuestWriteLog l = log();
        if (l != null) {
            l.written(gpa, len);
        }
    }

    /**
     * Unpins guest memory: call when no popped chain is in flight (the worker does before it sleeps). The next call
     * pins the then current snapshot again.
     */
    public final void releaseMemory() {
        hintMemory = null; // no reference to a snapshot this queue no longer pins
        hintMapping = null;
        memory.leave();
    }

    /** Unpins snapshots older than the current one: call when nothing popped from them is still in flight. */
    public final void quiesceMemory() {
        memory.quiesce();
    }

    /**
     * Attaches to the rings described by {@code config}.
     *
     * @throws VirtqueueException when the size, alignment or starting indices are invalid or a ring area is not
     *                            inside the current guest memory
     */
    public static Virtqueue create(QueueConfig config, GuestMemoryHolder memory) throws VirtqueueException {
        return config.packed() ? new PackedQueue(config, memory, null) : new SplitQueue(config, memory, null);
    }

    /**
     * Attaches with crash recovery (vhost-user INFLIGHT_SHMFD, issue 11): {@code inflight} is the queue's region of
     * the frontend-kept in-flight memory, or null. A split queue records in it every request it takes and returns,
     * and on attaching to a region a previous backend left, first hands out again the requests that were in flight
     * (in the order they were taken) and resumes the available ring after them, whatever base the frontend gave.
     * A packed queue does the same with the spec's packed layout ({@link InflightPacked}); it also takes its used
     * position from the record, since the frontend has none to restore a packed ring's from after a crash.
     */
    public static Virtqueue create(QueueConfig config, GuestMemoryHolder memory, MemorySegment inflight)
            throws VirtqueueException {
        if (config.packed()) {
            return new PackedQueue(
                    config, memory, inflight == null ? null : new InflightPacked(inflight, config.size()));
        }
        return new SplitQueue(config, memory, inflight == null ? null : new InflightQueue(inflight, config.size()));
    }

    /** Requests handed out again from the in-flight record after a backend restart (crash recovery, issue 11). */
    public int resubmitted() {
        return 0;
    }

    /**
     * Requests of the in-flight record that {@link #pop} has not handed out again yet: {@link #pop} takes them first.
     * {@link #vringBase} counts them as consumed, so a device that stops the queue takes and finishes them first.
     */
    public int resubmitsPending() {
        return 0;
    }

    public final QueueConfig config() {
        return config;
    }

    public final int index() {
        return index;
    }

    public final int size() {
        return size;
    }

    /** Requests the device has popped and not yet pushed. */
    public final int inFlight() {
        return inFlightCount;
    }

    /** The error that failed this queue, or null while it works. */
    public final VirtqueueException failure() {
        return failure;
    }

    /** A new chain holder for {@link #pop(DescriptorChain)}; allocate these once, not per request. */
    public final DescriptorChain newChain() {
        return new DescriptorChain(this, maxChain);
    }

    /**
     * Takes the next available request into the queue's own chain object, which the next {@code pop()} overwrites.
     * For several requests in flight at once use {@link #pop(DescriptorChain)} with one chain per request.
     *
     * @return the request, or null when the driver has made nothing new available
     */
    public final DescriptorChain pop() throws VirtqueueException {
        return pop(ownChain) ? ownChain : null;
    }

    /**
     * Takes the next available request into {@code chain}, overwriting what it held (left as it was when there is
     * none).
     *
     * @return false when the driver has made nothing new available, or the queue's worker was asked to stop
     *         ({@link #servedBy})
     * @throws VirtqueueException when the request or ring breaks the rules; the queue is failed from then on
     */
    public final boolean pop(DescriptorChain chain) throws VirtqueueException {
        if (chain.queue() != this) {
            throw new IllegalArgumentException(
                    "chain was created for virtqueue " + chain.queue().index + ", not " + index);
        }
        if (stopping() || !popInto(chain, refresh())) {
            return false;
        }
        poppedUnder[chain.id] = snapshotChanges;
        return true;
    }

    /**
     * Returns a popped request to the driver.
     *
     * @param bytesWritten bytes the device wrote into the writable buffers (from their start)
     * @throws IllegalArgumentException when the chain is not in flight or more was written than it can hold
     */
    public final void push(DescriptorChain chain, long bytesWritten) throws VirtqueueException {
        pushChain(chain, bytesWritten, true);
    }

    /**
     * Returns a popped request like {@link #push}, but leaves it for {@link #publishUsed} to make visible: a burst of
     * requests (or the several chains of one multi-buffer frame, MRG_RXBUF) reaches the driver with one used-index
     * store, which is what the driver core polls — one cache line transfer per burst instead of one per request.
     * {@link #needsNotification} publishes first, so a batch ends with the usual notification decision; a device that
     * ends a batch without one calls {@link #publishUsed} itself. (A packed ring stores the flags of the batch's first
     * used descriptor last, at publication: the driver reads them in ring order, so the rest become visible with it.
     * Queues with an in-flight record publish at once: crash recovery records each used-index step.)
     */
    public final void pushBatched(DescriptorChain chain, long bytesWritten) throws VirtqueueException {
        pushChain(chain, bytesWritten, false);
    }

    /**
     * Takes up to {@code max} available requests into {@code chains[0..]}, as many {@link #pop(DescriptorChain)} calls
     * would, against one look at the memory snapshot: the batch is translated through the snapshot current when it
     * starts (pinned, so it stays mapped), and a memory table that changes meanwhile is taken up by the next batch.
     *
     * @return how many were taken: 0 when the driver has made nothing new available; fewer than available once the
     *         queue's worker was asked to stop ({@link #servedBy})
     * @throws VirtqueueException when a request or the ring breaks the rules; the queue is failed from then on
     */
    public final int pop(DescriptorChain[] chains, int max) throws VirtqueueException {
        Objects.checkFromIndexSize(0, max, chains.length);
        GuestMemory mem = refresh();
        int n = 0;
        while (n < max) {
            DescriptorChain c = chains[n];
            if (c.queue() != this) {
                throw new IllegalArgumentException(
                        "chain was created for virtqueue " + c.queue().index + ", not " + index);
            }
            if (stopping() || !popInto(c, mem)) {
                break;
            }
            poppedUnder[c.id] = snapshotChanges;
            n++;
        }
        return n;
    }

    /**
     * Returns {@code chains[0..n)} with {@code written[0..n)} bytes written, in order, as {@link #pushBatched(
     * DescriptorChain, long)} one by one would, with the per-request bookkeeping done once: one look at the memory
     * snapshot, and one at the dirty log after all the writes — if migration logging is on by then, every buffer the
     * chains let the device write and every used entry written here is reported (written first, looked at after: a
     * log installed in between still gets them all, as with the one-by-one form).
     *
     * <p>With VIRTIO_F_IN_ORDER on a split queue without an in-flight record ({@link #coalescesUsed}), consecutive
     * chains that have no device-writable buffer (transmit requests: nothing to report but that they are done) share
     * one used entry, as the spec's in-order use of descriptors lets a device do: the entry goes where the first of
     * them would have, names the last of them, and the used index moves past all of them; the driver, which knows the
     * order it made them available in, counts the rest from the id. Chains with writable buffers each keep their
     * own entry and its length (DPDK's in-order receive path reads every entry's length). Measured: 1.04x the frames
     * single port, testpmd txonly 64 B (docs/benchmarks.md, 2026-12-05 21:28 section).
     *
     * @throws IllegalArgumentException as {@link #push} does, for the first chain that is wrong (the ones before it
     *                                  are returned)
     */
    public final void pushBatched(DescriptorChain[] chains, long[] written, int n) throws VirtqueueException {
        Objects.checkFromIndexSize(0, n, Math.min(chains.length, written.length));
        refresh();
        int mark = usedMark();
        boolean coalesce = coalescesUsed();
        int done = 0;
        try {
            while (done < n) {
                DescriptorChain c = chains[done];
                long len = written[done];
                checkReturnable(c, len);
                inFlight[c.id] = false;
                inFlightCount--;
                returned(c.id);
                done++;
                if (!coalesce || c.writableBytes != 0) {
                    writeUsed(c.id, (int) len, false, false);
                    continue;
                }
                // a run of chains with nothing to write: one entry, at the run's first place, naming its last chain
                int last = c.id;
                int run = 1;
                while (done < n && isReturnableReadOnly(chains[done], written[done])) {
                    last = chains[done].id;
                    inFlight[last] = false;
                    inFlightCount--;
                    returned(last);
                    done++;
                    run++;
                }
                writeUsedRun(last, run);
            }
        } finally {
            GuestWriteLog l = log();
            if (l != null && done > 0) {
                for (int i = 0; i < done; i++) {
                    logWritable(chains[i], l);
                }
                logUsedSince(l, mark, done);
            }
        }
    }

    /** Makes every request returned by {@link #pushBatched} visible to the driver (one release store). */
    public abstract void publishUsed();

    private void pushChain(DescriptorChain chain, long bytesWritten, boolean publish) throws VirtqueueException {
        checkReturnable(chain, bytesWritten);
        GuestWriteLog l = log();
        if (l != null) {
            logWritable(chain, l);
        }
        addUsed(chain.id, bytesWritten, publish);
    }

    /**
     * Whether {@link #pushBatched(DescriptorChain[], long[], int)} may cover several returned chains with one used
     * entry (a split queue with VIRTIO_F_IN_ORDER and no in-flight record).
     */
    boolean coalescesUsed() {
        return false;
    }

    /**
     * Writes one used entry (length 0) naming {@code lastId} and moves the used index past {@code count} chains:
     * those of a run {@link #pushBatched(DescriptorChain[], long[], int)} returned in order, {@code lastId} the last.
     * Only where {@link #coalescesUsed} holds.
     */
    void writeUsedRun(int lastId, int count) {
        throw new IllegalStateException("virtqueue " + index + " does not coalesce used entries");
    }

    /** A chain of this queue in flight, with no device-writable buffer and nothing written: it may join a run. */
    private boolean isReturnableReadOnly(DescriptorChain c, long written) {
        int id = c.id;
        return c.queue() == this && c.writableBytes == 0 && written == 0 && id >= 0 && id < size && inFlight[id];
    }

    /** A chain of this queue that is in flight, and a written length it can hold. */
    private void checkReturnable(DescriptorChain chain, long bytesWritten) {
        if (chain.queue() != this) {
            throw new IllegalArgumentException(
                    "chain was created for virtqueue " + chain.queue().index + ", not " + index);
        }
        if (bytesWritten < 0 || bytesWritten > chain.writableBytes) {
            throw new IllegalArgumentException("virtqueue " + index + ": " + bytesWritten
                    + " bytes written into a chain with " + chain.writableBytes + " writable bytes");
        }
        if (bytesWritten > 0xffff_ffffL) {
            throw new IllegalArgumentException(
                    "virtqueue " + index + ": used length " + bytesWritten + " does not fit 32 bits");
        }
        int id = chain.id;
        if (id < 0 || id >= size || !inFlight[id]) {
            throw new IllegalArgumentException("virtqueue " + index + ": id " + id + " is not in flight");
        }
    }

    /** Reports every device-writable buffer of {@code chain}: all of them, a status byte may follow a short write. */
    private static void logWritable(DescriptorChain chain, GuestWriteLog l) {
        for (int i = chain.readable; i < chain.count; i++) {
            if (chain.length(i) > 0) {
                l.written(chain.guestAddress(i), chain.length(i));
            }
        }
    }

    /**
     * Returns the request with head index / buffer ID {@code id} to the driver, reporting {@code len} bytes written.
     *
     * @throws IllegalArgumentException when {@code id} is not in flight or {@code len} does not fit 32 bits
     */
    public final void addUsed(int id, long len) throws VirtqueueException {
        addUsed(id, len, true);
    }

    private void addUsed(int id, long len, boolean publish) throws VirtqueueException {
        if (id < 0 || id >= size || !inFlight[id]) {
            throw new IllegalArgumentException("virtqueue " + index + ": id " + id + " is not in flight");
        }
        if (len < 0 || len > 0xffff_ffffL) {
            throw new IllegalArgumentException("virtqueue " + index + ": used length " + len + " does not fit 32 bits");
        }
        refresh();
        writeUsed(id, (int) len, publish, true);
        inFlight[id] = false;
        inFlightCount--;
        returned(id);
    }

    /**
     * Chain {@code id} was returned: when it was the last one in flight popped under an older snapshot, nothing uses
     * the older snapshots any more, and they are unpinned now rather than when the queue next goes idle — a queue kept
     * busy (a flooding guest, a hostile frontend's) would otherwise keep every memory table it ever moved away from
     * mapped, one more with each SET_MEM_TABLE, until the process ran out of address space or mappings.
     */
    private void returned(int id) {
        if (olderInFlight > 0 && poppedUnder[id] != snapshotChanges && --olderInFlight == 0) {
            memory.quiesce();
        }
    }

    /**
     * Decides whether the driver wants a used-buffer notification for what was pushed since the last decision
     * (§2.7.7 / §2.8.10: avail.flags or used_event; packed: driver event suppression), after a full fence so the used
     * index is visible before the driver's suppression state is read. Returns false when nothing was pushed.
     */
    public abstract boolean needsNotification() throws VirtqueueException;

    /** Calls {@code notifier} when {@link #needsNotification()} says the driver wants it; returns whether it did. */
    public final <E extends Exception> boolean notifyIfNeeded(Notifier<E> notifier) throws E, VirtqueueException {
        if (needsNotification()) {
            notifier.notifyDriver();
            return true;
        }
        return false;
    }

    /** Asks the driver not to kick (while the device is processing anyway). Advisory: kicks may still arrive. */
    public abstract void disableNotifications() throws VirtqueueException;

    /**
     * Asks the driver to kick on its next available buffer, then (after a full fence) checks the ring again.
     *
     * @return true when buffers are already available: keep processing instead of waiting for a kick
     */
    public abstract boolean enableNotifications() throws VirtqueueException;

    /** True when the driver has made a request available that {@link #pop} would take. */
    public abstract boolean hasAvailable() throws VirtqueueException;

    /**
     * The ring state for VHOST_USER_GET_VRING_BASE (QEMU's encoding, see {@link QueueConfig#withVringBase}). Requests
     * still in flight count as consumed: drain them first. So do requests of the in-flight record not yet handed out
     * again ({@link #resubmitsPending}): the available side resumes after every request the previous backend took,
     * and one index cannot name the ones among them still to be done (with out-of-order completion they lie anywhere
     * among the taken ones; a packed ring's slots of completed ones hold used descriptors by now). Take and finish
     * them before asking.
     */
    public abstract int vringBase();

    /** Takes the next request into {@code chain} (reset first), or returns false and leaves it untouched. */
    abstract boolean popInto(DescriptorChain chain, GuestMemory mem) throws VirtqueueException;

    /**
     * Writes one used entry; {@code publish}: also make it (and any staged before it) visible to the driver;
     * {@code log}: report the entry to the dirty log now (false: the caller reports it with {@link #logUsedSince}).
     */
    abstract void writeUsed(int id, int len, boolean publish, boolean log);

    /** Where the next used entry goes, for {@link #logUsedSince}. */
    abstract int usedMark();

    /** Reports the {@code count} used entries written since {@code mark} ({@link #usedMark}) to {@code l}. */
    abstract void logUsedSince(GuestWriteLog l, int mark, int count);

    abstract void mapRings(GuestMemory mem) throws VirtqueueException;

    /** The current snapshot, re-translating the ring areas when it changed; rethrows an earlier failure. */
    final GuestMemory refresh() throws VirtqueueException {
        if (failure != null) {
            throw failure;
        }
        GuestMemory mem = memory.current();
        if (mem != mapped) {
            try {
                mapRings(mem);
            } catch (VirtqueueException e) {
                // A failed queue touches guest memory no more, but a chain popped before may still be in the kernel
                // (an io_uring read an io-wq worker copies into): its snapshots stay pinned until the owner, which
                // knows when nothing is, releases them (releaseMemory at its stop) or leaks them on purpose.
                // Unpinned now, the memory table's replacement could unmap them, and the kernel would write into
                // whatever is mapped at those addresses next (another tenant's memory).
                if (inFlightCount == 0) {
                    memory.leave();
                }
                throw e;
            }
            mapped = mem;
            snapshotChanges++;
            olderInFlight = inFlightCount; // popped under the snapshots before this one
            if (olderInFlight == 0) {
                memory.quiesce();
            }
        }
        return mem;
    }

    /** The descriptor table (split) or ring (packed), sized and aligned as {@link VirtioRing} says. */
    final MemorySegment mapDescArea(GuestMemory mem) throws VirtqueueException {
        boolean packed = config.packed();
        return mapArea(
                mem,
                config.descAddr(),
                VirtioRing.descAreaBytes(size),
                VirtioRing.descAreaAlign(packed),
                VirtioRing.descAreaName(packed));
    }

    /** The available ring (split) or driver event suppression area (packed). */
    final MemorySegment mapDriverArea(GuestMemory mem) throws VirtqueueException {
        boolean packed = config.packed();
        return mapArea(
                mem,
                config.driverArea(),
                VirtioRing.driverAreaBytes(packed, size, eventIdx),
                VirtioRing.driverAreaAlign(packed),
                VirtioRing.driverAreaName(packed));
    }

    /** The used ring (split) or device event suppression area (packed). */
    final MemorySegment mapDeviceArea(GuestMemory mem) throws VirtqueueException {
        boolean packed = config.packed();
        return mapArea(
                mem,
                config.deviceArea(),
                VirtioRing.deviceAreaBytes(packed, size, eventIdx),
                VirtioRing.deviceAreaAlign(packed),
                VirtioRing.deviceAreaName(packed));
    }

    /** Translates one ring area, checking the spec's alignment (guest side) and that host access can be atomic. */
    final MemorySegment mapArea(GuestMemory mem, long gpa, long bytes, int align, String what)
            throws VirtqueueException {
        if ((gpa & (align - 1)) != 0) {
            throw fail(Reason.BAD_CONFIG, String.format("%s at 0x%x is not %d-byte aligned", what, gpa, align));
        }
        MemorySegment s;
        try {
            s = mem.translate(gpa, bytes);
        } catch (GuestMemoryFault f) {
            throw fail(
                    Reason.RING_OUTSIDE_MEMORY,
                    String.format("%s 0x%x+0x%x is outside guest memory", what, gpa, bytes));
        }
        if ((s.address() & (align - 1)) != 0) {
            throw fail(
                    Reason.BAD_CONFIG,
                    String.format("%s at 0x%x maps to unaligned host address 0x%x", what, gpa, s.address()));
        }
        return s;
    }

    /**
     * The region the last translated buffer was in, of snapshot {@link #hintMemory} (snapshots are immutable, so it
     * stays right for as long as that snapshot is the current one): a guest's buffers mostly come from one region,
     * and checking that one first spares the region search — measured in the single-port net run, ~6 % of the rate
     * (docs/benchmarks.md, 2026-12-05, variant 22). Every buffer is still bounds-checked against the region it is in.
     */
    private GuestMemory hintMemory;

    private long hintStart;
    private long hintSize;
    private MemorySegment hintMapping;

    /**
     * Adds one buffer to {@code c}: enforces the chain length bound, readable-before-writable order and the 2^32-byte
     * total, and translates it through guest memory.
     */
    final void appendBuffer(DescriptorChain c, GuestMemory mem, long addr, long len, boolean writable)
            throws VirtqueueException {
        if (c.count == maxChain) {
            throw fail(Reason.CHAIN_TOO_LONG, "descriptor chain has more than " + maxChain + " buffers");
        }
        if (writable) {
            c.writableBytes += len;
        } else {
            if (c.count > c.readable) {
                throw fail(
                        Reason.READABLE_AFTER_WRITABLE,
                        String.format("device-readable buffer 0x%x+0x%x follows a device-writable one", addr, len));
            }
            c.readable++;
            c.readableBytes += len;
        }
        if (c.readableBytes + c.writableBytes > VirtioRing.MAX_CHAIN_BYTES) {
            throw fail(Reason.CHAIN_TOO_LARGE, "descriptor chain describes more than 2^32 bytes");
        }
        if (len == 0) {
            c.append(addr, MemorySegment.NULL, 0, 0); // nothing to access, so the address does not matter
            return;
        }
        if (mem == hintMemory && AddressRanges.fits(hintStart, hintSize, addr, len)) {
            c.append(addr, hintMapping, addr - hintStart, len); // the region of the buffer before, checked the same
            return;
        }
        int region = mem.find(addr, len);
        if (region < 0) {
            throw fail(
                    Reason.BUFFER_OUTSIDE_MEMORY, String.format("buffer 0x%x+0x%x is outside guest memory", addr, len));
        }
        hintMemory = mem;
        hintStart = mem.start(region);
        hintSize = mem.size(region);
        hintMapping = mem.mapping(region);
        c.append(addr, hintMapping, mem.offset(region, addr), len);
    }

    /** Records the failure (the queue stays failed) and returns it for the caller to throw. */
    final VirtqueueException fail(Reason reason, String detail) {
        VirtqueueException e = new VirtqueueException(index, reason, detail);
        failure = e;
        return e;
    }

    /**
     * After an idle spell ({@link QueueWorker#RECHECK_MILLIS}): whether the driver may be waiting for an interrupt
     * it missed. Never when the last interrupt decision that sent one came after everything returned, or when the
     * driver has turned interrupts off; otherwise, with event indexes, when the event it asked for lies among the
     * entries returned silently since that interrupt (split and packed rings), and without them whenever it wants
     * interrupts. Before the first interrupt on an attachment (what a previous backend returned is unknown): with
     * split event indexes, when the used_event it last wrote is not the used index published; otherwise whenever it
     * has not turned interrupts off. A true answer costs at most one spurious interrupt.
     */
    public abstract boolean driverMayBeWaiting() throws VirtqueueException;

    /**
     * What the ring looks like now, for a report about a guest that stopped making progress: the driver's and the
     * device's indexes and notification state, read without synchronizing with the queue's thread (so only roughly
     * consistent). Call it only while the queue runs on memory that stays mapped (the guest alive, no memory table
     * change under way).
     */
    public String ringState() {
        return toString();
    }

    @Override
    public String toString() {
        return getClass().getSimpleName() + "[index=" + index + ", size=" + size + ", inFlight=" + inFlightCount
                + (failure != null ? ", failed" : "") + "]";
    }
}
