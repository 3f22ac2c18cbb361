// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.net.Mac;
import io.iovirt.net.Port;
import io.iovirt.net.Switch;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.Qmp;
import io.iovirt.vm.RunningGuest;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Live migration of a virtio-net guest on iovirt's switch (issue 11), with real peers: a guest pings a peer guest
 * through the switch while QEMU migrates it from a vhost-user port to another port of the same switch (QEMU 7.2
 * source and destination, {@code -incoming}, QMP). The ping resumes on the destination with a bounded number of
 * lost packets, the switch has relearnt the guest's MAC at the new port (the destination announces it with a RARP),
 * and the peer's own pings reach the guest there.
 */
@Tag("guest")
class NetMigrationGuestTest {
    static final Duration TIMEOUT = Duration.ofSeconds(180);
    static final long MAC_M = Mac.parse("52:54:00:00:00:01");
    static final long MAC_P = Mac.parse("52:54:00:00:00:02");
    private static final Pattern REPLY = Pattern.compile("64 bytes from 10\\.0\\.0\\.2: seq=(\\d+)");

    @TempDir
    Path dir;

    @Test
    void pingResumesAfterMigratingToAnotherSwitchPort() throws Exception {
        GuestImage image = GuestImage.ensure();
        List<AutoCloseable> open = new ArrayList<>();
        try (Switch sw = new Switch(Switch.Config.defaults()).startHousekeeping()) {
            Path sockP = dir.resolve("p.sock");
            Path sockA = dir.resolve("a.sock");
            Path sockB = dir.resolve("b.sock");
            Port portP = sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(sockP, 1, -1, 0)));
            Port portA = sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(sockA, 1, -1, 0)));
            Port portB = sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(sockB, 1, -1, 0)));

            // The peer answers, and pings the guest itself from the moment the test says so (a file on 9p would
            // be simpler, but the peer only needs to start once: it pings for the whole test).
            RunningGuest peer = guest("peer", image, sockP, MAC_P, "10.0.0.2", MAC_M, "10.0.0.1", null, """
                    echo "iovirt-test: peer up"
                    ping -i 0.2 10.0.0.1 > /dev/null 2>&1 &
                    sleep 3600
                    """)
                    .build()
                    .start(TIMEOUT.multipliedBy(4));
            open.add(peer);
            String body = """
                    echo "iovirt-test: up"
                    ping -i 0.1 -W 1 10.0.0.2
                    """;
            Path qmpSrc = dir.resolve("src.qmp");
            Path qmpDst = dir.resolve("dst.qmp");
            RunningGuest src = guest("m-src", image, sockA, MAC_M, "10.0.0.1", MAC_P, "10.0.0.2", qmpSrc, body)
                    .build()
                    .start(TIMEOUT.multipliedBy(4));
            open.add(src);
            peer.awaitConsole(Pattern.compile("iovirt-test: peer up"), TIMEOUT);
            // The guest pings from boot; the peer may answer only later: count from its first reply.
            int firstReply = Integer.parseInt(src.awaitConsole(REPLY, TIMEOUT).group(1));
            src.awaitConsole(Pattern.compile("seq=" + (firstReply + 20) + " "), TIMEOUT);
            SwitchGuestTest.awaitCondition(
                    () -> sw.macTable().lookup(MAC_M, sw.now()) == portA.index(),
                    "the switch learnt the guest at its first port");

            RunningGuest dst = guest("m-dst", image, sockB, MAC_M, "10.0.0.1", MAC_P, "10.0.0.2", qmpDst, body)
                    .incoming("unix:" + dir.resolve("mig.sock"), src)
                    .build()
                    .start(TIMEOUT.multipliedBy(4));
            open.add(dst);
            Map<String, Object> done;
            long portBRxBefore = portB.stats().rxPackets();
            try (Qmp qs = Qmp.connect(qmpSrc, Duration.ofSeconds(30));
                    Qmp qd = Qmp.connect(qmpDst, Duration.ofSeconds(30))) {
                Map<String, Object> params = new LinkedHashMap<>();
                params.put("max-bandwidth", 4L << 30);
                params.put("downtime-limit", 1000L);
                qs.execute("migrate-set-parameters", params);
                qs.execute("migrate", Map.of("uri", "unix:" + dir.resolve("mig.sock")));
                done = awaitCompleted(qs);
                qd.awaitRunning(TIMEOUT); // the source reports "completed" a moment before the destination resumes
            }
            int lastOnSource = lastSeq(src.console());
            // 50 more replies on the destination
            dst.awaitConsole(Pattern.compile("seq=" + (lastOnSource + 50) + " "), TIMEOUT);
            SwitchGuestTest.awaitCondition(
                    () -> sw.macTable().lookup(MAC_M, sw.now()) == portB.index(),
                    "the switch relearnt the guest at its new port");
            long fromPeerAtB = portB.stats().txPackets();
            assertTrue(portB.stats().rxPackets() > portBRxBefore, "the guest sends through its new port");
            assertTrue(fromPeerAtB > 0, "the peer's pings reach the guest at its new port: " + portB.stats());

            String all = src.console() + dst.console();
            Matcher m = REPLY.matcher(all);
            java.util.BitSet seen = new java.util.BitSet();
            int max = 0;
            while (m.find()) {
                int s = Integer.parseInt(m.group(1));
                seen.set(s);
                max = Math.max(max, s);
            }
            int lost = (max - firstReply + 1) - seen.get(firstReply, max + 1).cardinality();
            System.out.printf(
                    "net migration: total %s ms, downtime %s ms; ping seq %d..%d, %d lost (100 ms interval); "
                            + "port %d -> %d; announcements at the new port: %s%n",
                    done.get("total-time"),
                    done.get("downtime"),
                    firstReply,
                    max,
                    lost,
                    portA.index(),
                    portB.index(),
                    ((VirtioNetPort) portB).announcements());
            assertTrue(lost <= 100, "more than 10 s of pings lost across the migration: " + lost + "\n" + all);
            assertTrue(((VirtioNetPort) portB).announcements() > 0, "the new port never announced the guest");
        } finally {
            for (AutoCloseable c : open) {
                c.close();
            }
        }
    }

    private static int lastSeq(String console) {
        Matcher m = REPLY.matcher(console);
        int last = 0;
        while (m.find()) {
            last = Integer.parseInt(m.group(1));
        }
        return last;
    }

    private static Map<String, Object> awaitCompleted(Qmp qmp) throws Exception {
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        for (; ; ) {
            Map<String, Object> info = qmp.query("query-migrate");
            if ("completed".equals(info.get("status"))) {
                return info;
            }
            if ("failed".equals(info.get("status")) || System.nanoTime() > deadline) {
                throw new AssertionError("migration did not complete: " + info);
            }
            Thread.sleep(100);
        }
    }

    /** A virtio-net guest (INTx: vectors=0, see NetGuest) with a static ARP entry for its peer. */
    private QemuGuest.Builder guest(
            String name,
            GuestImage image,
            Path socket,
            long mac,
            String ip,
            long peerMac,
            String peerIp,
            Path qmp,
            String body) {
        List<String> args = new ArrayList<>(List.of(
                "-chardev", "socket,id=c0,path=" + QemuGuest.escape(socket.toString()),
                "-netdev", "vhost-user,id=n0,chardev=c0",
                "-device", "virtio-net-pci,netdev=n0,mac=" + Mac.toString(mac) + ",vectors=0,romfile="));
        if (qmp != null) {
            args.addAll(List.of("-qmp", "unix:" + QemuGuest.escape(qmp.toString()) + ",server=on,wait=off"));
        }
        return QemuGuest.builder(image)
                .name("net-migration/" + name)
                .workDir(dir)
                .memoryMiB(256)
                .modules("virtio_pci", "virtio_net")
                .args(args)
                .payload("""
                        for i in $(seq 200); do IF=$(ls /sys/class/net | grep -v '^lo$' | head -1); [ -n "$IF" ] && break; sleep 0.1; done
                        [ -n "$IF" ] || { echo "no network interface"; exit 90; }
                        echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
                        ip addr add %s/24 dev $IF
                        arp -i $IF -s %s %s
                        ip link set $IF up
                        for i in $(seq 200); do [ "$(cat /sys/class/net/$IF/operstate)" = up ] && break; sleep 0.1; done
                        arping -U -c 1 -I $IF %s >/dev/null 2>&1 || true
                        %s
                        """.formatted(ip, peerIp, Mac.toString(peerMac), ip, body));
    }
}
