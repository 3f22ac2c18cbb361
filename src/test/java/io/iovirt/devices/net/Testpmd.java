// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * DPDK's dpdk-testpmd in interactive mode as a child process: a real third-party virtio-net driver without a VM
 * ({@code --vdev net_virtio_user0,path=SOCK}: the vhost-user frontend) or DPDK's own vhost-user backend
 * ({@code net_vhost0}). Commands go to its stdin; its output goes to a log file the test reads. Killed on close.
 */
final class Testpmd implements AutoCloseable {
    private static final Pattern FWD_STATS = Pattern.compile(
            "Forward statistics for port 0\\s+-+\\s+RX-packets:\\s+(\\d+)\\s+RX-dropped:\\s+(\\d+).*?\\s+TX-packets:\\s+(\\d+)\\s+TX-dropped:\\s+(\\d+)",
            Pattern.DOTALL);

    private final Process process;
    private final OutputStream stdin;
    private final Path log;
    private Path dir;
    private Path binary;

    /** Forward statistics of port 0 as testpmd prints them on {@code stop}. */
    record Stats(long rxPackets, long rxDropped, long txPackets, long txDropped) {}

    private Testpmd(Process process, Path log) {
        this.process = process;
        this.stdin = process.getOutputStream();
        this.log = log;
    }

    /**
     * The binary: built and cached by scripts/install-dpdk.sh (which installs DPDK's runtime libraries through apt
     * when run as root). Returns null with no way to get it (not root, nothing cached).
     */
    static Path binary() throws IOException, InterruptedException {
        Path script = Path.of("scripts/install-dpdk.sh").toAbsolutePath();
        Process p = new ProcessBuilder("bash", script.toString())
                .redirectErrorStream(false)
                .redirectError(ProcessBuilder.Redirect.DISCARD)
                .start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
        if (p.waitFor() != 0 || out.isEmpty()) {
            return null;
        }
        Path bin = Path.of(out.lines().reduce((a, b) -> b).orElse(""));
        return Files.isExecutable(bin) ? bin : null;
    }

    /**
     * testpmd's --lcores for its main and forwarding lcore both on the {@code n}th CPU (from 0) this process may use,
     * wrapping around when it may use fewer: CPU numbers written into a test ("0@1,1@1") name a CPU that need not be
     * there, and EAL refuses one outside the cpuset (a CI runner pinned with taskset or a container's cpuset) or past
     * the last CPU of a one-CPU machine.
     */
    static String lcoresOnCpu(int n) throws io.iovirt.linux.LinuxException {
        java.util.BitSet allowed = io.iovirt.linux.Affinity.ofCurrentThread();
        int cpu = allowed.nextSetBit(0);
        for (int i = 0; i < n % allowed.cardinality(); i++) {
            cpu = allowed.nextSetBit(cpu + 1);
        }
        return "0@" + cpu + ",1@" + cpu;
    }

    /**
     * Starts testpmd on {@code lcores} (e.g. {@link #lcoresOnCpu}) with one vdev and the given testpmd arguments;
     * waits for its prompt.
     */
    static Testpmd start(Path binary, Path dir, String name, String lcores, String vdev, String... args)
            throws IOException, InterruptedException {
        return start(binary, dir, name, lcores, List.of(vdev), args);
    }

    /** {@link #start(Path, Path, String, String, String, String...)} with several vdevs (ports 0, 1, ...). */
    static Testpmd start(Path binary, Path dir, String name, String lcores, List<String> vdevs, String... args)
            throws IOException, InterruptedException {
        // stdbuf: testpmd's stdout is a file here, which stdio would buffer until exit
        List<String> cmd = new ArrayList<>(List.of(
                "stdbuf",
                "-oL",
                binary.toString(),
                "--lcores=" + lcores,
                "--no-huge",
                "-m",
                "256",
                "--no-pci",
                "--file-prefix=" + name + ProcessHandle.current().pid()));
        for (String vdev : vdevs) {
            cmd.add("--vdev");
            cmd.add(vdev);
        }
        cmd.addAll(List.of("--", "-i", "--total-num-mbufs=8192"));
        cmd.addAll(List.of(args));
        Path log = dir.resolve(name + ".log");
        // may dump core into dir: a crash reaches the test's failure message as a gdb backtrace
        Process p = new ProcessBuilder(io.iovirt.vm.CoreDump.wrap(cmd))
                .directory(dir.toFile())
                .redirectErrorStream(true)
                .redirectOutput(log.toFile())
                .start();
        Testpmd t = new Testpmd(p, log);
        t.dir = dir;
        t.binary = binary;
        try {
            t.awaitOutput(Pattern.compile("testpmd> "), Duration.ofSeconds(60));
        } catch (RuntimeException | IOException e) {
            t.close();
            throw e;
        }
        return t;
    }

    void command(String line) throws IOException {
        stdin.write((line + "\n").getBytes(StandardCharsets.US_ASCII));
        stdin.flush();
    }

    String output() throws IOException {
        return Files.exists(log) ? Files.readString(log, StandardCharsets.ISO_8859_1) : "";
    }

    /** Waits until the output shows {@code pattern} at or after character {@code from}; returns the match. */
    Matcher awaitOutput(Pattern pattern, Duration timeout, int from) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            String out = output();
            Matcher m = pattern.matcher(out);
            if (out.length() > from && m.find(from)) {
                return m;
            }
            if (!process.isAlive()) {
                String crash = io.iovirt.vm.CoreDump.report(
                        "testpmd", process.pid(), process.exitValue(), dir, binary.toString());
                throw new AssertionError("testpmd exited with " + process.exitValue() + " before printing /" + pattern
                        + "/:\n" + tail(out) + (crash.isEmpty() ? "" : "\n" + crash));
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError("testpmd did not print /" + pattern + "/ in time:\n" + tail(out));
            }
            Thread.sleep(20);
        }
    }

    Matcher awaitOutput(Pattern pattern, Duration timeout) throws IOException, InterruptedException {
        return awaitOutput(pattern, timeout, 0);
    }

    /** {@code stop}: forwarding ends and testpmd prints (and we parse) port 0's forward statistics. */
    Stats stop() throws IOException, InterruptedException {
        int from = output().length();
        command("stop");
        Matcher m = awaitOutput(FWD_STATS, Duration.ofSeconds(30), from);
        return new Stats(
                Long.parseLong(m.group(1)),
                Long.parseLong(m.group(2)),
                Long.parseLong(m.group(3)),
                Long.parseLong(m.group(4)));
    }

    /** {@code show port stats 0}: {rx packets, tx packets} so far, while forwarding continues. */
    long[] portStats() throws IOException, InterruptedException {
        return portStats(0);
    }

    /** {@code show port stats N}: {rx packets, tx packets} of port N so far, while forwarding continues. */
    long[] portStats(int port) throws IOException, InterruptedException {
        int from = output().length();
        command("show port stats " + port);
        Pattern p = Pattern.compile(
                "NIC statistics for port " + port + "\\s+#+\\s+RX-packets:\\s+(\\d+).*?TX-packets:\\s+(\\d+)",
                Pattern.DOTALL);
        Matcher m = awaitOutput(p, Duration.ofSeconds(30), from);
        return new long[] {Long.parseLong(m.group(1)), Long.parseLong(m.group(2))};
    }

    private static String tail(String s) {
        String[] lines = s.split("\n");
        return String.join("\n", List.of(lines).subList(Math.max(0, lines.length - 30), lines.length));
    }

    /** {@code quit}, then kill if it does not exit within 10 s. */
    @Override
    public void close() {
        try {
            if (process.isAlive()) {
                command("quit");
            }
        } catch (IOException e) {
            // already gone
        }
        try {
            if (!process.waitFor(10, java.util.concurrent.TimeUnit.SECONDS)) {
                process.destroyForcibly().waitFor(10, java.util.concurrent.TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            process.destroyForcibly();
            Thread.currentThread().interrupt();
        }
    }
}
