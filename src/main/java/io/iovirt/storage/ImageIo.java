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

    /** Adds a buffer; returns false when the request has more segments than this context takes. */
    boolean add(MemorySegment buffer);

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

    @Override
    void close();
}
