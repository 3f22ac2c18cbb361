// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import io.iovirt.linux.EventFd;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.net.Mac;
import io.iovirt.net.Switch;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.Virtqueue;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;

/**
 * CPU cost per frame of the virtio-net data path, on one thread (no cross-core cache traffic, no wake-ups): a Java
 * driver ring makes {@value #BATCH} frames available, the device pops each, checks the header, copies the frame
 * out and forwards it through the switch, and returns the chain; the driver reaps. {@code sink}:
 * <ul>
 * <li>{@code none} — no other port (what the DPDK rxonly comparison measures: receive and decide),</li>
 * <li>{@code guest} — a second virtio-net port whose receive ring the driver keeps filled: the full guest-to-guest
 * path, both copies.</li>
 * </ul>
 * {@code ringOnly} measures the driver and ring work alone (no device), to subtract.
 * Run with JMH ({@code org.openjdk.jmh.Main NetPathBench}) on a quiet machine, or with this class's {@code main},
 * which reports thread CPU time per frame (robust when other processes share the cores: time the thread spent
 * descheduled is not counted): {@code java --enable-native-access=ALL-UNNAMED -cp target/test-classes:target/classes:DEPS
 * io.iovirt.devices.net.NetPathBench}.
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
public class NetPathBench {
    static final int BATCH = 32;
    static final int SIZE = 256;

    @Param({"64", "1500"})
    public int frameLen;

    @Param({"none", "guest"})
    public String sink;

    private Arena arena;
    private Path dir;
    private Switch sw;
    private SplitDriverRing txDriver;
    private ReceivingGuest receiver;
    private final long[] reaped = new long[1];
    private Virtqueue txQueue;
    private NetTxQueue tx;
    private EventFd call;
    private final long[] txAddr = new long[1];
    private final int[] txLen = new int[1];
    private final boolean[] readOnly = {false};

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        arena = Arena.ofShared();
        long bytes = 16 << 20;
        MemorySegment ram = arena.allocate(bytes, 4096);
        GuestMemory mem = GuestMemory.of(List.of(new MemoryRegion(0, bytes, 0x7f00_0000_0000L, 0, ram, null)));
        GuestMemoryHolder holder = new GuestMemoryHolder();
        holder.swap(mem);
        dir = Files.createTempDirectory("netbench");
        sw = new Switch(Switch.Config.defaults());
        VirtioNetPort in = sw.addPort(new VirtioNetPort(VirtioNetPort.Options.of(dir.resolve("in.sock"))));
        call = EventFd.create(true);
        long dst = Mac.parse("52:54:00:00:00:0b");
        long src = Mac.parse("52:54:00:00:00:0a");
        txDriver = SplitDriverRing.create(mem, 0, SIZE, true);
        txQueue = Virtqueue.create(txDriver.queueConfig(1, false), holder);
        tx = new NetTxQueue(in, 1, in.ingress(0), VirtioNet.HDR_SIZE, 1518);
        // one frame buffer reused for every request: header (zero) + Ethernet frame
        txAddr[0] = 0x100000;
        txLen[0] = VirtioNet.HDR_SIZE + frameLen;
        MemorySegment f = ram.asSlice(txAddr[0], txLen[0]);
        Mac.write(f, VirtioNet.HDR_SIZE, dst);
        Mac.write(f, VirtioNet.HDR_SIZE + 6, src);
        if (sink.equals("guest")) { // the switch has learned where the destination is, as after its first frame
            receiver = new ReceivingGuest(sw, dir.resolve("out.sock"), mem, holder, call, 0x10000, SIZE, 0x200000, dst);
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        sw.close();
        call.close();
        arena.close();
        try (var s = Files.list(dir)) {
            s.forEach(p -> p.toFile().delete());
        }
        Files.deleteIfExists(dir);
    }

    @Benchmark
    @OperationsPerInvocation(BATCH)
    public long frames() throws Exception {
        for (int i = 0; i < BATCH; i++) {
            txDriver.add(txAddr, txLen, readOnly, 1, DriverRing.NO_INDIRECT);
        }
        long sum = 0;
        for (int i = 0; i < BATCH; i++) {
            DescriptorChain c = txQueue.pop();
            tx.handle(c);
            txQueue.push(c, 0);
        }
        tx.batchDone();
        txQueue.needsNotification();
        for (long u; (u = txDriver.pollUsed()) != -1; ) {
            sum += u;
        }
        if (receiver != null) { // the receiving guest reaps its frames and reposts the buffers
            reaped[0] = 0;
            receiver.reap(reaped);
            sum += reaped[0];
        }
        return sum;
    }

    /** Thread CPU nanoseconds per frame: best of 5 rounds of 2^18 batches after a warm-up, per configuration. */
    public static void main(String[] args) throws Exception {
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        System.out.println("| frame | sink | path | CPU ns/frame (best of 5) |");
        System.out.println("|---|---|---|---|");
        for (int len : new int[] {64, 1500}) {
            for (String sk : new String[] {"none", "guest"}) {
                NetPathBench b = new NetPathBench();
                b.frameLen = len;
                b.sink = sk;
                b.setUp();
                try {
                    for (boolean full : new boolean[] {false, true}) {
                        long best = Long.MAX_VALUE;
                        long sink = 0;
                        for (int round = 0; round < 7; round++) {
                            long t0 = mx.getCurrentThreadCpuTime();
                            for (int i = 0; i < (1 << 16); i++) {
                                sink += full ? b.frames() : b.ringOnly();
                            }
                            long ns = (mx.getCurrentThreadCpuTime() - t0) / ((1L << 16) * BATCH);
                            if (round >= 2) { // two warm-up rounds
                                best = Math.min(best, ns);
                            }
                        }
                        System.out.printf(
                                "| %d B | %s | %s | %d |%n", len, sk, full ? "device + switch" : "ring only", best);
                        if (sink == 42) {
                            System.out.print("");
                        }
                    }
                } finally {
                    b.tearDown();
                }
            }
        }
    }

    @Benchmark
    @OperationsPerInvocation(BATCH)
    public long ringOnly() throws Exception {
        for (int i = 0; i < BATCH; i++) {
            txDriver.add(txAddr, txLen, readOnly, 1, DriverRing.NO_INDIRECT);
        }
        long sum = 0;
        for (int i = 0; i < BATCH; i++) {
            DescriptorChain c = txQueue.pop();
            sum += c.readableBytes();
            txQueue.push(c, 0);
        }
        txQueue.needsNotification();
        for (long u; (u = txDriver.pollUsed()) != -1; ) {
            sum += u;
        }
        return sum;
    }
}
