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
            // the bucket's bound for the time the loop took: its burst, and one line a second since
            long seconds = (System.nanoTime() - start) / 1_000_000_000L + 1;
            List<String> lines = connectionLines(log, port);
            assertTrue(
                    lines.size() <= LogLimiter.BURST + seconds,
                    lines.size() + " lines for " + CONNECTIONS + " connections in " + seconds + " s: " + lines);
            assertTrue(lines.stream().anyMatch(l -> l.contains("peer connected")), "the first connection is logged");
            // once the bucket has a token again, the next line says how many were left out
            int[] n = {CONNECTIONS};
            Await.until(Duration.ofSeconds(60), "a line counting the suppressed ones", () -> {
                try {
                    connectAndHangUp(port, ++n[0]);
                } catch (Exception e) {
                    throw new IllegalStateException(e);
                }
                return connectionLines(log, port).stream().anyMatch(l -> l.contains("similar lines suppressed)"));
            });
        }
    }

    /** Connects, waits until the port has taken the connection, hangs up and waits until it has seen that. */
    private static void connectAndHangUp(StreamPort port, int nth) throws Exception {
        try (UnixSocket s = UnixSocket.connect(port.path())) {
            Await.until(Duration.ofSeconds(20), "connection " + nth + " accepted", () -> port.connections() == nth);
        }
        Await.until(Duration.ofSeconds(20), "connection " + nth + " ended", () -> !port.isLinkUp());
    }

    private static List<String> connectionLines(LogCapture log, StreamPort port) {
        return log.all().stream().filter(l -> l.startsWith(port.name())).toList();
    }
}
