// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A preallocated {@code struct iovec} array for preadv/pwritev. A queue worker keeps one per queue and refills it
 * per request, so scatter-gather I/O straight into guest memory allocates nothing.
 */
public final class IoVec {
    /** The kernel's limit on entries per call (IOV_MAX). */
    public static final int IOV_MAX = 1024;

    private static final long ENTRY = 16; // {void *iov_base; size_t iov_len}

    private final MemorySegment array;
    private final int capacity;

    private IoVec(MemorySegment array, int capacity) {
        this.array = array;
        this.capacity = capacity;
    }

    public static IoVec allocate(Arena arena, int capacity) {
        if (capacity < 1 || capacity > IOV_MAX) {
            throw new IllegalArgumentException("iovec capacity must be 1.." + IOV_MAX + ": " + capacity);
        }
        return new IoVec(arena.allocate(ENTRY * capacity, 8), capacity);
    }

    /**
     * An iovec array in caller-provided native memory ({@code memory.byteSize() / 16} entries), e.g. one slice per
     * in-flight request of a larger mapping whose pages are only touched when used.
     */
    public static IoVec over(MemorySegment memory) {
        if (!memory.isNative() || (memory.address() & 7) != 0) {
            throw new IllegalArgumentException("an iovec array needs 8-byte aligned native memory");
        }
        long capacity = memory.byteSize() / ENTRY;
        if (capacity < 1 || capacity > IOV_MAX) {
            throw new IllegalArgumentException("iovec capacity must be 1.." + IOV_MAX + ": " + capacity);
        }
        return new IoVec(memory.asSlice(0, capacity * ENTRY), (int) capacity);
    }

    /** Bytes of memory an array of {@code capacity} entries takes. */
    public static long bytes(int capacity) {
        return ENTRY * capacity;
    }

    public int capacity() {
        return capacity;
    }

    /**
     * Entry {@code i} points at {@code buffer}. The caller keeps {@code buffer}'s memory mapped until the I/O using
     * this array has returned (the array holds raw addresses, not the segment).
     */
    public void set(int i, MemorySegment buffer) {
        if (!buffer.isNative()) {
            throw new IllegalArgumentException("I/O buffers must be native memory");
        }
        set(i, buffer.address(), buffer.byteSize());
    }

    public void set(int i, long address, long length) {
        if (i < 0 || i >= capacity) {
            throw new IndexOutOfBoundsException("iovec " + i + " of " + capacity);
        }
        array.set(JAVA_LONG, ENTRY * i, address);
        array.set(JAVA_LONG, ENTRY * i + 8, length);
    }

    public long length(int i) {
        return array.get(JAVA_LONG, ENTRY * i + 8);
    }

    MemorySegment segment() {
        return array;
    }
}
