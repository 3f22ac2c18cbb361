// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio.bench;

import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.vhostuser.DirtyLog;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.PackedDriverRing;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;

/**
 * One virtio-blk-shaped request (16-byte header, 4 KiB data, 1-byte status) through both sides of a ring on one
 * thread: driver add, device pop, device push, driver poll; batch of {@code batch} per invocation. Measures the ring
 * code, not a device. Run: see docs in the report (java -cp test-classes:classes:deps org.openjdk.jmh.Main).
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
public class VirtqueueBench {
    private static final int SIZE = 256;

    @Param({"split", "packed"})
    public String layout;

    @Param({"false", "true"})
    public boolean indirect;

    @Param({"32"})
    public int batch;

    /**
     * Migration's dirty log (issue 11): "off" (no log installed: what every request pays when no migration runs),
     * or "on" with the bitmap cleared before each batch, as QEMU clears it at each sync: every mark is an atomic OR.
     */
    @Param({"off", "on"})
    public String dirtyLog;

    private MemorySegment bitmap;

    private Arena arena;
    private DriverRing driver;
    private Virtqueue queue;
    private DescriptorChain[] chains;
    private final long[] addrs = new long[3];
    private final int[] lens = {16, 4096, 1};
    private final boolean[] writable = {false, true, true};
    private long[] tables;
    private MemorySegment header;

    @Setup(Level.Trial)
    public void setUp() throws VirtqueueException {
        arena = Arena.ofShared();
        long bytes = 8 << 20;
        MemorySegment ram = arena.allocate(bytes, 4096);
        GuestMemory mem = GuestMemory.of(List.of(new MemoryRegion(0, bytes, 0x7f00_0000_0000L, 0, ram, null)));
        GuestMemoryHolder holder = new GuestMemoryHolder();
        holder.swap(mem);
        driver = layout.equals("split")
                ? SplitDriverRing.create(mem, 0, SIZE, true)
                : PackedDriverRing.create(mem, 0, SIZE, true);
        queue = Virtqueue.create(driver.queueConfig(0, true), holder);
        if (dirtyLog.equals("on")) {
            bitmap = arena.allocate(bytes / 4096 / 8, 8);
            DirtyLog log = DirtyLog.over("bench", bitmap);
            holder.writeLog(log);
        }
        addrs[0] = 0x10000;
        addrs[1] = 0x20000;
        addrs[2] = 0x30000;
        tables = new long[batch];
        for (int i = 0; i < batch; i++) {
            tables[i] = 0x40000 + 64L * i;
        }
        chains = new DescriptorChain[batch];
        for (int i = 0; i < batch; i++) {
            chains[i] = queue.newChain();
        }
        header = arena.allocate(16);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }

    @Benchmark
    public long roundTrip() throws VirtqueueException {
        if (bitmap != null) {
            bitmap.fill((byte) 0);
        }
        for (int i = 0; i < batch; i++) {
            driver.add(addrs, lens, writable, 3, indirect ? tables[i] : DriverRing.NO_INDIRECT);
        }
        driver.kickNeeded();
        long sum = 0;
        for (int i = 0; i < batch; i++) {
            DescriptorChain c = chains[i];
            queue.pop(c);
            c.copyFromReadable(0, header); // a device reads its request header
            sum += c.segment(1).address();
        }
        for (int i = 0; i < batch; i++) {
            queue.push(chains[i], 4097);
        }
        queue.needsNotification();
        for (long u; (u = driver.pollUsed()) != -1; ) {
            sum += u;
        }
        return sum;
    }
}
