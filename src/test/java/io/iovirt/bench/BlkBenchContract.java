// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.cli.Main;
import io.iovirt.vm.ChildProcess;
import java.io.PrintWriter;
import java.io.RandomAccessFile;
import java.io.StringWriter;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.Timeout;

/**
 * What {@code bench blk} must do against any vhost-user-blk backend; one subclass per real backend, each started
 * once as a child process on a 32 MiB image. The bench must drive qemu-storage-daemon exactly as it drives iovirt,
 * so both subclasses run these same tests. No timing is asserted: only that requests complete, with correct data.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@Timeout(180)
@Tag("peer") // a real qemu-storage-daemon / iovirt backend process: Failsafe
abstract class BlkBenchContract {
    static final long DISK = 32 << 20;

    Path dir;
    Path image;
    Path socket;
    ChildProcess backend;

    /** Starts the backend on {@code image}, listening on {@code socket}; returns once it listens. */
    abstract ChildProcess startBackend(Path image, Path socket, Path dir);

    @BeforeAll
    void startBackend() throws Exception {
        dir = Files.createTempDirectory("iovirt-bench-test");
        image = dir.resolve("disk.raw");
        socket = dir.resolve("blk.sock");
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(DISK);
        }
        backend = startBackend(image, socket, dir);
    }

    @AfterAll
    void stopBackend() throws Exception {
        if (backend != null) {
            backend.close();
        }
        try (var files = Files.walk(dir)) {
            files.sorted(java.util.Comparator.reverseOrder())
                    .forEach(p -> p.toFile().delete());
        }
    }

    BlkBenchOptions options(BlkBenchOptions.Pattern pattern, int qd, boolean verify, long seed) {
        return new BlkBenchOptions(socket, pattern, 4096, qd, 0.5, 0.2, 1, 256, false, false, true, verify, seed);
    }

    BlkBenchResult run(BlkBenchOptions o) throws Exception {
        try {
            return BlkBench.run(o);
        } catch (Exception e) {
            throw new AssertionError(e.getMessage() + "\nbackend log:\n" + backend.logTail(30), e);
        }
    }

    @Test
    void sequentialWriteWithVerifyReadsBackAndLandsOnTheImageFile() throws Exception {
        long seed = 0x5eed_0001L;
        BlkBenchResult r = run(options(BlkBenchOptions.Pattern.WRITE, 8, true, seed));
        assertTrue(r.verifiedBlocks() > 0, "nothing was verified");
        // the first request of a sequential write is block 0: the pattern must be in the file itself
        byte[] block0 = new byte[4096];
        try (FileChannel ch = FileChannel.open(image, StandardOpenOption.READ)) {
            ch.read(ByteBuffer.wrap(block0), 0);
        }
        assertNull(BlockPattern.check(MemorySegment.ofArray(block0), 0, 4096, seed, 0), "image file block 0");
    }

    @Test
    void randomWriteWithVerifyCoversTheSeededBlocks() throws Exception {
        long seed = 0x5eed_0002L;
        BlkBenchResult r = run(options(BlkBenchOptions.Pattern.RANDWRITE, 16, true, seed));
        assertTrue(r.verifiedBlocks() > 0);
        long first = new BlockSequence(DISK / 4096, true, seed, 1, 0).block(0);
        byte[] block = new byte[4096];
        try (FileChannel ch = FileChannel.open(image, StandardOpenOption.READ)) {
            ch.read(ByteBuffer.wrap(block), first * 4096);
        }
        assertNull(BlockPattern.check(MemorySegment.ofArray(block), 0, 4096, seed, first * 8), "image block " + first);
    }

    @Test
    void randreadAndRandwriteCompleteWithoutErrors() throws Exception {
        for (BlkBenchOptions.Pattern p : List.of(BlkBenchOptions.Pattern.RANDREAD, BlkBenchOptions.Pattern.RANDWRITE)) {
            BlkBenchResult r = run(options(p, 32, false, 7));
            assertTrue(r.ios() > 0, p + ": no request completed in the measured phase");
            assertEquals(r.ios(), r.latency().count(), "every completed request has a latency");
            assertTrue(r.latency().valueAtQuantile(0.5) > 0
                    && r.latency().valueAtQuantile(0.99) >= r.latency().valueAtQuantile(0.5));
            assertEquals(
                    backend.pid(), r.backendPid(), "the backend found through SO_PEERCRED is the process we started");
            assertTrue(r.backendCpuNanos().isPresent(), "backend CPU time readable from /proc");
            assertNotNull(r.backendMemory());
            assertTrue(r.backendMemory().guestMappingKiB() > 0, "the backend maps our rings: " + r.backendMemory());
            assertTrue(
                    r.backendMemory().guestMappingKiB() * 1024 <= r.sharedMemoryBytes(),
                    r.backendMemory().toString());
        }
    }

    @Test
    void interruptsModeCompletesRequests() throws Exception {
        BlkBenchOptions o = new BlkBenchOptions(
                socket, BlkBenchOptions.Pattern.RANDREAD, 4096, 4, 0.5, 0.1, 1, 256, false, true, true, false, 3);
        assertTrue(run(o).ios() > 0);
    }

    @Test
    void directDescriptorChainsWork() throws Exception {
        BlkBenchOptions o = new BlkBenchOptions(
                socket, BlkBenchOptions.Pattern.WRITE, 8192, 4, 0.3, 0, 1, 16, false, false, false, true, 11);
        BlkBenchResult r = run(o);
        assertTrue(!r.indirect() && r.verifiedBlocks() > 0);
    }

    @Test
    void jsonOutputOfTheCliParses() {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        List<String> args = new ArrayList<>(List.of(
                "bench",
                "blk",
                "--socket",
                socket.toString(),
                "--rw",
                "randread",
                "--bs",
                "4k",
                "--qd",
                "8",
                "--seconds",
                "0.5",
                "--warmup",
                "0.1",
                "--json"));
        int rc = Main.commandLine()
                .setOut(new PrintWriter(out))
                .setErr(new PrintWriter(err))
                .execute(args.toArray(String[]::new));
        assertEquals(0, rc, err + "\nbackend log:\n" + backend.logTail(30));
        @SuppressWarnings("unchecked")
        Map<String, Object> j = (Map<String, Object>) StrictJson.parse(out.toString());
        assertEquals("randread", j.get("rw"));
        assertEquals(4096L, j.get("bs"));
        assertTrue((Long) j.get("ios") > 0, out.toString());
        assertEquals(0L, j.get("errors"));
        @SuppressWarnings("unchecked")
        Map<String, Object> be = (Map<String, Object>) j.get("backend");
        assertEquals(backend.pid(), be.get("pid"));
        assertEquals(DISK, be.get("capacity_bytes"));
        @SuppressWarnings("unchecked")
        Map<String, Object> lat = (Map<String, Object>) j.get("latency_ns");
        assertTrue((Long) lat.get("p99_9") >= (Long) lat.get("p50"));
        assertTrue(j.get("backend_cpu_us_per_io") instanceof Double);
        // the percentile curve: [percentile, ns] pairs, both non-decreasing, p50 where latency_ns says it is
        @SuppressWarnings("unchecked")
        List<List<Object>> curve = (List<List<Object>>) j.get("latency_curve_ns");
        assertTrue(curve.size() > 10, out.toString());
        double lastQ = -1;
        long lastNs = -1;
        for (List<Object> point : curve) {
            double q = ((Number) point.get(0)).doubleValue();
            long ns = ((Number) point.get(1)).longValue();
            assertTrue(q > lastQ && ns >= lastNs, "not non-decreasing at " + point + " in " + curve);
            if (q == 50.0) {
                assertEquals(lat.get("p50"), ns);
            }
            lastQ = q;
            lastNs = ns;
        }
        assertEquals(99.99, ((Number) curve.getLast().get(0)).doubleValue(), 1e-9);
    }
}
