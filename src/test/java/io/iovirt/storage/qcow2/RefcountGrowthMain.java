// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Grows the refcount table of the image {@code args[0]} (512-byte clusters, 64-bit refcounts, its file ending a few
 * MiB short of what its refcount table covers) in steps, flushing after each: run by Qcow2RefcountGrowthCrashTest
 * in a child process that strace kills at an fdatasync. Prints {@code step N} before step N and {@code flushed N} once
 * its flush returned, then {@code done}.
 */
public final class RefcountGrowthMain {
    static final long MIB = 1 << 20;
    static final long GIB = 1L << 30;
    static final int STEPS = 5;
    /** The step whose resize's new L1 table crosses the end of what the refcount table covers: it grows. */
    static final int GROWTH_STEP = 2;

    private RefcountGrowthMain() {}

    public static void main(String[] args) throws Exception {
        try (Qcow2Image q = Qcow2Image.open(Path.of(args[0]), false)) {
            for (int step = 1; step <= STEPS; step++) {
                System.out.println("step " + step);
                System.out.flush();
                switch (step) {
                    case 1 -> {
                        q.resize(4 * GIB); // a 1 MiB L1 table: still within the refcount table's reach
                        Qcow2ImageTest.write(q, GIB, Qcow2ImageTest.fill((int) MIB, pattern(1)));
                    }
                    case GROWTH_STEP -> {
                        // an 8 MiB L1 table run that crosses the reach: the table grows while the run is reserved,
                        // then each block range of the run gets a new refcount block placed past it
                        q.resize(32 * GIB);
                        Qcow2ImageTest.write(q, 32 * GIB - 65536, Qcow2ImageTest.fill(65536, pattern(2)));
                    }
                    default ->
                        Qcow2ImageTest.write(q, GIB + (step - 2) * MIB, Qcow2ImageTest.fill((int) MIB, pattern(step)));
                }
                q.flush();
                System.out.println("flushed " + step);
                System.out.flush();
            }
        }
        System.out.println("done");
    }

    private static int pattern(int step) {
        return 0x50 + step;
    }

    /** The qemu-io reads that must match once step {@code flushed} (0: none) was flushed. */
    static List<String> reads(int flushed) {
        List<String> r = new ArrayList<>(List.of("read -P 0 0 64k"));
        if (flushed >= 1) {
            r.add("read -P " + pattern(1) + " " + GIB + " 1M");
        }
        if (flushed >= GROWTH_STEP) {
            r.add("read -P " + pattern(2) + " " + (32 * GIB - 65536) + " 64k");
        }
        for (int step = 3; step <= flushed; step++) {
            r.add("read -P " + pattern(step) + " " + (GIB + (step - 2) * MIB) + " 1M");
        }
        return r;
    }
}
