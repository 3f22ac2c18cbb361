// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.UnixSocket;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;

/**
 * A server closing while the session thread ends on its own: {@link Connection#shutdown()} from one thread races
 * {@link Connection#close()} from another. It must never throw (before the two excluded each other, a shutdown that
 * found the socket open and then read its closed descriptor threw IllegalStateException) and must never act on a
 * closed descriptor, whose number may belong to another file by then.
 */
class ConnectionCloseTest {
    @Test
    void shutdownRacingCloseNeverThrowsAndLeavesTheConnectionClosed() throws Exception {
        for (int round = 0; round < 2000; round++) {
            UnixSocket[] pair = UnixSocket.pair();
            Connection c = new Connection(pair[1], Connection.Role.BACKEND, "close-race");
            CountDownLatch running = new CountDownLatch(1);
            AtomicBoolean closed = new AtomicBoolean();
            AtomicReference<Throwable> failure = new AtomicReference<>();
            Thread shutter = Thread.ofPlatform().start(() -> {
                try {
                    running.countDown();
                    int after = 0;
                    while (after < 4) { // shut down back to back until a few calls after the close
                        c.shutdown();
                        if (closed.get()) {
                            after++;
                        }
                    }
                } catch (Throwable t) {
                    failure.set(t);
                }
            });
            running.await();
            Thread.onSpinWait();
            c.close();
            closed.set(true);
            shutter.join();
            assertNull(failure.get(), "round " + round + ": shutdown racing close threw");
            assertFalse(pair[1].fd().isOpen(), "round " + round + ": closed");
            c.shutdown(); // after close: nothing to do
            c.close(); // twice: nothing to do
            // the peer saw the hang-up
            assertTrue(pair[0].peerHungUp(), "round " + round + ": the peer sees the hang-up");
            pair[0].close();
        }
    }
}
