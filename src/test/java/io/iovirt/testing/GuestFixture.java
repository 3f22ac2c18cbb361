// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;

/**
 * Guest RAM for queue tests: two regions with a hole between them (GPA 0 .. LOW_SIZE and HIGH_GPA .. +HIGH_SIZE),
 * carved from one host allocation with canary-filled guard zones around each region, so a test can prove that no
 * device access strayed outside guest memory.
 */
public final class GuestFixture implements AutoCloseable {
    public static final long GUARD = 4096;
    public static final long LOW_GPA = 0;
    public static final long HIGH_GPA = 0x10_0000;
    public static final byte CANARY = (byte) 0xA5;

    public final long lowSize;
    public final long highSize;
    private final Arena arena = Arena.ofShared();
    private final MemorySegment backing;
    public final MemorySegment low;
    public final MemorySegment high;
    public final GuestMemory memory;
    public final GuestMemoryHolder holder = new GuestMemoryHolder();
    private long lowNext;
    private long highNext;

    public GuestFixture() {
        this(256 * 1024, 64 * 1024);
    }

    public GuestFixture(long lowSize, long highSize) {
        this.lowSize = lowSize;
        this.highSize = highSize;
        backing = arena.allocate(3 * GUARD + lowSize + highSize, 4096);
        backing.fill(CANARY);
        low = backing.asSlice(GUARD, lowSize);
        high = backing.asSlice(2 * GUARD + lowSize, highSize);
        low.fill((byte) 0);
        high.fill((byte) 0);
        memory = GuestMemory.of(List.of(
                new MemoryRegion(LOW_GPA, lowSize, 0x7000_0000_0000L, 0, low, null),
                new MemoryRegion(HIGH_GPA, highSize, 0x7100_0000_0000L, 0, high, null)));
        holder.swap(memory);
        lowNext = 0;
        highNext = 0;
    }

    /** Bump-allocates guest memory in the low region. */
    public long alloc(long bytes, int align) {
        long gpa = (LOW_GPA + lowNext + align - 1) & -align;
        lowNext = gpa - LOW_GPA + bytes;
        if (lowNext > lowSize) {
            throw new IllegalStateException("fixture low region exhausted");
        }
        return gpa;
    }

    /** Bump-allocates guest memory in the high region. */
    public long allocHigh(long bytes, int align) {
        long gpa = (HIGH_GPA + highNext + align - 1) & -align;
        highNext = gpa - HIGH_GPA + bytes;
        if (highNext > highSize) {
            throw new IllegalStateException("fixture high region exhausted");
        }
        return gpa;
    }

    /** Host view of guest range [gpa, gpa+len), for test-side reads and writes. */
    public MemorySegment at(long gpa, long len) {
        try {
            return memory.translate(gpa, len);
        } catch (Exception e) {
            throw new IllegalArgumentException(e);
        }
    }

    /** True when [segment] lies inside one of the regions. */
    public boolean insideGuest(MemorySegment s) {
        return within(s, low) || within(s, high);
    }

    private static boolean within(MemorySegment s, MemorySegment region) {
        long a = s.address();
        return a >= region.address() && a + s.byteSize() <= region.address() + region.byteSize();
    }

    /** True when every guard byte still holds the canary. */
    public boolean guardsIntact() {
        return intact(backing.asSlice(0, GUARD))
                && intact(backing.asSlice(GUARD + lowSize, GUARD))
                && intact(backing.asSlice(2 * GUARD + lowSize + highSize, GUARD));
    }

    private static boolean intact(MemorySegment guard) {
        for (long i = 0; i < guard.byteSize(); i++) {
            if (guard.get(ValueLayout.JAVA_BYTE, i) != CANARY) {
                return false;
            }
        }
        return true;
    }

    @Override
    public void close() {
        arena.close();
    }
}
