// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.util.Arrays;

/**
 * CPU cost of the transmit path's frame copy alone ({@code NetTxQueue.handle}: one {@link MemorySegment#copy} out of
 * guest memory into a private 64-byte-aligned buffer), by frame length, source alignment and copy shape, to tell a
 * length- or alignment-dependent cost from the copy itself. Sources rotate over 64 buffers 2 KiB apart, as mbufs
 * do. Thread CPU time per copy, the minimum over 50 rounds that interleave all cases (robust when other processes
 * share the core: a round they disturb is not the minimum). Run: {@code java -cp target/test-classes
 * io.iovirt.devices.net.FrameCopyBench}.
 */
public final class FrameCopyBench {
    private FrameCopyBench() {}

    /** Source offset in the 2 KiB buffer (128: DPDK's mbuf headroom), frame length, copy shape. */
    private record Case(int offset, int length, boolean splitTail) {
        String label() {
            return "source +" + offset + ", " + length + " B, "
                    + (splitTail ? "8-byte multiple + tail (two copies)" : "one copy");
        }
    }

    private static long run(MemorySegment guest, MemorySegment buf, Case c, int n) {
        long s = 0;
        int len = c.length();
        for (int i = 0; i < n; i++) {
            long from = c.offset() + (i & 63) * 2048L;
            if (c.splitTail()) {
                int bulk = len & ~7;
                MemorySegment.copy(guest, from, buf, 0, bulk);
                if (bulk != len) {
                    MemorySegment.copy(guest, from + bulk, buf, bulk, len - bulk);
                }
            } else {
                MemorySegment.copy(guest, from, buf, 0, len);
            }
            s += buf.get(ValueLayout.JAVA_BYTE, 5); // the switch reads the frame next
        }
        return s;
    }

    public static void main(String[] args) {
        ThreadMXBean mx = ManagementFactory.getThreadMXBean();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment guest = arena.allocate(1 << 20, 4096);
            MemorySegment buf = arena.allocate(2048, 64);
            Case[] cases = {
                new Case(128, 64, false),
                new Case(128, 1500, false),
                new Case(128, 1500, true),
                new Case(128, 1496, false),
                new Case(128, 1504, false),
                new Case(128, 1514, false),
                new Case(140, 1500, false),
                new Case(140, 1500, true)
            };
            long[] best = new long[cases.length];
            Arrays.fill(best, Long.MAX_VALUE);
            int n = 100_000;
            long sink = 0;
            for (int round = 0; round < 60; round++) {
                for (int k = 0; k < cases.length; k++) {
                    long t0 = mx.getCurrentThreadCpuTime();
                    sink += run(guest, buf, cases[k], n);
                    long ns = mx.getCurrentThreadCpuTime() - t0;
                    if (round >= 10) { // ten warm-up rounds: the JIT compiles run()
                        best[k] = Math.min(best[k], ns);
                    }
                }
            }
            System.out.println("| copy | CPU ns per frame (minimum of 50 rounds) |");
            System.out.println("|---|---:|");
            for (int k = 0; k < cases.length; k++) {
                System.out.printf("| %s | %.1f |%n", cases[k].label(), best[k] / (double) n);
            }
            if (sink == 42) {
                System.out.println();
            }
        }
    }
}
