// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.UnixSocket;
import io.iovirt.testing.Await;
import io.iovirt.util.LogLimiter;
import io.iovirt.vhostuser.LogCapture;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.function.Predicate;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A peer connecting to a stream port and hanging up in a loop does not flood the log: the port's "peer connected" and
 * "waiting for the next peer" lines go through its {@link LogLimiter} — a burst, then at most one a second, and a
 * later line says how many were left out. Before, every connection made two lines.
 */
@Timeout(120)
class StreamPortLogTest {
    static final int CONNECTIONS = 200;

    @TempDir
    Path dir;

    @Test
    void aPeerConnectingInALoopMakesABoundedNumberOfLogLines() throws Exception {
        try (Switch sw = new Switch(Switch.Config.defaults());
                LogCapture log = LogCapture.start("io.iovirt.net")) {
            StreamPort port = sw.addPort(new StreamPort(dir.resolve("s.sock")));
            long start = System.nanoTime();
            for (int i = 1; i <= CONNECTIONS; i++) {
                connectAndHangUp(port, i);
            }
            Predicate<String> lines = l -> l.startsWith(port.name());
            List<String> logged = log.assertLimited(lines, start, CONNECTIONS, "connections");
            assertTrue(logged.stream().anyMatch(l -> l.contains("peer connected")), "the first connection is logged");
            int[] n = {CONNECTIONS};
            log.awaitSuppressedCount(lines, () -> connectAndHangUp(port, ++n[0]));
        }
    }

    /** Connects, waits until the port has taken the connection, hangs up and waits until it has seen that. */
    private static void connectAndHangUp(StreamPort port, int nth) throws Exception {
        try (UnixSocket s = UnixSocket.connect(port.path())) {
            Await.until(Duration.ofSeconds(20), "connection " + nth + " accepted", () -> port.connections() == nth);
        }
        Await.until(Duration.ofSeconds(20), "connection " + nth + " ended", () -> !port.isLinkUp());
    }
}
