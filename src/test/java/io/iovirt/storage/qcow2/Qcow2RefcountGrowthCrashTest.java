// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * SIGKILL at fdatasync points while the refcount table grows with many new refcount blocks (512-byte clusters,
 * 64-bit refcounts, past 124 MiB of file: commit 2c179c0's growth). A child process ({@link RefcountGrowthMain})
 * runs the growth on a copy of one image under strace, which kills it at the N-th fdatasync; after each kill
 * {@code qemu-img check} must find no corruption (leaked clusters are allowed) and qemu-io must read back what the
 * child wrote before its last completed flush. A first run, traced but not killed, counts the fdatasyncs: the kill
 * points are the first ones of the growth step (its flush, the new table's sync, the header switch's, the first new
 * blocks' and their table entries'), and some spread over the rest.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img / qemu-io / strace and a child JVM: Failsafe
class Qcow2RefcountGrowthCrashTest {
    /** Kill points from the growth step's first fdatasync on, one after the other. */
    private static final int AT_GROWTH = 8;
    /** Further kill points spread evenly over the fdatasyncs after those. */
    private static final int SPREAD = 4;

    @TempDir
    Path dir;

    @Test
    void sigkillAtFdatasyncsWhileTheRefcountTableGrowsNeverCorruptsTheImage() throws Exception {
        Path strace = Require.program("strace", "apt-get install strace, or scripts/install-deps.sh");
        // qemu-img's table for this image has 62 clusters: it covers 124 MiB of file, and the file ends about 4 MiB
        // short of that (metadata preallocation: the data clusters are allocated but sparse, so copies are cheap)
        Path base = QemuTools.createQcow2(
                dir, "base.qcow2", "116M", "cluster_size=512", "refcount_bits=64", "preallocation=metadata");
        int tableClusters = refTableClusters(base);
        long reach = tableClusters * 64L * 64 * 512;
        assertTrue(
                Files.size(base) < reach && Files.size(base) > reach - 8 * RefcountGrowthMain.MIB,
                "the file ends short of the table's reach " + reach + ": " + Files.size(base));

        Path dry = copy(base, "dry.qcow2");
        Path trace = dir.resolve("dry.trace");
        List<String> cmd = new ArrayList<>(
                List.of(strace.toString(), "-f", "-qq", "--seccomp-bpf", "-e", "trace=fdatasync,write"));
        cmd.addAll(List.of("-o", trace.toString()));
        TracedChild.Run r = run(cmd, dry, "dry");
        assertEquals(0, r.exit(), "the untraced run failed:\n" + r.output());
        assertTrue(r.output().contains("done"), r.output());
        assertTrue(refTableClusters(dry) > tableClusters, "the refcount table did not grow");
        check(dry, false);
        qemuIoOk(
                dry, "qcow2", RefcountGrowthMain.reads(RefcountGrowthMain.STEPS).toArray(String[]::new));

        // fdatasync indices (1-based, as strace's when= counts them): all on one thread, and where the growth starts
        int syncs = 0;
        int growthFrom = -1;
        String syncer = null;
        for (String line : Files.readAllLines(trace)) {
            String[] pidAndCall = line.split(" +", 2);
            if (pidAndCall.length < 2) {
                continue;
            }
            if (pidAndCall[1].startsWith("fdatasync(")) {
                syncs++;
                assertTrue(syncer == null || syncer.equals(pidAndCall[0]), "fdatasync on two threads: " + line);
                syncer = pidAndCall[0];
            } else if (pidAndCall[1].startsWith("write(1, \"step " + RefcountGrowthMain.GROWTH_STEP)) {
                growthFrom = syncs + 1;
            }
        }
        assertTrue(growthFrom > 0 && syncs > growthFrom + AT_GROWTH + SPREAD, syncs + " fdatasyncs, " + growthFrom);
        TreeSet<Integer> points = new TreeSet<>();
        for (int i = 0; i < AT_GROWTH; i++) {
            points.add(growthFrom + i);
        }
        int rest = growthFrom + AT_GROWTH;
        for (int i = 1; i <= SPREAD; i++) {
            points.add(rest + (int) ((long) (syncs - rest) * i / (SPREAD + 1)));
        }

        int leaks = 0;
        for (int when : points) {
            Path img = copy(base, "kill" + when + ".qcow2");
            // not --seccomp-bpf: strace 6.1 then counts no fdatasync for when= and never injects
            List<String> kill = new ArrayList<>(List.of(strace.toString(), "-f", "-qq"));
            kill.addAll(List.of("-e", "trace=fdatasync", "-e", "inject=fdatasync:signal=SIGKILL:when=" + when));
            kill.addAll(List.of("-o", "/dev/null"));
            TracedChild.Run k = run(kill, img, "kill" + when);
            // strace ends as its tracee did: killed by SIGKILL (128 + 9), not an exit of the child's own (an
            // exception before the kill point would leave the image untouched and pass every check below)
            assertEquals(128 + 9, k.exit(), "not killed at fdatasync " + when + ":\n" + k.output());
            assertFalse(k.output().contains("done"), "not killed at fdatasync " + when + ":\n" + k.output());
            int flushed = 0;
            for (String line : k.output().lines().toList()) {
                if (line.startsWith("flushed ")) {
                    flushed = Integer.parseInt(line.substring(8).trim());
                }
            }
            String out = check(img, true); // no corruption; leaks are allowed
            if (out.contains("leaked")) {
                leaks++;
            }
            qemuIoOk(img, "qcow2", RefcountGrowthMain.reads(flushed).toArray(String[]::new));
            Files.delete(img);
        }
        System.out.println("refcount growth kills at fdatasync " + points + " of " + syncs + ": " + leaks
                + " left leaks, none corruption");
    }

    private TracedChild.Run run(List<String> prefix, Path img, String name) throws Exception {
        return TracedChild.run(dir, RefcountGrowthMain.class, prefix, img, name);
    }

    private Path copy(Path base, String name) throws Exception {
        return TracedChild.copy(dir, base, name);
    }

    private static int refTableClusters(Path img) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
            f.seek(56);
            return f.readInt();
        }
    }
}
