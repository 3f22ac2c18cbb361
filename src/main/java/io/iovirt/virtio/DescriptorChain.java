package io.iovirt.virtio;

import io.iovirt.memory.WriteLog;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Objects;

/**
 * One request the driver made available: the buffers of a descriptor chain (indirect tables already expanded), each
 * translated to host memory and bounds-checked when the chain was popped. Device-readable buffers come first
 * (indices {@code 0 .. readableCount()-1}), device-writable ones after them.
 *
 * <p>Chain objects are reusable: {@link Virtqueue#pop(DescriptorChain)} overwrites one in place, so the hot path
 * allocates nothing but the guest-memory slices. A device that keeps several requests in flight holds one chain
 * object per in-flight request ({@link Virtqueue#newChain()}). Guest memory stays shared with the guest: copy a
 * header into private memory before validating it (the guest can change it at any time).
 */
public final class DescriptorChain {
    private static final int INITIAL_CAPACITY = 8;

    private final Virtqueue queue;
    private final int maxBuffers;
    private MemorySegment[] segments;
    private long[] addresses;
    int count;
    int readable;
    long readableBytes;
    long writableBytes;
    int id = -1;

    DescriptorChain(Virtqueue queue, int maxBuffers) {
        this.queue = queue;
        this.maxBuffers = maxBuffers;
        int cap = Math.min(INITIAL_CAPACITY, maxBuffers);
        this.segments = new MemorySegment[cap];
        this.addresses = new long[cap];
    }

    void reset() {
        Arrays.fill(segments, 0, count, null); // drop references into guest memory of the previous request
        count = 0;
        readable = 0;
        readableBytes = 0;
        writableBytes = 0;
        id = -1;
    }

    /** Appends one already translated buffer; the caller checked count, direction order and total length. */
    void append(long gpa, MemorySegment segment) {
        if (count == segments.length) {
            // Grows geometrically up to the queue size: amortized, so a long-running queue stops allocating.
            int cap = Math.min(maxBuffers, segments.length * 2);
            segments = Arrays.copyOf(segments, cap);
            addresses = Arrays.copyOf(addresses, cap);
        }
        segments[count] = segment;
        addresses[count] = gpa;
        count++;
    }

    /** The queue this chain was created for. */
    public Virtqueue queue() {
        return queue;
    }

    /** Head descriptor index (split) or buffer ID (packed): what the used ring reports back to the driver. */
    public int id() {
        return id;
    }

    /** Number of buffers, readable and writable. */
    public int count() {
        return count;
    }

    public int readableCount() {
        return readable;
    }

    public int writableCount() {
        return count - readable;
    }

    public boolean isWritable(int i) {
        Objects.checkIndex(i, count);
        return i >= readable;
    }

    /** Host memory of buffer {@code i} (zero length buffers are {@link MemorySegment#NULL}), for zero-copy I/O. */
    public MemorySegment segment(int i) {
        Objects.checkIndex(i, count);
        return segments[i];
    }

    /** Guest physical address of buffer {@code i}, for diagnostics. */
    public long guestAddress(int i) {
        Objects.checkIndex(i, count);
        return addresses[i];
    }

    /** Total bytes of the device-readable buffers. */
    public long readableBytes() {
        return readableBytes;
    }

    /** Total bytes of the device-writable buffers. */
    public long writableBytes() {
        return writableBytes;
    }

    /**
     * Copies device-readable data, starting {@code offset} bytes into the readable part, into {@code dst} across
     * buffer boundaries.
     *
     * @return bytes copied: {@code dst.byteSize()}, or fewer when the readable part ends first
     */
    public long copyFromReadable(long offset, MemorySegment dst) {
        return copy(0, readable, offset, dst, true);
    }

    /**
     * Copies {@code src} into the device-writable buffers, starting {@code offset} bytes into the writable part.
     *
     * @return bytes copied: {@code src.byteSize()}, or fewer when the writable part ends first
     */
    public long copyToWritable(long offset, MemorySegment src) {
        return copy(readable, count, offset, src, false);
    }

    private long copy(int from, int to, long offset, MemorySegment other, boolean intoOther) {
        if (offset < 0) {
            throw new IllegalArgumentException("negative offset " + offset);
        }
        long want = other.byteSize();
        long done = 0;
        long skip = offset;
        for (int i = from; i < to && done < want; i++) {
            MemorySegment s = segments[i];
            long n = s.byteSize();
            if (skip >= n) {
                skip -= n;
                continue;
            }
            long k = Math.min(n - skip, want - done);
            if (intoOther) {
                MemorySegment.copy(s, skip, other, done, k);
            } else {
                MemorySegment.copy(other, done, s, skip, k);
            }
            done += k;
            skip = 0;
        }
        if (!intoOther && done > 0) {
            // migration (issue 11): report what was copied into guest memory, reading the log after the write
            WriteLog log = queue.memory.writeLog();
            if (log != null) {
                logRange(log, offset, done);
            }
        }
        return done;
    }

    /** Reports the first {@code bytes} of the writable part to {@code log} (the device wrote them in place). */
    void logWritable(WriteLog log, long bytes) {
        logRange(log, 0, bytes);
    }

    /** Reports {@code len} bytes from {@code offset} into the writable part to {@code log}. */
    private void logRange(WriteLog log, long offset, long len) {
        long skip = offset;
        long left = len;
        for (int i = readable; i < count && left > 0; i++) {
            long n = segments[i].byteSize();
            if (skip >= n) {
                skip -= n;
                continue;
            }
            long k = Math.min(n - skip, left);
            log.written(addresses[i] + skip, k);
            left -= k;
            skip = 0;
        }
    }

    @Override
    public String toString() {
        StringBuilder b = new StringBuilder("DescriptorChain[id=").append(id).append(", ");
        for (int i = 0; i < count; i++) {
            b.append(i < readable ? "R" : "W").append(String.format("0x%x+%d", addresses[i], segments[i].byteSize()));
            b.append(i + 1 < count ? " " : "");
        }
        return b.append(']').toString();
    }
}
