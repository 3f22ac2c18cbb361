// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The demo's NIC half on real guests: both NICs carry the ping and the TCP send, and the switch counted them. */
@Tag("guest")
class NetDemoTest {
    @TempDir
    Path dir;

    @Test
    void bothNicsCarryEveryPhaseThroughTheSwitch() throws Exception {
        List<NetDemo.Result> results = new NetDemo(dir, line -> System.err.println("demo: " + line)).run();
        assertEquals(4, results.size());
        for (NetDemo.Result r : results) {
            assertTrue(r.value() > 0 && r.packets() > 0 && r.cpuNanos() > 0, r.toString());
        }
        // 300 echo requests and their replies cross the NIC's port (a loaded host may lose a few to ping's timeout)
        assertTrue(results.get(0).packets() >= 500, results.get(0).toString());
        // the TCP send moved at least the 16 MiB of payload through the port
        assertTrue(results.get(1).bytes() >= 16L << 20, results.get(1).toString());
        assertTrue(results.get(3).bytes() >= 16L << 20, results.get(3).toString());
        // The host's window is the traffic's, not the half second the guest waits before it (that is before net-go):
        // it agrees with the guest's own clock to the console's polling and /proc/uptime's steps.
        for (NetDemo.Result r : results) {
            assertTrue(Math.abs(r.seconds() - r.guestSeconds()) < 0.25, r.toString());
        }
    }

    @Test
    void pingSummaryIsParsed() {
        assertEquals(532.0, NetDemo.averageRttMicros("round-trip min/avg/max = 0.372/0.532/2.104 ms"), 1e-9);
        assertEquals(372.0, NetDemo.minimumRttMicros("round-trip min/avg/max = 0.372/0.532/2.104 ms"), 1e-9);
    }
}
