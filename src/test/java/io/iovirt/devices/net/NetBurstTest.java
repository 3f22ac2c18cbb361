// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.net.Mac;
import io.iovirt.net.PortStat;
import io.iovirt.net.Switch;
import io.iovirt.virtio.VirtioFeatures;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The transmit queue's burst path ({@link NetTxQueue#BURST} small frames forwarded together, each destination's share
 * delivered under one lock acquisition) against real vhost-user frontends: a driver queues many frames and kicks once,
 * so they reach the device as one batch. Each destination gets its frames in the order they were sent, whatever the
 * mix of destinations, sizes (a frame larger than a burst slot goes on its own, after the frames before it) and
 * flooding in the batch; a destination without enough buffers drops the rest of its share, counted, and goes on.
 * (A destination whose memory ends mid-burst: {@link HostileNetFrontendTest}.)
 */
@Timeout(120)
class NetBurstTest {
    static final long A = HostileNetFrontendTest.A;
    static final long B = HostileNetFrontendTest.B;
    static final long C = HostileNetFrontendTest.C;
    static final long BASE = VirtioFeatures.VIRTIO_F_VERSION_1
            | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
            | VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC
            | VirtioNet.F_MRG_RXBUF;

    @TempDir
    Path dir;

    Switch sw;
    VirtioNetPort pa;
    VirtioNetPort pb;
    VirtioNetPort pc;

    @BeforeEach
    void start() throws IOException {
        sw = new Switch(Switch.Config.defaults().withMtu(9000)); // frames larger than a burst slot are allowed
        pa = sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(dir.resolve("a.sock"), 1, -1, 0)));
        pb = sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(dir.resolve("b.sock"), 1, -1, 0)));
        pc = sw.addPort(new VirtioNetPort(new VirtioNetPort.Options(dir.resolve("c.sock"), 1, -1, 0)));
    }

    @AfterEach
    void stop() {
        sw.close();
    }

    /** A frame whose first payload bytes carry its number. */
    static byte[] numbered(long dst, long src, int len, int seq) {
        byte[] f = VirtioNetPortTest.frame(dst, src, len);
        f[14] = (byte) seq;
        f[15] = (byte) (seq >> 8);
        return f;
    }

    /** Each port's address is learned; what the learning frames flooded is drained. */
    private static void learn(NetDriver a, NetDriver b, NetDriver c) throws Exception {
        a.send(0, VirtioNetPortTest.frame(B, A, 60));
        b.send(0, VirtioNetPortTest.frame(C, B, 60));
        c.send(0, VirtioNetPortTest.frame(B, C, 60));
        for (NetDriver d : List.of(a, b, c)) {
            d.awaitTxDone(0); // forwarded: in every ring it went to before the drains look
        }
        a.drainRx(0);
        b.drainRx(0);
        c.drainRx(0);
    }

    private static void receiveInOrder(NetDriver d, List<byte[]> expected, String who) throws Exception {
        for (int i = 0; i < expected.size(); i++) {
            assertArrayEquals(expected.get(i), d.receive(0), who + ": frame " + i + " of " + expected.size());
        }
        assertNull(d.pollRx(0, Duration.ofMillis(300)), who + ": no frame beyond the expected ones");
    }

    @Test
    void eachDestinationGetsItsFramesInOrderAcrossMixedDestinationsSizesAndFloods() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            VirtioNetPortTest.await(() -> pa.isLinkUp() && pb.isLinkUp() && pc.isLinkUp(), "links up");
            a.postRx(0, 2048, 16);
            b.postRx(0, 2048, 128);
            c.postRx(0, 2048, 128);
            learn(a, b, c);
            long bBefore = pb.stats().get(PortStat.TX_PACKETS);
            long cBefore = pc.stats().get(PortStat.TX_PACKETS);
            // 48 frames in one batch (more than one burst), to B and C interleaved, sizes growing; in the middle a
            // jumbo frame to B (larger than a burst slot: the frames before it must arrive before it) and a
            // broadcast (flooded to both, between the frames around it).
            List<byte[]> toB = new ArrayList<>();
            List<byte[]> toC = new ArrayList<>();
            int n = 48;
            for (int i = 0; i < n; i++) {
                byte[] f;
                if (i == 20) {
                    f = numbered(B, A, 4000, i);
                    toB.add(f);
                } else if (i == 30) {
                    f = numbered(Mac.BROADCAST, A, 64, i);
                    toB.add(f);
                    toC.add(f);
                } else if (i % 3 == 0) {
                    f = numbered(C, A, 60 + i, i);
                    toC.add(f);
                } else {
                    f = numbered(B, A, 60 + 10 * i, i);
                    toB.add(f);
                }
                a.queue(0, f);
            }
            a.kickTx(0);
            a.awaitTxUsed(0, n);
            receiveInOrder(b, toB, "B");
            receiveInOrder(c, toC, "C");
            assertEquals(toB.size(), pb.stats().get(PortStat.TX_PACKETS) - bBefore, "frames counted as sent to B");
            assertEquals(toC.size(), pc.stats().get(PortStat.TX_PACKETS) - cBefore, "frames counted as sent to C");
            assertEquals(0, pa.stats().get(PortStat.RX_DROPPED_OVERSIZE));
        }
    }

    @Test
    void aDestinationWithFewerBuffersThanFramesDropsTheRestCountedAndDoesNotStall() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            VirtioNetPortTest.await(() -> pa.isLinkUp() && pb.isLinkUp() && pc.isLinkUp(), "links up");
            b.postRx(0, 2048, 128);
            learn(a, b, c); // C has no buffers yet: what was flooded to it is dropped
            long dropsBefore = pc.stats().get(PortStat.TX_DROPPED_NO_BUFFERS);
            c.postRx(0, 2048, 5);
            List<byte[]> sent = new ArrayList<>();
            for (int i = 0; i < 20; i++) {
                byte[] f = numbered(C, B, 60 + i, i);
                sent.add(f);
                b.queue(0, f);
            }
            b.kickTx(0);
            b.awaitTxUsed(0, 20);
            receiveInOrder(c, sent.subList(0, 5), "C"); // the first five filled its five buffers
            VirtioNetPortTest.await(
                    () -> pc.stats().get(PortStat.TX_DROPPED_NO_BUFFERS) - dropsBefore == 15,
                    "15 frames counted as dropped for want of buffers");
            // C posts buffers again: frames flow at once, nothing is stuck behind the drops
            c.postRx(0, 2048, 16);
            List<byte[]> more = new ArrayList<>();
            for (int i = 0; i < 8; i++) {
                byte[] f = numbered(C, B, 100 + i, 100 + i);
                more.add(f);
                b.queue(0, f);
            }
            b.kickTx(0);
            b.awaitTxUsed(0, 8);
            receiveInOrder(c, more, "C after reposting");
            assertTrue(pc.isLinkUp(), "C's queue did not fail");
            assertEquals(15, pc.stats().get(PortStat.TX_DROPPED_NO_BUFFERS) - dropsBefore);
        }
    }

    /**
     * A receive queue takes the chains for a burst ahead, one per frame, and pops more on its own when frames spread
     * over several merge buffers use them up; the chains go back in the order they were taken, each frame whole, and a
     * frame that finds the ring empty halfway gives back what it took (length 0) and is counted with the rest.
     */
    @Test
    void framesSpreadOverSmallMergeBuffersArriveWholeInOrderAndARingRunningDryMidFrameIsCounted() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            VirtioNetPortTest.await(() -> pa.isLinkUp() && pb.isLinkUp() && pc.isLinkUp(), "links up");
            b.postRx(0, 2048, 128);
            c.postRx(0, 2048, 16);
            learn(a, b, c); // A has no buffers yet: what was flooded to it is dropped
            // 128-byte buffers: a 300-byte frame takes three (116 + 128 + 56 bytes after the 12-byte header)
            a.postRx(0, 128, 40);
            List<byte[]> sent = new ArrayList<>();
            for (int i = 0; i < 16; i++) { // 4 frames of three buffers, 12 of one: 24 of the 40
                byte[] f = numbered(A, B, i % 4 == 0 ? 300 : 60 + i, i);
                sent.add(f);
                b.queue(0, f);
            }
            b.kickTx(0);
            b.awaitTxUsed(0, 16);
            for (int i = 0; i < sent.size(); i++) {
                assertArrayEquals(sent.get(i), a.receive(0), "frame " + i);
            }
            long dropsBefore = pa.stats().get(PortStat.TX_DROPPED_NO_BUFFERS);
            long sentBefore = pa.stats().get(PortStat.TX_PACKETS);
            // 16 buffers left, ten frames of three buffers each in one burst: frames 0-4 take 15, frame 5 takes the
            // last one and finds the ring empty (that buffer comes back with length 0), frames 6-9 find it empty
            List<byte[]> second = new ArrayList<>();
            for (int i = 0; i < 10; i++) {
                byte[] f = numbered(A, B, 300, 100 + i);
                second.add(f);
                b.queue(0, f);
            }
            b.kickTx(0);
            b.awaitTxUsed(0, 10);
            for (int i = 0; i < 5; i++) {
                assertArrayEquals(second.get(i), a.receive(0), "second burst, frame " + i);
            }
            NetDriver.Rx unused = a.pollRx(0, Duration.ofSeconds(10));
            assertTrue(unused != null, "the buffer frame 5 took comes back");
            assertEquals(0, unused.length(), "... unused");
            assertNull(a.pollRx(0, Duration.ofMillis(300)), "nothing beyond it");
            assertEquals(5, pa.stats().get(PortStat.TX_PACKETS) - sentBefore, "frames counted as sent");
            assertEquals(5, pa.stats().get(PortStat.TX_DROPPED_NO_BUFFERS) - dropsBefore, "frames 5-9 counted");
            assertTrue(pa.isLinkUp(), "A's queue did not fail");
            // buffers again: frames flow
            a.postRx(0, 2048, 4);
            byte[] after = numbered(A, B, 300, 200);
            b.send(0, after);
            assertArrayEquals(after, a.receive(0), "after reposting");
        }
    }
}
