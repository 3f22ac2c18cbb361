// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.*;

import io.iovirt.linux.IoUring;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageIo;
import io.iovirt.virtio.DescriptorChain;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Executes virtio-blk requests of one queue against the image, synchronously ({@link #process}) or split in steps
 * so that many run at once through an io_uring: {@link #start} validates a request and prepares its I/O,
 * {@link #submit} queues it, {@link #completed} takes the kernel's result and {@link #finish} writes the status byte.
 * One instance per queue thread; its buffers are reused, so a request allocates nothing here.
 *
 * <p>Every field of a request is guest-controlled. The header is copied out of guest memory before it is looked at
 * (the guest could change it under us), then the type, sector, lengths and segment counts are checked against the
 * image and our advertised limits before any I/O — in {@link #start}, for both paths. A request that fails a check
 * completes with {@code VIRTIO_BLK_S_IOERR} or {@code S_UNSUPP}; only a request with no room for a status byte
 * cannot be answered and is reported to the caller as a protocol violation.
 */
final class BlkQueueHandler implements AutoCloseable {
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** What a started request still needs. */
    static final int DONE = 0;

    static final int READ = 1;
    static final int WRITE = 2;
    static final int FLUSH = 3;

    /** A request the device cannot even answer (no writable status byte). */
    static final class UnanswerableRequest extends Exception {
        UnanswerableRequest(String message) {
            super(message, null, false, false);
        }
    }

    /** One request from pop to push: its chain, its I/O state and what {@link #start} decided. */
    static final class Request {
        final int slot;
        final ImageIo io;
        DescriptorChain chain;
        int kind;
        /** Image byte offset of a read or write. */
        long offset;
        /** Bytes the device writes into the chain before the status byte when the request succeeds. */
        long dataWritten;

        long writable;
        byte status;
        /** Why the request got a non-OK status, for the caller's rate-limited log line; null when it succeeded. */
        String error;
        /** System.nanoTime() when the request was taken from the ring (latency histogram, in-flight gauge). */
        long startNanos;
        /** A write, write-zeroes or discard counted in {@link #mutating} until it ends. */
        boolean mutating;
        /**
         * Counted in the in-flight gauge: from {@link #start}'s stats.started() until {@link #finish} or {@link
         * #dropped} ends it, whichever comes first, so a request is never taken out twice.
         */
        boolean counted;
        /** Its I/O is in the engine's io_uring (submitted or queued, not yet reaped): see UringEngine. */
        boolean inRing;

        Request(int slot, DescriptorChain chain, ImageIo io) {
            this.slot = slot;
            this.chain = chain;
            this.io = io;
        }
    }

    private final DiskImage image;
    private final BlkLimits limits;
    private final BlkStats stats;
    /** The GET_ID answer: NUL-padded or cut to 20 bytes. */
    private final MemorySegment serial;

    private final Arena arena = Arena.ofShared(); // built on the control thread, used and closed on the queue thread
    private final MemorySegment header = arena.allocate(HEADER_BYTES);
    private final MemorySegment discardSegment = arena.allocate(DISCARD_SEGMENT_BYTES);
    private final MemorySegment status = arena.allocate(1);
    /** Image ownership (issue 11): why this frontend may not use the image (another VM holds it), or null. */
    private volatile String fenced;
    /** The synchronous path's request, made on first use: a queue served through io_uring never needs it. */
    private Request syncRequest;
    /**
     * This queue's writes, write-zeroes and discards from just before their read-only check until they have ended
     * (their I/O completed or failed, or the request was dropped), for a switch to read-only that waits for those
     * that passed their check before it ({@link #mutationsEnded}). Written by the queue thread alone (no other queue
     * touches it), read by the device's thread switching the disk read-only (BlkDevice.switchReadOnly).
     *
     * <p>Ordering. The increment is a volatile write followed by the check's volatile read of {@link
     * DiskImage#readOnly}; the switching thread volatile-writes read-only, then volatile-reads this count. That is
     * Dekker's pattern (store A, load B against store B, load A): either the switching thread sees the count or the
     * request sees the switch and fails its check. It needs a StoreLoad barrier on both sides, so the increment cannot
     * be a release store (setRelease/getAcquire order a store only after earlier accesses: the queue thread could
     * read the old read-only flag before its increment is visible, and the switching thread read 0 meanwhile — a write
     * under a lock already shared). The decrement needs no such barrier: it only publishes that the request's I/O is
     * over, so it is a release store ({@link #MUTATING}.setRelease, a plain store on x86): the switching thread, whose
     * volatile read sees it, also sees everything before it, and flushes after. One fence per mutating request, not
     * two.
     */
    private volatile int mutating;

    private static final java.lang.invoke.VarHandle MUTATING;

    static {
        try {
            MUTATING =
                    java.lang.invoke.MethodHandles.lookup().findVarHandle(BlkQueueHandler.class, "mutating", int.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    /**
     * Set when the handler is closed with none of its requests left in the kernel: its queue thread has ended or
     * never ran, so nothing of it is in flight.
     */
    private volatile boolean closed;
    /**
     * Set (before {@link #close}) when the queue's engine gave up on requests still in the kernel
     * ({@link #abandonInKernel}): their I/O may land at any time, so the handler never counts as drained.
     */
    private volatile boolean abandonedInKernel;

    /** @param serial the GET_ID answer: NUL-padded or cut to 20 bytes */
    BlkQueueHandler(DiskImage image, BlkLimits limits, byte[] serial, BlkStats stats) {
        this.image = image;
        this.limits = limits;
        this.serial = MemorySegment.ofArray(java.util.Arrays.copyOf(serial, ID_BYTES));
        this.stats = stats;
    }

    DiskImage image() {
        return image;
    }

    /** Requests at least this slow become JFR events ({@link SlowRequestEvent}); MAX_VALUE: none. */
    private long slowNanos = Long.MAX_VALUE;

    private String device = "";
    private int queue;

    /**
     * Makes every write, discard and write-zeroes durable (flushed as a FLUSH is) before its status is written: for a
     * driver that did not negotiate VIRTIO_BLK_F_FLUSH (firmware such as SeaBIOS, which acknowledges only a few
     * features), which cannot ask for durability, so the spec has the device write through: "the device MUST ensure
     * that stable writes are committed to it, before reporting completion of the write". Synchronous on the queue
     * thread: such drivers issue one request at a time. Linux's driver negotiates FLUSH, so this costs it nothing.
     */
    private boolean writeThrough;

    void writeThrough(boolean on) {
        writeThrough = on;
    }

    /** Reports requests that take {@code thresholdNanos} or longer as JFR events naming the device and queue. */
    void reportSlow(String device, int queue, long thresholdNanos) {
        this.device = device;
        this.queue = queue;
        this.slowNanos = thresholdNanos;
    }

    /** Image ownership (issue 11): from now on every request fails with VIRTIO_BLK_S_IOERR, for {@code why}. */
    void fence(String why) {
        this.fenced = why;
    }

    BlkLimits limits() {
        return limits;
    }

    /**
     * Whether every write, write-zeroes and discard of this queue that passed its read-only check before the disk
     * was switched read-only has ended. Read by the switching thread after the switch: true once none of
     * this queue's is between its check and its end, or the handler is closed with nothing left in the kernel. A
     * request checked after the switch (it fails at once) may be seen for a moment: the caller looks again.
     */
    boolean mutationsEnded() {
        return closed || mutating == 0;
    }

    /**
     * Whether a write, write-zeroes or discard of this queue was given up on while still in the kernel (the engine
     * could not wait for its ring, {@link #abandonInKernel}): it may land at any time, and {@link #mutationsEnded}
     * never says so.
     */
    boolean mutationsAbandoned() {
        return abandonedInKernel && mutating != 0;
    }

    /**
     * The queue's engine gives up on requests still in the kernel (io_uring_enter failed while it waited for them,
     * and it closes the ring): the writes among them stay counted, and the {@link #close} that follows does not
     * count the queue as drained. Queue thread, before close.
     */
    void abandonInKernel() {
        abandonedInKernel = true;
    }

    /** Counts a request that may change the image, before its read-only check (see {@link #mutating}). */
    private void mutationStarts(Request r) {
        r.mutating = true;
        mutating = (int) MUTATING.get(this) + 1; // single writer; volatile: the StoreLoad before the check
    }

    private void mutationEnded(Request r) {
        if (r.mutating) {
            r.mutating = false;
            MUTATING.setRelease(this, (int) MUTATING.get(this) - 1); // single writer; see mutating
        }
    }

    /**
     * A request dropped once its I/O is over (a failed queue cannot push it), or whose handling threw before it was
     * finished (its queue failed with it): forgets its guest buffers and takes it out of the in-flight gauge, unless
     * {@link #finish} already did. Safe to call again.
     */
    void dropped(Request r) {
        r.io.clear();
        mutationEnded(r);
        if (r.counted) {
            r.counted = false;
            stats.dropped(); // not in flight any more, though never answered
        }
    }

    /** The reason of the last failed {@link #process} request (null after a successful one). */
    String lastError() {
        return syncRequest == null ? null : syncRequest.error;
    }

    /**
     * Executes one request synchronously and writes its status byte.
     *
     * @return bytes written into the chain's writable buffers (data + status), for the used ring
     */
    long process(DescriptorChain chain) throws UnanswerableRequest {
        if (syncRequest == null) {
            syncRequest = new Request(-1, chain, image.newContext(limits.segMax(), limits.bounceBytes()));
        }
        Request r = syncRequest;
        r.chain = chain;
        if (start(r) != DONE) {
            runSync(r);
        }
        return finish(r);
    }

    /**
     * Reads and checks the request in {@code r.chain}. Requests without data I/O (GET_ID, DISCARD, WRITE_ZEROES,
     * bad ones) are executed here; for IN and OUT the guest buffers are added to {@code r.io}.
     *
     * @return {@link #DONE} (only {@link #finish} is left), or {@link #READ}/{@link #WRITE}/{@link #FLUSH}
     */
    int start(Request r) throws UnanswerableRequest {
        DescriptorChain chain = r.chain;
        long writable = chain.writableBytes();
        if (writable < 1) {
            throw new UnanswerableRequest("request " + chain.id() + " has no device-writable byte for its status");
        }
        r.writable = writable;
        r.startNanos = System.nanoTime();
        mutationEnded(r); // not counted any more (one that ended without finish, on a path that threw)
        if (r.counted) {
            dropped(r); // the same, in the in-flight gauge
        }
        stats.started(); // whatever throws from here on leaves r counted, for the engine's stop to drop (dropped)
        r.counted = true;
        r.error = null;
        r.dataWritten = 0;
        r.status = S_OK;
        r.kind = DONE;
        String fence = fenced;
        if (fence != null) { // image ownership (issue 11): not one byte of the image through this frontend
            r.status = S_IOERR;
            r.error = fence;
            return DONE;
        }
        if (chain.readableBytes() < HEADER_BYTES || chain.copyFromReadable(0, header) != HEADER_BYTES) {
            fail(r, "request header is " + chain.readableBytes() + " bytes, needs " + HEADER_BYTES);
            return DONE;
        }
        int type = header.get(LE32, 0);
        long sector = header.get(LE64, 8);
        try {
            switch (type) {
                case T_IN -> startRead(r, sector, writable - 1);
                case T_OUT -> startWrite(r, sector);
                case T_FLUSH -> r.kind = FLUSH;
                case T_GET_ID -> {
                    r.dataWritten = Math.min(ID_BYTES, writable - 1);
                    chain.scatter(0, serial, 0, r.dataWritten);
                }
                case T_DISCARD, T_WRITE_ZEROES -> discardOrZero(r, type == T_WRITE_ZEROES);
                default -> {
                    r.status = S_UNSUPP;
                    r.error = "unsupported request type " + Integer.toUnsignedString(type);
                }
            }
        } catch (IOException e) {
            ioError(r, e);
        }
        return r.kind;
    }

    /**
     * Queues a started read, write or flush on {@code ring} with the request's slot as user data. Returns false
     * when the request ran synchronously instead (O_DIRECT with unaligned guest buffers, nothing to transfer, a
     * flush of a qcow2 disk or of one opened read-only): then only {@link #finish} is left.
     */
    boolean submit(Request r, IoUring ring) {
        try {
            boolean queued = switch (r.kind) {
                case READ -> r.io.submitRead(ring, r.offset, r.slot);
                case WRITE -> r.io.submitWrite(ring, r.offset, r.slot);
                // qcow2, or nothing to flush: synchronous, below. A disk switched to read-only flushes still (a write
                // that passed its check before the switch may have completed since): the image decides.
                case FLUSH -> image.submitFlush(ring, r.slot);
                default -> throw new IllegalStateException("request kind " + r.kind + " has no I/O to submit");
            };
            if (queued) {
                return true;
            }
        } catch (IOException e) {
            ioError(r, e);
            return false;
        }
        runSync(r);
        return false;
    }

    /** Executes a started read, write or flush synchronously. */
    void runSync(Request r) {
        try {
            switch (r.kind) {
                case READ -> r.io.read(r.offset);
                case WRITE -> r.io.write(r.offset);
                case FLUSH -> image.flush(); // a no-op only for an image opened read-only (see DiskImage.flush)
                default -> throw new IllegalStateException("request kind " + r.kind + " has no I/O to run");
            }
            succeeded(r);
        } catch (IOException e) {
            ioError(r, e);
        }
    }

    /** Takes the completion result of a request queued by {@link #submit}. */
    void completed(Request r, int result) {
        try {
            switch (r.kind) {
                case READ -> r.io.completed(false, r.offset, result);
                case WRITE -> r.io.completed(true, r.offset, result);
                case FLUSH -> image.flushCompleted(result);
                default -> throw new IllegalStateException("request kind " + r.kind + " was not submitted");
            }
            succeeded(r);
        } catch (IOException e) {
            ioError(r, e);
        }
    }

    /**
     * Writes the status byte and forgets the request's guest buffers.
     *
     * @return bytes written into the chain's writable buffers (data + status), for the used ring
     */
    long finish(Request r) {
        mutationEnded(r); // its I/O is over
        long data = r.status == S_OK ? r.dataWritten : 0;
        long nanos = System.nanoTime() - r.startNanos;
        r.counted = false; // before the status byte, which may fault: dropped must not count it again
        stats.finished(r.status == S_UNSUPP, nanos);
        if (nanos >= slowNanos) {
            SlowRequestEvent.emit(
                    device,
                    queue,
                    switch (r.kind) {
                        case READ -> "read";
                        case WRITE -> "write";
                        case FLUSH -> "flush";
                        default -> "other";
                    },
                    r.offset,
                    r.kind == WRITE ? r.io.bytes() : data,
                    r.status,
                    nanos);
        }
        status.set(ValueLayout.JAVA_BYTE, 0, r.status);
        r.chain.copyToWritable(r.writable - 1, status);
        r.io.clear();
        return data + 1;
    }

    private void succeeded(Request r) throws IOException {
        switch (r.kind) {
            case READ -> {
                stats.reads.increment();
                stats.bytesRead.add(r.dataWritten);
            }
            case WRITE -> {
                if (writeThrough) {
                    image.flush(); // a failure: the write is not durable, I/O error (see writeThrough)
                }
                stats.writes.increment();
                stats.bytesWritten.add(r.io.bytes());
            }
            case FLUSH -> stats.flushes.increment();
            default -> {}
        }
    }

    private void startRead(Request r, long sector, long len) {
        if (!checkData(r, sector, len, "read")) {
            return;
        }
        ImageIo io = r.io;
        io.clear();
        DescriptorChain chain = r.chain;
        long left = len;
        for (int i = chain.readableCount(); i < chain.count() && left > 0; i++) {
            if (chain.length(i) > limits.sizeMax()) {
                fail(r, "read segment of " + chain.length(i) + " bytes exceeds size_max " + limits.sizeMax());
                return;
            }
            long n = Math.min(left, chain.length(i));
            if (!io.add(chain.mapping(i), chain.offset(i), n)) {
                fail(r, "read has more than " + limits.segMax() + " segments");
                return;
            }
            left -= n;
        }
        r.offset = sector << SECTOR_SHIFT;
        r.dataWritten = len;
        r.kind = READ;
    }

    private void startWrite(Request r, long sector) {
        mutationStarts(r); // before the check: see mutating
        if (image.readOnly()) {
            fail(r, "write to a read-only disk");
            return;
        }
        DescriptorChain chain = r.chain;
        long len = chain.readableBytes() - HEADER_BYTES;
        if (!checkData(r, sector, len, "write")) {
            return;
        }
        ImageIo io = r.io;
        io.clear();
        long skip = HEADER_BYTES; // the header may share a buffer with data (the spec allows any framing)
        for (int i = 0; i < chain.readableCount(); i++) {
            if (chain.length(i) > limits.sizeMax()) {
                fail(r, "write segment of " + chain.length(i) + " bytes exceeds size_max " + limits.sizeMax());
                return;
            }
            long n = chain.length(i);
            if (skip >= n) {
                skip -= n;
                continue;
            }
            if (!io.add(chain.mapping(i), chain.offset(i) + skip, n - skip)) {
                fail(r, "write has more than " + limits.segMax() + " segments");
                return;
            }
            skip = 0;
        }
        r.offset = sector << SECTOR_SHIFT;
        r.kind = WRITE;
    }

    private void discardOrZero(Request r, boolean zeroes) throws IOException {
        mutationStarts(r); // before the check: see mutating
        if (image.readOnly()) {
            fail(r, (zeroes ? "write-zeroes" : "discard") + " on a read-only disk");
            return;
        }
        DescriptorChain chain = r.chain;
        long len = chain.readableBytes() - HEADER_BYTES;
        if (len <= 0 || len % DISCARD_SEGMENT_BYTES != 0) {
            fail(r, "discard/write-zeroes payload of " + len + " bytes is not a whole number of 16-byte segments");
            return;
        }
        long segments = len / DISCARD_SEGMENT_BYTES;
        if (segments > limits.maxDiscardSegments()) {
            fail(r, segments + " discard/write-zeroes segments, limit " + limits.maxDiscardSegments());
            return;
        }
        // Validate every segment before touching the image: a request is all or nothing where we can make it so.
        // Pass 0 looks at the flags alone: an unknown flag anywhere is UNSUPP whatever else is wrong (the spec's
        // MUST); pass 1 checks the rest; pass 2 checks again (guest memory may change) and acts.
        for (int pass = 0; pass < 3; pass++) {
            for (long k = 0; k < segments; k++) {
                chain.copyFromReadable(HEADER_BYTES + k * DISCARD_SEGMENT_BYTES, discardSegment);
                long sector = discardSegment.get(LE64, 0);
                long sectors = Integer.toUnsignedLong(discardSegment.get(LE32, 8));
                int flags = discardSegment.get(LE32, 12);
                int allowed = zeroes ? WRITE_ZEROES_FLAG_UNMAP : 0;
                if ((flags & ~allowed) != 0) {
                    r.status = S_UNSUPP;
                    r.error = "discard/write-zeroes segment flags 0x" + Integer.toHexString(flags) + " not supported";
                    return;
                }
                if (pass == 0) {
                    continue;
                }
                if (sectors > limits.maxDiscardSectors()) {
                    fail(
                            r,
                            sectors + " sectors in one discard/write-zeroes segment, limit "
                                    + limits.maxDiscardSectors());
                    return;
                }
                if (!checkData(r, sector, sectors << SECTOR_SHIFT, zeroes ? "write-zeroes" : "discard")) {
                    return;
                }
                if (pass == 2) {
                    long off = sector << SECTOR_SHIFT;
                    long n = sectors << SECTOR_SHIFT;
                    if (zeroes) {
                        image.writeZeroes(off, n, (flags & WRITE_ZEROES_FLAG_UNMAP) != 0);
                    } else {
                        image.discard(off, n);
                    }
                }
            }
        }
        if (writeThrough) {
            image.flush(); // see writeThrough
        }
        stats.discards.increment();
    }

    /** Checks a data range: whole sectors, inside the image, aligned to the advertised block size. */
    private boolean checkData(Request r, long sector, long len, String what) {
        long capacitySectors = image.size() >>> SECTOR_SHIFT;
        if (len < 0 || (len & 511) != 0) {
            return fail(r, what + " of " + len + " bytes is not a multiple of 512");
        }
        long sectors = len >>> SECTOR_SHIFT;
        if (Long.compareUnsigned(sector, capacitySectors) > 0 || sectors > capacitySectors - sector) {
            return fail(
                    r,
                    what + " of " + sectors + " sectors at sector " + Long.toUnsignedString(sector)
                            + " is beyond the disk's " + capacitySectors + " sectors");
        }
        int blockSectors = image.blockSize() >>> SECTOR_SHIFT;
        if (image.direct() && ((sector | sectors) & (blockSectors - 1)) != 0) {
            return fail(
                    r,
                    what + " at sector " + sector + " is not aligned to the " + image.blockSize() + "-byte block size");
        }
        return true;
    }

    /** Marks a request invalid: IOERR, no I/O. Returns false for the callers' convenience. */
    private boolean fail(Request r, String why) {
        r.error = why;
        r.status = S_IOERR;
        r.kind = DONE;
        stats.requestErrors.increment();
        return false;
    }

    private void ioError(Request r, IOException e) {
        stats.ioErrors.increment();
        r.error = "I/O error: " + e.getMessage();
        r.status = S_IOERR;
    }

    @Override
    public void close() {
        if (!abandonedInKernel) { // else a write given up on in the kernel may still land: never drained
            closed = true;
        }
        if (syncRequest != null) {
            dropped(syncRequest); // one whose handling threw: its queue failed and it is not in flight any more
            syncRequest.io.close();
        }
        arena.close();
    }
}
