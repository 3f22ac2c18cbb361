// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.*;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.Images;
import io.iovirt.testing.AllocationRun;
import io.iovirt.testing.Require;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.PackedDriverRing;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.vm.ChildProcess;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Pins issue 10's "no allocation per request" on the virtio-blk data path: a driver ring in native guest memory, the
 * real queue handler and image, and the heap bytes the device side allocates (pop, request, I/O, status, push)
 * counted by the JVM per thread ({@code ThreadMXBean.getCurrentThreadAllocatedBytes}) over many requests after a
 * warm-up. Every combination the data path distinguishes: split/packed ring, direct/indirect descriptors, raw
 * buffered/O_DIRECT and qcow2, the synchronous engine and the io_uring steps, 4 KiB reads and writes. Byte counts do
 * not depend on timing, so this holds on a loaded machine.
 *
 * <p>The check runs in a child JVM with {@code -XX:-DoEscapeAnalysis}: there nothing is scalar-replaced, so what a
 * request allocates is deterministic instead of depending on what C2 managed to inline this run. What remains there
 * is the JDK's, not ours: each downcall with {@code Linker.Option.captureCallState} (every syscall in
 * {@code io.iovirt.linux}) allocates one 40-byte segment, which C2 removes when it compiles the path (measured:
 * 300k captured-errno downcalls leave 300k NativeMemorySegmentImpl with escape analysis off, none without the
 * option). A request here makes exactly one syscall (preadv/pwritev, or io_uring_enter), so the bound is that
 * segment plus less than one more object: a slice or any other per-request object of ours fails. {@link #main}
 * prints the per-case figures (docs/benchmarks.md has the command).
 */
public class BlkAllocationTest {
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final com.sun.management.ThreadMXBean THREADS =
            (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();

    private static final long RING = 0x1000;
    private static final long INDIRECT = 0x10000;
    private static final long HDR = 0x20000;
    private static final long STATUS = 0x30000;
    private static final long DATA = 0x40000;
    private static final int BLOCK = 4096;
    private static final long IMAGE_BYTES = 4 << 20;
    private static final int WARMUP = 3000;
    private static final int MEASURED = 2000;
    /** The JDK's captured-errno segment of the request's one syscall (see the class comment). */
    public static final long JDK_BYTES_PER_SYSCALL = 40;
    /** Less than one more object (16 bytes at least) per request. */
    static final double BOUND = JDK_BYTES_PER_SYSCALL + 8;

    @TempDir
    Path dir;

    record Case(boolean packed, boolean indirect, String image, boolean uring, boolean write) {
        @Override
        public String toString() {
            return (packed ? "packed" : "split") + (indirect ? "+indirect" : "") + " " + image + " "
                    + (uring ? "io_uring" : "sync") + " " + (write ? "write" : "read");
        }
    }

    static List<Case> cases() {
        List<Case> all = new ArrayList<>();
        for (String image : List.of("raw", "raw-odirect", "qcow2")) {
            for (boolean uring : new boolean[] {false, true}) {
                for (boolean packed : new boolean[] {false, true}) {
                    for (boolean indirect : new boolean[] {false, true}) {
                        for (boolean write : new boolean[] {false, true}) {
                            all.add(new Case(packed, indirect, image, uring, write));
                        }
                    }
                }
            }
        }
        return all;
    }

    @Test
    void steadyStateRequestsAllocateNothingButTheJdksSyscallSegment() throws Exception {
        AllocationRun.check(
                BlkAllocationTest.class,
                dir,
                Double.toString(BOUND),
                cases().size(),
                Duration.ofMinutes(15),
                "requests allocated more than " + BOUND + " bytes each");
    }

    /**
     * Measures every case: {@code BlkAllocationTest DIR [BOUND]} prints bytes per request and exits 1 when one is
     * over BOUND. Run it with and without {@code -XX:-DoEscapeAnalysis} (docs/benchmarks.md).
     */
    public static void main(String[] args) throws Exception {
        Path dir = Path.of(args[0]);
        double bound = args.length > 1 ? Double.parseDouble(args[1]) : Double.MAX_VALUE;
        int over = 0;
        for (Case c : cases()) {
            double perRequest = measure(c, dir);
            boolean ok = perRequest < bound;
            over += ok ? 0 : 1;
            System.out.printf("alloc %-44s %7.1f bytes/request%s%n", c, perRequest, ok ? "" : "  OVER " + bound);
        }
        System.exit(over == 0 ? 0 : 1);
    }

    private static double measure(Case c, Path dir) throws Exception {
        try (Arena arena = Arena.ofShared();
                DiskImage image = openImage(c.image(), dir)) {
            MemorySegment ram = arena.allocate(1 << 20, 4096);
            GuestMemory mem = GuestMemory.of(List.of(new MemoryRegion(0, ram.byteSize(), 0x7000_0000L, 0, ram, null)));
            GuestMemoryHolder holder = new GuestMemoryHolder();
            holder.swap(mem);
            DriverRing driver = c.packed()
                    ? PackedDriverRing.create(mem, RING, 16, true)
                    : SplitDriverRing.create(mem, RING, 16, true);
            Virtqueue queue = Virtqueue.create(driver.queueConfig(0, true), holder);
            Run run = new Run(c, ram, driver, queue, image, arena);
            try {
                run.requests(WARMUP);
                long baseline = allocated() - allocated();
                run.allocated = 0;
                run.requests(MEASURED);
                return (double) (run.allocated - baseline * MEASURED) / MEASURED;
            } finally {
                run.close();
                queue.releaseMemory();
            }
        }
    }

    private static long allocated() {
        return THREADS.getCurrentThreadAllocatedBytes();
    }

    private static DiskImage openImage(String kind, Path dir) throws Exception {
        Path p = dir.resolve("disk-" + kind);
        if (kind.equals("qcow2")) {
            Path qemuImg = Require.program("qemu-img", "scripts/install-deps.sh installs qemu-utils");
            if (!p.toFile().exists()) {
                try (ChildProcess qi = ChildProcess.builder(
                                qemuImg.toString(),
                                "create",
                                "-q",
                                "-f",
                                "qcow2",
                                "-o",
                                "preallocation=metadata",
                                p.toString(),
                                Long.toString(IMAGE_BYTES))
                        .name("qemu-img")
                        .log(dir.resolve("qemu-img.log"))
                        .start()) {
                    assertTrue(qi.waitFor(Duration.ofSeconds(120)), "qemu-img create did not finish");
                    assertEquals(0, qi.exitValue(), "qemu-img create failed: " + qi.logTail(20));
                }
            }
            return Images.open(p, ImageFormat.QCOW2, false, false);
        }
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(IMAGE_BYTES);
        }
        return Images.open(p, ImageFormat.RAW, false, kind.equals("raw-odirect"));
    }

    /** One driver and one device side; counts the device side's allocation into {@link #allocated}. */
    private static final class Run implements IoUring.CompletionHandler<RuntimeException> {
        final Case c;
        final MemorySegment ram;
        final DriverRing driver;
        final Virtqueue queue;
        final BlkQueueHandler handler;
        final IoUring ring;
        final BlkQueueHandler.Request request;
        final long[] addrs = {HDR, DATA, STATUS};
        final int[] lens = {16, BLOCK, 1};
        final boolean[] writable;
        final long sectors;
        long allocated;
        int result;
        long n;

        Run(Case c, MemorySegment ram, DriverRing driver, Virtqueue queue, DiskImage image, Arena arena)
                throws Exception {
            this.c = c;
            this.ram = ram;
            this.driver = driver;
            this.queue = queue;
            this.handler = new BlkQueueHandler(
                    image, BlkLimits.defaults(), "alloc".getBytes(StandardCharsets.US_ASCII), new BlkStats());
            this.writable = new boolean[] {false, !c.write(), true};
            this.sectors = image.size() / BLOCK;
            BlkLimits limits = BlkLimits.defaults();
            if (c.uring()) {
                ring = IoUring.create(16);
                IoVec iov = IoVec.allocate(arena, Math.min(limits.segMax(), IoVec.IOV_MAX));
                MemorySegment bounce = image.direct() ? arena.allocate(limits.bounceBytes(), 4096) : null;
                request = new BlkQueueHandler.Request(0, queue.newChain(), image.newContext(iov, bounce));
            } else {
                ring = null;
                request = new BlkQueueHandler.Request(-1, queue.newChain(), null);
            }
        }

        void requests(int count) throws Exception {
            for (int i = 0; i < count; i++) {
                long sector = ((n++ * 7919) % sectors) * (BLOCK >> SECTOR_SHIFT);
                ram.set(LE32, HDR, c.write() ? T_OUT : T_IN);
                ram.set(LE32, HDR + 4, 0);
                ram.set(LE64, HDR + 8, sector);
                ram.set(ValueLayout.JAVA_BYTE, STATUS, (byte) 0x7f);
                driver.add(addrs, lens, writable, 3, c.indirect() ? INDIRECT : DriverRing.NO_INDIRECT);

                long before = allocated();
                device();
                allocated += allocated() - before;

                long used = driver.pollUsed();
                byte status = ram.get(ValueLayout.JAVA_BYTE, STATUS);
                if (status != S_OK || DriverRing.usedLen(used) != (c.write() ? 1 : BLOCK + 1)) {
                    throw new AssertionError(c + ": request " + n + " got status " + status + ", used length "
                            + DriverRing.usedLen(used) + "; " + handler.lastError());
                }
            }
        }

        /** What a queue worker does for one request. */
        private void device() throws Exception {
            DescriptorChain chain = request.chain;
            if (!queue.pop(chain)) {
                throw new AssertionError("nothing available");
            }
            long written;
            if (ring == null) {
                written = handler.process(chain);
            } else {
                int kind = handler.start(request);
                if (kind != BlkQueueHandler.DONE && handler.submit(request, ring)) {
                    ring.submitAndWait(1);
                    if (ring.reap(this) != 1) {
                        throw new AssertionError("no completion");
                    }
                    handler.completed(request, result);
                }
                written = handler.finish(request);
            }
            queue.push(chain, written);
        }

        @Override
        public void complete(long userData, int result, int flags) {
            this.result = result;
        }

        void close() {
            if (ring != null) {
                ring.close();
                request.io.close();
            }
            handler.close();
        }
    }
}
