// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.linux.LinuxException;
import io.iovirt.linux.SdNotify;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * The systemd watchdog (sd_watchdog_enabled(3)): WATCHDOG=1 every period, but only after the daemon has shown that
 * it still serves — its registry lock could be taken within half a period (requests hold it only for quick looks,
 * so a lock held longer is a deadlock or a bug), the control socket still accepts, and the /metrics server, when
 * there is one, still accepts and renders a scrape within a quarter period (a wedged metrics server no longer serves
 * what the daemon was started for, and a restart brings it back). A ping sent regardless, from a thread of its own,
 * proved only that this thread ran: a deadlocked daemon was never restarted.
 *
 * <p>Every check looks at the daemon's own state, never a round trip through a socket other users can reach: any
 * local user can fill the metrics port up to its connection limit (and even its kernel backlog, so a connect would
 * wait), and a full port is the limit working, not a wedged daemon; a restart for it would let that user break every
 * guest's backend ({@link Metrics#unserved}).
 *
 * <p>When a check fails no ping goes out and STATUS= says why, each period, so {@code systemctl status} shows it until
 * systemd restarts the daemon at WatchdogSec.
 */
final class Watchdog implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    private final SdNotify notify;
    private final long periodMillis;
    private final Daemon daemon;
    private final RpcServer rpc;
    private final Metrics metrics; // null: none configured
    private final Thread thread;
    /** The last lock probe: while it still waits for the lock, no other is started. */
    private Thread probe;

    private Watchdog(SdNotify notify, long periodMillis, Daemon daemon, RpcServer rpc, Metrics metrics) {
        this.notify = notify;
        this.periodMillis = periodMillis;
        this.daemon = daemon;
        this.rpc = rpc;
        this.metrics = metrics;
        this.thread = Thread.ofPlatform().daemon().name("sd watchdog").unstarted(this::run);
    }

    /**
     * Pings every {@code periodMillis} (half of what systemd set, as sd_watchdog_enabled(3) advises); {@code metrics}:
     * the /metrics server to check too, or null when the daemon has none.
     */
    static Watchdog start(SdNotify notify, long periodMillis, Daemon daemon, RpcServer rpc, Metrics metrics) {
        Watchdog w = new Watchdog(notify, periodMillis, daemon, rpc, metrics);
        w.thread.start();
        return w;
    }

    private void run() {
        boolean failing = false;
        try {
            while (true) {
                long next = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(periodMillis);
                String problem = problem();
                if (problem == null) {
                    send(failing ? "WATCHDOG=1\nSTATUS=serving" : "WATCHDOG=1");
                    if (failing) {
                        LOG.log(System.Logger.Level.WARNING, "watchdog: the daemon responds again");
                    }
                } else {
                    send("STATUS=not responding: " + problem + "; WATCHDOG=1 withheld, so systemd restarts it");
                    if (!failing) {
                        LOG.log(
                                System.Logger.Level.ERROR,
                                "watchdog: " + problem + "; not telling systemd the daemon is alive (it restarts it"
                                        + " when WatchdogSec passes without a ping); a thread dump (jcmd PID"
                                        + " Thread.print) shows what holds it");
                    }
                }
                failing = problem != null;
                long left = next - System.nanoTime();
                if (left > 0) {
                    TimeUnit.NANOSECONDS.sleep(left);
                }
            }
        } catch (InterruptedException e) {
            // stopping
        }
    }

    /** Why the daemon does not serve now, or null when it does. */
    String problem() throws InterruptedException {
        if (!rpc.accepting(periodMillis)) {
            return "the control socket " + rpc.path() + " no longer accepts connections (its accept thread ended, or"
                    + " every accept has failed for " + periodMillis + " ms: out of descriptors?)";
        }
        String lock = lockProblem();
        if (lock != null) {
            return lock;
        }
        // a quarter period: the checks run one after the other, and with the lock's half the ping still goes out
        // within the period (systemd waits two)
        return metrics == null ? null : metrics.unserved(Math.max(1, periodMillis / 4));
    }

    /** Why the registry lock is not free, or null when it could be taken within half a period. */
    private String lockProblem() throws InterruptedException {
        long bound = Math.max(1, periodMillis / 2);
        if (probe != null && probe.isAlive()) { // the last probe still waits: no second one
            return probe.join(java.time.Duration.ofMillis(bound))
                    ? null
                    : "the daemon's device registry lock has not been free for " + periodMillis + " ms or more";
        }
        CountDownLatch taken = new CountDownLatch(1);
        probe = Thread.ofPlatform()
                .daemon()
                .name("sd watchdog lock probe")
                .start(() -> daemon.locked(() -> {
                    taken.countDown();
                    return null;
                }));
        if (!taken.await(bound, TimeUnit.MILLISECONDS)) {
            return "the daemon's device registry lock could not be taken within " + bound + " ms";
        }
        return null;
    }

    private void send(String state) {
        try {
            notify.send(state);
        } catch (LinuxException e) {
            LOG.log(System.Logger.Level.WARNING, "cannot notify the service manager: " + e.getMessage());
        }
    }

    @Override
    public void close() {
        thread.interrupt();
    }
}
