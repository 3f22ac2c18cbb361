// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.FakeHost;
import io.iovirt.host.StateStore;
import io.iovirt.pci.Bdf;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** Real JVM processes against one state directory: file locks serialize them; kills never leave a torn registry. */
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class RegistryConcurrencyTest {
    @TempDir
    Path tmp;

    private static final int RACERS = 6;

    /** A host whose SR-IOV PF has RACERS VFs, each bound to vfio-pci in its own IOMMU group. */
    private FakeHost hostWithVfs() {
        FakeHost h = new FakeHost(tmp.resolve("host")).intelHostWithIommu();
        List<String> vfs = new ArrayList<>();
        for (int i = 0; i < RACERS; i++) {
            vfs.add(String.format("0000:03:10.%d", i));
        }
        h.device("0000:03:00.0", 0x8086, 0x10c9, 0x020000)
                .driver("igb")
                .group(20)
                .sriov(7, vfs);
        for (int i = 0; i < RACERS; i++) {
            h.device(vfs.get(i), 0x8086, 0x10ca, 0x020000)
                    .driver("vfio-pci")
                    .group(30 + i)
                    .physfn("0000:03:00.0");
        }
        return h;
    }

    private static Process java(Class<?> main, List<String> args) throws IOException {
        List<String> cmd = new ArrayList<>(List.of(
                ProcessHandle.current().info().command().orElseThrow(),
                "--enable-native-access=ALL-UNNAMED",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Xshare:auto",
                "-cp",
                System.getProperty("java.class.path"),
                main.getName()));
        cmd.addAll(args);
        return new ProcessBuilder(cmd).redirectErrorStream(false).start();
    }

    private static Process javaWithProperty(String property, List<String> args) throws IOException {
        List<String> cmd = new ArrayList<>(List.of(
                ProcessHandle.current().info().command().orElseThrow(),
                "--enable-native-access=ALL-UNNAMED",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                property,
                "-cp",
                System.getProperty("java.class.path"),
                "io.iovirt.cli.Main"));
        cmd.addAll(args);
        return new ProcessBuilder(cmd).start();
    }

    private static String awaitLine(Process p, String prefix) throws IOException {
        BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
        String line;
        while ((line = r.readLine()) != null) {
            if (line.startsWith(prefix)) {
                return line;
            }
        }
        throw new AssertionError("process ended before printing " + prefix + ": "
                + new String(p.getErrorStream().readAllBytes()));
    }

    private static void killAll(List<Process> ps) {
        for (Process p : ps) {
            p.destroyForcibly();
        }
    }

    @Test
    void racersForOneVfExactlyOneWins() throws Exception {
        FakeHost h = hostWithVfs();
        Path start = tmp.resolve("start");
        List<Process> ps = new ArrayList<>();
        try {
            for (int i = 0; i < RACERS; i++) {
                List<String> args =
                        new ArrayList<>(List.of(start.toString(), "host", "assign", "0000:03:10.0", "--vm", "vm-" + i));
                args.addAll(h.cliRoots());
                ps.add(java(RegistryRaceMain.class, args));
            }
            for (Process p : ps) {
                awaitLine(p, "READY");
            }
            Files.createFile(start);
            int winners = 0;
            List<String> losers = new ArrayList<>();
            for (Process p : ps) {
                assertTrue(p.waitFor(120, TimeUnit.SECONDS), "racer did not finish");
                String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
                if (p.exitValue() == 0) {
                    winners++;
                } else {
                    assertEquals(1, p.exitValue(), err);
                    losers.add(err);
                }
            }
            assertEquals(1, winners, "losers said: " + losers);
            for (String err : losers) {
                assertTrue(err.contains("0000:03:10.0 is already assigned to VM vm-"), err);
            }
            List<AssignmentRegistry.Assignment> all = new AssignmentRegistry(h.state).list();
            assertEquals(1, all.size());
        } finally {
            killAll(ps);
        }
    }

    @Test
    void racersForDifferentVfsLoseNoUpdate() throws Exception {
        FakeHost h = hostWithVfs();
        Path start = tmp.resolve("start");
        List<Process> ps = new ArrayList<>();
        try {
            for (int i = 0; i < RACERS; i++) {
                List<String> args = new ArrayList<>(
                        List.of(start.toString(), "host", "assign", "0000:03:10." + i, "--vm", "vm-" + i));
                args.addAll(h.cliRoots());
                ps.add(java(RegistryRaceMain.class, args));
            }
            for (Process p : ps) {
                awaitLine(p, "READY");
            }
            Files.createFile(start);
            for (Process p : ps) {
                assertTrue(p.waitFor(120, TimeUnit.SECONDS));
                assertEquals(0, p.exitValue(), new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8));
            }
            List<AssignmentRegistry.Assignment> all = new AssignmentRegistry(h.state).list();
            assertEquals(RACERS, all.size(), "a read-modify-write lost an update: " + all);
        } finally {
            killAll(ps);
        }
    }

    @Test
    void writerKilledBeforeRenameLeavesTheOldRegistry() throws Exception {
        killedAt("state-before-rename");
    }

    @Test
    void writerKilledHalfwayThroughTheTempFileLeavesTheOldRegistry() throws Exception {
        killedAt("state-temp-partial");
    }

    private void killedAt(String crashPoint) throws Exception {
        FakeHost h = hostWithVfs();
        new AssignmentRegistry(h.state).assign(Bdf.parse("0000:03:10.0"), "vm-a", List.of());
        List<String> args = new ArrayList<>(List.of("host", "assign", "0000:03:10.1", "--vm", "vm-b"));
        args.addAll(h.cliRoots());
        Process p = javaWithProperty("-D" + StateStore.CRASHPOINT_PROPERTY + "=" + crashPoint, args);
        try {
            assertEquals("CRASHPOINT " + crashPoint, awaitLine(p, "CRASHPOINT"));
            p.destroyForcibly(); // SIGKILL: no shutdown hooks, no finally blocks
            assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        } finally {
            p.destroyForcibly();
        }
        try (Stream<Path> s = Files.list(h.state)) {
            assertTrue(
                    s.anyMatch(f -> f.getFileName().toString().startsWith("assignments.tmp-")),
                    "the writer died with its temp file");
        }
        AssignmentRegistry r = new AssignmentRegistry(h.state);
        List<AssignmentRegistry.Assignment> all = r.list();
        assertEquals(1, all.size(), all.toString());
        assertEquals("vm-a", all.getFirst().vm());
        // The dead writer's lock went with it; the next writer succeeds and sweeps the temp file.
        r.assign(Bdf.parse("0000:03:10.1"), "vm-b", List.of());
        assertEquals(2, r.list().size());
        try (Stream<Path> s = Files.list(h.state)) {
            assertTrue(s.noneMatch(f -> f.getFileName().toString().contains(".tmp-")));
        }
    }

    /**
     * A command that waits for another process's lock says so after a short quiet wait — the lock file, the holder's
     * pid and command line, and what to do — and keeps waiting: it goes on once the holder is gone. It waited
     * without a word, for as long as the holder held on.
     */
    @Test
    void aWaitForAnotherProcesssLockNamesTheHolder() throws Exception {
        FakeHost h = hostWithVfs();
        List<String> args = new ArrayList<>(List.of("host", "assign", "0000:03:10.1", "--vm", "vm-b"));
        args.addAll(h.cliRoots());
        // the holder stops for good holding the lock (the crash point is inside a write)
        Process p = javaWithProperty("-D" + StateStore.CRASHPOINT_PROPERTY + "=state-before-rename", args);
        java.util.logging.Logger log = java.util.logging.Logger.getLogger("io.iovirt.host");
        java.util.concurrent.BlockingQueue<String> said = new java.util.concurrent.LinkedBlockingQueue<>();
        java.util.logging.Handler handler = new java.util.logging.Handler() {
            @Override
            public void publish(java.util.logging.LogRecord r) {
                said.add(r.getMessage());
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        log.addHandler(handler);
        java.util.concurrent.ExecutorService waiter = java.util.concurrent.Executors.newSingleThreadExecutor();
        try {
            assertEquals("CRASHPOINT state-before-rename", awaitLine(p, "CRASHPOINT"));
            java.util.concurrent.Future<AssignmentRegistry.Result> assigned = waiter.submit(
                    () -> new AssignmentRegistry(h.state).assign(Bdf.parse("0000:03:10.0"), "vm-a", List.of()));
            String m = said.poll(30, TimeUnit.SECONDS);
            assertTrue(m != null, "nothing said while waiting for the lock");
            assertTrue(m.contains("waiting for the state lock " + h.state.resolve("lock")), m);
            assertTrue(m.contains("process " + p.pid() + " holds it (iovirt host assign 0000:03:10.1 --vm vm-b "), m);
            assertTrue(m.contains("end it (kill " + p.pid() + ")"), m);
            assertTrue(!assigned.isDone(), "it stopped waiting");
            p.destroyForcibly();
            assertEquals("vm-a", assigned.get(60, TimeUnit.SECONDS).assignment().vm());
            assertTrue(said.isEmpty(), "said more than once: " + said);
        } finally {
            log.removeHandler(handler);
            waiter.shutdownNow();
            p.destroyForcibly();
            p.waitFor(60, TimeUnit.SECONDS);
        }
    }

    @Test
    void writerKilledAtAnArbitraryMomentLeavesAReadableRegistry() throws Exception {
        Path state = tmp.resolve("state");
        AssignmentRegistry r = new AssignmentRegistry(state);
        // A registry big enough that each rewrite takes a while.
        for (int i = 0; i < 200; i++) {
            r.assign(new Bdf(1, i / 32, i % 32, 0), "vm-" + i, List.of());
        }
        for (int round = 0; round < 3; round++) {
            Process p = java(RegistryChurnMain.class, List.of(state.toString()));
            try {
                BufferedReader out =
                        new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
                int target = 20 + round * 7;
                String line;
                while ((line = out.readLine()) != null && Integer.parseInt(line) < target) {
                    // keep reading until the writer has done `target` updates
                }
                p.destroyForcibly();
                assertTrue(p.waitFor(60, TimeUnit.SECONDS));
            } finally {
                p.destroyForcibly();
            }
            List<AssignmentRegistry.Assignment> all = r.list();
            assertTrue(all.size() == 200 || all.size() == 201, "torn registry: " + all.size());
            assertEquals(200, all.stream().filter(a -> a.vm().startsWith("vm-")).count());
        }
    }
}
