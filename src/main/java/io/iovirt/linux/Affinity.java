// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.BitSet;

/**
 * The CPUs a thread may run on (sched_setaffinity(2) / sched_getaffinity(2)) — per thread, which {@code taskset}
 * cannot do for one thread of a JVM. For measurements that need two threads on two given CPUs.
 */
public final class Affinity {
    /** CPUs a mask can name: glibc's cpu_set_t size, 1024 CPUs. */
    public static final int MAX_CPUS = 1024;

    private Affinity() {}

    /**
     * Pins the calling thread to {@code cpu}.
     *
     * @throws LinuxException EINVAL when {@code cpu} is not online or not in this process's cpuset
     */
    public static void pinCurrentThread(int cpu) throws LinuxException {
        if (cpu < 0 || cpu >= MAX_CPUS) {
            throw new IllegalArgumentException("CPU numbers are 0.." + (MAX_CPUS - 1) + ": " + cpu);
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment mask = arena.allocate(MAX_CPUS / 8, 8);
            mask.set(JAVA_LONG, (cpu / 64) * 8L, 1L << (cpu % 64));
            Syscalls.check(Syscalls.schedSetaffinity(0, mask), "sched_setaffinity", "CPU " + cpu);
        }
    }

    /** The CPUs the calling thread may run on. */
    public static BitSet ofCurrentThread() throws LinuxException {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment mask = arena.allocate(MAX_CPUS / 8, 8);
            // glibc's wrapper returns 0 (not the kernel's byte count) and zeroes the rest of the mask
            Syscalls.check(Syscalls.schedGetaffinity(0, mask), "sched_getaffinity", null);
            long[] words = new long[MAX_CPUS / 64];
            for (int i = 0; i < words.length; i++) {
                words[i] = mask.get(JAVA_LONG, i * 8L);
            }
            return BitSet.valueOf(words);
        }
    }
}
