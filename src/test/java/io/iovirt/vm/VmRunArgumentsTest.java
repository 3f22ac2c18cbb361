// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code vm run} refuses what it cannot run before it starts anything: no backend, no assignment, no directory left
 * in the temporary directory (the child JVM's java.io.tmpdir is one of ours, so "nothing left" is checkable).
 */
@Timeout(300)
class VmRunArgumentsTest {
    @TempDir
    Path dir;

    private record Run(int exit, String output) {}

    private Run vmRun(String... args) throws Exception {
        Path tmp = Files.createDirectories(dir.resolve("tmp"));
        List<String> cmd = new ArrayList<>(List.of("vm", "run"));
        cmd.addAll(List.of(args));
        try (ChildProcess p = ChildProcess.builder(IovirtCli.java(
                        List.of("-XX:+UseSerialGC", "-Djava.io.tmpdir=" + tmp), "io.iovirt.cli.Main", cmd))
                .name("iovirt vm run")
                .log(dir.resolve("vm-run-" + System.nanoTime() + ".log"))
                .start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(120)), "vm run did not end: " + p.logTail(20));
            try (Stream<Path> left = Files.list(tmp)) {
                assertEquals(List.of(), left.toList(), "left in the temporary directory:\n" + p.log());
            }
            return new Run(p.exitValue(), p.log());
        }
    }

    /**
     * A name the registry refuses is refused first, as a usage error naming the rule: 'a/b' used to fail making the
     * run directory ("Invalid prefix or suffix"), an 80-character one with a socket path the user never gave.
     */
    @Test
    void aBadVmNameIsAUsageErrorThatSaysWhatNamesAre() throws Exception {
        for (String name : List.of("a/b", "v".repeat(80))) {
            Run r = vmRun(name, "--serve", "--state-dir", dir.resolve("state").toString());
            assertEquals(2, r.exit(), r.output());
            assertTrue(r.output().contains("NAME: '" + name.substring(0, 3)), r.output()); // long ones are cut
            assertTrue(r.output().contains("' is not a usable VM name"), r.output());
            assertTrue(r.output().contains("use 1-64 letters, digits or _.+:@-"), r.output());
            assertFalse(r.output().contains("Invalid prefix") || r.output().contains(".sock"), r.output());
        }
    }

    /** --memory below the guest's floor is refused before the --vfio device is assigned (it used to be, then fail). */
    @Test
    void tooLittleMemoryIsRefusedBeforeADeviceIsAssigned() throws Exception {
        Path state = dir.resolve("state");
        Run r = vmRun("vm1", "--memory", "100", "--vfio", "0000:04:00.0", "--state-dir", state.toString());
        assertEquals(2, r.exit(), r.output());
        assertTrue(r.output().contains("memory must be 128 MiB .. 1 TiB, got 100 MiB"), r.output());
        assertFalse(Files.exists(state), "the registry was touched: " + state);
    }

    /** A --run-dir whose socket paths would be too long says so, naming the option, and leaves nothing there. */
    @Test
    void aRunDirTooLongForSocketPathsIsNamed() throws Exception {
        Path deep = Files.createDirectories(dir.resolve("d".repeat(100)));
        Run r = vmRun(
                "vm1",
                "--serve",
                "--run-dir",
                deep.toString(),
                "--state-dir",
                dir.resolve("state").toString());
        assertEquals(1, r.exit(), r.output());
        assertTrue(r.output().contains("--run-dir " + deep + " is too long for UNIX socket paths"), r.output());
        try (Stream<Path> left = Files.list(deep)) {
            assertEquals(List.of(), left.toList());
        }
    }

    /**
     * A NIC given a group (multicast) or zero MAC is refused as a usage error: the switch drops every frame whose
     * source is one, so an fv NIC (e1000) was composed, reported and silently dead, and a pv one failed after the
     * backends started with an error that did not say what to do.
     */
    @Test
    void aNicMacThatCannotSendIsAUsageError() throws Exception {
        for (String kind : List.of("fv", "pv")) {
            for (String mac : List.of("01:00:5e:00:00:01", "00:00:00:00:00:00")) {
                Run r = vmRun("vm1", "--serve", "--nic", kind + ",mac=" + mac);
                assertEquals(2, r.exit(), r.output());
                assertTrue(r.output().contains("mac " + mac + " is a group (multicast) or zero address"), r.output());
                assertTrue(r.output().contains("give a unicast address"), r.output());
                assertFalse(r.output().contains("backends running"), r.output());
            }
        }
    }

    /** --timeout 0 or less is refused before a guest boots (it booted one, then killed it at once). */
    @Test
    void aTimeoutBelowOneSecondIsAUsageError() throws Exception {
        Run r = vmRun("vm1", "--timeout", "0", "--accel", "tcg", "--command", "true");
        assertEquals(2, r.exit(), r.output());
        assertTrue(r.output().contains("--timeout must be at least 1 second, got 0"), r.output());
        assertFalse(r.output().contains("did not finish"), r.output());
    }
}
