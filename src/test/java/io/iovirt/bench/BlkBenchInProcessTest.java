// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.vhostuser.VhostUserServer;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code bench blk} against iovirt's vhost-user-blk backend serving in this JVM: the one setup where the client
 * process's CPU time is known to hold more than the client's work — the backend's worker runs in the same process.
 */
@Timeout(120)
class BlkBenchInProcessTest {
    @TempDir
    Path dir;

    /**
     * The client's CPU per I/O and its core share (which scripts/bench-*.sh use to call a run noise-bound below
     * 95 %) come from the queue thread over its measured window, not from /proc/self/stat: the process's time also
     * holds whatever else runs in it (the JIT compiler, GC, here the backend), which made a client core that lost
     * its CPU to them look busy.
     */
    @Test
    void clientCpuIsTheQueueThreadsNotTheWholeProcess() throws Exception {
        Path image = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(16 << 20);
        }
        Path socket = dir.resolve("blk.sock");
        try (DiskImage img = Images.open(image, null, false, false);
                VhostUserServer server =
                        VhostUserServer.start(socket, new BlkDevice(socket.toString(), img, 1, "bench-in-process"))) {
            BlkBenchResult r = BlkBench.run(new BlkBenchOptions(
                    socket, BlkBenchOptions.Pattern.RANDREAD, 4096, 8, 1.0, 0.2, 1, 256, false, false, true, false, 1));
            assertTrue(r.sameProcess() && r.ios() > 0, r.text());
            long client = r.clientCpuNanos().orElseThrow();
            long process = r.clientProcessCpuNanos().orElseThrow();
            // The backend's worker did real work for every request in this process: tens of milliseconds at least,
            // beyond /proc's 10 ms ticks.
            assertTrue(client + 30_000_000L < process, "client " + client + " ns of process " + process + " ns");
            // One thread cannot use more than its own wall time (its window is within the measured phase).
            assertTrue(client <= r.seconds() * 1e9 + 10_000_000L, client + " ns in " + r.seconds() + " s");
            assertTrue(
                    r.clientCorePercent() > 0 && r.clientCorePercent() <= 100.5, "core share " + r.clientCorePercent());
            Map<String, Object> json = r.json();
            assertEquals(r.clientCorePercent(), json.get("client_core_percent"));
            assertEquals(r.clientProcessCpuMicrosPerIo(), json.get("client_process_cpu_us_per_io"));
            assertTrue(r.text().contains(" in the queue thread, at "), r.text());
        }
    }
}
