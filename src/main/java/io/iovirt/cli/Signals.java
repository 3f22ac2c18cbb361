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
        CountDownLatch latch = new CountDownLatch(1);
        String[] which = new String[1];
        for (String name : new String[] {"INT", "TERM", "HUP"}) {
            Signal.handle(new Signal(name), s -> {
                which[0] = "SIG" + s.getName();
                latch.countDown();
            });
        }
        latch.await();
        return which[0];
    }
}
