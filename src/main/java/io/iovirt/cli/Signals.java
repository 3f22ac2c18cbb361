package io.iovirt.cli;

import java.util.concurrent.CountDownLatch;
import sun.misc.Signal;

/**
 * Waits for SIGINT or SIGTERM so that a foreground server can shut down in order (finish in-flight requests, sync,
 * print counters) and exit 0, rather than racing JVM shutdown hooks.
 */
final class Signals {
    private Signals() {
    }

    /** Blocks until SIGINT or SIGTERM arrives; returns the signal's name. */
    static String awaitTermination() throws InterruptedException {
        CountDownLatch latch = new CountDownLatch(1);
        String[] which = new String[1];
        for (String name : new String[] {"INT", "TERM"}) {
            Signal.handle(new Signal(name), s -> {
                which[0] = "SIG" + s.getName();
                latch.countDown();
            });
        }
        latch.await();
        return which[0];
    }
}
