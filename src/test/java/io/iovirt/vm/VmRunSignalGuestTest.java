// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Await;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * SIGTERM to a real {@code vm run} whose guest has written to a qcow2 disk without a flush: QEMU is killed, the
 * backend closes the image (its metadata written: the data is there and qemu-img check is clean), and nothing is left
 * in the temporary directory — the run directory and the guest's own (with its multi-MB initrd copy). The JVM's
 * default handling used to exit at once (status 143): QEMU was killed by a shutdown hook, the rest was left.
 */
@Tag("guest")
@Timeout(600)
class VmRunSignalGuestTest {
    @TempDir
    Path dir;

    @Test
    void sigtermStopsTheGuestClosesTheImagesAndRemovesTheRunsFiles() throws Exception {
        Path img = QemuTools.createQcow2(dir, "disk.qcow2", "64M");
        Path tmp = Files.createDirectories(dir.resolve("tmp"));
        GuestImage.ensure(); // built (or found) before the clock of the child's own run matters
        String payload = """
                yes Z | tr -d '\\n' | head -c 1048576 > /tmp/z
                dd if=/tmp/z of=/dev/vda bs=65536 seek=16 oflag=direct 2>&1
                echo written-without-flush
                sleep 600
                """;
        try (ChildProcess vm = vmRun(tmp, "sigterm-test", "--disk", "pv:" + img, "--command", payload)
                .start()) {
            Await.until(
                    Duration.ofSeconds(300),
                    "the guest's write",
                    vm,
                    () -> console(tmp).contains("written-without-flush"));
            List<ProcessHandle> qemu = ProcessHandle.of(vm.pid())
                    .orElseThrow()
                    .descendants()
                    .filter(h -> h.info().command().orElse("").contains("qemu-system"))
                    .toList();
            assertFalse(qemu.isEmpty(), "no QEMU under vm run");

            new ProcessBuilder("kill", "-TERM", Long.toString(vm.pid())).start().waitFor();
            assertTrue(vm.waitFor(Duration.ofSeconds(120)), "vm run did not stop on SIGTERM:\n" + vm.logTail(20));
            String log = vm.log();
            assertEquals(143, vm.exitValue(), log);
            assertTrue(log.contains("iovirt vm run sigterm-test: SIGTERM: guest stopped (QEMU killed)"), log);
            for (ProcessHandle q : qemu) {
                assertFalse(q.isAlive(), "QEMU " + q.pid() + " outlived vm run");
            }
            try (Stream<Path> left = Files.list(tmp)) {
                assertEquals(List.of(), left.toList(), "left in the temporary directory");
            }
        }
        // the guest's write reached the image and its metadata was written when the backend closed it
        QemuTools.qemuIoOk(img, "qcow2", "read -P 0x5a 1M 1M");
        QemuTools.check(img, false);
    }

    /**
     * A guest whose QEMU cannot be started (not on PATH: ChildProcess throws an UncheckedIOException) leaves nothing
     * behind either: its directory with the initrd copy used to stay, as did the run directory.
     */
    @Test
    void aGuestThatCannotStartLeavesNothingBehind() throws Exception {
        Path tmp = Files.createDirectories(dir.resolve("tmp"));
        // a PATH with every program of /usr/bin and /usr/sbin but QEMU
        Path bin = Files.createDirectories(dir.resolve("bin"));
        for (String d : List.of("/usr/sbin", "/usr/bin")) {
            try (Stream<Path> programs = Files.list(Path.of(d))) {
                for (Path p : programs.toList()) {
                    Path link = bin.resolve(p.getFileName());
                    if (!p.getFileName().toString().equals(QemuGuest.PROGRAM) && !Files.exists(link)) {
                        Files.createSymbolicLink(link, p);
                    }
                }
            }
        }
        try (ChildProcess vm = vmRun(tmp, "no-qemu", "--accel", "tcg", "--command", "true")
                .env("PATH", bin.toString())
                .start()) {
            assertTrue(vm.waitFor(Duration.ofSeconds(120)), vm.logTail(20));
            assertEquals(1, vm.exitValue(), vm.log());
            assertTrue(vm.log().contains("cannot start no-qemu (qemu-system-x86_64)"), vm.log());
            try (Stream<Path> left = Files.list(tmp)) {
                assertEquals(List.of(), left.toList(), "left in the temporary directory");
            }
        }
    }

    /**
     * {@code iovirt vm run ARGS --state-dir DIR/state} in a child JVM whose temporary directory is {@code tmp}, its
     * output in vm-run.log; not yet started.
     */
    private ChildProcess.Builder vmRun(Path tmp, String... args) {
        List<String> cmd = new ArrayList<>(List.of("vm", "run"));
        cmd.addAll(List.of(args));
        cmd.addAll(List.of("--state-dir", dir.resolve("state").toString()));
        return ChildProcess.builder(IovirtCli.java(
                        List.of("-XX:+UseSerialGC", "-Djava.io.tmpdir=" + tmp), "io.iovirt.cli.Main", cmd))
                .name("iovirt vm run")
                .log(dir.resolve("vm-run.log"));
    }

    /** Every guest console under {@code tmp} (the guest's directory is made there). */
    private static String console(Path tmp) {
        StringBuilder all = new StringBuilder();
        try (Stream<Path> files = Files.walk(tmp)) {
            for (Path f : files.filter(p -> p.getFileName().toString().equals("console.log"))
                    .toList()) {
                all.append(Files.readString(f, StandardCharsets.ISO_8859_1));
            }
        } catch (java.io.IOException | java.io.UncheckedIOException e) {
            // a guest directory removed while we looked: nothing to read there
        }
        return all.toString();
    }
}
