// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

import io.iovirt.bench.BackendProcess;
import io.iovirt.daemon.Daemon;
import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.nbd.NbdExport;
import io.iovirt.nbd.NbdServer;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.util.Json;
import io.iovirt.vhostuser.VhostUserServer;
import io.iovirt.vm.Accelerator;
import io.iovirt.vm.GuestException;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.RunningGuest;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;
import java.util.Random;
import java.util.function.Consumer;
import java.util.regex.MatchResult;
import java.util.regex.Pattern;

/**
 * Full virtualization versus paravirtualization on one guest and one workload: the guest's stock drivers run the
 * same fio jobs against a disk QEMU emulates (AHCI, every register access trapped; its blocks served by iovirt's
 * NBD export) and a virtio-blk disk that iovirt serves over vhost-user (PV), both backed by same-sized raw files in
 * the host page cache and iovirt's storage code — so the comparison is of the device models, not of two block layers.
 *
 * <p>The guest is a PVHVM profile: a q35 (hardware-virtualized) machine whose PV devices interrupt through MSI-X
 * vectors wired to eventfds, with EVENT_IDX notification suppression both ways; under KVM its clock is kvmclock.
 * Host CPU per I/O is QEMU's plus iovirt's CPU time while fio does I/O, divided by the I/Os fio completed: fio itself
 * prints "demo-go" and "demo-stop" to the console around its I/O (exec_prerun, exec_postrun), so fio's start-up and
 * exit are not in the window — from the phase's own start and end markers they were, half a second of a 1 s phase.
 */
public final class DiskDemo {
    /** One fio job: the guest device, the access pattern and the queue depth. */
    record Phase(String device, String rw, int queueDepth) {
        String marker() {
            return device + " " + rw + " " + queueDepth;
        }
    }

    /**
     * One measured phase. {@code iovirtCpuNanos}: iovirt's CPU (vhost-user-blk for PV, the NBD export for FV); a CPU
     * time is -1 when /proc did not tell it.
     *
     * @param seconds the window the CPU times cover, from fio's "demo-go" to its "demo-stop" as the host saw them
     *     (each within the console's 50 ms polling)
     * @param fioSeconds how long fio did I/O by its own count: what the window should match
     */
    public record Result(
            String path,
            String workload,
            double iops,
            long p50Micros,
            long p99Micros,
            long ios,
            long qemuCpuNanos,
            long iovirtCpuNanos,
            double seconds,
            double fioSeconds) {
        public double cpuMicrosPerIo() {
            return ios == 0 || qemuCpuNanos < 0 || iovirtCpuNanos < 0
                    ? Double.NaN
                    : (qemuCpuNanos + iovirtCpuNanos) / 1000.0 / ios;
        }
    }

    /** What the guest reported about its platform (clock source, interrupt delivery). */
    public record Platform(String accel, String clocksource, String virtioInterrupts) {}

    public record Report(Platform platform, List<Result> results) {}

    static final long DISK_BYTES = 256L << 20;
    private static final int BLOCK = 4096;
    private static final String PV = "PV  virtio-blk, iovirt (vhost-user)";
    private static final String FV = "FV  AHCI, emulated by QEMU, iovirt NBD";

    private final Path workDir;
    private final int seconds;
    private final Consumer<String> progress;
    private final Accelerator.Decision accel;

    public DiskDemo(Path workDir, int seconds, Consumer<String> progress) {
        this(workDir, seconds, progress, Accelerator.system());
    }

    public DiskDemo(Path workDir, int seconds, Consumer<String> progress, Accelerator.Decision accel) {
        this.accel = accel;
        this.workDir = workDir;
        this.seconds = seconds;
        this.progress = progress;
    }

    public Report run() throws IOException {
        GuestImage image = GuestImage.ensure(line -> progress.accept("  " + line));
        Path pvImage = workDir.resolve("pv-disk.raw");
        Path fvImage = workDir.resolve("fv-disk.raw");
        progress.accept("writing two " + (DISK_BYTES >> 20) + " MiB disk images");
        fill(pvImage);
        fill(fvImage);
        Path socket = workDir.resolve("pv-disk.sock");
        List<Phase> phases = new ArrayList<>();
        for (String dev : new String[] {"vda", "sda"}) {
            phases.add(new Phase(dev, "randread", 1));
            phases.add(new Phase(dev, "randread", 16));
            phases.add(new Phase(dev, "randwrite", 16));
        }
        Path nbdSocket = workDir.resolve("fv-disk.nbd.sock");
        try (DiskImage img = Images.open(pvImage, null, false, false);
                DiskImage fvImg = Images.open(fvImage, null, false, false)) {
            BlkDevice pvDevice = new BlkDevice(socket.toString(), img, 1, "iovirt-demo-pv");
            return run(image, phases, socket, pvDevice, nbdSocket, fvImg);
        }
    }

    private Report run(
            GuestImage image, List<Phase> phases, Path socket, BlkDevice pvDevice, Path nbdSocket, DiskImage fvImg)
            throws IOException {
        try (VhostUserServer server = VhostUserServer.start(socket, pvDevice);
                NbdServer nbd = NbdServer.startUnix(nbdSocket, 4)) {
            NbdExport fvExport = new NbdExport("fv", fvImg, false);
            nbd.addExport(fvExport);
            QemuGuest guest = QemuGuest.builder(image)
                    .name("demo")
                    .accelerator(accel)
                    .notice(progress)
                    .workDir(workDir)
                    .memoryMiB(512)
                    .fio()
                    .modules("virtio_pci", "virtio_blk", "ahci", "sd_mod")
                    .args(
                            "-chardev",
                            "socket,id=pv0,path=" + QemuGuest.escape(socket.toString()),
                            "-device",
                            "vhost-user-blk-pci,chardev=pv0,num-queues=1",
                            "-drive",
                            "driver=nbd,server.type=unix,server.path=" + QemuGuest.escape(nbdSocket.toString())
                                    + ",export=fv,if=none,id=fv0",
                            "-device",
                            "ahci,id=ahci0",
                            "-device",
                            "ide-hd,drive=fv0,bus=ahci0.0")
                    .payload(payload(phases))
                    .build();
            progress.accept("booting the guest under QEMU, " + accel.describe());
            Duration budget = Duration.ofSeconds(120L + (long) phases.size() * (seconds + 20));
            try (RunningGuest g = guest.start(budget)) {
                try {
                    return measure(g, phases);
                } catch (GuestException e) {
                    // A phase that never starts or ends is a request one of the two backends never answered, or an
                    // interrupt that never came: what each backend holds, read while the guest still runs, says which.
                    throw new GuestException(
                            e.getMessage() + "\n--- iovirt backends ---\n" + backendState(pvDevice, fvExport), e);
                }
            }
        }
    }

    private static String backendState(BlkDevice pv, NbdExport fv) {
        StringBuilder s = new StringBuilder();
        for (int q = 0; q < pv.queueCount(); q++) {
            s.append("PV vhost-user-blk queue ")
                    .append(q)
                    .append(": ")
                    .append(Daemon.blkCounters(pv.queueStats(q)))
                    .append(", worker ")
                    .append(Daemon.workerCounters(pv.workerStats(q)))
                    .append("; ")
                    .append(pv.ringState(q))
                    .append('\n');
        }
        return s.append("FV NBD export: ").append(fv.stats()).append('\n').toString();
    }

    private Report measure(RunningGuest g, List<Phase> phases) {
        MatchResult info = g.awaitConsole(
                Pattern.compile("demo-info clocksource=(\\S+) virtio-irq=(.*)\\n"), Duration.ofSeconds(120));
        Platform platform = new Platform(
                g.accelerator().describe(), info.group(1), info.group(2).trim());
        List<Result> results = new ArrayList<>();
        BackendProcess qemu = new BackendProcess(g.pid());
        BackendProcess self = new BackendProcess(ProcessHandle.current().pid());
        for (Phase p : phases) {
            String path = p.device().equals("vda") ? PV : FV;
            progress.accept(String.format(
                    "running %s %s qd%d for %d s on %s", p.rw(), "4KiB", p.queueDepth(), seconds, path.substring(4)));
            g.awaitConsole(
                    Pattern.compile("demo-go " + Pattern.quote(p.marker()) + "\\n"), Duration.ofSeconds(seconds + 60L));
            long t0 = System.nanoTime();
            OptionalLong q0 = qemu.cpuNanos();
            OptionalLong s0 = self.cpuNanos();
            g.awaitConsole(
                    Pattern.compile("demo-stop " + Pattern.quote(p.marker()) + "\\n"),
                    Duration.ofSeconds(seconds * 3L + 60));
            long t1 = System.nanoTime();
            OptionalLong q1 = qemu.cpuNanos();
            OptionalLong s1 = self.cpuNanos();
            MatchResult end = g.awaitConsole(
                    Pattern.compile("demo-end " + Pattern.quote(p.marker()) + " (\\S+)\\n"), Duration.ofSeconds(60));
            FioTerse r = FioTerse.parse(end.group(1), p.rw().contains("write"), BLOCK);
            results.add(new Result(
                    path,
                    p.rw() + " 4KiB qd" + p.queueDepth(),
                    r.iops(),
                    r.p50Micros(),
                    r.p99Micros(),
                    r.ios(),
                    BackendProcess.elapsed(q0, q1).orElse(-1),
                    BackendProcess.elapsed(s0, s1).orElse(-1),
                    (t1 - t0) / 1e9,
                    r.runtimeMillis() / 1e3));
        }
        g.awaitExit(Duration.ofSeconds(60));
        return new Report(platform, results);
    }

    private String payload(List<Phase> phases) {
        StringBuilder s = new StringBuilder();
        s.append("cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\n");
        s.append("irq=$(grep -E 'virtio' /proc/interrupts | awk '{print $(NF-1)\"/\"$NF}' | tr '\\n' ' ')\n");
        s.append("echo \"demo-info clocksource=$cs virtio-irq=$irq\"\n");
        // Warm both paths (JIT in iovirt, caches in QEMU) before anything is measured.
        s.append(
                        "for d in vda sda; do echo \"demo-warm $d\"; fio --name=warm --filename=/dev/$d --rw=randrw --bs=4096 --iodepth=8 --ioengine=libaio")
                .append(" --direct=1 --time_based --runtime=2 --minimal >/dev/null 2>&1; done\n");
        for (Phase p : phases) {
            s.append("echo 'demo-start ").append(p.marker()).append("'\n");
            s.append("fio --name=demo --filename=/dev/")
                    .append(p.device())
                    .append(" --rw=")
                    .append(p.rw())
                    .append(" --bs=")
                    .append(BLOCK)
                    .append(" --iodepth=")
                    .append(p.queueDepth())
                    .append(" --ioengine=libaio --direct=1 --time_based --runtime=")
                    .append(seconds)
                    // fio's own markers around its I/O, for the CPU window. fio appends "> demo.prerun.txt 2>&1"
                    // to the command, so the echo's own redirection to the console is in a shell of its own.
                    .append(" --exec_prerun='sh -c \"echo demo-go ")
                    .append(p.marker())
                    .append(" >/dev/console\"' --exec_postrun='sh -c \"echo demo-stop ")
                    .append(p.marker())
                    .append(" >/dev/console\"'")
                    .append(
                            " --norandommap --randrepeat=0 --minimal --percentile_list=50:99 > /tmp/fio.out 2>/tmp/fio.err")
                    .append(" || { echo \"fio failed on ")
                    .append(p.device())
                    .append(":\"; cat /tmp/fio.err; exit 1; }\n");
            // the terse line alone: fio also says where it saved the pre- and post-run commands' output
            s.append("echo \"demo-end ").append(p.marker()).append(" $(grep '^3;' /tmp/fio.out)\"\n");
        }
        return s.toString();
    }

    /** Real data in every block, so reads are served from file contents, not from holes. */
    private static void fill(Path file) throws IOException {
        ByteBuffer chunk = ByteBuffer.allocateDirect(1 << 20);
        Random r = new Random(42);
        byte[] b = new byte[1 << 20];
        r.nextBytes(b);
        chunk.put(b).flip();
        try (FileChannel ch = FileChannel.open(
                file, StandardOpenOption.CREATE, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
            for (long off = 0; off < DISK_BYTES; off += chunk.capacity()) {
                chunk.rewind();
                ch.write(chunk, off);
            }
        }
    }

    /** The table a person reads. */
    public static void print(Report report, PrintStream out) {
        Platform p = report.platform();
        out.println();
        out.println(
                "iovirt demo: one guest, one workload (fio, libaio, O_DIRECT in the guest), two ways to give it a disk");
        out.println("  accelerator: " + p.accel());
        out.println("  guest: q35 HVM + PV drivers (PVHVM); clocksource " + p.clocksource());
        out.println(
                "  virtio interrupts: " + (p.virtioInterrupts().isEmpty() ? "(none listed)" : p.virtioInterrupts()));
        out.println();
        out.printf(
                "%-38s %-20s %10s %10s %10s %14s%n", "path", "workload", "IOPS", "p50 (us)", "p99 (us)", "host CPU/IO");
        for (Result r : report.results()) {
            out.printf(
                    "%-38s %-20s %10.0f %10d %10d %11.1f us%n",
                    r.path(), r.workload(), r.iops(), r.p50Micros(), r.p99Micros(), r.cpuMicrosPerIo());
        }
        out.println();
        List<Result> rs = report.results();
        int half = rs.size() / 2;
        for (int i = 0; i < half; i++) {
            Result pv = rs.get(i);
            Result fv = rs.get(i + half);
            out.printf(
                    "  %-20s PV/FV: IOPS x%.2f, p99 latency x%.2f, host CPU per I/O x%.2f%n",
                    pv.workload(),
                    pv.iops() / fv.iops(),
                    (double) pv.p99Micros() / fv.p99Micros(),
                    pv.cpuMicrosPerIo() / fv.cpuMicrosPerIo());
        }
        out.println();
        out.println("  host CPU/IO = (QEMU + iovirt CPU time while fio did I/O) / I/Os completed.");
        if (p.accel().startsWith("TCG")) {
            out.println(
                    "  Under TCG QEMU's CPU time is dominated by emulating the guest's own instructions, for both paths;");
            out.println(
                    "  with KVM the difference between trapping every AHCI register access and sharing a ring grows.");
        }
    }

    /** Machine-readable form of the report (util.Json: strings escaped, an unknown number null). */
    public static String json(Report report) {
        Map<String, Object> platform = new LinkedHashMap<>();
        platform.put("accel", report.platform().accel());
        platform.put("clocksource", report.platform().clocksource());
        List<Object> disk = new ArrayList<>();
        for (Result r : report.results()) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("path", r.path());
            m.put("workload", r.workload());
            m.put("iops", r.iops());
            m.put("p50_us", r.p50Micros());
            m.put("p99_us", r.p99Micros());
            m.put("ios", r.ios());
            m.put("qemu_cpu_ns", r.qemuCpuNanos() < 0 ? null : r.qemuCpuNanos());
            m.put("iovirt_cpu_ns", r.iovirtCpuNanos() < 0 ? null : r.iovirtCpuNanos());
            m.put("cpu_us_per_io", r.cpuMicrosPerIo());
            m.put("seconds", r.seconds());
            m.put("fio_seconds", r.fioSeconds());
            disk.add(m);
        }
        Map<String, Object> doc = new LinkedHashMap<>();
        doc.put("platform", platform);
        doc.put("disk", disk);
        return Json.compact(doc);
    }
}
