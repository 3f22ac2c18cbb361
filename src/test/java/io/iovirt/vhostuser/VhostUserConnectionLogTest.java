// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.UnixSocket;
import io.iovirt.util.LogLimiter;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.function.Predicate;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A frontend connecting and hanging up in a loop does not flood the log: its "connected" and "disconnected" lines go
 * through the server's {@link LogLimiter}, so the loop makes a burst of lines, then at most one a second, and a later
 * line says how many were left out. Before, every connection made two lines. So do requests the device refuses, which
 * a frontend can repeat on one connection.
 */
class VhostUserConnectionLogTest {
    static final int CONNECTIONS = 300;

    @TempDir
    Path dir;

    @Test
    void aFrontendConnectingInALoopMakesABoundedNumberOfLogLines() throws Exception {
        Path sock = dir.resolve("l.sock");
        try (VhostUserServer s = VhostUserServer.start(sock, new RecordingBackend(1));
                LogCapture log = LogCapture.start("io.iovirt.vhostuser")) {
            long start = System.nanoTime();
            for (int i = 0; i < CONNECTIONS; i++) {
                hangUp(sock);
            }
            // one frontend at a time, in the order they connected: one answered means all before it were served
            try (VhostUserFrontend last = VhostUserFrontend.connect(sock, Duration.ofSeconds(60))) {
                last.getFeatures();
            }
            assertTrue(s.awaitIdle(Duration.ofSeconds(60)), "the last frontend's session ends");
            log.assertLimited(CONNECTION_LINE, start, CONNECTIONS, "connections");
            log.awaitSuppressedCount(CONNECTION_LINE, () -> hangUp(sock));
        }
    }

    @Test
    void aFrontendRepeatingARefusedRequestMakesABoundedNumberOfLogLines() throws Exception {
        Path sock = dir.resolve("r.sock");
        try (VhostUserServer s = VhostUserServer.start(sock, new RecordingBackend(1));
                LogCapture log = LogCapture.start("io.iovirt.vhostuser");
                VhostUserFrontend fe = VhostUserFrontend.connect(sock, Duration.ofSeconds(60))) {
            fe.getFeatures();
            fe.setProtocolFeatures(fe.getProtocolFeatures());
            long start = System.nanoTime();
            for (int i = 0; i < CONNECTIONS; i++) {
                assertThrows(RequestRejectedException.class, () -> fe.getConfig(56, 8)); // past the 60-byte space
            }
            log.assertLimited(l -> l.contains("GET_CONFIG refused"), start, CONNECTIONS, "refusals");
        }
    }

    @Test
    void aFrontendTogglingDirtyLoggingInALoopMakesABoundedNumberOfLogLines() throws Exception {
        Path sock = dir.resolve("d.sock");
        try (VhostUserServer s = VhostUserServer.start(sock, new RecordingBackend(1));
                LogCapture log = LogCapture.start("io.iovirt.vhostuser");
                VhostUserFrontend fe = VhostUserFrontend.connect(sock, Duration.ofSeconds(60))) {
            long features = fe.getFeatures();
            assertTrue((features & Features.VHOST_F_LOG_ALL) != 0, "the backend offers VHOST_F_LOG_ALL");
            long start = System.nanoTime();
            for (int i = 0; i < CONNECTIONS; i++) {
                fe.setFeatures(i % 2 == 0 ? features : features & ~Features.VHOST_F_LOG_ALL);
            }
            fe.getFeatures(); // answered after every SET_FEATURES before it was handled
            log.assertLimited(l -> l.contains("dirty page logging"), start, CONNECTIONS, "SET_FEATURES");
        }
    }

    /** Connects and closes at once, as a broken frontend in a retry loop does. */
    private static void hangUp(Path sock) throws IOException {
        UnixSocket.connect(sock).close();
    }

    /** A "connected" or "disconnected" line about a frontend. */
    private static final Predicate<String> CONNECTION_LINE =
            l -> l.contains(": frontend pid ") && (l.contains("connected") || l.contains("disconnected"));
}
