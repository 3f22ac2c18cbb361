// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import io.iovirt.linux.Mmap;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestWriteLog;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.util.LogLimiter;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The frontend's dirty page log for live migration (vhost-user {@code VHOST_USER_PROTOCOL_F_LOG_SHMFD}): a bitmap in
 * shared memory the frontend gave with {@code VHOST_USER_SET_LOG_BASE}, one bit per 4 KiB guest page (bit
 * {@code page % 8} of byte {@code page / 8}), from guest address 0. The device sets bits with atomic ORs (the
 * frontend reads and clears them concurrently); the frontend copies the marked pages again.
 *
 * <p>Bits are set a 64-bit word at a time ({@code getAndBitwiseOr} on an aligned long: the JDK has no atomic OR on
 * a byte), skipping the atomic when the bits are already set, so re-dirtying a page costs one load. On a
 * little-endian host bit {@code page % 64} of word {@code page / 64} is exactly the spec's bit. A log whose size is
 * not a multiple of 8 bytes (QEMU always sizes it in 8-byte chunks) loses its last partial word.
 *
 * <p>Every mark is bounds-checked against the log's size: a write beyond what the log covers cannot be reported;
 * it is counted and logged once per log (that migration may then copy a stale page — the frontend's log was too
 * small for the guest memory it described).
 */
public final class DirtyLog implements GuestWriteLog, AutoCloseable {
    private static final System.Logger LOG = System.getLogger(DirtyLog.class.getName());
    /** VHOST_LOG_PAGE. */
    public static final int PAGE_SHIFT = 12;
    /** A log for more than 2^47 bytes of guest memory (128 TiB) is not something a frontend sends in earnest. */
    static final long MAX_SIZE = 1L << 32;

    private static final VarHandle WORD = ValueLayout.JAVA_LONG.varHandle();

    static {
        if (ByteOrder.nativeOrder() != ByteOrder.LITTLE_ENDIAN) {
            throw new ExceptionInInitializerError("the dirty log's word-wise marking assumes a little-endian host");
        }
    }

    private final String name;
    private final Mmap.Mapping mapping;
    private final MemorySegment bitmap;
    private final long size;
    /** Pages covered: the whole 8-byte words of the log, 64 pages each. */
    private final long pages;

    private final AtomicLong outOfRange = new AtomicLong();
    /**
     * Where the line about the first write this log cannot cover goes: the connection's bucket for lines a frontend
     * can repeat at will (a frontend sending a too-small log again and again gets one line per log otherwise).
     */
    private final LogLimiter lines;
    // The log swap (SET_LOG_BASE while logging): marks in progress, and where marks go once this log is retired.
    private final AtomicLong marking = new AtomicLong();
    private volatile boolean retired;
    private volatile DirtyLog successor;

    private DirtyLog(String name, Mmap.Mapping mapping, MemorySegment bitmap, long size, LogLimiter lines) {
        this.name = name;
        this.lines = lines;
        this.mapping = mapping;
        this.size = size;
        this.bitmap = bitmap.asSlice(0, size & ~7L);
        this.pages = (size & ~7L) * 8;
    }

    /**
     * Maps the log of SET_LOG_BASE. The descriptor is consumed.
     *
     * @param checks the device's share of descriptor checks that may wait at once ({@link PeerFile})
     * @param size   bytes of bitmap (the payload's mmap_size)
     * @param offset where the bitmap starts in the file (mmap_offset)
     * @param lines  the bucket for lines the frontend can repeat at will (the handler's)
     * @throws ProtocolException the descriptor is not a shared memory file, or the area is empty, huge, misaligned
     *                           or beyond the end of the file
     */
    static DirtyLog map(String name, PeerFile.Quota checks, Fd fd, long size, long offset, LogLimiter lines)
            throws ProtocolException {
        try (fd) {
            String what = "SET_LOG_BASE (size " + Long.toUnsignedString(size) + ", offset "
                    + Long.toUnsignedString(offset) + ")";
            if (size <= 0 || size > MAX_SIZE) {
                throw new ProtocolException(what + ": the log size must be 1.." + MAX_SIZE + " bytes");
            }
            if (offset < 0 || offset % 8 != 0) {
                throw new ProtocolException(what + ": the log must start at a non-negative, 8-byte aligned offset");
            }
            PeerFile.requireSharedMemory(
                    checks, fd, what, offset, size, "the dirty log must be a memfd, or a file on tmpfs or hugetlbfs");
            Mmap.Mapping m = PeerFile.mapShared(fd, what, offset, size, Mmap.MAP_NORESERVE);
            return new DirtyLog(name, m, m.segment(), size, lines);
        }
    }

    /** A log over memory the caller owns (tests, benchmarks); {@code bitmap} must be 8-byte aligned. */
    public static DirtyLog over(String name, MemorySegment bitmap) {
        if (bitmap.address() % 8 != 0) {
            throw new IllegalArgumentException("the bitmap must be 8-byte aligned");
        }
        return new DirtyLog(name, null, bitmap, bitmap.byteSize(), new LogLimiter(LOG));
    }

    /** The log's size in bytes, as the frontend gave it. */
    public long size() {
        return size;
    }

    /** Guest bytes the log covers (from address 0). */
    public long coveredBytes() {
        return pages << PAGE_SHIFT;
    }

    /** Marks written that the log could not cover. */
    public long outOfRange() {
        return outOfRange.get();
    }

    /**
     * Devices report their writes here (through the memory holder) while logging is on. A device thread may still
     * hold this log after the frontend replaced it ({@link #retire}): its marks then go to the log that replaced it,
     * never into this one once {@link #retire} has returned (the frontend syncs and frees it right after).
     */
    @Override
    public void written(long gpa, long len) {
        DirtyLog log = this;
        do {
            // Announce the mark, then look whether the log is retired: retire() publishes the flag, then waits for
            // the announced marks, so one of the two sees the other (both are sequentially consistent).
            log.marking.incrementAndGet();
            try {
                if (!log.retired) {
                    log.mark(gpa, len);
                    return;
                }
            } finally {
                log.marking.decrementAndGet();
            }
            log = log.successor;
        } while (log != null);
    }

    /**
     * Retires this log for the frontend's next one ({@code successor}; null when logging ends with it): returns
     * once no mark can land in this log any more, every mark in progress finished and every later one going to the
     * successor. The caller replies to SET_LOG_BASE only after this, so nothing a device wrote is missing from
     * the log the frontend syncs next, and no queue stops for the swap.
     */
    void retire(DirtyLog successor) {
        this.successor = successor;
        this.retired = true;
        // A mark is a few loads and an atomic OR: this waits for at most one per queue thread.
        while (marking.get() != 0) {
            Thread.onSpinWait();
            Thread.yield();
        }
    }

    /**
     * After {@link #retire}: moves every bit still set in this log over guest memory into {@code successor}, so a
     * mark the frontend has not read survives the swap. The frontend reads a log by clearing what it reads (QEMU's
     * vhost_dev_sync_region swaps each non-zero word with 0), so what is left here is what it has not seen. That
     * matters when the frontend synced and freed this log before it sent the next one: QEMU 7.2 does so when it
     * stops and starts a device during a migration (vhost_dev_stop syncs and frees the log after GET_VRING_BASE;
     * vhost_dev_start sends SET_FEATURES with LOG_ALL and starts the rings before SET_LOG_BASE, and a vhost-user-net
     * ring that stayed enabled runs from its kick on), and marks made in between land only here. Moved, not
     * copied: when the frontend still syncs this log after the reply (a resize), it finds each page once, in one
     * log or the other (each word is taken with an atomic exchange, as the frontend takes it). Only the words over
     * {@code memory} are looked at: devices mark nothing else, and a frontend's log may be large and sparse (reading
     * it all would fault in its file at our expense). Bits beyond the successor's end are for guest memory the
     * frontend no longer logs, and are dropped.
     *
     * @return the pages moved
     */
    long carryOver(DirtyLog successor, GuestMemory memory) {
        long words = Math.min(bitmap.byteSize(), successor.bitmap.byteSize()) >>> 3;
        long carried = 0;
        for (MemoryRegion r : memory.regions()) {
            long first = r.guestPhysAddr() >>> (PAGE_SHIFT + 6);
            long last = Math.min((r.guestPhysAddr() + r.size() - 1) >>> (PAGE_SHIFT + 6), words - 1);
            for (long word = first; word <= last; word++) {
                long offset = word << 3;
                if ((long) WORD.getOpaque(bitmap, offset) == 0) {
                    continue;
                }
                long bits = (long) WORD.getAndSet(bitmap, offset, 0L);
                if (((long) WORD.get(successor.bitmap, offset) & bits) != bits) {
                    WORD.getAndBitwiseOr(successor.bitmap, offset, bits);
                }
                carried += Long.bitCount(bits);
            }
        }
        return carried;
    }

    /**
     * Marks every page of {@code [gpa, gpa + len)} dirty.
     *
     * @return false when part of the range lies beyond the log (counted; logged once)
     */
    public boolean mark(long gpa, long len) {
        if (len <= 0) {
            return true;
        }
        long end = gpa + len - 1;
        long first = gpa >>> PAGE_SHIFT;
        long last = end >>> PAGE_SHIFT;
        if (Long.compareUnsigned(end, gpa) < 0 || Long.compareUnsigned(last, pages) >= 0) {
            outOfRange(gpa, len);
            return false;
        }
        for (long page = first; page <= last; ) {
            long word = page >>> 6;
            long lastInWord = Math.min(last, (word << 6) | 63);
            int lo = (int) (page & 63);
            int hi = (int) (lastInWord & 63);
            long mask = (hi == 63 ? -1L : (1L << (hi + 1)) - 1) & (-1L << lo);
            long offset = word << 3;
            if (((long) WORD.get(bitmap, offset) & mask) != mask) {
                WORD.getAndBitwiseOr(bitmap, offset, mask);
            }
            page = lastInWord + 1;
        }
        return true;
    }

    /**
     * Marks every page of guest memory that this log covers dirty.
     *
     * @return the pages marked
     */
    long markAll(GuestMemory memory) {
        long covered = coveredBytes();
        long marked = 0;
        for (MemoryRegion r : memory.regions()) {
            long gpa = r.guestPhysAddr();
            if (Long.compareUnsigned(gpa, covered) >= 0) {
                continue;
            }
            long len = Long.compareUnsigned(r.size(), covered - gpa) > 0 ? covered - gpa : r.size();
            mark(gpa, len);
            marked += ((gpa + len - 1) >>> PAGE_SHIFT) - (gpa >>> PAGE_SHIFT) + 1;
        }
        return marked;
    }

    private void outOfRange(long gpa, long len) {
        if (outOfRange.getAndIncrement() == 0) {
            lines.log(
                    System.Logger.Level.ERROR,
                    String.format(
                            "%s: the device wrote guest memory 0x%x+0x%x, beyond the "
                                    + "0x%x bytes the frontend's %d-byte dirty log covers: that write cannot be reported, so the "
                                    + "migration may copy a stale page (further such writes are only counted)",
                            name, gpa, len, coveredBytes(), size));
        }
    }

    /** Unmaps the log. No device thread may be marking it any more: {@link #retire} it first if one might. */
    @Override
    public void close() {
        if (mapping != null) {
            mapping.close();
        }
    }

    @Override
    public String toString() {
        return "dirty log of " + size + " bytes covering 0x" + Long.toHexString(coveredBytes())
                + " bytes of guest memory";
    }
}
