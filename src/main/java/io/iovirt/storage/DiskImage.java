// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.linux.LinuxException;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;

/**
 * A disk image as every frontend sees it (virtio-blk queues, the NBD server, a qcow2 overlay reading its backing
 * file): a guest-visible byte range of {@link #size()} bytes, read and written through per-thread {@link ImageIo}
 * contexts, flushed, discarded, zeroed, and asked for its allocation status. Open images with {@link Images#open}.
 *
 * <p>Implementations are safe for concurrent use by many threads, one {@link ImageIo} per thread (or per request
 * in flight). Durability: once {@link #flush()} returns, every write completed before it was called — data and the
 * format's metadata needed to find it — is on stable storage.
 */
public interface DiskImage extends AutoCloseable {

    /**
     * The check an image makes before it reads or writes {@code len} bytes at {@code offset} of the image at {@code
     * path}: a write while {@code readOnly} fails with EROFS, a range that is negative or not inside {@code size}
     * bytes with EINVAL (the call named pwrite or pread).
     */
    static void checkRange(Path path, long size, boolean readOnly, long offset, long len, boolean write)
            throws LinuxException {
        if (write && readOnly) {
            throw new LinuxException("pwrite", path.toString(), Errno.EROFS);
        }
        if (offset < 0 || len < 0 || offset > size || len > size - offset) {
            throw new LinuxException(
                    write ? "pwrite" : "pread",
                    "range " + offset + "+" + len + " outside the " + size + "-byte image",
                    Errno.EINVAL);
        }
    }

    /** The file this image was opened from. */
    Path path();

    /**
     * A descriptor of its own (close-on-exec, the caller closes it) of the file this image was opened from, sharing
     * the image's open file description (dup): for what needs the file without opening {@link #path} again, which
     * waits when its file system does not answer (the blk device's image lock).
     */
    Fd dupFile() throws LinuxException;

    /** "raw" or "qcow2". */
    String format();

    /** Guest-visible size in bytes. */
    long size();

    /** Writes are refused now: opened read-only, or switched with {@link #setReadOnly}. */
    boolean readOnly();

    /** Whether data I/O bypasses the host page cache (O_DIRECT). */
    boolean direct();

    /** Smallest block the guest should address (512, or the O_DIRECT alignment). */
    int blockSize();

    /**
     * Granularity at which {@link #writeZeroes} and {@link #discard} are metadata operations (no data written):
     * 1 for a raw file (fallocate), the cluster size for qcow2. Parts of a request outside this alignment are
     * written as zeros (write-zeroes) or ignored (discard).
     */
    int zeroGranularity();

    /** Per-thread I/O state with its own iovec array and (O_DIRECT) bounce buffer. */
    ImageIo newContext(int maxSegments, int bounceBytes);

    /** I/O state over caller-owned memory, for one request in flight among many (see {@link RawImage}). */
    ImageIo newContext(IoVec iov, MemorySegment bounce);

    /**
     * Makes every completed write, and the metadata that finds it, durable. Callers flush whatever {@link #readOnly()}
     * says: only an image opened read-only, which never took a write, has nothing to do. One switched to read-only
     * while served ({@link #setReadOnly}) still syncs: a write that passed its checks before the switch may have
     * completed after the switch's own sync, and the guest was told it succeeded.
     */
    void flush() throws IOException;

    /**
     * Queues an asynchronous {@link #flush()} on {@code ring} and returns true (pass the result to
     * {@link #flushCompleted}); returns false, queueing nothing, when the format needs the synchronous flush or there
     * is nothing to flush (opened read-only): the caller then runs {@link #flush()}.
     */
    boolean submitFlush(IoUring ring, long userData);

    /**
     * The descriptors this image's {@link ImageIo#submitRead}/{@link ImageIo#submitWrite} and {@link #submitFlush}
     * queue operations on, for a ring to register once ({@link IoUring#registerFiles}) instead of the kernel
     * taking a file reference per operation. Empty when the image queues nothing on a ring.
     */
    default Fd[] ringFiles() {
        return new Fd[0];
    }

    /** Checks the result of a flush queued with {@link #submitFlush}. */
    void flushCompleted(int result) throws IOException;

    /** Deallocates [offset, offset+len) where the format can; the range then reads as zeros or its old data. */
    void discard(long offset, long len) throws IOException;

    /** Makes [offset, offset+len) read as zeros; with {@code unmap} the space may be deallocated. */
    void writeZeroes(long offset, long len, boolean unmap) throws IOException;

    /**
     * Allocation status of the extent starting at {@code offset}: its length (at least 1 byte, at most {@code len},
     * at most to the end of the image) and whether it is a hole (not allocated in this image or its backing chain)
     * and whether it reads as zeros, packed into a long ({@link Extent}). Frontends report it as NBD base:allocation.
     */
    long extent(long offset, long len) throws IOException;

    /**
     * Thread-safe positional read into one buffer, for backing-file reads and tools (not the data path): the range
     * must lie inside the image.
     */
    void readAt(long offset, MemorySegment dst) throws IOException;

    /**
     * Grows the image to {@code newSize} bytes while it is served (the daemon's blk.resize). Formats that cannot
     * say so.
     */
    default void resize(long newSize) throws IOException {
        throw new IOException(
                "resizing a " + format() + " image while it is served is not supported: remove the export,"
                        + " resize it with qemu-img resize, and add it again");
    }

    /**
     * Reads again what the image keeps in memory from the file (a qcow2 image's tables), for a backend that takes the
     * image from another process that wrote it meanwhile (a live migration's source, see the blk device's image
     * lock). Called with no request in flight. A raw image keeps nothing: the default does nothing.
     */
    default void refresh() throws IOException {}

    /**
     * Writes back what the image keeps in memory and another process reading the file would miss (a qcow2 image's
     * tables for writes completed since the last flush), for a backend that lets go of the image ({@link #refresh}
     * is the other side). A raw image keeps nothing: the default does nothing.
     */
    default void handOver() throws IOException {}

    /** Refuses (true) or accepts again (false) writes from now on (the daemon's blk.set-readonly). */
    default void setReadOnly(boolean readOnly) throws IOException {
        throw new IOException("switching a " + format() + " image to read-only while it is served is not supported");
    }

    @Override
    void close();

    /**
     * Flushes (a no-op for an image opened read-only, see {@link #flush()}), then closes whatever the flush did. For a
     * caller that is shutting down and has no one to hand a failed flush to: it is logged naming {@code owner} (e.g.
     * "blk vm1"). Returns whether the flush succeeded.
     */
    default boolean flushAndClose(String owner) {
        try {
            flush();
            return true;
        } catch (IOException e) {
            System.getLogger(DiskImage.class.getName())
                    .log(
                            System.Logger.Level.ERROR,
                            owner + ": the final flush of " + path() + " failed: " + e.getMessage()
                                    + "; writes acknowledged before it may not be on disk");
            return false;
        } finally {
            close();
        }
    }

    /**
     * An extent's allocation status as {@link #extent} returns it: packed into a long — the length in the low 62
     * bits, the hole and zero flags in the two above — so that asking allocates nothing (NBD's BLOCK_STATUS asks once
     * per extent of every request). Made with {@link #of}, read with {@link #length}, {@link #hole}, {@link #zero}.
     */
    final class Extent {
        private static final long HOLE = 1L << 63;
        private static final long ZERO = 1L << 62;
        /** The longest extent: 4 EiB, beyond any image's size. */
        public static final long MAX_LENGTH = ZERO - 1;

        private Extent() {}

        public static long of(long length, boolean hole, boolean zero) {
            if (length < 1 || length > MAX_LENGTH) {
                throw new IllegalArgumentException("extent length " + length + " outside 1.." + MAX_LENGTH);
            }
            return length | (hole ? HOLE : 0) | (zero ? ZERO : 0);
        }

        public static long length(long extent) {
            return extent & MAX_LENGTH;
        }

        /** Not allocated in the image or its backing chain. */
        public static boolean hole(long extent) {
            return (extent & HOLE) != 0;
        }

        /** Reads as zeros. */
        public static boolean zero(long extent) {
            return (extent & ZERO) != 0;
        }

        /** For messages and test failures: {@code 4096 data}, {@code 65536 hole zero}. */
        public static String toString(long extent) {
            return length(extent)
                    + (hole(extent) ? " hole" : "")
                    + (zero(extent) ? " zero" : "")
                    + (hole(extent) || zero(extent) ? "" : " data");
        }
    }
}
