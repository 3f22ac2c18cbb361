// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.daemon.DaemonService;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code iovirt daemon}: many devices in one process, managed through the control socket. */
@Command(
        name = "daemon",
        mixinStandardHelpOptions = true,
        sortOptions = false,
        footerHeading = "%nExamples:%n",
        footer = {
            "  iovirt daemon --control /run/iovirt/control --metrics 127.0.0.1:9477",
            "  iovirt daemon --config /etc/iovirt/daemon.json --control /run/iovirt/control --socket-group kvm",
            "  iovirt daemon --state /var/lib/iovirt/daemon-state.json --control /run/iovirt/control"
        },
        description = {
            "Host any number of disks, NBD exports and switches in one process, managed at run time.",
            "Devices are added through a JSON-RPC control socket (iovirt ctl, docs/api.md). SIGHUP "
                    + "re-reads --config and applies the difference; SIGTERM/SIGINT stop every device in order. "
                    + "Under systemd (Type=notify) it reports READY=1 once the control socket accepts, STOPPING=1, "
                    + "and WATCHDOG=1 when WatchdogSec= is set."
        })
final class DaemonCommand implements Callable<Integer> {
    @Option(
            names = "--config",
            paramLabel = "FILE",
            description = "Devices to start (JSON; see docs/api.md), re-read on SIGHUP.")
    Path config;

    @Option(
            names = "--state",
            paramLabel = "FILE",
            description = "Keep the devices added through the control API in FILE (written after each change,"
                    + " atomically) and start them again at the next start. Without it they last only as long as"
                    + " the process. One daemon per file (FILE.lock).")
    Path state;

    @Option(
            names = "--control",
            required = true,
            paramLabel = "PATH",
            description = "Control socket to listen on (mode 0600).")
    Path control;

    @Option(
            names = "--metrics",
            paramLabel = "HOST:PORT",
            description = "Serve Prometheus metrics at http://HOST:PORT/metrics (loopback only).")
    String metrics;

    @Option(
            names = "--metrics-max-connections",
            paramLabel = "N",
            defaultValue = "" + io.iovirt.daemon.Metrics.DEFAULT_MAX_CONNECTIONS,
            description = "Serve at most N metrics connections at once (default: ${DEFAULT-VALUE}); one more is"
                    + " answered 503 and closed, and each is closed "
                    + io.iovirt.daemon.Metrics.CONNECTION_TIMEOUT_SECONDS
                    + " s after it was accepted. Any local user can"
                    + " connect to the port: this bounds the descriptors and threads they can make the daemon hold.")
    int metricsMaxConnections;

    @CommandLine.Mixin
    SocketAccessOptions socketAccess;

    @CommandLine.Mixin
    LogOptions logOptions;

    @Override
    public Integer call() throws Exception {
        logOptions.apply();
        if (System.getenv("JOURNAL_STREAM") != null && logOptions.text()) {
            journalFormat(); // the journal adds the time; the line carries its priority
        }
        DaemonService.Stopped stopped = DaemonService.run(new DaemonService.Options(
                config,
                state,
                control,
                metrics,
                metricsMaxConnections,
                socketAccess.socketGroup(),
                socketAccess.allowUids()));
        if (stopped.leftBehind().isEmpty()) {
            System.err.println("iovirt daemon: " + stopped.signal() + ": stopped; every image synced");
        } else {
            // not "every image synced": the stop's deadline passed first (a file system or disk that did not answer)
            System.err.println("iovirt daemon: " + stopped.signal() + ": stopped without waiting longer for "
                    + String.join(", ", stopped.leftBehind()) + " (see the ERROR lines above): writes their guests"
                    + " had acknowledged may not be on disk; make the file system or disk answer, then check the"
                    + " images (qemu-img check) before a VM uses them again");
        }
        return 0;
    }

    /**
     * Under systemd, stderr goes to the journal: each line starts with its syslog priority ({@code <3>} error,
     * {@code <4>} warning, {@code <6>} info, {@code <7>} debug; sd-daemon(3)), and the journal adds the time.
     */
    static void journalFormat() {
        java.util.logging.Formatter f = new java.util.logging.Formatter() {
            @Override
            public String format(java.util.logging.LogRecord r) {
                int v = r.getLevel().intValue();
                int prio = v >= java.util.logging.Level.SEVERE.intValue()
                        ? 3
                        : v >= java.util.logging.Level.WARNING.intValue()
                                ? 4
                                : v >= java.util.logging.Level.INFO.intValue() ? 6 : 7;
                StringBuilder b =
                        new StringBuilder().append('<').append(prio).append('>').append(formatMessage(r));
                if (r.getThrown() != null) {
                    b.append(": ").append(r.getThrown());
                }
                return b.append('\n').toString();
            }
        };
        for (java.util.logging.Handler h :
                java.util.logging.Logger.getLogger("").getHandlers()) {
            h.setFormatter(f);
        }
    }
}
