// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Objects;

/**
 * One request the driver made available: the buffers of a descriptor chain (indirect tables already expanded), each
 * bounds-checked against guest memory when the chain was popped and kept as (region mapping, offset, length) in
 * primitive arrays: popping allocates nothing, and a slice is made only when a caller asks for one
 * ({@link #segment}). The arrays grow only up to the queue's chain bound ({@link Virtqueue#maxChain()}), which the
 * device sets ({@link Virtqueue#limitChain}), so per-request state is bounded whatever the guest does. Device-readable buffers come first
 * (indices {@code 0 .. readableCount()-1}), device-writable ones after them.
 *
 * <p>Chain objects are reusable: {@link Virtqueue#pop(DescriptorChain)} overwrites one in place, so popping allocates
 * nothing; the data path hands buffers on as {@link #mapping}/{@link #offset}/{@link #length} (virtio-blk into
 * {@code storage.ImageIo}, net copies with {@link #gather}/{@link #scatter}), never as slices (issue 10:
 * BlkAllocationTest, NetAllocationTest). A device that keeps several requests in flight holds one chain
 * object per in-flight request ({@link Virtqueue#newChain()}). Guest memory stays shared with the guest: copy a
 * header into private memory before validating it (the guest can change it at any time).
 */
public final class DescriptorChain {
    private static final int INITIAL_CAPACITY = 8;

    private final Virtqueue queue;
    private final int maxBuffers;
    /** Whole region mappings (shared references, not slices), offsets and lengths of each buffer. */
    private MemorySegment[] maps;

    private long[] offsets;
    private long[] lengths;
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
        this.maps = new MemorySegment[cap];
        this.offsets = new long[cap];
        this.lengths = new long[cap];
        this.addresses = new long[cap];
    }

    void reset() {
        // drop references to the previous request's guest memory; a loop the JIT inlines, not Arrays.fill: perf
        // showed the out-of-line Arrays.fill call at 3 % of the p2p forwarding thread for its one or two elements
        for (int i = 0; i < count; i++) {
            maps[i] = null;
        }
        count = 0;
        readable = 0;
        readableBytes = 0;
        writableBytes = 0;
        id = -1;
    }

    /** Appends one checked buffer; the caller checked count, direction order and total length. */
    void append(long gpa, MemorySegment map, long offset, long length) {
        if (count == maps.length) {
            // Grows geometrically up to the chain bound: amortized, so a long-running queue stops allocating.
            int cap = Math.min(maxBuffers, maps.length * 2);
            maps = Arrays.copyOf(maps, cap);
            offsets = Arrays.copyOf(offsets, cap);
            lengths = Arrays.copyOf(lengths, cap);
            addresses = Arrays.copyOf(addresses, cap);
        }
        maps[count] = map;
        offsets[count] = offset;
        lengths[count] = length;
        addresses[count] = gpa;
        count++;
    }

    /** Most buffers this chain holds (the queue's chain bound when it was made). */
    public int capacity() {
        return maxBuffers;
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

    /**
     * Host memory of buffer {@code i} as a new slice (zero length buffers are {@link MemorySegment#NULL}), for cold
     * paths and tests. Allocates: the data path uses {@link #length}, {@link #mapping}/{@link #offset},
     * {@link #gather}/{@link #scatter} or {@link #hostAddress} instead.
     */
    public MemorySegment segment(int i) {
        Objects.checkIndex(i, count);
        return lengths[i] == 0 ? MemorySegment.NULL : maps[i].asSlice(offsets[i], lengths[i]);
    }

    /** Length of buffer {@code i}. */
    public long length(int i) {
        Objects.checkIndex(i, count);
        return lengths[i];
    }

    /** The whole guest memory region buffer {@code i} lies in (bounds-checked accesses with {@link #offset}). */
    public MemorySegment mapping(int i) {
        Objects.checkIndex(i, count);
        return maps[i];
    }

    /** Offset of buffer {@code i} in its {@link #mapping}. */
    public long offset(int i) {
        Objects.checkIndex(i, count);
        return offsets[i];
    }

    /** Host address of buffer {@code i}'s first byte, for iovecs (0 for an empty buffer). */
    public long hostAddress(int i) {
        Objects.checkIndex(i, count);
        return lengths[i] == 0 ? 0 : maps[i].address() + offsets[i];
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
     * Copies {@code len} bytes of the device-readable part, from {@code offset} into it, to {@code dst[dstOff..]}.
     *
     * @return bytes copied ({@code len}, or fewer when the readable part ends first)
     */
    public long gather(long offset, MemorySegment dst, long dstOff, long len) {
        return copyRange(0, readable, offset, dst, dstOff, len, true);
    }

    /**
     * Copies {@code len} bytes from {@code src[srcOff..]} into the device-writable part, from {@code offset} into it.
     *
     * @return bytes copied ({@code len}, or fewer when the writable part ends first)
     */
    public long scatter(long offset, MemorySegment src, long srcOff, long len) {
        return copyRange(readable, count, offset, src, srcOff, len, false);
    }

    private long copyRange(
            int from, int to, long offset, MemorySegment other, long otherOff, long len, boolean intoOther) {
        long done = 0;
        long skip = offset;
        for (int i = from; i < to && done < len; i++) {
            long n = lengths[i];
            if (skip >= n) {
                skip -= n;
                continue;
            }
            long k = Math.min(n - skip, len - done);
            if (intoOther) {
                MemorySegment.copy(maps[i], offsets[i] + skip, other, otherOff + done, k);
            } else {
                MemorySegment.copy(other, otherOff + done, maps[i], offsets[i] + skip, k);
            }
            done += k;
            skip = 0;
        }
        return done;
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
            long n = lengths[i];
            if (skip >= n) {
                skip -= n;
                continue;
            }
            long k = Math.min(n - skip, want - done);
            if (intoOther) {
                MemorySegment.copy(maps[i], offsets[i] + skip, other, done, k);
            } else {
                MemorySegment.copy(other, done, maps[i], offsets[i] + skip, k);
            }
            done += k;
            skip = 0;
        }
        return done;
    }

    @Override
    public String toString() {
        StringBuilder b = new StringBuilder("DescriptorChain[id=").append(id).append(", ");
        for (int i = 0; i < count; i++) {
            b.append(i < readable ? "R" : "W").append(String.format("0x%x+%d", addresses[i], lengths[i]));
            b.append(i + 1 < count ? " " : "");
        }
        return b.append(']').toString();
    }
}
