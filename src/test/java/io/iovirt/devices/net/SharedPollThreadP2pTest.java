// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.MemFd;
import io.iovirt.net.Mac;
import io.iovirt.net.Switch;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.vhostuser.LogCapture;
import io.iovirt.virtio.WorkerGroup;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Port to port through ONE shared poll thread ({@code serve net --poll-threads 1}) with DPDK's virtio-user driver as
 * the frontend, as scripts/bench-net.sh --topology p2p runs it: one testpmd with two ports A and B in io forward mode
 * circulates frames A -> switch -> B -> testpmd -> A..., and the transmit queues of both switch ports are served by
 * the same thread. Frames are counted at both ends (testpmd's port counters and the switch's). A third port on the
 * same thread whose frontend breaks its ring, truncates its memory or disconnects mid-traffic fails or leaves alone,
 * and A <-> B keep forwarding; a testpmd that reconnects is served again.
 *
 * <p>testpmd busy-polls CPU 1 and the machine has two: rates here say nothing about speed.
 */
@Tag("guest")
@Timeout(600)
class SharedPollThreadP2pTest {
    static final String MAC_A = "02:00:00:00:00:0a";
    static final String MAC_B = "02:00:00:00:00:0b";
    static final long C = Mac.parse("52:54:00:00:00:0c");
    static final Duration WAIT = Duration.ofSeconds(120);

    @TempDir
    Path dir;

    static void await(String what, BooleanSupplier c) {
        Await.until(WAIT, what, c);
    }

    private Testpmd p2p(Path bin, String name, VirtioNetPort a, VirtioNetPort b) throws Exception {
        return Testpmd.start(
                bin,
                dir,
                name,
                Testpmd.lcoresOnCpu(1),
                List.of(
                        "net_virtio_user0,path=" + a.options().socket() + ",mac=" + MAC_A,
                        "net_virtio_user1,path=" + b.options().socket() + ",mac=" + MAC_B),
                "--forward-mode=io",
                "--eth-peer=0," + MAC_B,
                "--eth-peer=1," + MAC_A,
                "--txpkts=64");
    }

    /** testpmd received at least {@code n} more frames on both ports than {@code before}; returns the counts. */
    private static long[] bothPortsReceive(Testpmd t, long[] before, long n) throws Exception {
        long[] now = new long[2];
        long deadline = System.nanoTime() + WAIT.toNanos();
        while (true) {
            now[0] = t.portStats(0)[0];
            now[1] = t.portStats(1)[0];
            if (now[0] - before[0] >= n && now[1] - before[1] >= n) {
                return now;
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError("testpmd received " + (now[0] - before[0]) + " and " + (now[1] - before[1])
                        + " frames on ports 0 and 1, wanted " + n + " on each");
            }
            Thread.sleep(200);
        }
    }

    @Test
    void bothDirectionsThroughOneSharedThreadAndAReconnectingFrontendIsServedAgain() throws Exception {
        Path bin = Testpmd.binary();
        Require.that(bin != null, "dpdk-testpmd is not available: run scripts/install-dpdk.sh as root");
        try (WorkerGroup group = WorkerGroup.create("test poll", 1);
                Switch sw = new Switch(Switch.Config.defaults())) {
            VirtioNetPort a =
                    sw.addPort(new VirtioNetPort(VirtioNetPort.Options.of(dir.resolve("a.sock"))).workers(group));
            VirtioNetPort b =
                    sw.addPort(new VirtioNetPort(VirtioNetPort.Options.of(dir.resolve("b.sock"))).workers(group));
            long deliveredA = 0;
            long deliveredB = 0;
            for (int connection = 1; connection <= 2; connection++) {
                try (Testpmd t = p2p(bin, "p2p" + connection, a, b)) {
                    await("both ports attached", () -> a.isLinkUp() && b.isLinkUp() && group.queues(0) == 2);
                    t.command("start tx_first 8");
                    long[] rx = bothPortsReceive(t, new long[2], 20_000);
                    // read after testpmd's counters: the switch delivered at least what testpmd has received
                    long toA = a.stats().txPackets() - deliveredA;
                    long toB = b.stats().txPackets() - deliveredB;
                    assertTrue(
                            toA >= rx[0] && toB >= rx[1],
                            "switch delivered " + toA + "/" + toB + ", testpmd received " + rx[0] + "/" + rx[1]);
                    assertEquals(0, a.stats().rxDropped() + b.stats().rxDropped(), a.stats() + " " + b.stats());
                    assertEquals(2, group.queues(0), "both transmit queues on the one shared thread");
                    t.command("stop");
                }
                // testpmd quit: the frontend is gone, its queues left the shared thread
                await("both frontends disconnected", () -> !a.connected() && !b.connected() && group.queues(0) == 0);
                deliveredA = a.stats().txPackets();
                deliveredB = b.stats().txPackets();
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"bad-descriptor", "truncated-memory", "disconnect"})
    void aThirdPortFailingOnTheSameThreadDoesNotStopTheOthers(String attack) throws Exception {
        Path bin = Testpmd.binary();
        Require.that(bin != null, "dpdk-testpmd is not available: run scripts/install-dpdk.sh as root");
        try (LogCapture log = LogCapture.start("io.iovirt");
                WorkerGroup group = WorkerGroup.create("test poll", 1);
                Switch sw = new Switch(Switch.Config.defaults())) {
            VirtioNetPort a =
                    sw.addPort(new VirtioNetPort(VirtioNetPort.Options.of(dir.resolve("a.sock"))).workers(group));
            VirtioNetPort b =
                    sw.addPort(new VirtioNetPort(VirtioNetPort.Options.of(dir.resolve("b.sock"))).workers(group));
            VirtioNetPort pc =
                    sw.addPort(new VirtioNetPort(VirtioNetPort.Options.of(dir.resolve("c.sock"))).workers(group));
            try (Testpmd t = p2p(bin, "p2p", a, b)) {
                NetDriver c = new NetDriver(pc.options().socket(), HostileNetFrontendTest.BASE, 1, false);
                try {
                    await(
                            "three ports on the shared thread",
                            () -> a.isLinkUp() && b.isLinkUp() && pc.isLinkUp() && group.queues(0) == 3);
                    t.command("start tx_first 8");
                    long[] rx = bothPortsReceive(t, new long[2], 10_000);
                    c.postRx(0, 2048, 64);
                    c.send(0, VirtioNetPortTest.frame(Mac.parse(MAC_B), C, 60)); // to B, served by the same thread
                    c.awaitTxUsed(0, 1);
                    assertEquals(1, pc.stats().rxPackets());
                    switch (attack) {
                        case "bad-descriptor" -> {
                            c.sendRawAt(0, 1L << 40, 100); // a buffer far outside its memory
                            String line = log.awaitLine("queue stopped until the driver resets the device");
                            assertTrue(line.contains(pc.name() + " tx1"), line);
                        }
                        case "truncated-memory" -> {
                            MemFd.truncate(c.ram.fd(), 0); // the rings are gone: reading them faults (SIGBUS)
                            c.kickQueue(1);
                            String line = log.awaitLine("guest memory access faulted");
                            assertTrue(line.contains(pc.name() + " tx1"), line);
                        }
                        default -> {
                            for (int i = 0; i < 100; i++) { // mid-traffic: requests still in the ring
                                c.send(0, VirtioNetPortTest.frame(Mac.parse(MAC_B), C, 60 + i));
                            }
                            c.close();
                            c = null;
                            await("C disconnected", () -> !pc.connected());
                        }
                    }
                    await("C's transmit queue left the shared thread", () -> group.queues(0) == 2);
                    // the same thread still forwards A <-> B
                    bothPortsReceive(t, rx, 10_000);
                    if (attack.equals("disconnect")) { // and serves C again when it comes back
                        try (NetDriver again = new NetDriver(pc.options().socket(), HostileNetFrontendTest.BASE, 1)) {
                            await("C back on the shared thread", () -> pc.isLinkUp() && group.queues(0) == 3);
                            long before = pc.stats().rxPackets();
                            again.send(0, VirtioNetPortTest.frame(Mac.parse(MAC_B), C, 60));
                            again.awaitTxUsed(0, 1);
                            assertEquals(before + 1, pc.stats().rxPackets());
                            bothPortsReceive(t, new long[] {t.portStats(0)[0], t.portStats(1)[0]}, 10_000);
                        }
                    }
                    t.command("stop");
                } finally {
                    if (c != null) {
                        c.close();
                    }
                }
            }
        }
    }
}
