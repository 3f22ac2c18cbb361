// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import java.lang.foreign.MemorySegment;
import java.util.Objects;

/**
 * One frame in flight through the switch: a window ({@link #offset}, {@link #length}) onto a buffer its receiving
 * port preallocated. Each receive thread owns one Frame object and re-points it for every frame, so frames move
 * through the switch without an allocation; a transmitting port copies the bytes out before {@link Port#transmit}
 * returns and never keeps the object.
 *
 * <p>The buffer is private to the port (never guest memory): the switch decides on bytes the sender can no longer
 * change.
 */
public final class Frame {
    private final MemorySegment buffer;
    private long offset;
    private int length;

    public Frame(MemorySegment buffer) {
        this.buffer = Objects.requireNonNull(buffer);
    }

    /** Points this frame at {@code buffer[offset, offset+length)}. */
    public Frame set(long offset, int length) {
        Objects.checkFromIndexSize(offset, length, buffer.byteSize());
        this.offset = offset;
        this.length = length;
        return this;
    }

    public MemorySegment buffer() {
        return buffer;
    }

    public long offset() {
        return offset;
    }

    public int length() {
        return length;
    }

    /** Destination MAC (the frame must hold at least an Ethernet header). */
    public long destination() {
        return Mac.read(buffer, offset);
    }

    public long source() {
        return Mac.read(buffer, offset + 6);
    }

    /** Copies the whole frame to {@code dst} at {@code dstOffset}. */
    public void copyTo(MemorySegment dst, long dstOffset) {
        MemorySegment.copy(buffer, offset, dst, dstOffset, length);
    }

    /** Copies {@code count} bytes starting {@code from} bytes into the frame to {@code dst} at {@code dstOffset}. */
    public void copyTo(long from, MemorySegment dst, long dstOffset, long count) {
        Objects.checkFromIndexSize(from, count, length);
        MemorySegment.copy(buffer, offset + from, dst, dstOffset, count);
    }

    /** A copy of the bytes, for tests and diagnostics (allocates). */
    public byte[] toByteArray() {
        byte[] b = new byte[length];
        MemorySegment.copy(buffer, JAVA_BYTE, offset, b, 0, length);
        return b;
    }
}
