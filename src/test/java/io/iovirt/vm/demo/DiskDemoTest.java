// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The README's main job, shortened: a real guest runs every phase on both disks and the report is complete. */
@Tag("guest")
class DiskDemoTest {
    @TempDir
    Path dir;

    @Test
    void everyPhaseRunsOnBothPathsAndIsAccountedFor() throws Exception {
        DiskDemo.Report report = new DiskDemo(dir, 1, line -> System.err.println("demo: " + line)).run();
        assertEquals(6, report.results().size());
        for (DiskDemo.Result r : report.results()) {
            assertTrue(r.ios() > 0 && r.iops() > 0, "no I/O completed: " + r);
            assertTrue(r.p99Micros() >= r.p50Micros(), r.toString());
            assertTrue(r.qemuCpuNanos() > 0, "QEMU's CPU time was not measured: " + r);
            // The CPU window is fio's I/O, not its start-up and exit (which held half a second of a 1 s phase).
            assertTrue(Math.abs(r.seconds() - r.fioSeconds()) < 0.25, r.toString());
        }
        assertTrue(report.results().get(0).path().startsWith("PV"));
        assertTrue(report.results().get(3).path().startsWith("FV"));
        assertTrue(
                report.platform().virtioInterrupts().contains("virtio"),
                report.platform().toString());

        ByteArrayOutputStream table = new ByteArrayOutputStream();
        DiskDemo.print(report, new PrintStream(table, true, StandardCharsets.UTF_8));
        String text = table.toString(StandardCharsets.UTF_8);
        assertTrue(text.contains("PV/FV: IOPS"), text);
        // the header states the accelerator the guest ran under and why (this host's decision, IOVIRT_ACCEL honoured)
        io.iovirt.vm.Accelerator.Decision accel = io.iovirt.vm.Accelerator.system();
        if (accel.mayFallBack()) { // KVM, or TCG after a KVM guest failed early
            assertTrue(
                    text.contains("\n  accelerator: KVM (")
                            || text.contains("\n  accelerator: TCG (KVM looked usable but "),
                    text);
        } else {
            assertTrue(text.contains("\n  accelerator: " + accel.describe() + "\n"), text);
        }
        assertTrue(DiskDemo.json(report).startsWith("{\"platform\""));
    }
}
