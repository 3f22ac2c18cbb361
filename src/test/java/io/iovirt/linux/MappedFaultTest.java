// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.Test;

/**
 * A SIGBUS in a truncated shared mapping reaches Java as an {@link InternalError} that HotSpot delivers late, at the
 * thread's next safepoint poll. {@link Mmap#surfaceFaults} at the end of a try block makes it arrive inside that
 * block, in compiled code too — the property every thread that touches several guests' memory relies on to charge
 * a fault to the right guest.
 */
class MappedFaultTest {
    private static final int RW = Mmap.PROT_READ | Mmap.PROT_WRITE;
    private static final int TRIALS = 500;

    private int caughtInside;

    /** One store into guest memory, charged to "this guest" only if the fault surfaces inside the try. */
    private long store(MemorySegment m, long offset, long salt) {
        try {
            m.set(JAVA_LONG, offset, salt);
            Mmap.surfaceFaults();
        } catch (InternalError e) {
            caughtInside++;
            return -1;
        }
        long x = salt; // what the thread does next, for someone else
        for (int i = 0; i < 32; i++) {
            x = x * 31 + i;
        }
        return x;
    }

    @Test
    void aFaultInATruncatedMappingSurfacesInsideTheTryBlockThatMadeIt() throws Exception {
        long size = 1 << 20;
        try (Fd mem = MemFd.allocate("guest-ram", size);
                Mmap.Mapping m = Mmap.map(mem, 0, size, RW, Mmap.MAP_SHARED)) {
            MemorySegment seg = m.segment();
            long sink = 0;
            for (int i = 0; i < 200_000; i++) { // long enough for C2 to compile store()
                sink += store(seg, 8L * (i & 511), i);
            }
            MemFd.truncate(mem, 4096); // the frontend shrinks the file it shared
            int caughtOutside = 0;
            for (int t = 0; t < TRIALS; t++) {
                try {
                    sink += store(seg, 8192 + 64L * (t % 1000), t); // beyond the new end: SIGBUS
                    for (int i = 0; i < 100; i++) {
                        sink += store(seg, 8L * (i & 511), i); // fine: the first page is still backed
                    }
                } catch (InternalError e) {
                    caughtOutside++;
                }
            }
            assertEquals(0, caughtOutside, "faults surfaced after their try block (sink " + sink + ")");
            assertEquals(TRIALS, caughtInside);
        }
    }
}
