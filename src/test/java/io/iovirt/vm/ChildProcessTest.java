package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

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
                .log(dir.resolve("p.log")).start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(30)));
            assertEquals(3, p.exitValue());
            assertEquals(List.of("out", "err"), p.log().lines().toList());
        }
    }

    @Test
    void closeKillsTheWholeTree() throws Exception {
        ChildProcess p = ChildProcess.builder("sh", "-c", "sleep 600 & sleep 600 & wait")
                .log(dir.resolve("tree.log")).start();
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
        try (ChildProcess p = ChildProcess.builder("sleep", "600").log(dir.resolve("s.log"))
                .lifetime(Duration.ofMillis(300)).start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(30)), "the watchdog did not kill the child");
        }
    }

    @Test
    void stopSendsSigtermFirst() {
        try (ChildProcess p = ChildProcess.builder("sh", "-c", "trap 'echo got-term; exit 0' TERM; "
                + "echo ready; while :; do sleep 0.1; done").log(dir.resolve("t.log")).start()) {
            long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
            while (!p.log().contains("ready") && System.nanoTime() < deadline) {
                Thread.onSpinWait();
            }
            p.stop(Duration.ofSeconds(20));
            assertFalse(p.isAlive());
            assertEquals(0, p.exitValue());
            assertTrue(p.log().contains("got-term"), p.log());
        }
    }

    @Test
    void missingProgramSaysWhatToDo() {
        UncheckedIOException e = assertThrows(UncheckedIOException.class,
                () -> ChildProcess.builder("/nonexistent/qemu").log(dir.resolve("x.log")).start());
        assertTrue(e.getMessage().contains("install-deps.sh"), e.getMessage());
    }

    private static List<ProcessHandle> awaitChildren(ChildProcess p, int n) throws InterruptedException {
        long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
        while (System.nanoTime() < deadline) {
            List<ProcessHandle> kids = ProcessHandle.of(p.pid()).orElseThrow().children().toList();
            if (kids.size() >= n) {
                return kids;
            }
            Thread.sleep(10);
        }
        throw new AssertionError("the shell did not start its children");
    }
}
