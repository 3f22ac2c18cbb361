// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.testing.Frames;
import io.iovirt.testing.Require;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A TAP port whose interface goes away under it (ip link del): the port goes down — its link reported down, the
 * switch no longer sends to it — instead of keeping a dead receive loop behind a port that says it is up.
 */
@Timeout(60)
class TapPortTest {
    @Test
    void aDeletedInterfaceTakesThePortDown() throws Exception {
        Require.that(Files.exists(Path.of("/dev/net/tun")), "/dev/net/tun is missing (modprobe tun)");
        Require.that(Require.onPath("ip"), "iproute2 is not installed");
        String ifname = "iovtp" + (ProcessHandle.current().pid() % 100000);
        try (Switch sw = new Switch(Switch.Config.defaults())) {
            TestPort peer = sw.addPort(new TestPort("peer"));
            TapPort tap;
            try {
                tap = sw.addPort(new TapPort(ifname));
            } catch (java.io.IOException e) {
                Require.that(false, "cannot create a TAP interface here (needs CAP_NET_ADMIN): " + e.getMessage());
                return;
            }
            assertTrue(tap.isLinkUp());
            Process del = new ProcessBuilder("ip", "link", "del", ifname)
                    .redirectErrorStream(true)
                    .start();
            String out = new String(del.getInputStream().readAllBytes());
            assertEquals(0, del.waitFor(), "ip link del " + ifname + ": " + out);

            Await.until(Duration.ofSeconds(10), "the port to go down", () -> !tap.isLinkUp());
            peer.inject(Frames.ethernet("ff:ff:ff:ff:ff:ff", "52:54:00:00:00:0a", 60)); // a flood skips the port
            assertEquals(0, tap.stats().txPackets());
            assertEquals(0, tap.stats().get(PortStat.TX_DROPPED_ERROR), "no write to the dead interface was tried");
        }
    }
}
