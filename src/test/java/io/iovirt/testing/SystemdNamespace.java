// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import io.iovirt.vm.ChildProcess;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Stream;

/**
 * A real systemd, Debian's own, as PID 1 of new PID, mount, UTS, IPC and network namespaces on this machine, whose
 * PID 1 is not systemd: what a test needs to see what {@code systemctl} and a package's maintainer scripts do to
 * running services. The file system is the machine's, so what {@code apt-get} installs is what this systemd runs;
 * {@code boot-systemd.sh} (beside this class) says what is kept out of the machine: its own cgroup subtree, its own
 * /run, a read-only /sys, an empty boot target with every early-boot unit masked.
 *
 * <p>{@link #run} runs a command inside the namespaces (there {@code /run/systemd/system} exists and
 * {@code systemctl} reaches this systemd). {@link #close} powers it off, kills whatever is left (every process of the
 * PID namespace dies with its PID 1) and removes its cgroups. Needs root, util-linux's unshare and nsenter, systemd.
 */
public final class SystemdNamespace implements AutoCloseable {
    private static final AtomicInteger COUNT = new AtomicInteger();
    private static final Duration BOOT = Duration.ofSeconds(120);

    private final ChildProcess unshare;
    private final long pid1;
    private final String cgroup;

    /** What a command printed (stdout and stderr together) and its exit status. */
    public record Result(int exit, String out) {}

    private SystemdNamespace(ChildProcess unshare, long pid1, String cgroup) {
        this.unshare = unshare;
        this.pid1 = pid1;
        this.cgroup = cgroup;
    }

    /** Boots it, its console log in {@code dir}, and returns once {@code systemctl is-system-running} says it is up. */
    public static SystemdNamespace boot(Path dir) throws IOException, InterruptedException {
        Require.that("root".equals(System.getProperty("user.name")), "root (systemd as PID 1 of new namespaces)");
        Require.that(
                Files.isExecutable(Path.of("/lib/systemd/systemd")), "/lib/systemd/systemd (apt-get install systemd)");
        Require.program("unshare", "apt-get install util-linux");
        Require.program("nsenter", "apt-get install util-linux");
        Path script = dir.resolve("boot-systemd.sh");
        try (InputStream in = SystemdNamespace.class.getResourceAsStream("boot-systemd.sh")) {
            Files.write(script, in.readAllBytes());
        }
        String cgroup = "iovirt-test-systemd-" + ProcessHandle.current().pid() + "-" + COUNT.incrementAndGet();
        ChildProcess unshare = ChildProcess.builder("bash", script.toString(), cgroup)
                .name("systemd in namespaces")
                .log(dir.resolve("systemd.log"))
                .start();
        SystemdNamespace ns = null;
        try {
            long[] pid1 = {0};
            Await.until(BOOT, "unshare's child, systemd", unshare, () -> {
                pid1[0] = unshare.isAlive() ? systemdChild(unshare.pid()) : 0;
                return pid1[0] != 0;
            });
            ns = new SystemdNamespace(unshare, pid1[0], cgroup);
            SystemdNamespace booted = ns;
            // "degraded": up, with a unit that failed (one of the machine's, which the test does not need)
            Await.until(
                    BOOT,
                    "systemd in the namespaces up (systemctl is-system-running)",
                    unshare,
                    () -> List.of("running", "degraded")
                            .contains(booted.runUnchecked(List.of("systemctl", "is-system-running"), 30)
                                    .out
                                    .strip()));
            return ns;
        } catch (RuntimeException | Error e) {
            if (ns != null) {
                ns.close();
            } else {
                unshare.close();
                removeCgroups(cgroup);
            }
            throw e;
        }
    }

    /** The child of unshare that execs systemd (the PID namespace's PID 1), once it has exec'd it; 0 before. */
    private static long systemdChild(long unsharePid) {
        return ProcessHandle.of(unsharePid).stream()
                .flatMap(ProcessHandle::children)
                .filter(p -> p.info().command().orElse("").endsWith("/systemd"))
                .mapToLong(ProcessHandle::pid)
                .findFirst()
                .orElse(0);
    }

    /** Runs {@code cmd} inside the namespaces, bounded by {@code seconds}. */
    public Result run(List<String> cmd, int seconds) throws IOException, InterruptedException {
        List<String> argv = new ArrayList<>(List.of("nsenter", "--target", Long.toString(pid1), "--all", "--"));
        argv.addAll(cmd);
        Process p = new ProcessBuilder(argv).redirectErrorStream(true).start();
        var out = new java.io.ByteArrayOutputStream();
        Thread reader = Thread.ofPlatform().daemon().start(() -> {
            try (var in = p.getInputStream()) {
                in.transferTo(out);
            } catch (IOException ignored) {
                // the process was destroyed: what was read is kept
            }
        });
        if (!p.waitFor(seconds, TimeUnit.SECONDS)) {
            p.descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
            reader.join(10_000);
            throw new AssertionError(
                    "timed out after " + seconds + " s in the systemd namespaces: " + cmd + "\n" + out);
        }
        reader.join(10_000);
        return new Result(p.exitValue(), out.toString());
    }

    private Result runUnchecked(List<String> cmd, int seconds) {
        try {
            return run(cmd, seconds);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted", e);
        }
    }

    /**
     * For a failure's message: the journal inside the namespaces of the units matching {@code unitGlob} (their output
     * and systemd's lines about them), last 80 lines, and what the boot script printed.
     */
    public String journal(String unitGlob) {
        String journal;
        try {
            journal = run(List.of("journalctl", "--no-pager", "--lines=80", "--unit=" + unitGlob), 60).out;
        } catch (IOException | RuntimeException | AssertionError e) {
            journal = "(journalctl failed: " + e + ")";
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            journal = "(interrupted)";
        }
        return "journal of " + unitGlob + ":\n" + journal + "\nboot-systemd.sh printed:\n" + unshare.logTail(20);
    }

    /**
     * Powers it off (its services get their stop: SIGTERM, then SIGKILL after their TimeoutStopSec), then kills what is
     * left and removes its cgroups.
     */
    @Override
    public void close() {
        try {
            if (unshare.isAlive()) {
                runUnchecked(List.of("systemctl", "--no-block", "poweroff"), 30);
                unshare.waitFor(Duration.ofSeconds(90));
            }
        } catch (RuntimeException | AssertionError e) {
            // killed below
        } finally {
            unshare.close();
            removeCgroups(cgroup);
        }
    }

    /** Its cgroup subtree in every hierarchy, deepest first (a cgroup goes once its processes have exited). */
    private static void removeCgroups(String cgroup) {
        List<Path> roots;
        try (Stream<String> mounts = Files.lines(Path.of("/proc/self/mounts"))) {
            roots = mounts.map(l -> l.split(" "))
                    .filter(f -> f.length > 2 && f[2].startsWith("cgroup"))
                    .map(f -> Path.of(f[1]).resolve(cgroup))
                    .filter(Files::isDirectory)
                    .toList();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        for (Path root : roots) {
            List<Path> dirs;
            try (Stream<Path> walk = Files.walk(root)) {
                dirs = walk.filter(Files::isDirectory)
                        .sorted(Comparator.comparingInt(Path::getNameCount).reversed())
                        .toList();
            } catch (IOException e) {
                throw new UncheckedIOException("cannot list the cgroups under " + root, e);
            }
            for (Path d : dirs) {
                Await.until(Duration.ofSeconds(30), "cgroup " + d + " removed (its processes gone)", () -> {
                    try {
                        Files.deleteIfExists(d);
                        return true;
                    } catch (IOException e) {
                        return false;
                    }
                });
            }
        }
    }
}
