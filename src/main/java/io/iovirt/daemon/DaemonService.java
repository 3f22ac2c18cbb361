// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.linux.LinuxException;
import io.iovirt.linux.SdNotify;
import java.io.IOException;
import java.nio.file.Path;
import java.util.concurrent.LinkedBlockingQueue;
import sun.misc.Signal;

/**
 * {@code iovirt daemon}'s life: devices from the configuration file, the control socket, the metrics listener,
 * the service manager told READY=1 once the control socket accepts, SIGHUP re-reading the configuration,
 * WATCHDOG=1 pings when systemd asks for them (only while the daemon responds: {@link Watchdog}), and on SIGTERM/SIGINT STOPPING=1 then an orderly stop (every
 * export completes its requests in flight and syncs its image).
 */
public final class DaemonService {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    private DaemonService() {}

    public record Options(
            Path config, Path control, String metrics, String socketGroup, java.util.Set<Integer> allowUids) {}

    /** Runs until SIGTERM or SIGINT; returns the signal's name. */
    public static String run(Options o) throws IOException, InterruptedException {
        SdNotify notify = SdNotify.fromEnvironment();
        LinkedBlockingQueue<String> signals = new LinkedBlockingQueue<>();
        for (String name : new String[] {"TERM", "INT", "HUP"}) {
            Signal.handle(new Signal(name), s -> signals.add("SIG" + s.getName()));
        }
        try (Daemon daemon = new Daemon(o.socketGroup(), o.allowUids())) {
            if (o.config() != null) {
                ConfigFile.Outcome out = ConfigFile.apply(daemon, ConfigFile.read(o.config(), daemon));
                if (!out.failed().isEmpty()) {
                    LOG.log(System.Logger.Level.WARNING, "some configured devices did not start: " + out.failed());
                }
            }
            try (RpcServer rpc = RpcServer.start(o.control(), daemon);
                    Metrics metrics = o.metrics() == null ? null : Metrics.start(o.metrics(), daemon)) {
                String where = "control socket " + rpc.path()
                        + (metrics == null ? "" : ", metrics http://" + hostPort(metrics) + "/metrics");
                LOG.log(System.Logger.Level.INFO, "iovirt daemon " + Daemon.VERSION + " ready: " + where);
                System.err.println("iovirt daemon: ready: " + where);
                send(
                        notify,
                        "READY=1\nSTATUS=serving; " + where + "\nMAINPID="
                                + ProcessHandle.current().pid());
                Watchdog watchdog = startWatchdog(notify, daemon, rpc);
                try {
                    while (true) {
                        String sig = signals.take();
                        if (!sig.equals("SIGHUP")) {
                            send(notify, "STOPPING=1\nSTATUS=stopping (" + sig + ")");
                            LOG.log(
                                    System.Logger.Level.INFO,
                                    sig + ": stopping; devices finish their requests in flight");
                            return sig;
                        }
                        reload(o, daemon, notify);
                    }
                } finally {
                    if (watchdog != null) {
                        watchdog.close();
                    }
                }
            }
        }
    }

    private static String hostPort(Metrics m) {
        java.net.InetSocketAddress a = m.address();
        String h = a.getAddress().getHostAddress();
        return (h.contains(":") ? "[" + h + "]" : h) + ":" + a.getPort();
    }

    private static void reload(Options o, Daemon daemon, SdNotify notify) {
        if (o.config() == null) {
            LOG.log(System.Logger.Level.INFO, "SIGHUP: no --config file to re-read");
            return;
        }
        send(notify, "RELOADING=1\nSTATUS=reloading " + o.config());
        // Nothing a file holds may stop the daemon: a file that cannot be read changes nothing, and a failure while
        // applying one (a bug: each entry's own failure is already caught and reported) keeps the daemon serving.
        ConfigFile.Desired want = null;
        try {
            want = ConfigFile.read(o.config(), daemon);
        } catch (IOException e) {
            refused(e.getMessage(), null);
        } catch (RuntimeException e) {
            refused("cannot read configuration " + o.config() + ": " + e, e);
        }
        if (want != null) {
            try {
                ConfigFile.Outcome out = ConfigFile.apply(daemon, want);
                System.err.println("iovirt daemon: SIGHUP: " + out);
            } catch (RuntimeException e) {
                String msg = "SIGHUP: applying " + o.config() + " stopped partway: " + e + "; the devices it had"
                        + " changed stay changed, the others run as before; please report this with this log, then"
                        + " check the devices (iovirt ctl blk.list, nbd.list, net.list) and send SIGHUP again";
                LOG.log(System.Logger.Level.ERROR, msg, e);
                System.err.println("iovirt daemon: " + msg);
            }
        }
        send(notify, "READY=1\nSTATUS=serving");
    }

    /** A reload refused before anything changed: why, logged and on stderr. */
    private static void refused(String why, Throwable internal) {
        String msg = "SIGHUP: " + why + "; the running configuration is unchanged";
        if (internal != null) {
            LOG.log(System.Logger.Level.ERROR, msg, internal);
        } else {
            LOG.log(System.Logger.Level.ERROR, msg);
        }
        System.err.println("iovirt daemon: " + msg);
    }

    /** WATCHDOG=1 at half the interval systemd set (sd_watchdog_enabled(3)'s advice), while the daemon serves. */
    private static Watchdog startWatchdog(SdNotify notify, Daemon daemon, RpcServer rpc) {
        long usec = SdNotify.watchdogMicros();
        if (!notify.enabled() || usec == 0) {
            return null;
        }
        return Watchdog.start(notify, Math.max(1, usec / 2000), daemon, rpc);
    }

    private static void send(SdNotify notify, String state) {
        try {
            notify.send(state);
        } catch (LinuxException e) {
            LOG.log(System.Logger.Level.WARNING, "cannot notify the service manager: " + e.getMessage());
        }
    }
}
