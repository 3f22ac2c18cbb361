// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.bench.BlkBench;
import io.iovirt.bench.BlkBenchOptions;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Await;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A qcow2 image taken over by a backend process from another that wrote it: a {@code serve blk --standby} taking the
 * socket over, and a backend taking the image lock from another (a live migration's destination from its source).
 * The second process opened the image before the first wrote it, and served from what it read then (the L1 table, the
 * refcount table, the end of the file its allocator starts from), while the first kept its last writes' tables in
 * memory: the second's first write put a new, empty L2 table and new data clusters over the first's, so the disk
 * lost what the first had written (qemu-img check found the first's clusters leaked, or nothing at all).
 */
@org.junit.jupiter.api.Tag("peer") // iovirt serve blk processes, qemu-img
@Timeout(300)
class BlkStandbyQcow2Test {
    private static final int QUEUE_DEPTH = 8;

    @TempDir
    Path dir;

    @Test
    void aStandbyServesTheQcow2ImageAsTheProcessBeforeItLeftIt() throws Exception {
        Path disk = QemuTools.createQcow2(dir, "disk.qcow2", "64M");
        Path sock = dir.resolve("blk.sock");
        Path before = dir.resolve("before.raw");
        Path after = dir.resolve("after.raw");
        long standbyWrites;
        try (ChildProcess first = ChildProcess.builder(IovirtCli.serveBlk(disk, sock, "--standby"))
                        .name("iovirt serve blk (first)")
                        .log(dir.resolve("first.log"))
                        .startListening(sock, Duration.ofSeconds(120));
                ChildProcess second = ChildProcess.builder(IovirtCli.serveBlk(disk, sock, "--standby"))
                        .name("iovirt serve blk (standby)")
                        .log(dir.resolve("second.log"))
                        .start()) {
            Await.until(
                    Duration.ofSeconds(120),
                    "the standby ready",
                    second,
                    () -> second.log().contains("standby for"));
            writes(sock, 1, 0.5); // clusters and an L2 table the standby did not see when it started
            first.stop(Duration.ofSeconds(60)); // completes, syncs, exits: the standby takes over
            QemuTools.ok("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", disk.toString(), before.toString());
            Await.until(
                    Duration.ofSeconds(120),
                    "the standby serving",
                    second,
                    () -> second.log().contains("serving "));
            standbyWrites = writes(sock, 2, 0.05);
            second.stop(Duration.ofSeconds(60));
        }
        QemuTools.check(disk, false);
        QemuTools.ok("qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk.toString(), after.toString());
        long changed = changedBlocks(before, after);
        assertTrue(
                changed <= standbyWrites + QUEUE_DEPTH, // the bench does not count those in flight at its end
                changed + " blocks of 4 KiB changed, but the standby wrote " + standbyWrites + " (+" + QUEUE_DEPTH
                        + " in flight): it lost or moved data the process before it had written");
    }

    /**
     * Two backends on one qcow2 image, used one after the other: a live migration's source and destination (the image
     * lock follows the frontend that runs). The second opened the image before the first wrote it; it must serve it as
     * the first left it when its queues stopped.
     */
    @Test
    void aBackendThatTakesTheImageFromAnotherServesItAsTheOtherLeftIt() throws Exception {
        Path disk = QemuTools.createQcow2(dir, "disk.qcow2", "64M");
        Path a = dir.resolve("a.sock");
        Path b = dir.resolve("b.sock");
        Path before = dir.resolve("before.raw");
        Path after = dir.resolve("after.raw");
        long secondWrites;
        try (ChildProcess first = ChildProcess.builder(IovirtCli.serveBlk(disk, a))
                        .name("iovirt serve blk (source)")
                        .log(dir.resolve("a.log"))
                        .startListening(a, Duration.ofSeconds(120));
                ChildProcess second = ChildProcess.builder(IovirtCli.serveBlk(disk, b))
                        .name("iovirt serve blk (destination)")
                        .log(dir.resolve("b.log"))
                        .startListening(b, Duration.ofSeconds(120))) {
            writes(a, 1, 0.5); // its queues stop when the bench disconnects: the image lock is free
            QemuTools.ok("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", disk.toString(), before.toString());
            secondWrites = writes(b, 2, 0.05);
            second.stop(Duration.ofSeconds(60));
            first.stop(Duration.ofSeconds(60));
        }
        QemuTools.check(disk, false);
        QemuTools.ok("qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk.toString(), after.toString());
        long changed = changedBlocks(before, after);
        assertTrue(
                changed <= secondWrites + QUEUE_DEPTH,
                changed + " blocks of 4 KiB changed, but the second backend wrote " + secondWrites + " (+" + QUEUE_DEPTH
                        + " in flight): it lost or moved data the first had written");
    }

    private static long writes(Path sock, long seed, double seconds) throws Exception {
        return BlkBench.run(new BlkBenchOptions(
                        sock,
                        BlkBenchOptions.Pattern.RANDWRITE,
                        4096,
                        QUEUE_DEPTH,
                        seconds,
                        0,
                        1,
                        128,
                        false,
                        true,
                        true,
                        false,
                        seed))
                .ios();
    }

    private static long changedBlocks(Path a, Path b) throws Exception {
        byte[] x = Files.readAllBytes(a);
        byte[] y = Files.readAllBytes(b);
        long n = 0;
        for (int off = 0; off < x.length; off += 4096) {
            if (!Arrays.equals(x, off, off + 4096, y, off, off + 4096)) {
                n++;
            }
        }
        return n;
    }
}
