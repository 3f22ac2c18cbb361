// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import io.iovirt.net.Mac;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.RunningGuest;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.MatchResult;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * One test guest on the switch with one NIC, driven in phases: the guest prints {@code NET <word> ...} lines on its
 * console and, between phases, waits for a line from the test on a second serial port (/dev/ttyS1, a UNIX socket
 * on this side). That way the test decides when every guest is ready, when traffic starts, and when each guest
 * reads its interface counters — after all traffic has stopped, so they can be compared with the switch's.
 *
 * <p>Guests do not talk spontaneously: IPv6 is disabled (no router/neighbour solicitations), the peers' addresses
 * are static ARP entries (no ARP requests), and each guest announces itself once with a gratuitous ARP so the
 * switch learns every address before the first unicast frame (no flooding of unknown unicast, which an emulated
 * NIC would filter silently and count nowhere) — only once every guest's interface is up ({@code UP}), since an
 * e1000 that is not yet programmed drops frames without counting them.
 */
final class NetGuest implements AutoCloseable {
    /** How the NIC reaches the switch. */
    enum Nic {
        /** virtio-net over vhost-user. {@code vectors=0}: QEMU 7.2 under TCG segfaults in vhost_net_start with MSI-X. */
        VIRTIO,
        /** The same with the packed virtqueue layout ({@code packed=on}). */
        VIRTIO_PACKED,
        /** QEMU's emulated Intel e1000 on a {@code -netdev stream} socket. */
        E1000
    }

    record Peer(String ip, long mac) {}

    final String name;
    final String ip;
    final long mac;
    final Nic nic;
    private final RunningGuest guest;
    private final Path control;
    private SocketChannel ctl;

    private NetGuest(String name, String ip, long mac, Nic nic, RunningGuest guest, Path control) {
        this.name = name;
        this.ip = ip;
        this.mac = mac;
        this.nic = nic;
        this.guest = guest;
        this.control = control;
    }

    /**
     * Boots a guest whose NIC connects to {@code socket} and whose payload is {@code body} (a shell fragment run
     * after the interface is configured, with {@code $IF}, {@code $IP}, and the functions {@code say WORD...} and
     * {@code ask} (wait for the test's next line)).
     */
    static NetGuest start(
            GuestImage image,
            Path dir,
            String name,
            String ip,
            long mac,
            Nic nic,
            Path socket,
            List<Peer> peers,
            String body,
            Duration lifetime)
            throws IOException {
        return start(image, dir, name, ip, mac, nic, 1, socket, peers, body, lifetime);
    }

    /** As above, with {@code queuePairs} virtio-net queue pairs (MQ) and as many vCPUs. */
    static NetGuest start(
            GuestImage image,
            Path dir,
            String name,
            String ip,
            long mac,
            Nic nic,
            int queuePairs,
            Path socket,
            List<Peer> peers,
            String body,
            Duration lifetime)
            throws IOException {
        return start(image, dir, name, ip, mac, nic, queuePairs, socket, peers, body, lifetime, List.of(), List.of());
    }

    /** As above, with more QEMU arguments and guest modules (e.g. a vhost-user-blk disk and virtio_blk). */
    static NetGuest start(
            GuestImage image,
            Path dir,
            String name,
            String ip,
            long mac,
            Nic nic,
            int queuePairs,
            Path socket,
            List<Peer> peers,
            String body,
            Duration lifetime,
            List<String> extraArgs,
            List<String> extraModules)
            throws IOException {
        Path control = dir.resolve(name + "-ctl.sock");
        List<String> args = new ArrayList<>(List.of(
                "-chardev",
                "socket,id=ctl,server=on,wait=off,path=" + QemuGuest.escape(control.toString()),
                "-serial",
                "chardev:ctl"));
        String macText = Mac.toString(mac);
        if (nic != Nic.E1000) {
            args.addAll(List.of(
                    "-chardev",
                    "socket,id=c0,path=" + QemuGuest.escape(socket.toString()),
                    "-netdev",
                    "vhost-user,id=n0,chardev=c0" + (queuePairs > 1 ? ",queues=" + queuePairs : ""),
                    "-device",
                    "virtio-net-pci,netdev=n0,mac=" + macText + ",vectors=0,romfile="
                            + (nic == Nic.VIRTIO_PACKED ? ",packed=on" : "") + (queuePairs > 1 ? ",mq=on" : "")));
        } else {
            args.addAll(List.of(
                    "-netdev",
                    "stream,id=n0,server=off,addr.type=unix,addr.path=" + QemuGuest.escape(socket.toString()),
                    "-device",
                    "e1000,netdev=n0,mac=" + macText + ",romfile="));
        }
        StringBuilder arp = new StringBuilder();
        for (Peer p : peers) {
            arp.append("arp -i $IF -s ")
                    .append(p.ip())
                    .append(' ')
                    .append(Mac.toString(p.mac()))
                    .append('\n');
        }
        String script = """
                set -e
                say() { echo "NET $*"; }
                ask() { read -r line <&3; }
                IP=%s
                for i in $(seq 200); do IF=$(ls /sys/class/net | grep -v '^lo$' | head -1); [ -n "$IF" ] && break; sleep 0.1; done
                [ -n "$IF" ] || { echo "no network interface"; exit 90; }
                echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
                echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
                exec 3</dev/ttyS1
                stty -F /dev/ttyS1 raw -echo
                ip addr add $IP/24 dev $IF
                %s
                ip link set $IF up
                for i in $(seq 200); do [ "$(cat /sys/class/net/$IF/operstate)" = up ] && break; sleep 0.1; done
                [ -f /sys/class/net/$IF/device/features ] && say FEATURES $(cat /sys/class/net/$IF/device/features)
                say UP
                ask
                arping -U -c 1 -I $IF $IP >/dev/null 2>&1 || true
                stats() { d=/sys/class/net/$IF/statistics; echo "$(cat $d/tx_packets) $(cat $d/tx_bytes) $(cat $d/rx_packets) $(cat $d/rx_bytes) $(cat $d/rx_dropped) $(cat $d/tx_dropped) $(cat $d/rx_missed_errors) $(cat $d/rx_errors) $(cat $d/rx_length_errors) $(cat $d/rx_over_errors)"; }
                say READY
                ask
                %s
                ask
                [ -d /sys/module/e1000 ] && sleep 3 # e1000 folds its hardware drop counter (MPC) in every 2 s
                say STATS $(stats)
                """.formatted(ip, arp, body);
        QemuGuest.Builder b = QemuGuest.builder(image)
                .name(name)
                .workDir(dir)
                .memoryMiB(256)
                .cpus(queuePairs)
                .modules(java.util.stream.Stream.concat(
                                Stream.of(
                                        nic != Nic.E1000
                                                ? new String[] {"virtio_pci", "virtio_net"}
                                                : new String[] {"e1000"}),
                                extraModules.stream())
                        .toArray(String[]::new))
                .args(args)
                .args(extraArgs);
        String setup = "";
        if (nic == Nic.E1000) {
            // QEMU 7.2's e1000 ends a TSO send whose payload is a multiple of the MSS with an extra header-only
            // segment the guest driver never counts; without TSO every frame on the wire is one the guest counted.
            // A 4096-entry receive ring (the e1000 maximum) holds a whole test transfer, so the NIC never runs out
            // of buffers: QEMU 7.2 does not clear the e1000's missed-packets register on read, and the driver adds
            // it up every 2 s, so a single overrun would show up as a growing rx_missed_errors.
            addHostProgram(b, Path.of("/usr/sbin/ethtool"));
            setup = "E=\"/opt/host/ld.so --library-path /opt/host/lib /opt/host/ethtool\"\n"
                    + "$E -K $IF tso off\n$E -G $IF rx 4096\n";
        }
        QemuGuest g = b.payload(script.replace("ip link set $IF up\n", setup + "ip link set $IF up\n"))
                .build();
        RunningGuest running = g.start(lifetime);
        return new NetGuest(name, ip, mac, nic, running, control);
    }

    /**
     * Copies a host program and the shared libraries it loads into the guest under /opt/host (run it as
     * {@code /opt/host/ld.so --library-path /opt/host/lib /opt/host/NAME}).
     */
    static void addHostProgram(QemuGuest.Builder b, Path program) throws IOException {
        if (!Files.isExecutable(program)) {
            throw new IOException(program + " is not installed (scripts/install-deps.sh installs it)");
        }
        b.file("/opt/host/" + program.getFileName(), Files.readAllBytes(program), 0755);
        Process p = new ProcessBuilder("ldd", program.toString())
                .redirectErrorStream(true)
                .start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        for (String line : out.split("\n")) {
            String[] w = line.trim().split("\\s+");
            if (w.length >= 3 && w[1].equals("=>") && w[2].startsWith("/")) {
                b.file("/opt/host/lib/" + w[0], Path.of(w[2]).toRealPath());
            } else if (w.length >= 1 && w[0].startsWith("/") && w[0].contains("ld-linux")) {
                b.file("/opt/host/ld.so", Files.readAllBytes(Path.of(w[0]).toRealPath()), 0755);
            }
        }
    }

    /** Waits for {@code NET word ...} on the console and returns the words after it. */
    String[] await(String word, Duration timeout) {
        MatchResult m = guest.awaitConsole(Pattern.compile("(?m)^NET " + word + "(.*)$"), timeout);
        String rest = m.group(1).trim();
        return rest.isEmpty() ? new String[0] : rest.split("\\s+");
    }

    /** Sends the guest the line it waits for in {@code ask}. */
    void proceed() throws IOException, InterruptedException {
        connectControl();
        ByteBuffer b = ByteBuffer.wrap("go\n".getBytes(StandardCharsets.US_ASCII));
        while (b.hasRemaining()) {
            ctl.write(b);
        }
    }

    /** Connects the control channel (QEMU listens on it from its start). */
    void connectControl() throws IOException, InterruptedException {
        long deadline = System.nanoTime() + 30_000_000_000L;
        while (ctl == null) {
            try {
                SocketChannel c = SocketChannel.open(StandardProtocolFamily.UNIX);
                try {
                    c.connect(UnixDomainSocketAddress.of(control));
                    ctl = c;
                } catch (IOException e) {
                    c.close();
                    if (!guest.isAlive() || System.nanoTime() > deadline) {
                        throw new IOException(
                                name + ": cannot connect to the guest's control port " + control + " ("
                                        + e + "); QEMU " + (guest.isAlive() ? "runs" : "exited") + ", see "
                                        + guest.directory().resolve("qemu.log") + ":\n" + qemuLog() + "\n"
                                        + guest.crashReport(),
                                e);
                    }
                    Thread.sleep(20);
                }
            } catch (IOException e) {
                throw e;
            }
        }
    }

    private String qemuLog() {
        try {
            return Files.readString(guest.directory().resolve("qemu.log"));
        } catch (IOException e) {
            return "(no log: " + e.getMessage() + ")";
        }
    }

    String console() {
        return guest.console();
    }

    /** The guest's interface counters as it printed them (/sys/class/net/IF/statistics). */
    record Counters(
            long txPackets,
            long txBytes,
            long rxPackets,
            long rxBytes,
            long rxDropped,
            long txDropped,
            long rxMissed,
            long rxErrors,
            long rxLengthErrors,
            long rxOverErrors) {
        static Counters parse(String[] w) {
            long[] v = new long[10];
            for (int i = 0; i < v.length; i++) {
                v[i] = Long.parseLong(w[i]);
            }
            return new Counters(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]);
        }
    }

    @Override
    public void close() throws IOException {
        try {
            if (ctl != null) {
                ctl.close();
            }
        } finally {
            guest.close();
        }
    }
}
