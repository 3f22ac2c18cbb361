// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The repair of a dirty image read again ({@link Qcow2Image#refresh}) switches the header to the rebuilt refcount
 * table, then clears the dirty bit. A child process ({@link DirtyRepairMain}) runs it under strace, which fails the
 * write that clears the bit with ENOSPC. Before, that failure came after the header named the new table but before
 * memory did, and the image stayed writable: the writes after it were counted in the old table, which the disk no
 * longer names (qemu-img check: referenced clusters at refcount 0, corruption). Now memory follows the header at once
 * and the dirty bit is written as a pointer is ({@link Qcow2Image#publish}): a failure refuses every later write
 * until the image is opened again, which repairs it again.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img / qemu-io / strace and a child JVM: Failsafe
class Qcow2DirtyRepairFailureTest {
    /** A pwrite64 line of strace -f: thread, length, offset. */
    private static final Pattern PWRITE =
            Pattern.compile("^(\\d+) +pwrite64\\(\\d+, \".*\"(?:\\.\\.\\.)?, (\\d+), (\\d+)\\) += \\d+$");

    @TempDir
    Path dir;

    @Test
    void aDirtyBitClearThatFailsAfterTheTableSwitchRefusesLaterWrites() throws Exception {
        Path strace = Require.program("strace", "apt-get install strace, or scripts/install-deps.sh");
        Path base = QemuTools.createQcow2(dir, "base.qcow2", "64M");
        qemuIoOk(base, "qcow2", "write -P 0x11 0 1M");

        // A run traced, not failed: the setup works (the refresh repairs, the writes land), and which of the
        // refreshing thread's pwrite64 calls clears the dirty bit (the last one over byte 72 after "refresh").
        Path dry = copy(base, "dry.qcow2");
        Path trace = dir.resolve("dry.trace");
        List<String> cmd =
                new ArrayList<>(List.of(strace.toString(), "-f", "-qq", "--seccomp-bpf", "-e", "trace=pwrite64,write"));
        cmd.addAll(List.of("-o", trace.toString()));
        TracedChild.Run r = run(cmd, dry, "dry");
        assertEquals(0, r.exit(), "the traced run failed:\n" + r.output());
        assertTrue(r.output().contains("writes accepted") && !r.output().contains("refresh failed"), r.output());
        check(dry, false);
        qemuIoOk(dry, "qcow2", "read -P 0x11 0 1M", "read -P " + DirtyRepairMain.PATTERN + " 8M 4M");

        boolean refreshing = false;
        String thread = null;
        int when = -1;
        java.util.Map<String, Integer> pwrites = new java.util.HashMap<>();
        for (String line : Files.readAllLines(trace)) {
            if (line.matches("^\\d+ +write\\(1, \"refresh\\\\n\".*")) {
                refreshing = true;
            }
            Matcher m = PWRITE.matcher(line);
            if (!m.matches()) {
                continue;
            }
            int n = pwrites.merge(m.group(1), 1, Integer::sum);
            long len = Long.parseLong(m.group(2));
            long off = Long.parseLong(m.group(3));
            if (refreshing && off <= Qcow2Header.OFF_INCOMPATIBLE && off + len > Qcow2Header.OFF_INCOMPATIBLE) {
                thread = m.group(1);
                when = n;
            }
        }
        assertTrue(when > 0, "no pwrite64 of the dirty bit after the refresh began in " + trace);

        Path img = copy(base, "failed.qcow2");
        // not --seccomp-bpf (as Qcow2RefcountGrowthCrashTest: strace 6.1 then counts nothing for when=)
        List<String> fail = new ArrayList<>(List.of(strace.toString(), "-f", "-qq"));
        fail.addAll(List.of("-e", "trace=pwrite64", "-e", "inject=pwrite64:error=ENOSPC:when=" + when));
        fail.addAll(List.of("-o", "/dev/null"));
        TracedChild.Run f = run(fail, img, "failed");
        assertEquals(0, f.exit(), "the run with the failed write ended badly:\n" + f.output());
        assertTrue(
                f.output().contains("refresh failed") && f.output().contains("No space left"),
                "the dirty bit's write (pwrite64 " + when + " of thread " + thread + ") did not fail:\n" + f.output());
        check(img, false); // no corruption: memory never counted in a table the disk does not name
        assertTrue(
                f.output().contains("writes refused") && f.output().contains("until it is opened again"),
                "the image took writes after the dirty bit's write failed:\n" + f.output());

        // opened again: repaired again (the bit is still set), and writable
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            Qcow2ImageTest.write(q, DirtyRepairMain.AT, Qcow2ImageTest.fill(DirtyRepairMain.LENGTH, 0x66));
            q.flush();
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x11 0 1M", "read -P 0x66 8M 4M");
    }

    private TracedChild.Run run(List<String> prefix, Path img, String name) throws Exception {
        return TracedChild.run(dir, DirtyRepairMain.class, prefix, img, name);
    }

    private Path copy(Path base, String name) throws Exception {
        return TracedChild.copy(dir, base, name);
    }
}
