// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.net.PortStat;
import io.iovirt.net.PortStats;
import io.iovirt.net.Switch;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.virtio.VirtioFeatures;
import java.nio.file.Path;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * DPDK's virtio-user driver (a real third-party vhost-user frontend, no VM) against the switch: one testpmd sends
 * (txonly) into one port, another receives (rxonly) from a second port, and the packet counts of testpmd and of the
 * switch agree exactly — every frame testpmd sent is counted as received by the switch, every frame the switch
 * delivered is counted by the receiving testpmd, and the rest is counted as dropped (the receiver had no buffer).
 *
 * <p>Each testpmd busy-polls one CPU; on two CPUs the switch shares them, so rates here say nothing about speed.
 */
@Tag("guest")
@Timeout(300)
class DpdkVirtioUserTest {
    @TempDir
    Path dir;

    static void await(BooleanSupplier c, String what, long seconds) {
        Await.until(java.time.Duration.ofSeconds(seconds), what, c);
    }

    @ParameterizedTest(name = "{0} ring, {1} queue pair(s), {2}-byte frames, adaptive polling {3}")
    @CsvSource({"split, 1, 64, true", "packed, 1, 1500, false", "split, 2, 64, false"})
    void txonlyIntoOnePortRxonlyFromAnotherCountsAgree(String ring, int queues, int frameLen, boolean adaptive)
            throws Exception {
        Path bin = Testpmd.binary();
        Require.that(bin != null, "dpdk-testpmd is not available: run scripts/install-dpdk.sh as root");
        try (Switch sw = new Switch(Switch.Config.defaults())) {
            VirtioNetPort in = sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(
                    dir.resolve("in.sock"),
                    queues,
                    -1,
                    adaptive ? VirtioNetPort.Options.DEFAULT_ADAPTIVE_POLL_MICROS : 0,
                    adaptive)));
            VirtioNetPort out =
                    sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(dir.resolve("out.sock"), queues, -1, 0)));
            String opts = ",queues=" + queues + (ring.equals("packed") ? ",packed_vq=1" : "");
            String[] q = {"--rxq=" + queues, "--txq=" + queues};
            try (Testpmd rx = Testpmd.start(
                            bin,
                            dir,
                            "rx",
                            Testpmd.lcoresOnCpu(0),
                            "net_virtio_user0,path=" + out.options().socket() + opts,
                            "--forward-mode=rxonly",
                            "--no-flush-rx",
                            q[0],
                            q[1]);
                    Testpmd tx = Testpmd.start(
                            bin,
                            dir,
                            "tx",
                            Testpmd.lcoresOnCpu(1),
                            "net_virtio_user0,path=" + in.options().socket() + opts,
                            "--forward-mode=txonly",
                            "--txpkts=" + frameLen,
                            "--txonly-multi-flow",
                            q[0],
                            q[1])) {
                await(() -> in.isLinkUp() && out.isLinkUp(), "both testpmds attached", 60);
                for (VirtioNetPort p : new VirtioNetPort[] {in, out}) { // the in-order paths, as against DPDK's vhost
                    assertTrue(
                            VirtioFeatures.has(p.driverFeatures(), VirtioFeatures.VIRTIO_F_IN_ORDER),
                            "testpmd's virtio-user took VIRTIO_F_IN_ORDER: 0x" + Long.toHexString(p.driverFeatures()));
                }
                rx.command("start");
                tx.command("start");
                await(() -> out.stats().txPackets() > 20_000, "frames through the switch", 120);
                Testpmd.Stats sent = tx.stop();
                // the switch drains what testpmd put in the ring before it stopped
                await(
                        () -> in.stats().rxPackets() + in.stats().rxDropped() == sent.txPackets(),
                        "switch rx settles",
                        60);
                long forwarded = in.stats().rxPackets();
                await(() -> out.stats().txPackets() + out.stats().txDropped() == forwarded, "switch tx settles", 60);
                long delivered = out.stats().txPackets();
                await(
                        () -> {
                            try {
                                return rx.portStats()[0] == delivered;
                            } catch (Exception e) {
                                throw new AssertionError(e);
                            }
                        },
                        "testpmd rx to see every delivered frame",
                        60);
                rx.stop();
                long[] received = rx.portStats(); // the driver's own counters: every frame the device handed it

                PortStats si = in.stats();
                PortStats so = out.stats();
                assertEquals(sent.txPackets(), si.rxPackets(), "testpmd TX-packets = switch in-port rx_packets");
                assertEquals(sent.txPackets(), tx.portStats()[1], "testpmd's forward and port statistics agree");
                assertEquals(sent.txPackets() * frameLen, si.rxBytes());
                assertEquals(0, si.rxDropped(), si.toString());
                assertEquals(si.rxPackets(), si.get(PortStat.RX_FLOODED), "unknown destination: flooded to out");
                assertEquals(received[0], so.txPackets(), "switch out-port tx_packets = testpmd RX-packets");
                assertEquals(si.rxPackets(), so.txPackets() + so.get(PortStat.TX_DROPPED_NO_BUFFERS), so.toString());
                assertTrue(so.txPackets() > 20_000, so.toString());
                io.iovirt.virtio.QueueWorker.Totals t = in.txWorkerStats(0);
                assertTrue(
                        t.batches() > 0 && t.batches() <= sent.txPackets() + t.sleeps() + t.spinHits() + 1,
                        t.toString());
                if (!adaptive) {
                    assertEquals(0, t.spinHits(), "poll-us 0 never polls: " + t);
                }
            }
        }
    }
}
