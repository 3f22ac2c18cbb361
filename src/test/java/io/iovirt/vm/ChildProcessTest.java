// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class ChildProcessTest {

    @TempDir
    Path dir;

    @Test
    void capturesStdoutAndStderrAndExitStatus() {
        try (ChildProcess p = ChildProcess.builder("sh", "-c", "echo out; echo err >&2; exit 3")
                .log(dir.resolve("p.log"))
                .start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(30)));
            assertEquals(3, p.exitValue());
            assertEquals(List.of("out", "err"), p.log().lines().toList());
        }
    }

    @Test
    void closeKillsTheWholeTree() throws Exception {
        ChildProcess p = ChildProcess.builder("sh", "-c", "sleep 600 & sleep 600 & wait")
                .log(dir.resolve("tree.log"))
                .start();
        List<ProcessHandle> kids = awaitChildren(p, 2);
        p.close();
        assertFalse(p.isAlive());
        for (ProcessHandle kid : kids) {
            assertTrue(kid.onExit().get(10, java.util.concurrent.TimeUnit.SECONDS) != null);
            assertFalse(kid.isAlive(), "grandchild " + kid.pid() + " survived");
        }
    }

    @Test
    void lifetimeKillsAForgottenChild() {
        try (ChildProcess p = ChildProcess.builder("sleep", "600")
                .log(dir.resolve("s.log"))
                .lifetime(Duration.ofMillis(300))
                .start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(30)), "the watchdog did not kill the child");
        }
    }

    @Test
    void stopSendsSigtermFirst() {
        try (ChildProcess p = ChildProcess.builder(
                        "sh", "-c", "trap 'echo got-term; exit 0' TERM; " + "echo ready; while :; do sleep 0.1; done")
                .log(dir.resolve("t.log"))
                .start()) {
            Await.until(
                    Duration.ofSeconds(30),
                    "the shell's trap is set",
                    () -> p.log().contains("ready"));
            p.stop(Duration.ofSeconds(20));
            assertFalse(p.isAlive());
            assertEquals(0, p.exitValue());
            assertTrue(p.log().contains("got-term"), p.log());
        }
    }

    /**
     * A child that dies from SIGSEGV in its directory: the report names the signal and carries gdb's backtrace of
     * the core (or, on a host whose cores do not land in the child's directory, says that none was found and what
     * core_pattern is). The core is removed.
     */
    @Test
    void aChildKilledBySigsegvComesWithItsBacktrace() throws Exception {
        Path cwd = java.nio.file.Files.createDirectories(dir.resolve("crash"));
        try (ChildProcess p = ChildProcess.builder("sh", "-c", "echo started; kill -SEGV $$")
                .log(dir.resolve("crash.log"))
                .directory(cwd)
                .start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(30)));
            assertEquals(128 + 11, p.exitValue());
            String report = p.crashReport();
            assertTrue(report.startsWith("sh (pid " + p.pid() + ") was killed by SIGSEGV"), report);
            if (!coresLandInTheWorkingDirectory()) {
                assertTrue(
                        report.contains("no core dump found")
                                && report.contains("core_pattern: " + CoreDump.corePattern()),
                        report);
            } else {
                assertTrue(report.contains("; backtrace from " + cwd), report);
                assertTrue(report.contains("#0 "), "gdb printed no frame: " + report);
                try (var files = java.nio.file.Files.list(cwd)) {
                    assertEquals(0, files.count(), "the core is deleted after the backtrace");
                }
            }
            assertEquals(report, p.crashReport(), "read once, reported the same every time");
        }
    }

    /**
     * Whether a child's core is written into its working directory on this machine: core_pattern names a file there
     * (not a pipe to systemd-coredump or apport, not an absolute path such as /var/crash/core.%p), and the hard core
     * size limit this JVM passes on is not 0 (a container or CI runner may set it so; the child can raise only its soft
     * limit).
     */
    private static boolean coresLandInTheWorkingDirectory() throws java.io.IOException {
        String pattern = CoreDump.corePattern();
        if (pattern.startsWith("|") || pattern.contains("/")) { // a pipe, or a directory other than the working one
            return false;
        }
        for (String line : java.nio.file.Files.readAllLines(Path.of("/proc/self/limits"))) {
            if (line.startsWith("Max core file size")) {
                // Limit                     Soft Limit           Hard Limit           Units
                String[] f =
                        line.substring("Max core file size".length()).trim().split("\\s+");
                return !f[1].equals("0");
            }
        }
        return true;
    }

    @Test
    void aNormalExitHasNoCrashReport() {
        try (ChildProcess p = ChildProcess.builder("sh", "-c", "exit 0")
                .log(dir.resolve("ok.log"))
                .directory(dir)
                .start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(30)));
            assertEquals("", p.crashReport());
        }
    }

    @Test
    void missingProgramSaysWhatToDo() {
        UncheckedIOException e = assertThrows(
                UncheckedIOException.class,
                () -> ChildProcess.builder("/nonexistent/qemu")
                        .log(dir.resolve("x.log"))
                        .start());
        assertTrue(e.getMessage().contains("install-deps.sh"), e.getMessage());
    }

    private static List<ProcessHandle> awaitChildren(ChildProcess p, int n) {
        return Await.value(Duration.ofSeconds(30), "the shell starts " + n + " children", () -> {
            List<ProcessHandle> kids =
                    ProcessHandle.of(p.pid()).orElseThrow().children().toList();
            return kids.size() >= n ? java.util.Optional.of(kids) : java.util.Optional.empty();
        });
    }
}
