// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.linux.LinuxException;
import io.iovirt.linux.SdNotify;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import sun.misc.Signal;

/**
 * {@code iovirt daemon}'s life: devices from the configuration file, the control socket, the metrics listener,
 * the service manager told READY=1 once the control socket accepts, SIGHUP re-reading the configuration,
 * WATCHDOG=1 pings when systemd asks for them (only while the daemon responds, its metrics server included — its
 * own liveness, not a round trip through a port any local user can fill: {@link Watchdog}), and on SIGTERM/SIGINT STOPPING=1 then an orderly stop (every
 * export completes its requests in flight and syncs its image).
 */
public final class DaemonService {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    /** Reloads run one at a time (SIGHUP on the main thread, the control API's reload on a connection's). */
    private static final Object RELOADS = new Object();

    private DaemonService() {}

    /** {@code state}: the --state file (null: devices added through the API live only as long as the process). */
    public record Options(
            Path config,
            Path state,
            Path control,
            String metrics,
            int metricsMaxConnections,
            String socketGroup,
            java.util.Set<Integer> allowUids) {}

    /** A signal the daemon handles, and when it arrived ({@link System#nanoTime}). */
    private record Signalled(String name, long at) {}

    /**
     * How the daemon stopped: the signal's name, and what the stop exited without waiting for ({@link
     * Daemon#leftAtStop}: empty when every device stopped and every image was flushed and closed).
     */
    public record Stopped(String signal, List<String> leftBehind) {}

    /** Runs until SIGTERM or SIGINT; returns how it stopped. */
    public static Stopped run(Options o) throws IOException, InterruptedException {
        var made = new java.util.concurrent.atomic.AtomicReference<Daemon>();
        String signal = serve(o, made);
        Daemon d = made.get(); // closed by now (serve's try-with-resources)
        return new Stopped(signal, d == null ? List.of() : d.leftAtStop());
    }

    private static String serve(Options o, java.util.concurrent.atomic.AtomicReference<Daemon> made)
            throws IOException, InterruptedException {
        SdNotify notify = SdNotify.fromEnvironment();
        // each signal with when it came ({@link System#nanoTime}): a SIGTERM that arrives while a reload runs on the
        // loop below is taken only once that has ended, and the stop's deadline counts from its arrival all the same
        LinkedBlockingQueue<Signalled> signals = new LinkedBlockingQueue<>();
        for (String name : new String[] {"TERM", "INT", "HUP"}) {
            Signal.handle(new Signal(name), s -> signals.add(new Signalled("SIG" + s.getName(), System.nanoTime())));
        }
        // The state file's lock first, and let go last (after every device stopped): a second daemon on the same
        // file is refused before it starts anything, and a successor does not start our devices while they run.
        try (StateFile state = o.state() == null ? null : StateFile.open(o.state());
                Daemon daemon = new Daemon(o.socketGroup(), o.allowUids())) {
            made.set(daemon);
            // The control API's reload: what the unit's ExecReload calls, so that 'systemctl reload' returns once the
            // file is applied (systemd 252 takes a signal's sender exiting as the end of the reload) and fails when
            // the file was refused.
            daemon.reloader(() -> reload(o, daemon, notify));
            // read (and checked) before anything starts: a broken state file stops the daemon with nothing done
            ConfigFile.Desired saved = state == null ? null : state.read(daemon);
            if (o.config() != null) {
                ConfigFile.Outcome out = ConfigFile.apply(daemon, ConfigFile.read(o.config(), daemon));
                if (!out.failed().isEmpty()) {
                    LOG.log(System.Logger.Level.WARNING, "some configured devices did not start: " + out.failed());
                }
            }
            if (state != null) {
                // after the file's devices: the API's ports on the file's switches need them
                state.restore(daemon, saved);
                daemon.state(state);
            }
            try (RpcServer rpc = RpcServer.start(o.control(), daemon);
                    Metrics metrics = o.metrics() == null
                            ? null
                            : Metrics.start(o.metrics(), o.metricsMaxConnections(), daemon)) {
                String where = "control socket " + rpc.path()
                        + (metrics == null ? "" : ", metrics http://" + hostPort(metrics) + "/metrics");
                LOG.log(System.Logger.Level.INFO, "iovirt daemon " + Daemon.VERSION + " ready: " + where);
                System.err.println("iovirt daemon: ready: " + where);
                send(
                        notify,
                        "READY=1\nSTATUS=serving; " + where + "\nMAINPID="
                                + ProcessHandle.current().pid());
                Watchdog watchdog = startWatchdog(notify, daemon, rpc, metrics);
                try {
                    while (true) {
                        Signalled signalled = signals.take();
                        String sig = signalled.name();
                        if (!sig.equals("SIGHUP")) {
                            // the stop's one deadline counts from the signal's arrival: not from after a reload that
                            // ran meanwhile, nor after the control socket's and /metrics' closes
                            daemon.stopStarts(signalled.at());
                            send(notify, "STOPPING=1\nSTATUS=stopping (" + sig + ")");
                            LOG.log(
                                    System.Logger.Level.INFO,
                                    sig + ": stopping; devices finish their requests in flight");
                            return sig;
                        }
                        try {
                            reload(o, daemon, notify);
                        } catch (RpcException e) {
                            // logged by reload; the daemon keeps serving what it had
                        }
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
        return io.iovirt.util.HostPort.format(a.getAddress(), a.getPort());
    }

    /**
     * Re-reads the configuration file and applies it (SIGHUP and the control API's reload; one at a time). Tells the
     * service manager RELOADING=1 with MONOTONIC_USEC (what a systemd 253+ Type=notify-reload unit waits for) and
     * READY=1 when done, also when there is nothing to re-read.
     *
     * @return what changed
     * @throws RpcException the file was refused (nothing changed), or some entries failed (the others applied):
     *                      the message says which and why; it is logged and on stderr too
     */
    static ConfigFile.Outcome reload(Options o, Daemon daemon, SdNotify notify) throws RpcException {
        synchronized (RELOADS) {
            send(
                    notify,
                    "RELOADING=1\nSTATUS=reloading " + (o.config() == null ? "(no --config)" : o.config())
                            + "\nMONOTONIC_USEC="
                            + java.util.concurrent.TimeUnit.NANOSECONDS.toMicros(System.nanoTime()));
            try {
                return reloadLocked(o, daemon);
            } finally {
                send(notify, "READY=1\nSTATUS=serving");
            }
        }
    }

    private static ConfigFile.Outcome reloadLocked(Options o, Daemon daemon) throws RpcException {
        if (o.config() == null) {
            LOG.log(System.Logger.Level.INFO, Daemon.NO_CONFIG);
            throw new RpcException(RpcException.FAILED, Daemon.NO_CONFIG);
        }
        // Nothing a file holds may stop the daemon: a file that cannot be read changes nothing, and a failure while
        // applying one (a bug: each entry's own failure is already caught and reported) keeps the daemon serving.
        ConfigFile.Desired want;
        try {
            want = ConfigFile.read(o.config(), daemon);
        } catch (IOException e) {
            throw new RpcException(RpcException.FAILED, refused(e.getMessage(), null));
        } catch (RuntimeException e) {
            throw new RpcException(
                    RpcException.FAILED, refused("cannot read configuration " + o.config() + ": " + e, e));
        }
        ConfigFile.Outcome out;
        try {
            out = ConfigFile.apply(daemon, want);
        } catch (RuntimeException e) {
            String msg = "reload: applying " + o.config() + " stopped partway: " + e + "; the devices it had"
                    + " changed stay changed, the others run as before; please report this with this log, then"
                    + " check the devices (iovirt ctl blk.list, nbd.list, net.list) and reload again";
            LOG.log(System.Logger.Level.ERROR, msg, e);
            System.err.println("iovirt daemon: " + msg);
            throw new RpcException(RpcException.FAILED, msg);
        }
        System.err.println("iovirt daemon: reload: " + out);
        if (!out.failed().isEmpty()) {
            throw new RpcException(
                    RpcException.FAILED,
                    "reload: " + o.config() + " applied except " + out.failed() + " (" + out
                            + "); fix those entries and reload again");
        }
        return out;
    }

    /** A reload refused before anything changed: why, logged and on stderr; returns the message. */
    private static String refused(String why, Throwable internal) {
        String msg = "reload: " + why + "; the running configuration is unchanged";
        if (internal != null) {
            LOG.log(System.Logger.Level.ERROR, msg, internal);
        } else {
            LOG.log(System.Logger.Level.ERROR, msg);
        }
        System.err.println("iovirt daemon: " + msg);
        return msg;
    }

    /** WATCHDOG=1 at half the interval systemd set (sd_watchdog_enabled(3)'s advice), while the daemon serves. */
    private static Watchdog startWatchdog(SdNotify notify, Daemon daemon, RpcServer rpc, Metrics metrics) {
        long usec = SdNotify.watchdogMicros();
        if (!notify.enabled() || usec == 0) {
            return null;
        }
        return Watchdog.start(notify, Math.max(1, usec / 2000), daemon, rpc, metrics);
    }

    private static void send(SdNotify notify, String state) {
        try {
            notify.send(state);
        } catch (LinuxException e) {
            LOG.log(System.Logger.Level.WARNING, "cannot notify the service manager: " + e.getMessage());
        }
    }
}
