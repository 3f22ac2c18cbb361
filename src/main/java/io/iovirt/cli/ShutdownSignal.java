package io.iovirt.cli;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Lets a foreground server ({@code iovirt serve ...}) stop in an orderly way on SIGINT or SIGTERM: the JVM's shutdown
 * hook releases the command's thread, which closes its devices and prints its final words, and the hook waits (up to
 * 10 s) for that before the JVM halts. The exit status is then the shell's usual 128 + signal (130, 143).
 */
final class ShutdownSignal {
    private final CountDownLatch stop = new CountDownLatch(1);
    private final CountDownLatch done = new CountDownLatch(1);

    private ShutdownSignal() {
    }

    static ShutdownSignal install() {
        ShutdownSignal s = new ShutdownSignal();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            s.stop.countDown();
            try {
                s.done.await(10, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }, "shutdown"));
        return s;
    }

    /** Waits up to {@code millis} for a stop signal; true when one arrived. */
    boolean await(long millis) throws InterruptedException {
        return stop.await(millis, TimeUnit.MILLISECONDS);
    }

    /** The command has cleaned up: the JVM may halt. */
    void finished() {
        done.countDown();
    }
}
