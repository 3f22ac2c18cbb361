// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import java.util.concurrent.CountDownLatch;
import sun.misc.Signal;

/**
 * Waits for SIGINT, SIGTERM or SIGHUP so that a foreground server can shut down in order (finish in-flight requests,
 * sync, print counters) and exit 0, rather than racing JVM shutdown hooks. SIGHUP stops a foreground server too: its
 * default action would kill the process without that shutdown when the terminal goes away (a daemon reloads on it).
 */
final class Signals {
    private Signals() {}

    /** Blocks until SIGINT, SIGTERM or SIGHUP arrives; returns the signal's name. */
    static String awaitTermination() throws InterruptedException {
        return watch().await();
    }

    /**
     * Starts catching SIGINT, SIGTERM and SIGHUP now, for a process that has more to do before it waits for them (a
     * warm standby, which would otherwise die of the JVM's default handling, status 143, when stopped while it
     * waits for the socket): a signal that arrives in between is kept, not lost.
     */
    static Termination watch() {
        Termination t = new Termination();
        for (String name : new String[] {"INT", "TERM", "HUP"}) {
            Signal.handle(new Signal(name), s -> t.arrived("SIG" + s.getName()));
        }
        return t;
    }

    /** The first termination signal since {@link #watch()}. */
    static final class Termination {
        private final CountDownLatch latch = new CountDownLatch(1);
        private volatile String which;

        private void arrived(String name) {
            if (which == null) {
                which = name;
            }
            latch.countDown();
        }

        /** The one that has arrived, or null (does not wait). */
        String arrived() {
            return which;
        }

        /** Blocks until one has arrived; returns its name. */
        String await() throws InterruptedException {
            latch.await();
            return which;
        }
    }
}
