// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

import io.iovirt.bench.BackendProcess;
import io.iovirt.devices.net.VirtioNetPort;
import io.iovirt.net.Mac;
import io.iovirt.net.Port;
import io.iovirt.net.StreamPort;
import io.iovirt.net.Switch;
import io.iovirt.util.Json;
import io.iovirt.vm.Accelerator;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.RunningGuest;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.OptionalLong;
import java.util.function.Consumer;
import java.util.regex.MatchResult;
import java.util.regex.Pattern;

/**
 * The NIC half of the demo: one guest with an emulated e1000 (FV: QEMU traps every register access and hands frames
 * to the switch over a {@code -netdev stream} socket) and a virtio-net NIC (PV: iovirt moves frames through the
 * guest's rings over vhost-user), both on one iovirt switch, talking to the same peer guest (virtio-net). Each NIC
 * runs the same ping (latency) and TCP send (throughput) against the peer.
 *
 * <p>Throughput and packet counts come from the switch's counters for the NIC's port between the guest's phase
 * markers, so they do not depend on the guest's clock; host CPU per packet is both QEMUs' plus iovirt's CPU time over
 * the phase divided by the packets the NIC's port carried. The guest says "net-start" and waits half a second, so
 * that the counters are read before any traffic, then "net-go" right before it starts: the time and the CPU are
 * measured from "net-go" to "net-end", the traffic itself (from "net-start" they held the half second of sleep —
 * a TCP send that took 0.1 s was reported at a sixth of its rate).
 */
public final class NetDemo {
    /**
     * One measured phase: {@code value} in {@code unit}; {@code cpuNanos} -1 when /proc did not tell it.
     *
     * @param seconds the phase as the host saw it (the guest's "net-go" to its "net-end", each seen within the
     *     console's 50 ms polling)
     * @param guestSeconds the same by the guest's clock (/proc/uptime, 10 ms steps): a check of the host's window
     */
    public record Result(
            String path,
            String workload,
            double value,
            String unit,
            long packets,
            long bytes,
            long cpuNanos,
            double seconds,
            double guestSeconds) {
        public double cpuMicrosPerPacket() {
            return packets == 0 || cpuNanos < 0 ? Double.NaN : cpuNanos / 1000.0 / packets;
        }
    }

    static final String PV = "PV  virtio-net, iovirt (vhost-user)";
    static final String FV = "FV  e1000, emulated by QEMU (stream)";
    private static final long PEER_MAC = Mac.parse("52:54:00:1d:00:01");
    private static final long PV_MAC = Mac.parse("52:54:00:1d:00:02");
    private static final long FV_MAC = Mac.parse("52:54:00:1d:00:03");
    private static final int TCP_MIB = 16;

    private final Path workDir;
    private final Consumer<String> progress;
    private final Accelerator.Decision accel;

    public NetDemo(Path workDir, Consumer<String> progress) {
        this(workDir, progress, Accelerator.system());
    }

    public NetDemo(Path workDir, Consumer<String> progress, Accelerator.Decision accel) {
        this.accel = accel;
        this.workDir = workDir;
        this.progress = progress;
    }

    public List<Result> run() throws IOException {
        GuestImage image = GuestImage.ensure(line -> progress.accept("  " + line));
        Path peerSock = workDir.resolve("net-peer.sock");
        Path pvSock = workDir.resolve("net-pv.sock");
        Path fvSock = workDir.resolve("net-fv.sock");
        try (Switch sw = new Switch(Switch.Config.defaults())) {
            sw.addPort(new VirtioNetPort(VirtioNetPort.Options.defaults(peerSock, 1, PEER_MAC)));
            Port pvPort = sw.addPort(new VirtioNetPort(VirtioNetPort.Options.defaults(pvSock, 1, PV_MAC)));
            Port fvPort = sw.addPort(new StreamPort(fvSock));
            sw.startHousekeeping();
            progress.accept(
                    "booting a peer guest and the demo guest with an e1000 and a virtio-net NIC on one iovirt switch");
            Duration life = Duration.ofMinutes(6);
            try (RunningGuest peer = peerGuest(image, peerSock).start(life);
                    RunningGuest guest = nicGuest(image, pvSock, fvSock).start(life)) {
                peer.awaitConsole(Pattern.compile("peer-ready\\n"), Duration.ofSeconds(120));
                List<Result> results = new ArrayList<>();
                for (String nic : new String[] {"pv", "fv"}) {
                    Port port = nic.equals("pv") ? pvPort : fvPort;
                    String path = nic.equals("pv") ? PV : FV;
                    for (String phase : new String[] {"ping", "tcp"}) {
                        progress.accept("running "
                                + (phase.equals("ping") ? "ping (300 round trips)" : "a " + TCP_MIB + " MiB TCP send")
                                + " on " + path.substring(4));
                        guest.awaitConsole(
                                Pattern.compile("net-start " + nic + " " + phase + "\\n"), Duration.ofSeconds(180));
                        long p0 = port.stats().rxPackets() + port.stats().txPackets();
                        long b0 = port.stats().rxBytes();
                        MatchResult go = guest.awaitConsole(
                                Pattern.compile("net-go " + nic + " " + phase + " ([0-9.]+)\\n"),
                                Duration.ofSeconds(180));
                        long t0 = System.nanoTime();
                        OptionalLong c0 = cpu(guest, peer);
                        MatchResult end = guest.awaitConsole(
                                Pattern.compile("net-end " + nic + " " + phase + " ([0-9.]+)(.*)\\n"),
                                Duration.ofSeconds(180));
                        long t1 = System.nanoTime();
                        double seconds = (t1 - t0) / 1e9;
                        double guestSeconds = Double.parseDouble(end.group(1)) - Double.parseDouble(go.group(1));
                        long cpu = BackendProcess.elapsed(c0, cpu(guest, peer)).orElse(-1);
                        long packets = port.stats().rxPackets() + port.stats().txPackets() - p0;
                        long bytes = port.stats().rxBytes() - b0;
                        if (phase.equals("ping")) {
                            results.add(new Result(
                                    path,
                                    "ping RTT avg (min " + Math.round(minimumRttMicros(end.group(2))) + ")",
                                    averageRttMicros(end.group(2)),
                                    "us",
                                    packets,
                                    bytes,
                                    cpu,
                                    seconds,
                                    guestSeconds));
                        } else {
                            results.add(new Result(
                                    path,
                                    "TCP send " + TCP_MIB + " MiB",
                                    bytes / 1048576.0 / seconds,
                                    "MiB/s",
                                    packets,
                                    bytes,
                                    cpu,
                                    seconds,
                                    guestSeconds));
                        }
                    }
                }
                guest.awaitExit(Duration.ofSeconds(60));
                return results;
            }
        }
    }

    /** Both QEMUs' and this process's CPU time so far; unknown when any of them is. */
    private static OptionalLong cpu(RunningGuest guest, RunningGuest peer) {
        long sum = 0;
        for (long pid :
                new long[] {guest.pid(), peer.pid(), ProcessHandle.current().pid()}) {
            OptionalLong t = new BackendProcess(pid).cpuNanos();
            if (t.isEmpty()) {
                return OptionalLong.empty();
            }
            sum += t.getAsLong();
        }
        return OptionalLong.of(sum);
    }

    /** busybox ping -q: "round-trip min/avg/max = 0.372/0.532/2.104 ms". */
    static double averageRttMicros(String pingSummary) {
        return rtt(pingSummary, 2);
    }

    static double minimumRttMicros(String pingSummary) {
        return rtt(pingSummary, 1);
    }

    private static double rtt(String pingSummary, int field) {
        java.util.regex.Matcher m =
                Pattern.compile("= ([0-9.]+)/([0-9.]+)/([0-9.]+) ms").matcher(pingSummary);
        if (!m.find()) {
            throw new IllegalStateException("ping gave no round-trip summary: " + pingSummary.trim());
        }
        return Double.parseDouble(m.group(field)) * 1000;
    }

    private QemuGuest peerGuest(GuestImage image, Path sock) {
        String script = """
                printf '#!/bin/sh\\nexec cat > /dev/null\\n' > /sink.sh; chmod +x /sink.sh
                IF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
                ip addr add 10.77.1.1/24 dev $IF
                ip addr add 10.77.2.1/24 dev $IF
                ip link set $IF up
                arp -i $IF -s 10.77.1.2 %s
                arp -i $IF -s 10.77.2.2 %s
                arping -U -c 1 -I $IF 10.77.1.1 >/dev/null 2>&1
                nc -ll -p 5001 -e /sink.sh </dev/null >/dev/null 2>&1 &
                echo peer-ready
                sleep 100000
                """.formatted(Mac.toString(PV_MAC), Mac.toString(FV_MAC));
        return QemuGuest.builder(image)
                .name("demo-peer")
                .accelerator(accel)
                .notice(progress)
                .workDir(workDir)
                .memoryMiB(256)
                .modules("virtio_pci", "virtio_net")
                .args(
                        "-chardev",
                        "socket,id=c0,path=" + QemuGuest.escape(sock.toString()),
                        "-netdev",
                        "vhost-user,id=n0,chardev=c0",
                        "-device",
                        "virtio-net-pci,netdev=n0,mac=" + Mac.toString(PEER_MAC) + ",vectors=0,romfile=")
                .payload(script)
                .build();
    }

    private QemuGuest nicGuest(GuestImage image, Path pvSock, Path fvSock) {
        String script = """
                ifname() { for i in /sys/class/net/*; do [ "$(basename "$(readlink $i/device/driver)")" = "$1" ] && basename $i; done; }
                for i in $(seq 100); do PV=$(ifname virtio_net); FV=$(ifname e1000); [ -n "$PV" ] && [ -n "$FV" ] && break; sleep 0.1; done
                [ -n "$PV" ] && [ -n "$FV" ] || { echo "NICs missing: virtio '$PV' e1000 '$FV'"; exit 90; }
                ip addr add 10.77.1.2/24 dev $PV; ip link set $PV up
                ip addr add 10.77.2.2/24 dev $FV; ip link set $FV up
                arp -i $PV -s 10.77.1.1 %1$s
                arp -i $FV -s 10.77.2.1 %1$s
                for i in $(seq 100); do [ "$(cat /sys/class/net/$FV/operstate)" = up ] && break; sleep 0.1; done
                arping -U -c 1 -I $PV 10.77.1.2 >/dev/null 2>&1; arping -U -c 1 -I $FV 10.77.2.2 >/dev/null 2>&1
                for i in $(seq 60); do ping -c 1 -W 1 10.77.1.1 >/dev/null 2>&1 && ping -c 1 -W 1 10.77.2.1 >/dev/null 2>&1 && break; done
                for nic in pv fv; do
                  if [ $nic = pv ]; then peer=10.77.1.1; else peer=10.77.2.1; fi
                  echo "net-start $nic ping"; sleep 0.5  # the host samples its counters when it sees the marker
                  echo "net-go $nic ping $(cut -d' ' -f1 /proc/uptime)"
                  ping -A -q -c 300 $peer > /tmp/ping 2>&1
                  echo "net-end $nic ping $(cut -d' ' -f1 /proc/uptime) $(grep round-trip /tmp/ping)"
                  echo "net-start $nic tcp"; sleep 0.5
                  echo "net-go $nic tcp $(cut -d' ' -f1 /proc/uptime)"
                  dd if=/dev/zero bs=64k count=%2$d 2>/dev/null | nc $peer 5001
                  echo "net-end $nic tcp $(cut -d' ' -f1 /proc/uptime)"
                done
                """.formatted(Mac.toString(PEER_MAC), TCP_MIB * 16);
        return QemuGuest.builder(image)
                .name("demo-nics")
                .accelerator(accel)
                .notice(progress)
                .workDir(workDir)
                .memoryMiB(256)
                .modules("virtio_pci", "virtio_net", "e1000")
                .args(
                        "-chardev",
                        "socket,id=c0,path=" + QemuGuest.escape(pvSock.toString()),
                        "-netdev",
                        "vhost-user,id=pv0,chardev=c0",
                        "-device",
                        "virtio-net-pci,netdev=pv0,mac=" + Mac.toString(PV_MAC) + ",vectors=0,romfile=",
                        "-netdev",
                        "stream,id=fv0,server=off,addr.type=unix,addr.path=" + QemuGuest.escape(fvSock.toString()),
                        "-device",
                        "e1000,netdev=fv0,mac=" + Mac.toString(FV_MAC) + ",romfile=")
                .payload(script)
                .build();
    }

    public static void print(List<Result> results, PrintStream out) {
        out.println();
        out.println("NICs: one guest, an emulated e1000 and a virtio-net on one iovirt switch, the same peer guest");
        out.println("  (virtio-net with vectors=0: QEMU 7.2 under TCG crashes with MSI-X on vhost-user-net)");
        out.println();
        out.printf("%-38s %-24s %14s %10s %16s%n", "path", "workload", "result", "packets", "host CPU/packet");
        for (Result r : results) {
            out.printf(
                    "%-38s %-24s %8.1f %-5s %10d %13.1f us%n",
                    r.path(), r.workload(), r.value(), r.unit(), r.packets(), r.cpuMicrosPerPacket());
        }
        out.println();
        for (int i = 0; i < results.size() / 2; i++) {
            Result pv = results.get(i);
            Result fv = results.get(i + results.size() / 2);
            out.printf(
                    Locale.ROOT,
                    "  %-24s PV/FV: %s x%.2f, host CPU per packet x%.2f%n",
                    pv.workload(),
                    pv.unit().equals("us") ? "latency" : "throughput",
                    pv.value() / fv.value(),
                    pv.cpuMicrosPerPacket() / fv.cpuMicrosPerPacket());
        }
        out.println(
                "  host CPU/packet = (both QEMUs' + iovirt's CPU time during the phase) / packets through the NIC's port.");
    }

    /** Machine-readable form of the results (util.Json: strings escaped, an unknown number null). */
    public static String json(List<Result> results) {
        List<Object> out = new ArrayList<>();
        for (Result r : results) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("path", r.path());
            m.put("workload", r.workload());
            m.put("value", r.value());
            m.put("unit", r.unit());
            m.put("packets", r.packets());
            m.put("bytes", r.bytes());
            m.put("cpu_ns", r.cpuNanos() < 0 ? null : r.cpuNanos());
            m.put("cpu_us_per_packet", r.cpuMicrosPerPacket());
            m.put("seconds", r.seconds());
            m.put("guest_seconds", r.guestSeconds());
            out.add(m);
        }
        return Json.compact(out);
    }
}
