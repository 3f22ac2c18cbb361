// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.IoUring;
import io.iovirt.linux.LinuxException;
import java.io.IOException;
import java.lang.foreign.MemorySegment;

/**
 * Scatter-gather I/O between a {@link DiskImage} and caller buffers, for one thread (or one request in flight).
 * Add buffers with {@link #add}, then {@link #read} or {@link #write} them at a guest offset, synchronously, or
 * queue the transfer on an io_uring ({@link #submitRead}/{@link #submitWrite}, then {@link #completed}); the
 * context is {@link #clear() cleared} and reused for the next request.
 */
public interface ImageIo extends AutoCloseable {

    /** Starts a new request. */
    void clear();

    /**
     * Adds {@code length} bytes of {@code memory} from {@code offset} as the next buffer; returns false when the
     * request has more segments than this context takes. The data path passes a guest buffer as the (region mapping,
     * offset, length) its descriptor chain checked against guest memory, so a request allocates no slice; the context
     * keeps the triple, not a segment, and {@code memory} must stay mapped until the request's I/O is over.
     *
     * @throws IndexOutOfBoundsException when the range is not inside {@code memory} (a caller bug: guest ranges were
     *     checked when the chain was popped)
     */
    boolean add(MemorySegment memory, long offset, long length);

    /** Adds all of {@code buffer} (cold paths and tests; the data path uses {@link #add(MemorySegment, long, long)}). */
    default boolean add(MemorySegment buffer) {
        return add(buffer, 0, buffer.byteSize());
    }

    /** Bytes in the buffers added since {@link #clear()}. */
    long bytes();

    /** Reads {@link #bytes()} at {@code offset} into the buffers; the range must lie inside the image. */
    void read(long offset) throws IOException;

    /** Writes the buffers at {@code offset}; the range must lie inside the image. */
    void write(long offset) throws IOException;

    /**
     * Queues the read on {@code ring} with {@code userData} and returns true, or returns false, queueing nothing,
     * when the request must run synchronously with {@link #read} (e.g. a qcow2 range that is not one allocated
     * host extent). The buffers must stay mapped until the completion is reaped.
     */
    boolean submitRead(IoUring ring, long offset, long userData) throws LinuxException;

    /** The write counterpart of {@link #submitRead}. */
    boolean submitWrite(IoUring ring, long offset, long userData) throws LinuxException;

    /** Finishes a transfer queued by {@link #submitRead}/{@link #submitWrite} from its completion result. */
    void completed(boolean write, long offset, int result) throws IOException;

    /**
     * The transfer queued last is given up on in the kernel: its ring is closed before its completion came, so it may
     * still read or write at any time. Called before {@link #close}: what the transfer may still write or read is
     * kept from other uses for as long as the image is open (a qcow2 image quarantines its host clusters: never
     * handed out again, left allocated if freed), and the close then lets the context go as any other.
     */
    default void abandon() {}

    @Override
    void close();
}
