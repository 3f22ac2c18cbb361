// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.*;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.LinuxException;
import io.iovirt.memory.GuestMemory;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageLock;
import io.iovirt.util.LogLimiter;
import io.iovirt.vhostuser.BackendException;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.VhostUserBackend;
import io.iovirt.vhostuser.VringSetup;
import io.iovirt.virtio.DeviceStatus;
import io.iovirt.virtio.QueueConfig;
import io.iovirt.virtio.QueueWorker;
import io.iovirt.virtio.RingHandler;
import io.iovirt.virtio.VirtioFeatures;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.io.IOException;
import java.lang.System.Logger.Level;
import java.nio.charset.StandardCharsets;

/**
 * A virtio-blk device (VIRTIO 1.2 §5.2) over a raw image, served through vhost-user. Each queue runs on its own
 * {@link QueueWorker} with one of two engines — {@link SyncEngine} (one request at a time) or {@link UringEngine}
 * (queue-size requests in flight through the queue's own io_uring) — and its own I/O state; queues share only the
 * image descriptor and counters. Chains are bounded by seg_max + 2 (header and status), segments by size_max.
 *
 * <p>Called by the protocol layer from one control thread; the workers never call back into it.
 */
public final class BlkDevice implements VhostUserBackend {
    private static final System.Logger LOG = System.getLogger(BlkDevice.class.getName());

    /** How the queues reach the image. */
    public enum IoEngine {
        /**
         * io_uring when the kernel allows it, else synchronous. Also for buffered images: measured here (4 KiB,
         * one queue, page-cache hits), io_uring beat synchronous preadv/pwritev even at QD 1 (randread p50 ~10 µs
         * against 40-80 µs), so there is no case where the synchronous engine is the faster default.
         */
        AUTO,
        /** One request at a time per queue, preadv/pwritev/fdatasync on the queue thread. */
        SYNC,
        /** Up to queue-size requests in flight per queue through io_uring; fails when io_uring is unavailable. */
        IO_URING
    }

    private final String name;
    private final DiskImage image;
    private final int queues;
    private final BlkLimits limits = BlkLimits.defaults();
    private final BlkConfig config;
    private final byte[] serial;
    /**
     * Lines this device's frontend can cause at will (a queue it broke, then started again, in a loop): a burst, then
     * one a second with the count of the ones left out.
     */
    private final LogLimiter frontendLines = new LogLimiter(LOG);
    /** One per queue, so queue threads never share counter cells; {@link #stats()} sums them. */
    private final BlkStats[] queueStats;
    /** The frontend's backend channel while one is connected (resize notifications). */
    private volatile io.iovirt.vhostuser.BackendChannel backendChannel;

    private final QueueWorker[] workers;
    private final Virtqueue[] vqs;
    /**
     * The request handler of each queue whose thread runs (given up on included), for a switch to read-only that
     * waits for the writes in flight ({@link BlkQueueHandler#mutationsEnded}); set before the thread starts, with
     * volatile semantics, so a switch that reads it after setting read-only sees every queue that can have let a write
     * through before.
     */
    private final java.util.concurrent.atomic.AtomicReferenceArray<BlkQueueHandler> handlers;

    // ---- image ownership (issue 11): the image lock follows the active frontend ----
    /** Opened when a frontend first starts a queue; set, and its type changed, under {@link #lockType}. */
    private ImageLock imageLock;
    /**
     * Guards {@link #imageLock}'s creation, its taking and its type, and {@link #lockShared}: a frontend's start
     * ({@link #takeImage}) and a switch to writable ({@link #setReadOnly}) do not interleave, so no frontend takes
     * a shared lock on a disk switched writable. Nothing under it waits for the image's file system.
     */
    private final Object lockType = new Object();
    /** The type of image lock a frontend starting now takes: shared while the disk is read-only. */
    private boolean lockShared;
    /**
     * Counts the switches ({@link #setReadOnly}), under {@link #lockType}: a lock made shared later for a switch to
     * read-only ({@link #shareWhenDrained}) is made so only while no switch came after it.
     */
    private long switches;
    /** How long a switch to read-only waits for its lock to become shared before it answers ({@link #setReadOnly}). */
    private volatile java.time.Duration shareWaitLimit = java.time.Duration.ofSeconds(5);
    /**
     * One blk.set-readonly at a time; a later one waits for it {@link #shareWaitLimit} at most ({@link #setReadOnly}):
     * a qcow2 switch to read-only waits for its tables' first write-back, which a file system that does not answer
     * holds for ever.
     */
    private final java.util.concurrent.locks.ReentrantLock switching = new java.util.concurrent.locks.ReentrantLock();
    /**
     * Held while a switch's thread changes the image ({@link #applySwitch}), which may wait for the image's file
     * system; {@link #appliedSwitch}, the last switch applied, under it.
     */
    private final java.util.concurrent.locks.ReentrantLock imageSwitch = new java.util.concurrent.locks.ReentrantLock();

    private long appliedSwitch;
    /**
     * Run on the switch's thread when a switch to writable that answered with the disk still read-only has made it
     * writable ({@link #switchWritable}): what its answer reported (a daemon's state file) is out of date then.
     */
    private volatile Runnable switchEndedLate = () -> {};
    /**
     * The last switch to writable whose thread was started ({@link #switchWritable}), under {@link #switching}: a
     * later call while it is still under way (its image busy) waits for it instead of starting one more thread that
     * would only queue behind it — one per retry or reload while a file system does not answer.
     */
    private PendingWritable pendingWritable;

    /** A switch to writable's thread: its generation, its end, and whether its caller has answered. */
    private record PendingWritable(
            long generation,
            java.util.concurrent.CompletableFuture<Void> done,
            java.util.concurrent.atomic.AtomicBoolean answered) {}
    /** Why this frontend may not use the image (another VM holds it), or null. */
    private volatile String fenced;
    /**
     * How long the vhost-user session's thread waits for image work on a thread of its own ({@link #onImageThread}):
     * reading the image again at a queue start, writing it back when the last queue stops. Both read or write (and
     * fsync) the image's file, which a file system that does not answer (a stopped FUSE daemon, a hung NFS server)
     * holds for ever; the thread waiting is the vhost-user session's, whose frontend waits for its reply to the message
     * that started or stopped the queue and which removing the export joins (it cuts this wait short: {@link #retire}). A
     * few seconds: far longer than reading or writing a header and tables takes on a healthy disk, and well short of
     * what a frontend waits for a reply before it gives the backend up.
     */
    static final java.time.Duration IMAGE_WORK_WAIT_LIMIT = java.time.Duration.ofSeconds(5);

    /**
     * How long the session's thread still waits for image work once the export is being removed ({@link #retire}):
     * long enough for a healthy disk to end a write-back (a flush and an fsync: milliseconds), so that removing a
     * served export hands the image over as a queue stop does and its close finds no thread of it still in I/O; far
     * short of the removal's server stop ({@link #IMAGE_WORK_WAIT_LIMIT} alike), so that wait no longer races this one.
     */
    static final java.time.Duration RETIRED_IMAGE_WORK_GRACE = java.time.Duration.ofSeconds(1);

    /**
     * Image work on a thread of its own ({@link #onImageThread}), and its texts: what it does, for log lines and the
     * reasons a frontend is fenced with; what it means once given up on (the second part of an ERROR line: {2} is the
     * image's path); what it means when its thread cannot be started; the INFO line's end once it has ended late; and,
     * when it fails, the reason its caller is given and the ERROR line that says so.
     */
    private enum ImageWork {
        REFRESH(
                "refresh",
                "reading the image again",
                "cannot read the image again",
                "blk {0}: cannot read the image again as the backend that had it last left it: {1}. This frontend''s"
                        + " requests all fail with an I/O error",
                "started by an earlier start of the queues",
                "This frontend''s requests all fail with an I/O error and the device reports NEEDS_RESET until it stops"
                        + " its queues; the image lock of {2} stays taken until that has ended. Make the file system"
                        + " answer again (a stopped FUSE daemon, a hung NFS server, a failing disk), then reset the"
                        + " device (reboot the guest, or detach and attach the disk), or remove the export",
                "This frontend''s requests all fail with an I/O error and the device reports NEEDS_RESET until it stops"
                        + " its queues; reset the device (reboot the guest, or detach and attach the disk) to try"
                        + " again",
                "has been read again now (its file system answers): the next start of the queues serves it",
                "has been read again now"),
        HAND_OVER(
                "hand-over",
                "writing the image back",
                "writing the image back failed",
                // what could not be written stays in memory and would be written later (the next flush, the close)
                // over what another backend wrote meanwhile: the lock stays with this device
                "blk {0}: writing the image back when its last queue stopped failed: {1}. The image lock is kept, so"
                        + " another VM (a migration''s destination) cannot take the image until this backend has"
                        + " written it back (its next start) or has stopped",
                "started when the queues last stopped",
                "The frontend is answered, but the image lock of {2} is kept: the write-back goes on and may still"
                        + " land, so another VM (a migration''s destination) or program (qemu-img) that took the image"
                        + " now would have its tables written over; it is refused the image. Make the file system"
                        + " answer again (a stopped FUSE daemon, a hung NFS server, a failing disk): an INFO line says"
                        + " when the write-back has ended, and the image lock is let go then if it ended well and no"
                        + " queue started meanwhile; the next start of the queues here waits for it, and removing the"
                        + " export (blk.remove) lets go of the image once it has ended",
                "The image lock of {2} is kept, so another VM (a migration''s destination) cannot take the image until"
                        + " this backend has written it back (its next start) or has stopped",
                "has been written back now (its file system answers): the next start of the queues serves it",
                "has been written back now");

        /** The end of its thread's name, "blk ID " + this. */
        final String thread;

        final String doing;
        /** Why it did not end well, before ": " and the error's message: the reason its caller is given. */
        final String failed;
        /**
         * The ERROR line that says it failed ({0}: the export's id, {1}: the error's message) when the image lock was
         * not kept for it; one kept for it, or of an export being removed, says so in a line of its own instead
         * ({@link #startImageWork}).
         */
        final String failedLine;
        /** Where one still under way came from, for the start or stop that finds it. */
        final String startedBy;

        final String givenUp;
        final String noThread;
        final String endedLate;
        /** The INFO line's middle once it has ended well with the lock kept for it: a line says it is let go. */
        final String ended;

        ImageWork(
                String thread,
                String doing,
                String failed,
                String failedLine,
                String startedBy,
                String givenUp,
                String noThread,
                String endedLate,
                String ended) {
            this.thread = thread;
            this.doing = doing;
            this.failed = failed;
            this.failedLine = failedLine;
            this.startedBy = startedBy;
            this.givenUp = givenUp;
            this.noThread = noThread;
            this.endedLate = endedLate;
            this.ended = ended;
        }
    }

    /** Image work started ({@link #onImageThread}): its kind, and its end with null or why it failed. */
    private static final class PendingImageWork {
        final ImageWork kind;
        final java.util.concurrent.CompletableFuture<String> done = new java.util.concurrent.CompletableFuture<>();
        /** Whether a thread waiting for it gave it up (under {@link #imageWorkGuard}). */
        boolean givenUp;

        PendingImageWork(ImageWork kind) {
            this.kind = kind;
        }
    }

    /**
     * The last image work started ({@link #onImageThread}), guarded by {@link #imageWorkGuard}. One still under way is
     * waited for, never run beside: it holds the image's metadata lock, and a thread started per retry would only
     * queue behind it.
     */
    private PendingImageWork imageWork;

    private final Object imageWorkGuard = new Object();
    /**
     * Whether the last queue stopped while {@link #imageWork} still ran, keeping the image lock for it (under {@link
     * #imageWorkGuard}): its thread lets go of the lock when it ends well, unless a queue started meanwhile (which
     * clears this, {@link #takeImageLocked}); else the lock stayed taken with no frontend served, and another VM (a
     * migration's destination) was refused the image until this export's next start or its removal.
     */
    private boolean releaseWhenDone;

    private final boolean[] failed;
    /**
     * Per queue, guarded by {@link #failed}: its worker did not stop within {@link #stopWaitLimit} and was given up on
     * ({@link #queueStopped}); it stays in {@link #workers} (so the image lock stays taken and no second worker starts
     * on its ring) until its thread has ended.
     */
    private final boolean[] abandoned;
    /**
     * Set for good once a queue stopped with a write, write-zeroes or discard given up on while still in the kernel
     * ({@link BlkQueueHandler#mutationsAbandoned}: its engine could not wait for its io_uring and closed it): such a
     * write may land any time, through the image's open file description, which the kernel keeps open for it. So the
     * image lock is never let go of by this device while the image is open — not when the last queue stops
     * ({@link #forget}), not made shared for a switch to read-only — and {@link #close} leaves it to the kernel,
     * which drops it once that request has completed ({@link ImageLock#closeLeavingLockToKernel}).
     */
    private volatile boolean writesLeftInKernel;
    /**
     * Queue threads started and not yet ended, those given up on included, and a thread switching the disk read-only
     * and making the image lock shared after it ({@link #switchReadOnly}: it writes the image back and flushes it),
     * and image work on a thread of its own ({@link #onImageThread}: reading the image again, writing it back)
     * ({@link #quiescent}); each one counts itself out when it ends ({@link QueueWorker#closeWhenEnded}), then
     * {@link #threadEnded} is notified.
     */
    private final java.util.concurrent.atomic.AtomicInteger threads = new java.util.concurrent.atomic.AtomicInteger();
    /** Set by {@link #close}: the image's owner flushed and closed it, so queues given up on hand nothing over. */
    private volatile boolean closing;
    /**
     * Set by {@link #retire} (the export is being removed): from then on no switch to read-only starts its thread, so
     * once {@link #quiescent} the image may be closed and no thread of the device's touches it or its lock any more;
     * and the last queue's stop keeps the image lock ({@link #forget}): {@link #close} lets go of it once the owner's
     * final flush of the image has ended.
     */
    private volatile boolean retired;

    /** Completed by {@link #retire}, after {@link #retired}: ends a wait for image work ({@link #onImageThread}). */
    private final java.util.concurrent.CompletableFuture<Void> retiring =
            new java.util.concurrent.CompletableFuture<>();

    private final Object threadEnded = new Object();
    /** How long {@link #queueStopped} waits in all for a worker still finishing its requests. */
    private volatile java.time.Duration stopWaitLimit = QueueWorker.STOP_WAIT_LIMIT;
    /** Whether queues try io_uring; when one cannot set up its ring it falls back to synchronous I/O. */
    private final boolean ioUring;

    private final String ioDescription;
    private volatile long acked;

    /**
     * @param name   identifies the device in log lines (the socket path)
     * @param queues request queues offered (the guest may use fewer)
     * @param serial the GET_ID string, at most 20 bytes of ASCII
     */
    public BlkDevice(String name, DiskImage image, int queues, String serial) {
        this(name, image, queues, serial, IoEngine.AUTO);
    }

    /**
     * @param engine how queues do I/O
     * @throws IllegalStateException when {@code engine} is IO_URING and io_uring is not available here
     */
    public BlkDevice(String name, DiskImage image, int queues, String serial, IoEngine engine) {
        if (queues < 1 || queues > 64) {
            throw new IllegalArgumentException("queues must be 1..64: " + queues);
        }
        byte[] id = serial.getBytes(StandardCharsets.US_ASCII);
        if (id.length > ID_BYTES) {
            throw new IllegalArgumentException("serial '" + serial + "' is longer than " + ID_BYTES + " bytes");
        }
        this.name = name;
        this.image = image;
        this.lockShared = image.readOnly();
        this.queues = queues;
        this.serial = java.util.Arrays.copyOf(id, ID_BYTES); // NUL-padded, as the spec allows
        this.config = new BlkConfig(
                image.size() >>> SECTOR_SHIFT,
                image.blockSize(),
                limits.segMax(),
                limits.sizeMax(),
                queues,
                limits.maxDiscardSectors(),
                limits.maxDiscardSegments());
        this.workers = new QueueWorker[queues];
        this.queueStats = new BlkStats[queues];
        for (int i = 0; i < queues; i++) {
            queueStats[i] = new BlkStats();
        }
        this.vqs = new Virtqueue[queues];
        this.handlers = new java.util.concurrent.atomic.AtomicReferenceArray<>(queues);
        this.failed = new boolean[queues];
        this.abandoned = new boolean[queues];
        String unavailable = engine == IoEngine.SYNC ? null : IoUring.unavailableReason();
        switch (engine) {
            case SYNC -> {
                ioUring = false;
                ioDescription = "synchronous I/O";
            }
            case IO_URING -> {
                if (unavailable != null) {
                    throw new IllegalStateException(
                            unavailable + "; serve with synchronous I/O instead (--io-engine sync)");
                }
                ioUring = true;
                ioDescription = "io_uring";
            }
            default -> {
                ioUring = unavailable == null;
                ioDescription = ioUring ? "io_uring" : "synchronous I/O (" + unavailable + ")";
            }
        }
    }

    /** How the queues do I/O, e.g. {@code "io_uring"} or {@code "synchronous I/O (buffered image)"}, for the user. */
    public String ioDescription() {
        return ioDescription;
    }

    /** The device's counters: the sum of its queues'. */
    public BlkStats.Snapshot stats() {
        java.util.List<BlkStats.Snapshot> parts = new java.util.ArrayList<>(queues);
        for (BlkStats q : queueStats) {
            parts.add(q.snapshot());
        }
        return BlkStats.Snapshot.sum(parts);
    }

    /** Queue {@code index}'s counters. */
    public BlkStats.Snapshot queueStats(int index) {
        return queueStats[index].snapshot();
    }

    /** The ring of a running queue as {@link Virtqueue#ringState} reads it (same caveats), for a stalled guest. */
    public String ringState(int index) {
        Virtqueue q = vqs[index];
        return q == null ? "not running" : q.ringState();
    }

    /** What queue {@code index}'s worker did so far: batches, sleeps, spin hits (all its connections). */
    public QueueWorker.Totals workerStats(int index) {
        return queueStats[index].worker.totals();
    }

    public DiskImage image() {
        return image;
    }

    /** The features the driver acknowledged (0 before negotiation or after a reset). */
    public long ackedFeatures() {
        return acked;
    }

    /** Queues being served now. */
    public int runningQueues() {
        int n = 0;
        for (QueueWorker w : workers) {
            if (w != null) {
                n++;
            }
        }
        return n;
    }

    @Override
    public void backendChannel(io.iovirt.vhostuser.BackendChannel channel) {
        backendChannel = channel;
    }

    /** Outcome of a resize: whether the connected frontend was told (false: none connected, or it failed). */
    public record ResizeResult(long oldSize, long newSize, boolean frontendNotified, String notice) {}

    /**
     * Grows the image and the capacity in the configuration space, then tells a connected frontend through the
     * backend channel (QEMU re-reads the capacity and raises the guest's configuration-change interrupt). Called
     * from a control thread, never a queue thread.
     */
    public synchronized ResizeResult resize(long newSize) throws java.io.IOException {
        long old = image.size();
        image.resize(newSize);
        config.setCapacitySectors(image.size() >>> SECTOR_SHIFT);
        io.iovirt.vhostuser.BackendChannel ch = backendChannel;
        if (ch == null) {
            return new ResizeResult(
                    old, image.size(), false, "no frontend is connected: it reads the new size when it connects");
        }
        try {
            ch.configChanged();
            return new ResizeResult(old, image.size(), true, "the frontend was notified");
        } catch (java.io.IOException e) {
            LOG.log(
                    Level.WARNING,
                    "blk {0}: resized to {1} bytes but could not notify the frontend: {2}",
                    name,
                    image.size(),
                    e.getMessage());
            return new ResizeResult(
                    old,
                    image.size(),
                    false,
                    e.getMessage() + "; the guest sees the new size after its next reset or reconnect");
        }
    }

    /**
     * Refuses guest writes from now on (or accepts them again). The guest's driver keeps the read-only flag it
     * negotiated until it resets: writes it still sends get an I/O error.
     *
     * <p>The image lock follows (issue 11): a disk switched writable while a frontend runs first turns its shared
     * lock into an exclusive one ({@link ImageLock#retype}), and stays read-only when another process holds the image
     * (a reader, which a shared lock let in and a writer must not change the data under). A disk switched read-only
     * while a frontend runs keeps its exclusive lock until every write, write-zeroes and discard that passed its check
     * before the switch has ended (each queue counts its own, {@link BlkQueueHandler#mutationsEnded}) and a flush
     * after them has succeeded: then the lock becomes shared in place ({@link ImageLock#share}), and readers are let
     * in. This call waits for that, and for the image's own write-back, up to {@link #shareWaitLimit}; writes still
     * in flight then, or a write-back still under way (a file system that does not answer), do not hold the answer
     * up once the image refuses writes: the disk is read-only all the same and the lock becomes shared when they have
     * ended, by itself (a thread of the device's, counted in {@link #quiescent}; see {@link #switchReadOnly}). The
     * next frontend takes a shared lock.
     *
     * @return switching read-only: null when no lock is held exclusively any more (or none was); otherwise why the
     *         lock is still exclusive (the writes in flight, to be shared when they end; or a failed flush, shared
     *         never: until the frontend stops its queues), for the operator. Switching writable: null when writable;
     *         otherwise why the disk is still read-only (the image busy past {@link #shareWaitLimit}: it becomes
     *         writable by itself) and what to do ({@link #switchWritable})
     * @throws IOException refused (the disk is as it was): the image was opened read-only, or another process holds
     *                     it (named), or an earlier call still runs after {@link #shareWaitLimit}; or switching
     *                     read-only, its write-back failed: a raw image is read-only then all the same, and so is a
     *                     qcow2 image whose tables' first write-back succeeded (a later one failed: the clusters it
     *                     freed early need it read-only); its lock stays exclusive until the frontend stops its queues
     */
    public String setReadOnly(boolean readOnly) throws IOException {
        try {
            if (!switching.tryLock(shareWaitLimit.toNanos(), java.util.concurrent.TimeUnit.NANOSECONDS)) {
                throw new IOException("an earlier blk.set-readonly of blk " + name + " is still under way after "
                        + shareWaitLimit.toMillis() + " ms (its image's write-back waits for a slow or hung disk or"
                        + " file system): nothing was changed. Make the disk or file system answer again, then call"
                        + " blk.set-readonly again once the earlier call has answered");
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted waiting for an earlier blk.set-readonly of blk " + name
                    + " to end: nothing was changed");
        }
        try {
            return readOnly ? switchReadOnly() : switchWritable();
        } finally {
            switching.unlock();
        }
    }

    /**
     * Makes the lock exclusive (on this thread: lock calls only), then the image writable on a thread of its own
     * (counted in {@link #quiescent}), waited for up to {@link #shareWaitLimit}: the image's switch waits for what
     * holds it (a switch to read-only's write-back still under way, which a file system that does not answer holds
     * for ever), and the control thread must not. Returns null when writable, else what is still pending; the disk
     * becomes writable by itself when that ends (an INFO line says so), unless a later switch came meanwhile.
     */
    private String switchWritable() throws IOException {
        PendingWritable under = pendingWritable;
        if (under != null && !under.done.isDone()) {
            boolean latest;
            synchronized (lockType) {
                latest = under.generation == switches; // no switch to read-only came after it
            }
            if (latest) {
                return awaitWritable(under.done, under.answered);
            }
        }
        java.util.concurrent.CompletableFuture<Void> done = new java.util.concurrent.CompletableFuture<>();
        java.util.concurrent.atomic.AtomicBoolean answered = new java.util.concurrent.atomic.AtomicBoolean();
        threads.incrementAndGet(); // it changes the image (a qcow2 image takes back what it freed early)
        boolean started = false;
        try {
            if (retired) { // after the count: see switchReadOnly
                throw new IOException("blk " + name + " is being removed: the disk was not switched");
            }
            long generation;
            synchronized (lockType) {
                retypeLock(false); // exclusive first: no write under a shared lock
                lockShared = false;
                generation = ++switches; // a lock still to be made shared for an earlier switch stays exclusive
            }
            try {
                Thread.ofPlatform().name("blk " + name + " writable").daemon().start(() -> {
                    // completed before answered is read, as the caller sets answered before it looks at done:
                    // either the caller reports how the switch ended or this thread logs it
                    try {
                        boolean applied = writable(generation);
                        done.complete(null);
                        if (applied && answered.get()) {
                            LOG.log(Level.INFO, "blk {0}: the disk is writable now: the image is no longer busy", name);
                            try {
                                switchEndedLate.run();
                            } catch (RuntimeException e) {
                                LOG.log(Level.ERROR, "blk {0}: recording the switch to writable failed: {1}", name, e);
                            }
                        }
                    } catch (IOException | RuntimeException e) {
                        done.completeExceptionally(e);
                        if (answered.get()) {
                            LOG.log(
                                    Level.ERROR,
                                    "blk {0}: the switch to writable failed: {1}. The disk stays read-only",
                                    name,
                                    e.getMessage());
                        }
                    } catch (Error e) {
                        done.completeExceptionally(e);
                        throw e;
                    } finally {
                        queueThreadEnded();
                    }
                });
                started = true;
                pendingWritable = new PendingWritable(generation, done, answered);
            } catch (RuntimeException | OutOfMemoryError e) {
                lockFollowsImage(generation);
                throw new IOException("cannot start the thread that switches the disk (it stays read-only): " + e, e);
            }
        } finally {
            if (!started) {
                queueThreadEnded();
            }
        }
        return awaitWritable(done, answered);
    }

    /**
     * Waits up to {@link #shareWaitLimit} for the switch to writable whose thread completes {@code done}; after that
     * its thread reports how it ended ({@code answered}). Returns null when writable, else what is still pending.
     */
    private String awaitWritable(
            java.util.concurrent.CompletableFuture<Void> done, java.util.concurrent.atomic.AtomicBoolean answered)
            throws IOException {
        try {
            try {
                done.get(shareWaitLimit.toNanos(), java.util.concurrent.TimeUnit.NANOSECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                answered.set(true); // from now on the thread logs how it ended
                if (done.isDone()) {
                    done.get(); // it ended meanwhile, before it saw answered: reported here
                    return null;
                }
                return "the disk is still read-only: the image is busy after " + shareWaitLimit.toMillis()
                        + " ms (the write-back of an earlier switch to read-only, or another change of the image,"
                        + " waits for a slow or hung disk or file system); it becomes writable by itself once that"
                        + " has completed (an INFO log line says so; an ERROR line if it fails), and guest writes"
                        + " fail until then. The image lock is exclusive already. Make the disk or file system"
                        + " answer again, or switch it read-only (blk.set-readonly true) to cancel";
            }
            return null;
        } catch (java.util.concurrent.ExecutionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof IOException io) {
                throw io;
            }
            if (cause instanceof RuntimeException r) {
                throw r;
            }
            throw new IOException("switching the disk writable failed: " + cause, cause);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            answered.set(true); // as after the limit: from now on the thread reports how it ended
            if (!done.isDone()) {
                return "interrupted: the disk becomes writable once the image's earlier write-back has completed";
            }
            if (!done.isCompletedExceptionally()) {
                return null; // it ended meanwhile, before it saw answered: reported here
            }
            Throwable cause = done.exceptionNow();
            throw cause instanceof IOException io
                    ? io
                    : new IOException("switching the disk writable failed: " + cause, cause);
        }
    }

    /**
     * On the thread of {@link #switchWritable}: the image's part of the switch {@code generation}; false when a later
     * switch had changed the image already (it decides).
     */
    private boolean writable(long generation) throws IOException {
        try {
            return applySwitch(generation, false);
        } catch (IOException | RuntimeException e) {
            lockFollowsImage(generation);
            throw e;
        }
    }

    /**
     * After switch {@code generation}'s image part (a switch to writable that failed, a switch to read-only): the
     * next frontend takes a shared lock when the image is read-only — unless a later switch came, which decides.
     */
    private void lockFollowsImage(long generation) {
        synchronized (lockType) {
            if (generation != switches) {
                return; // a later switch decided
            }
            lockShared = image.readOnly();
            if (lockShared) {
                try {
                    retypeLock(true); // changes no lock held: never refused, no lock call
                } catch (IOException e) {
                    throw new IllegalStateException(e);
                }
            }
        }
    }

    /**
     * Changes the image for the switch {@code generation} ({@link #setReadOnly}), in the order of the switches: the
     * image's change may wait (a write-back of a file system that does not answer), and the switches' threads may
     * come to it in any order. Skipped when a later switch has changed the image already (that one decides); false
     * then.
     */
    private boolean applySwitch(long generation, boolean readOnly) throws IOException {
        imageSwitch.lock();
        try {
            if (generation < appliedSwitch) {
                return false;
            }
            appliedSwitch = generation;
            image.setReadOnly(readOnly);
            return true;
        } finally {
            imageSwitch.unlock();
        }
    }

    /**
     * Switches the image read-only and, when a frontend holds the lock exclusively, makes it shared once the writes in
     * flight across the switch have ended and are flushed — all on a thread of its own (counted in {@link
     * #quiescent}: it writes the image back and flushes it; no queue thread waits for it), waited for up to {@link
     * #shareWaitLimit}. A write-back still under way then (a file system that does not answer) does not hold the
     * answer up once the image refuses writes (a raw image does so before it writes back); a format that refuses them
     * only once written back (qcow2) is waited for as long as that takes, as before.
     */
    private String switchReadOnly() throws IOException {
        long generation;
        synchronized (lockType) {
            generation = ++switches;
        }
        java.util.concurrent.CompletableFuture<Void> switched = new java.util.concurrent.CompletableFuture<>();
        java.util.concurrent.CompletableFuture<String> shared = new java.util.concurrent.CompletableFuture<>();
        java.util.concurrent.atomic.AtomicBoolean answered = new java.util.concurrent.atomic.AtomicBoolean();
        threads.incrementAndGet(); // it writes the image back and flushes it: not closed under it
        // after the count (both volatile, as retire's store and quiescent's load): either the owner closing the image
        // sees this thread counted and waits for it, or this switch sees the device retired and starts nothing
        if (retired) {
            queueThreadEnded();
            throw new IOException("blk " + name + " is being removed: the disk was not switched");
        }
        try {
            Thread.ofPlatform().name("blk " + name + " read-only").daemon().start(() -> {
                try {
                    shared.complete(switchAndShare(generation, switched, answered));
                } catch (RuntimeException | Error e) {
                    switched.completeExceptionally(e); // no-op when switched
                    shared.complete("the image lock stays exclusive: making it shared failed: " + e);
                    throw e;
                } finally {
                    queueThreadEnded();
                }
            });
        } catch (RuntimeException | OutOfMemoryError e) {
            queueThreadEnded();
            throw new IOException("cannot start the thread that switches the disk (nothing changed): " + e, e);
        }
        long limit = shareWaitLimit.toNanos();
        long deadline = System.nanoTime() + limit;
        try {
            try {
                switched.get(limit, java.util.concurrent.TimeUnit.NANOSECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                answered.set(true); // a write-back that fails from now on is logged (see switchAndShare)
                if (!image.readOnly() || switched.isDone()) {
                    switched.get(); // it takes writes until written back: the switch is not done before
                    // the lock's part gets its own limit after a write-back that took longer: with no time left, a
                    // lock about to be shared (or none held) would be reported as still exclusive
                    deadline = System.nanoTime() + limit;
                } else {
                    return "the image's write-back (fsync) is still under way after " + shareWaitLimit.toMillis()
                            + " ms (a slow or hung disk or file system); the image lock stays exclusive until it and"
                            + " the writes the guest sent before the switch have completed, then it becomes shared by"
                            + " itself";
                }
            }
            return shared.get(Math.max(0, deadline - System.nanoTime()), java.util.concurrent.TimeUnit.NANOSECONDS);
        } catch (java.util.concurrent.ExecutionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof IOException io) {
                throw io; // its write-back failed: read-only all the same (see switchAndShare)
            }
            if (cause instanceof RuntimeException r) {
                throw r;
            }
            throw new IOException("switching the disk read-only failed: " + cause, cause);
        } catch (java.util.concurrent.TimeoutException e) {
            return "the image lock stays exclusive until the writes the guest sent before the switch have completed"
                    + " and are flushed (still in flight after " + shareWaitLimit.toMillis() + " ms: a slow or hung"
                    + " disk or file system); then it becomes shared by itself, and a log line says so";
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            answered.set(true); // as after the limit: a write-back that fails from now on is logged
            return "interrupted: the switch to read-only goes on, and the image lock becomes shared once the writes"
                    + " sent before it have completed and are flushed";
        }
    }

    /**
     * On the switching thread ({@link #switchReadOnly}): switches the image read-only (completing {@code switched}),
     * then makes the lock shared when wanted ({@link #shareWhenDrained}). Returns what {@link #setReadOnly} returns.
     * A write-back that fails once the caller has {@code answered} is logged.
     */
    private String switchAndShare(
            long generation,
            java.util.concurrent.CompletableFuture<Void> switched,
            java.util.concurrent.atomic.AtomicBoolean answered) {
        Exception failure = null;
        try {
            // may write back (not under lockType: a frontend's start does not wait)
            if (!applySwitch(generation, true)) {
                switched.complete(null);
                return null; // a later switch has changed the image already: it decides
            }
        } catch (IOException | RuntimeException e) {
            failure = e;
        }
        // also when the write-back failed: a raw image is read-only then all the same (it stops the guest's writes
        // first), as is a qcow2 image whose first table write-back succeeded, and its next frontend takes a shared
        // lock, as for any read-only disk (a qcow2 image still writable takes an exclusive one). Not when another
        // switch came meanwhile (this one's write-back took long): that one decided.
        lockFollowsImage(generation);
        if (failure != null) { // after lockShared: the caller, told, may start a frontend at once
            switched.completeExceptionally(failure);
            if (answered.get()) { // the caller answered before: nobody else reports it
                LOG.log(
                        Level.ERROR,
                        "blk {0}: the write-back of the switch to read-only failed: {1}. {2}",
                        name,
                        failure.getMessage(),
                        image.readOnly() // a qcow2 image whose first write-back failed stays writable
                                ? "The disk is read-only; the image lock stays exclusive until the frontend stops"
                                        + " its queues"
                                : "The disk stays writable");
            }
            return null;
        }
        switched.complete(null);
        if (!shareWanted(generation)) {
            return null; // no frontend holds the lock, or holds it shared
        }
        // read after the switch set read-only: every queue that can have let a write through before is here
        java.util.List<BlkQueueHandler> inFlight = new java.util.ArrayList<>(queues);
        for (int i = 0; i < queues; i++) {
            BlkQueueHandler h = handlers.get(i);
            if (h != null) {
                inFlight.add(h);
            }
        }
        return shareWhenDrained(inFlight, generation);
    }

    /**
     * Waits (polling, and woken when a queue thread ends; the queues only count) until no handler of {@code inFlight}
     * has a write that passed its check before the switch {@code generation} still in flight, flushes the image and
     * makes the lock shared, as long as that is still wanted. Returns null when shared or no longer wanted, else why
     * it stays exclusive.
     */
    private String shareWhenDrained(java.util.List<BlkQueueHandler> inFlight, long generation) {
        if (writesLeftInKernel) { // an earlier frontend's queue: it is not among inFlight any more
            String why = "the image lock stays exclusive until the export is removed: a write an earlier frontend"
                    + " sent was given up on in the kernel (its queue could not wait for its io_uring, see the log)"
                    + " and may still land";
            LOG.log(Level.ERROR, "blk {0}: {1}", name, why);
            return why;
        }
        long pause = 1;
        for (BlkQueueHandler h : inFlight) {
            while (!h.mutationsEnded()) {
                if (!shareWanted(generation)) {
                    return null; // switched writable again, or the frontend let go of the image
                }
                if (h.mutationsAbandoned()) { // its queue could not wait for its ring: such a write may land any time
                    String why = "the image lock stays exclusive until the export is removed: a write sent"
                            + " before the switch to read-only was given up on in the kernel (its queue could not"
                            + " wait for its io_uring, see the log) and may still land";
                    LOG.log(Level.ERROR, "blk {0}: {1}", name, why);
                    return why;
                }
                try {
                    synchronized (threadEnded) { // woken at once when a queue thread ends (its frontend stops)
                        threadEnded.wait(pause);
                    }
                } catch (InterruptedException e) {
                    return "interrupted waiting for the writes in flight: it stays so until the frontend stops";
                }
                pause = Math.min(pause * 2, 50);
            }
        }
        if (!shareWanted(generation)) {
            return null;
        }
        try {
            image.flush(); // the writes that ended are durable before a reader can see them
        } catch (IOException e) {
            String why = "the image lock stays exclusive until the frontend stops its queues: flushing the writes sent"
                    + " before the switch to read-only failed: " + e.getMessage();
            LOG.log(Level.ERROR, "blk {0}: {1}", name, why);
            return why;
        }
        synchronized (lockType) {
            if (!shareWanted(generation)) {
                return null;
            }
            try {
                imageLock.share();
            } catch (LinuxException e) {
                String why = (imageLock.shared()
                                ? "the image lock is shared, but parts of it stay write-locked: "
                                : "the image lock stays exclusive: it cannot be made shared: ")
                        + e.getMessage();
                LOG.log(Level.ERROR, "blk {0}: {1}", name, why);
                return why;
            }
        }
        LOG.log(
                Level.INFO,
                "blk {0}: the image lock of {1} is shared now: the writes sent before the switch to read-only have"
                        + " ended and are flushed",
                name,
                image.path());
        return null;
    }

    /** Whether the lock held is still to be made shared for the switch to read-only {@code generation}. */
    private boolean shareWanted(long generation) {
        synchronized (lockType) {
            return generation == switches && lockShared && imageLock != null && imageLock.held() && !imageLock.shared();
        }
    }

    /**
     * {@code r} runs (on a thread of the device's) when a switch to writable whose {@link #setReadOnly} returned with
     * the disk still read-only has made it writable, so that what was recorded from that answer is written again.
     */
    public void onSwitchEndedLate(Runnable r) {
        switchEndedLate = r;
    }

    /** Changes how long {@link #setReadOnly} waits for the lock to become shared (tests). */
    void shareWaitLimit(java.time.Duration limit) {
        this.shareWaitLimit = limit;
    }

    /** Changes the image lock's type (under {@link #lockType}); refused with the reason when another user holds it. */
    private void retypeLock(boolean shared) throws IOException {
        if (imageLock == null) {
            return; // no frontend has started yet: the first one takes the lock of the type the disk has then
        }
        String why;
        try {
            why = imageLock.retype(shared);
        } catch (LinuxException e) {
            if (e.errno() == io.iovirt.linux.Errno.EBADF) {
                throw new IOException("image " + image.path() + " was opened read-only; remove the export and add it"
                        + " again without readonly");
            }
            throw new IOException(
                    "the image lock of " + image.path() + " cannot be made exclusive: " + e.getMessage()
                            + "; the disk stays read-only",
                    e);
        }
        if (why != null) {
            throw new IOException(why + ": writing would change the data under it, so the disk stays read-only."
                    + (why.contains("(this process)")
                            ? " Stop that process (or have it close the image), or remove this process's other export"
                                    + " of the image, first"
                            : " Stop that process (or have it close the image) first")
                    + ", then switch the disk writable again");
        }
    }

    @Override
    public long features() {
        long f = VirtioFeatures.VIRTIO_F_VERSION_1
                | VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC
                | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
                | VirtioFeatures.VIRTIO_F_RING_PACKED
                | bit(F_SIZE_MAX)
                | bit(F_SEG_MAX)
                | bit(F_BLK_SIZE)
                | bit(F_FLUSH)
                | bit(F_MQ);
        if (image.readOnly()) {
            f |= bit(F_RO);
        } else {
            f |= bit(F_DISCARD) | bit(F_WRITE_ZEROES);
        }
        offered.accumulateAndGet(f, (a, b) -> a | b);
        return f;
    }

    /**
     * Every bit {@link #features} has offered. A frontend acknowledges from the offer it read when it connected
     * (QEMU reads it once per connection), also after the disk was switched to read-only, which changes the offer
     * of later connections only: discard and write-zeroes negotiated before the switch come back at every start and
     * when a migration turns dirty logging on, and stay harmless (requests are checked against the image).
     */
    private final java.util.concurrent.atomic.AtomicLong offered = new java.util.concurrent.atomic.AtomicLong();

    private static long bit(int n) {
        return 1L << n;
    }

    /**
     * Crash recovery (issue 11): reads and writes can be resubmitted, so in-flight requests survive a restart.
     * BACKEND_REQ: the frontend's backend channel announces resizes (blk.resize).
     */
    @Override
    public long protocolFeatures() {
        return Features.bit(Features.PROTOCOL_INFLIGHT_SHMFD) | Features.bit(Features.PROTOCOL_BACKEND_REQ);
    }

    private volatile long slowNanos = Long.MAX_VALUE;

    private volatile long pollNanos = QueueWorker.DEFAULT_ADAPTIVE_SPIN_NANOS;
    private volatile boolean adaptivePoll = true;

    /**
     * From the next queue start on: each queue polls its ring and its completions adaptively for up to {@code nanos}
     * after it ran dry ({@code adaptive}, the default with {@link QueueWorker#DEFAULT_ADAPTIVE_SPIN_NANOS}: {@link
     * QueueWorker.Builder#adaptiveSpin}), or always {@code nanos} (fixed; 0 sleeps at once). Polling is what takes
     * a QD 1 request without a kick and a completion without a wake-up (docs/benchmarks.md: buffered randread at
     * QD 1 441k vs 90k IOPS); an idle disk costs nothing either way.
     */
    public void poll(long nanos, boolean adaptive) {
        if (nanos < 0 || nanos > QueueWorker.MAX_SPIN_NANOS) {
            throw new IllegalArgumentException("poll time must be 0.." + QueueWorker.MAX_SPIN_NANOS + " ns: " + nanos);
        }
        this.pollNanos = nanos;
        this.adaptivePoll = adaptive;
    }

    /**
     * From the next queue start on, every request that takes {@code threshold} or longer (ring to status byte) is
     * a JFR event {@code io.iovirt.blk.SlowRequest} naming the device, queue, kind, offset, size, status and
     * latency; null stops it. Costs one comparison per request; the event exists only for slow requests, and only
     * while a JFR recording runs.
     */
    public void slowRequestThreshold(java.time.Duration threshold) {
        this.slowNanos = threshold == null ? Long.MAX_VALUE : threshold.toNanos();
    }

    @Override
    public int queueCount() {
        return queues;
    }

    @Override
    public int maxQueueSize() {
        return BlkLimits.MAX_QUEUE_SIZE;
    }

    @Override
    public void setFeatures(long acked) throws BackendException {
        long known = features() | offered.get();
        if ((acked & ~known) != 0) {
            throw new BackendException(
                    String.format("driver acknowledged features 0x%x that were not offered", acked & ~known));
        }
        this.acked = acked;
    }

    @Override
    public byte[] readConfig(int offset, int size) throws BackendException {
        try {
            return config.read(offset, size);
        } catch (IllegalArgumentException e) {
            throw new BackendException(e.getMessage());
        }
    }

    @Override
    public void queueStarted(int index, VringSetup setup) throws BackendException {
        if (workers[index] != null) {
            if (!isAbandoned(index)) {
                throw new BackendException("queue " + index + " is already running");
            }
            if (!reap(index)) {
                throw new BackendException("queue " + index + ": the thread of its previous run has not stopped yet"
                        + " (see the log); no second one is started on its ring before it has");
            }
        }
        QueueConfig qc = setup.queueConfig();
        if (!anyRunning()) {
            fenced = takeImage(); // image ownership (issue 11): the first queue takes the image
            if (fenced == null) {
                fenced = refreshImage();
            }
        }
        start(index, setup, qc);
    }

    private boolean anyRunning() {
        for (QueueWorker w : workers) {
            if (w != null) {
                return true;
            }
        }
        return false;
    }

    /**
     * Takes the image for this frontend: null when it may use it, else why not (logged with the holder). A file
     * system without OFD locks is served unlocked, with a warning (as QEMU's locking=auto does); a lock that cannot
     * be tried (no descriptor for it) refuses the image, as one another VM holds.
     */
    private String takeImage() {
        synchronized (lockType) {
            return takeImageLocked();
        }
    }

    private String takeImageLocked() {
        synchronized (imageWorkGuard) { // the image is this start's now: image work still under way keeps it
            releaseWhenDone = false;
        }
        if (imageLock == null) {
            // on the descriptor the image was opened with: this is the vhost-user session's thread, and opening
            // the path again waited for its file system, which may not answer (a stopped FUSE daemon, a hung NFS
            // server), with the frontend's messages unanswered and removing the export waiting for this thread
            try {
                imageLock = ImageLock.on(image.path(), lockShared, image.dupFile());
            } catch (LinuxException e) {
                // not a file system without locks (served unlocked, below): the process is out of descriptors, and
                // serving unlocked would let a second VM write the image beside this one
                String why = "the image lock of " + image.path() + " cannot be taken: " + e.getMessage();
                LOG.log(
                        Level.ERROR,
                        "blk {0}: {1}. This frontend''s requests all fail with an I/O error and the device reports"
                                + " NEEDS_RESET until it stops its queues. Too many open files: raise the process''s"
                                + " limit (LimitNOFILE=) or remove unused exports, then reset the device (reboot the"
                                + " guest, or detach and attach the disk)",
                        name,
                        why);
                return why;
            }
        }
        try {
            String why = imageLock.acquire();
            if (why != null) {
                LOG.log(
                        Level.ERROR,
                        "blk {0}: {1}. This frontend''s requests all fail with an I/O error and the device"
                                + " reports NEEDS_RESET until it stops its queues; stop the other VM first (or migrate"
                                + " instead of starting a second one)",
                        name,
                        why);
            }
            return why;
        } catch (IOException e) { // LinuxException included
            LOG.log(
                    Level.WARNING,
                    "blk {0}: serving {1} without the image lock: {2}",
                    name,
                    image.path(),
                    e.getMessage());
            return null;
        }
    }

    /**
     * Reads the image again as the backend that had it last left it (a live migration's source wrote it since this
     * one opened it): null when done, else why this frontend may not use it (logged). On a thread of its own
     * ({@link #onImageThread}); one still under way from an earlier start is joined instead, and a write-back still
     * under way from the last stop ({@link #forget}) is waited for first. After the limit the queues are fenced, and
     * the work goes on: it holds the image's metadata lock, so nothing else reads or changes the tables meanwhile (a
     * switch, a flush, the close wait for it), and the image lock stays taken until it has ended ({@link #forget}): a
     * writable image is written back first. The next start after it ended reads the image again.
     */
    private String refreshImage() {
        return onImageThread(ImageWork.REFRESH, image::refresh);
    }

    /** Image work ({@link #onImageThread}): reads or writes the image's file, which may not answer. */
    @FunctionalInterface
    private interface ImageTask {
        void run() throws IOException;
    }

    /**
     * Runs {@code work} — image work that waits for the image's file system; a failure is logged once, as an ERROR —
     * on a platform thread of its own, "blk ID " + {@code kind.thread}, counted in {@link #quiescent} (so the image is
     * not closed under it: the owner's close waits for it, and then closes the image), and waits for it up to {@link
     * #IMAGE_WORK_WAIT_LIMIT}: the caller is the vhost-user session's thread. Image work still under way from an
     * earlier call is waited for first, within the same limit, and never run beside: work of the same kind is joined
     * (its outcome returned, no second thread), work of the other kind is let end, then this one starts. Returns null
     * when done, else why not: past the limit that it has not ended (logged as an ERROR with {@code kind.givenUp}; it
     * goes on, an INFO line says when it has ended). The export's removal ({@link #retire}) cuts the wait to {@link
     * #RETIRED_IMAGE_WORK_GRACE}: its close waits for the work all the same ({@link #quiescent}), and the session's thread, which the removal's server
     * stop waits for, is then not held by it — that wait and this one would race, each bounded alike.
     */
    private String onImageThread(ImageWork kind, ImageTask work) {
        return runOnImageThread(kind, work).why();
    }

    /**
     * {@link #onImageThread}'s outcome: null when done, else why not; and the work waited for last (whose end a caller
     * given back "not ended" may look at later), or null when none was started.
     */
    private record ImageWorkOutcome(String why, PendingImageWork work) {}

    /** {@link #onImageThread}, which see; also gives the work waited for last. */
    private ImageWorkOutcome runOnImageThread(ImageWork kind, ImageTask work) {
        long deadline = System.nanoTime() + IMAGE_WORK_WAIT_LIMIT.toNanos();
        while (true) {
            PendingImageWork p;
            boolean joined;
            synchronized (imageWorkGuard) {
                p = imageWork;
                joined = p != null && !p.done.isDone();
                if (!joined) {
                    p = new PendingImageWork(kind);
                    String why = startImageWork(p, work);
                    if (why != null) {
                        return new ImageWorkOutcome(why, null);
                    }
                    imageWork = p;
                }
            }
            String why;
            try {
                // its end, or the export's removal (retire), whichever comes first
                java.util.concurrent.CompletableFuture.anyOf(p.done, retiring)
                        .get(deadline - System.nanoTime(), java.util.concurrent.TimeUnit.NANOSECONDS);
                if (!p.done.isDone()) { // the removal: a moment more, in which a healthy disk ends the work
                    try {
                        p.done.get(
                                Math.min(RETIRED_IMAGE_WORK_GRACE.toNanos(), deadline - System.nanoTime()),
                                java.util.concurrent.TimeUnit.NANOSECONDS);
                    } catch (java.util.concurrent.TimeoutException late) {
                        // given up on below: the removal's close waits for it
                    }
                }
                if (giveUp(p)) {
                    String left = p.kind.doing + " (" + image.path() + ") is not waited for any more: the export is"
                            + " being removed";
                    LOG.log(
                            Level.INFO,
                            "blk {0}: {1}; the removal flushes, closes and unlocks the image once it has ended",
                            name,
                            left);
                    return new ImageWorkOutcome(left, p);
                }
                why = p.done.join();
            } catch (java.util.concurrent.TimeoutException e) {
                if (giveUp(p)) {
                    String late = (joined
                                    ? p.kind.doing + " (" + image.path() + "), " + p.kind.startedBy
                                            + ", has still not ended"
                                    : p.kind.doing + " (" + image.path() + ") has not ended within "
                                            + IMAGE_WORK_WAIT_LIMIT.toMillis() + " ms")
                            + ": its file system or disk does not answer";
                    LOG.log(Level.ERROR, "blk {0}: {1}. " + kind.givenUp, name, late, image.path());
                    return new ImageWorkOutcome(late, p);
                }
                why = p.done.join();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return new ImageWorkOutcome("interrupted while waiting for " + p.kind.doing, p);
            } catch (java.util.concurrent.ExecutionException e) { // completed normally only: not reached
                return new ImageWorkOutcome(p.kind.doing + " failed: " + e.getCause(), p);
            }
            if (!joined || p.kind == kind) {
                return new ImageWorkOutcome(why, p);
            }
            // the other kind's work, started earlier, has ended (a failed write-back's tables are written by the
            // reading again first): now this one
        }
    }

    /**
     * The caller stops waiting for {@code p}: whether it had not ended (then its thread reports its end, else the
     * caller takes its outcome).
     */
    private boolean giveUp(PendingImageWork p) {
        synchronized (imageWorkGuard) {
            if (p.done.isDone()) { // it ended meanwhile, before it could see it was given up on
                return false;
            }
            p.givenUp = true;
            return true;
        }
    }

    /** Starts {@code p}'s thread (under {@link #imageWorkGuard}): null when started, else why not (logged). */
    private String startImageWork(PendingImageWork p, ImageTask work) {
        threads.incrementAndGet(); // it reads, and may write, the image: not closed under it
        try {
            Thread.ofPlatform()
                    .name("blk " + name + " " + p.kind.thread)
                    .daemon()
                    .start(() -> {
                        try {
                            String error = null; // why it failed, or null
                            try {
                                work.run();
                            } catch (IOException e) {
                                error = e.getMessage();
                            }
                            String why = error == null ? null : p.kind.failed + ": " + error;
                            boolean late;
                            boolean release;
                            boolean kept;
                            // under lockType too: a start taking the image (takeImageLocked) comes before (and
                            // clears releaseWhenDone) or after this, never between the check and the release
                            synchronized (lockType) {
                                synchronized (imageWorkGuard) { // as a waiter gives up: one of them reports it
                                    p.done.complete(why);
                                    late = p.givenUp;
                                    // not after a failure: what it could not write back stays in memory, written
                                    // later over what another backend wrote
                                    boolean keptForIt = releaseWhenDone && !retired;
                                    kept = keptForIt && why != null;
                                    release = keptForIt && why == null;
                                    releaseWhenDone = false;
                                }
                                if (release) {
                                    imageLock.release();
                                }
                            }
                            if (release) {
                                LOG.log(
                                        Level.INFO,
                                        "blk {0}: {1} " + p.kind.ended + "; its queues are stopped, so its image lock"
                                                + " is let go now",
                                        name,
                                        image.path());
                            } else if (kept) { // one line: what failed, and that the lock stays taken for it
                                LOG.log(
                                        Level.ERROR,
                                        "blk {0}: {1} ({2}) failed: {3}. Its image lock stays taken: what could not"
                                                + " be written back is still in memory, and another VM (a"
                                                + " migration''s destination) that took the image now would have its"
                                                + " tables written over. The next start of the queues tries again;"
                                                + " remove the export (blk.remove) to let go of the image",
                                        name,
                                        p.kind.doing,
                                        image.path(),
                                        error);
                            } else if (why != null && retired) { // not served again: no next start tries again
                                LOG.log(
                                        Level.ERROR,
                                        "blk {0}: {1} ({2}) failed: {3}. The export is being removed: the image is"
                                                + " flushed, closed and unlocked once nothing else of it runs",
                                        name,
                                        p.kind.doing,
                                        image.path(),
                                        error);
                            } else if (why != null) {
                                LOG.log(Level.ERROR, p.kind.failedLine, name, error);
                            } else if (late && retired) { // not served again: it goes now
                                LOG.log(
                                        Level.INFO,
                                        "blk {0}: {1} " + p.kind.ended + "; the export is being removed, so the image"
                                                + " is flushed, closed and unlocked now",
                                        name,
                                        image.path());
                            } else if (late) {
                                LOG.log(Level.INFO, "blk {0}: {1} " + p.kind.endedLate, name, image.path());
                            }
                        } catch (RuntimeException | Error e) {
                            p.done.complete(p.kind.doing + " failed: " + e);
                            throw e;
                        } finally {
                            queueThreadEnded();
                        }
                    });
            return null;
        } catch (RuntimeException | OutOfMemoryError e) {
            queueThreadEnded();
            String why = "cannot start the thread for " + p.kind.doing + ": " + e;
            LOG.log(Level.ERROR, "blk {0}: {1}. " + p.kind.noThread, name, why, image.path());
            return why;
        }
    }

    /** Whether {@code p}, work of {@code kind}, has ended well ({@link #onImageThread}). */
    private static boolean endedWell(PendingImageWork p, ImageWork kind) {
        return p != null && p.kind == kind && p.done.isDone() && p.done.join() == null;
    }

    /**
     * The image work ({@link #onImageThread}) still under way, or null, for the last queue's stop, which keeps the
     * image lock for it: its thread lets go of the lock when it ends well ({@link #releaseWhenDone}).
     */
    private ImageWork keepLockForImageWork() {
        synchronized (imageWorkGuard) {
            boolean underWay = imageWork != null && !imageWork.done.isDone();
            releaseWhenDone = underWay;
            return underWay ? imageWork.kind : null;
        }
    }

    /**
     * Signals the frontend's err eventfd on the control thread without blocking for long: the frontend may have made
     * it blocking again and filled it, and {@link EventFd#trySignal}'s watchdog ends such a write (a plain write would
     * hold this connection's thread for ever). A signal that could not be delivered is the frontend's loss.
     */
    private static void signalQuietly(EventFd err) {
        if (err != null) {
            try {
                err.trySignal();
            } catch (LinuxException | RuntimeException ignored) {
                // the frontend closed or broke it: the log line is the report
            }
        }
    }

    private void start(int index, VringSetup setup, QueueConfig qc) throws BackendException {
        if (setup.kick() == null) {
            throw new BackendException("queue " + index + ": polling mode without a kick eventfd is not supported");
        }
        try {
            // inflight: crash recovery (issue 11)
            Virtqueue q = Virtqueue.create(qc, setup.memory(), setup.inflight()).limitChain(limits.segMax() + 2);
            if (q.resubmitted() > 0) {
                LOG.log(
                        Level.INFO,
                        "blk {0} q{1}: resubmitting {2} request(s) that were in flight when the previous "
                                + "backend stopped",
                        name,
                        index,
                        q.resubmitted());
            }
            BlkStats stats = queueStats[index];
            BlkQueueHandler handler = new BlkQueueHandler(image, limits, serial, stats);
            handler.writeThrough((acked & bit(F_FLUSH)) == 0); // a driver that cannot ask for durability
            if (slowNanos != Long.MAX_VALUE) {
                handler.reportSlow(name, index, slowNanos);
            }
            if (fenced != null) {
                handler.fence(fenced); // image ownership (issue 11)
                signalQuietly(setup.err()); // QEMU reports "vhost vring error" for the queue
            }
            String queueName = "blk " + name + " q" + index;
            QueueWorker w;
            try {
                w = newWorker(
                        queueName,
                        q,
                        handler,
                        setup.kick(),
                        setup.call(),
                        setup.err(),
                        stats,
                        ioUring ? newRing(queueName, q.size()) : null,
                        pollNanos,
                        adaptivePoll,
                        reason -> markFailed(index),
                        frontendLines);
            } catch (LinuxException | RuntimeException e) {
                q.releaseMemory();
                handler.close(); // no worker ran it: its stopped() would have closed it
                throw e;
            }
            synchronized (failed) {
                failed[index] = false;
            }
            workers[index] = w;
            vqs[index] = q;
            handlers.set(index, handler); // before the thread starts: see handlers
            threads.incrementAndGet();
            w.closeWhenEnded(java.util.List.of(this::queueThreadEnded)); // after the thread's last image I/O
            try {
                w.start();
            } catch (RuntimeException | OutOfMemoryError e) { // no thread: nothing will count it out
                workers[index] = null;
                vqs[index] = null;
                handlers.set(index, null);
                queueThreadEnded();
                q.releaseMemory();
                handler.close();
                throw e;
            }
        } catch (VirtqueueException e) {
            throw new BackendException("queue " + index + ": " + e.getMessage());
        } catch (LinuxException e) {
            throw new BackendException("queue " + index + ": cannot start its thread: " + e.getMessage(), e);
        }
    }

    /**
     * The worker of one queue, not started: synchronous I/O when {@code ring} is null, else through {@code ring},
     * which the worker then owns (closed here when the worker cannot be built). Its failure line goes through
     * {@code failureLines}, the device's bucket for lines its frontend can repeat at will.
     */
    static QueueWorker newWorker(
            String name,
            Virtqueue q,
            BlkQueueHandler handler,
            EventFd kick,
            EventFd call,
            EventFd err,
            BlkStats stats,
            IoUring ring,
            long pollNanos,
            boolean adaptivePoll,
            QueueWorker.FailureListener onFailure,
            LogLimiter failureLines)
            throws LinuxException {
        QueueWorker.Builder b = QueueWorker.builder(name)
                .failureLog(failureLines)
                .kick(kick)
                .err(err)
                .stats(stats.worker)
                .poll(pollNanos, adaptivePoll)
                .onFailure(reason -> {
                    stats.queueFailures.increment();
                    onFailure.failed(reason);
                });
        RequestLog log = new RequestLog(name);
        if (ring == null) {
            return b.build(new RingHandler(q, call, SYNC_BATCH, new SyncEngine(handler, log)));
        }
        UringEngine engine = new UringEngine(q, handler, call, log, ring);
        try {
            engine.register(b);
            return b.build(engine);
        } catch (LinuxException | RuntimeException e) {
            engine.discard(); // no worker owns the ring: closed here, or its descriptors and memory leak
            throw e;
        }
    }

    /** Requests a synchronous queue pops before it pushes them and decides on one interrupt. */
    static final int SYNC_BATCH = 16;

    private void markFailed(int index) {
        synchronized (failed) {
            failed[index] = true;
        }
    }

    /**
     * One operation per queue entry, set up cooperatively (completions wait for the queue thread, see UringEngine);
     * null (synchronous I/O) when the kernel refuses a ring now, e.g. ENOMEM.
     */
    private IoUring newRing(String queueName, int size) {
        try {
            return IoUring.create(
                    UringEngine.ringEntries(size),
                    0,
                    Boolean.parseBoolean(System.getProperty("iovirt.blk.coop", "true")));
        } catch (LinuxException e) {
            LOG.log(Level.WARNING, "{0}: serving with synchronous I/O: {1}", queueName, IoUring.explain(e));
            return null;
        }
    }

    /** Changes how long {@link #queueStopped} waits for a worker still finishing its requests (tests). */
    void stopWaitLimit(java.time.Duration limit) {
        this.stopWaitLimit = limit;
    }

    /**
     * Stops the queue's worker and returns its final ring position. A worker still finishing requests it took (a
     * slow disk; a guest's huge requests) is waited for, up to {@link #stopWaitLimit} ({@link
     * QueueWorker#stopAndWait}): until then nothing else may use the ring or take the image. One still running
     * after that is given up on and the device fails: it keeps the queue (a start on the same ring is refused until
     * that thread has ended) and the image lock, reports NEEDS_RESET and says so in a log line; that thread only
     * finishes the requests it took ({@link Virtqueue#servedBy}), and the protocol layer keeps the ring's descriptors
     * open for it until it has ended ({@link #stillRunning}).
     */
    @Override
    public int queueStopped(int index) {
        QueueWorker w = workers[index];
        if (w == null) {
            return 0;
        }
        Virtqueue q = vqs[index];
        if (isAbandoned(index)) { // given up on earlier (a reset follows): handed back once its thread has ended
            reap(index);
            return q.vringBase();
        }
        if (!w.stopAndWait(stopWaitLimit)) {
            synchronized (failed) {
                abandoned[index] = true;
            }
            LOG.log(
                    Level.ERROR,
                    "blk {0} q{1}: the queue thread did not stop within {2} s; the device keeps the queue (it is not"
                            + " started again on this ring while that thread runs) and the image lock, and reports"
                            + " NEEDS_RESET; ring position {3} handed back (that thread only finishes the requests it"
                            + " took)",
                    name,
                    index,
                    stopWaitLimit.toSeconds(),
                    Integer.toString(q.vringBase()));
            return q.vringBase();
        }
        forget(index);
        return q.vringBase();
    }

    /** A queue thread has ended (on that thread, after its handler stopped): it touches the image no more. */
    private void queueThreadEnded() {
        threads.decrementAndGet();
        synchronized (threadEnded) {
            threadEnded.notifyAll();
        }
    }

    /**
     * Whether no queue thread of this device runs any more — none serving, and none given up on still finishing a
     * request ({@link #queueStopped}: one stuck in image I/O on a hung NFS or FUSE file or a dying disk). Only then
     * may the owner of the image close it, after the server has stopped (no new queue starts): a descriptor closed
     * under such a thread could be reused by another open (another tenant's image or socket) and take that request's
     * writes. The device keeps the image lock until then too.
     */
    public boolean quiescent() {
        return threads.get() == 0;
    }

    /** Waits until {@link #quiescent} (once the server has stopped, nothing new starts), at most {@code timeout}. */
    public boolean awaitQuiescent(java.time.Duration timeout) throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        synchronized (threadEnded) {
            while (!quiescent()) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    return false;
                }
                java.util.concurrent.TimeUnit.NANOSECONDS.timedWait(threadEnded, left);
            }
            return true;
        }
    }

    /**
     * The export is being removed: from now on {@link #setReadOnly} refuses to switch the disk read-only (it would
     * start a thread that writes the image back and flushes it, {@link #switchReadOnly}), so that once {@link
     * #quiescent} no thread of the device's touches the image or its lock and the owner may close them. Called before
     * the owner looks at {@link #quiescent}. A wait of the session's thread for image work ends within {@link
     * #RETIRED_IMAGE_WORK_GRACE} ({@link #onImageThread}): the owner's server stop waits for that thread, and its
     * close for the work.
     */
    public void retire() {
        retired = true;
        retiring.complete(null);
    }

    /**
     * Lets go of the image for good once the server has stopped and the device is {@link #quiescent}: queues given up
     * on are forgotten (their threads have ended), the image lock is released and its descriptor closed (it stayed
     * open for the device's life before, one descriptor per removed export).
     *
     * @throws IllegalStateException a queue thread still runs: the image and its lock must stay
     */
    public void close() {
        if (!quiescent()) {
            throw new IllegalStateException("blk " + name + ": a queue thread still runs; the image lock stays");
        }
        closing = true; // the image's owner has flushed and closed it: nothing to hand over
        for (int i = 0; i < queues; i++) {
            if (workers[i] != null && isAbandoned(i)) {
                // its work has ended (quiescent): this joins the thread's last instructions and frees its epoll set
                workers[i].stop();
                synchronized (failed) {
                    abandoned[i] = false;
                }
                forget(i);
            }
        }
        if (imageLock == null) {
            return;
        }
        if (writesLeftInKernel && imageLock.held()) {
            // the image's own descriptor is closed by now: what keeps its open file description, and so the lock,
            // is the kernel's reference for each request still in it, dropped as each completes
            imageLock.closeLeavingLockToKernel();
            LOG.log(
                    Level.WARNING,
                    "blk {0}: the image lock of {1} is left to the kernel: a write given up on in the kernel may still"
                            + " land; the kernel unlocks the image once it has completed",
                    name,
                    image.path());
        } else {
            imageLock.close();
        }
    }

    /** Asks the queue's worker to stop without waiting: {@link #queueStopped} then waits, from this request on. */
    @Override
    public void queueStopping(int index) {
        QueueWorker w = workers[index];
        if (w != null && !isAbandoned(index)) {
            w.requestStop();
        }
    }

    /** The worker of queue {@code index} (running, or given up on), or null: for tests that watch a stop. */
    QueueWorker worker(int index) {
        synchronized (failed) {
            return workers[index];
        }
    }

    /** The worker given up on ({@link #abandoned}) for queue {@code index}, whose thread still runs, or null. */
    @Override
    public QueueWorker stillRunning(int index) {
        synchronized (failed) {
            return abandoned[index] ? workers[index] : null;
        }
    }

    private boolean isAbandoned(int index) {
        synchronized (failed) {
            return abandoned[index];
        }
    }

    /** A worker given up on ({@link #abandoned}): forgotten once its thread has ended; true then. */
    private boolean reap(int index) {
        if (!workers[index].reap()) {
            return false;
        }
        LOG.log(Level.WARNING, "blk {0} q{1}: the queue thread given up on has stopped now", name, index);
        synchronized (failed) {
            abandoned[index] = false;
        }
        forget(index);
        return true;
    }

    /** The queue's worker has ended: the queue is free, and the last one hands the image back. */
    private void forget(int index) {
        BlkQueueHandler h = handlers.get(index);
        if (h != null && h.mutationsAbandoned()) { // its thread has ended: the flag and count are final
            writesLeftInKernel = true;
        }
        workers[index] = null;
        vqs[index] = null;
        handlers.set(index, null);
        if (!anyRunning()) { // image ownership (issue 11): the last queue hands the image back
            String handOver = null; // why the image was not written back, or null
            PendingImageWork handOverWork = null;
            if (fenced == null && !closing && !retired) {
                // written back first: the backend that takes the image next (a migration's destination) reads it
                // from the file, and a qcow2 image's tables for the writes completed here are still in memory. Not
                // for an export being removed: this runs on the session thread its server's close waits for, with
                // no bound (a file system that does not answer would hold the removal's answer); the owner's final
                // flush and close write the image back instead, on a thread of their own, the lock kept until then.
                // On a thread of its own, waited for with a limit: this is the session's thread, and the frontend
                // waits for its reply (GET_VRING_BASE) — a migration's source cannot complete without it. Past the
                // limit the lock is kept: the destination must not take the image before this write-back has landed,
                // or the source's late tables would overwrite what it wrote; it is refused the image (fenced) instead,
                // and the write-back goes on, its thread letting go of the lock once it has ended well with no queue
                // started meanwhile (keepLockForImageWork), or the export's removal once it has ended.
                ImageWorkOutcome o = runOnImageThread(ImageWork.HAND_OVER, image::handOver);
                handOver = o.why();
                handOverWork = o.work();
            }
            ImageWork underWay;
            if (writesLeftInKernel && imageLock != null && imageLock.held()) {
                LOG.log(
                        Level.ERROR,
                        "blk {0}: the last queue stopped, but the image lock of {1} is kept: a write a queue gave up"
                                + " on in the kernel (it could not wait for its io_uring, see the log) may still land,"
                                + " so another VM (a migration''s destination) or program (qemu-img) is refused the"
                                + " image. Remove the export (blk.remove) to let go of it: the kernel drops the lock"
                                + " once that write has completed (not before, even if the daemon exits)",
                        name,
                        image.path());
            } else if (imageLock != null && !retired && (underWay = keepLockForImageWork()) != null) {
                // image work given up on still runs (a reading again the queues' start gave up on, or a write-back
                // of their last stop): it may write the image's tables, and a reading again reads them then, so
                // another backend that took the image now would have them written over, or read half written
                if (handOver == null) { // else the write-back given up on just now said so
                    LOG.log(
                            Level.ERROR,
                            "blk {0}: the last queue stopped, but the image lock of {1} is kept: {2} ({3}) has not"
                                    + " ended, and it may still write the image. It is let go once that has ended well"
                                    + " (a line says so), which needs the image''s file system to answer again; until"
                                    + " then another VM (a migration''s destination) is refused the image",
                            name,
                            image.path(),
                            underWay.doing,
                            underWay.startedBy);
                }
            } else if ((handOver == null || endedWell(handOverWork, ImageWork.HAND_OVER))
                    && imageLock != null
                    && !retired) {
                // not for an export being removed: its image's final flush comes after this stop, and the lock goes
                // only once it has ended (close), so no other VM or program takes the image while it may still write.
                // Also when the write-back given up on has ended well since (before it could be kept for)
                imageLock.release();
            }
            fenced = null;
        }
    }

    /** The queues pin the snapshot they work from and let go before they sleep: nothing to wait for here. */
    @Override
    public void memoryChanged(GuestMemory memory) {}

    @Override
    public int deviceStatus() {
        if (fenced != null) {
            return DeviceStatus.DEVICE_NEEDS_RESET; // image ownership (issue 11)
        }
        synchronized (failed) {
            for (int i = 0; i < queues; i++) {
                if (failed[i] || abandoned[i]) { // a failed queue, or one whose thread did not stop
                    return DeviceStatus.DEVICE_NEEDS_RESET;
                }
            }
        }
        return 0;
    }

    @Override
    public void reset() {
        for (int i = 0; i < queues; i++) {
            queueStopping(i); // all at once, then each waited for: one bound for all
        }
        for (int i = 0; i < queues; i++) {
            queueStopped(i);
        }
        synchronized (failed) {
            java.util.Arrays.fill(failed, false);
        }
        acked = 0;
    }

    /**
     * Makes every acknowledged write durable; used at shutdown. Also when the disk was switched to read-only: writes
     * may have completed after the switch's own sync.
     */
    public void flush() throws java.io.IOException {
        image.flush();
    }
}
