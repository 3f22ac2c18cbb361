// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.devices.net.VirtioNetPort;
import io.iovirt.net.Ethernet;
import io.iovirt.net.Mac;
import io.iovirt.net.Port;
import io.iovirt.net.PortStats;
import io.iovirt.net.StreamPort;
import io.iovirt.net.Switch;
import io.iovirt.net.TapPort;
import io.iovirt.virtio.WorkerGroup;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code iovirt serve net}: the virtual switch. */
@Command(
        name = "net",
        footerHeading = "%nExamples:%n",
        footer = {
            "  iovirt serve net --port vhost-user:/run/iovirt/vm1-net.sock,mac=52:54:00:00:00:01 --port tap:iov0",
            "  iovirt serve net --port stream:/run/iovirt/e1000.sock --port vhost-user:/run/iovirt/vm2.sock \\",
            "      --stats-interval 5"
        },
        mixinStandardHelpOptions = true,
        description = {
            "Run a virtual switch whose ports are guests and host interfaces.",
            "An L2 learning switch that runs until SIGINT, SIGTERM or SIGHUP, then prints each port's counters.",
            "Port kinds:",
            "  stream:PATH  listen on UNIX socket PATH for QEMU's -netdev stream (e.g. an emulated e1000):",
            "               -netdev stream,id=n1,server=off,addr.type=unix,addr.path=PATH",
            "  tap:IFNAME   the host's TAP interface IFNAME (created if missing; needs CAP_NET_ADMIN)",
            "  vhost-user:PATH[,queues=N][,mac=MAC][,pin-mac][,poll-us=US|adaptive[:US]]",
            "               a virtio-net device served on UNIX socket PATH (QEMU: -chardev socket,id=c0,",
            "               path=PATH -netdev vhost-user,id=n0,chardev=c0[,queues=N] -device virtio-net-pci,",
            "               netdev=n0,vectors=0; vectors=0: QEMU 7.2 under TCG crashes with MSI-X on",
            "               vhost-user-net). queues: queue pairs (default 1); mac: the guest's address,",
            "               announced when it connects; pin-mac: drop frames from any other source (no",
            "               spoofing, one MAC table entry), and frames from the guest's address from any other",
            "               port; poll-us: how long a transmit ring is polled after it ran dry (saves kicks,",
            "               costs CPU). Default adaptive: as long as the guest's recent gaps between bursts say",
            "               is worth it, up to 32 us (as QEMU's iothreads), not at all while it is idle;",
            "               adaptive:US sets the bound, US a fixed time, 0 sleeps at once (on a shared",
            "               --poll-threads thread the longest bound of its queues is a fixed poll for all of",
            "               them)"
        },
        sortOptions = false)
final class ServeNetCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(
            names = "--port",
            required = true,
            paramLabel = "KIND:ARG",
            description = "A switch port (repeat for more): vhost-user:PATH, stream:PATH or tap:IFNAME.")
    List<String> ports;

    @Option(
            names = "--mac-aging",
            paramLabel = "S",
            defaultValue = "" + Switch.DEFAULT_MAC_AGING_SECONDS,
            description = "Forget a MAC address S seconds after its last frame (default: ${DEFAULT-VALUE}).")
    int macAging;

    @Option(
            names = "--macs-per-port",
            paramLabel = "N",
            defaultValue = "" + Switch.DEFAULT_MACS_PER_PORT,
            description = "Learn at most N source MAC addresses per port; frames from further addresses are still "
                    + "forwarded but not learned, and counted as rx_unlearned (default: ${DEFAULT-VALUE}; table: "
                    + Switch.DEFAULT_MAC_CAPACITY + ").")
    int macsPerPort;

    @Option(
            names = "--mtu",
            paramLabel = "BYTES",
            defaultValue = "" + Ethernet.DEFAULT_MTU,
            description =
                    "Largest payload forwarded; longer frames are dropped and counted (default: ${DEFAULT-VALUE}).")
    int mtu;

    // Default 0 (a thread per transmit queue), decided by measurement and by what a default must survive. Measured
    // on the shared 2-CPU development machine with scripts/bench-net.sh --topology p2p (64 B, backend on CPU 0,
    // frontend on CPU 1), per queue vs one shared thread; only rows with the frontend at >= 95 % count:
    //   poll-us=1000 (18:47 UTC): 1.77 Mpps, 559 ns/frame vs 3.86 Mpps, 255 ns/frame (NetPathBench's single-thread
    //     floor is 251): two spinning threads on one core take turns in scheduler slices, one thread does not;
    //   poll-us=0 (18:11 UTC): 3.93 Mpps, 252 ns/frame vs 3.36 Mpps, 282 ns/frame; three alternating pairs at
    //     --nice -10 (frontend 82-93 %, noise-bound) 1.65/2.53/1.35 vs 2.65/1.75/2.12 Mpps: no difference beyond noise.
    // perf at poll-us=0: kernel time (epoll, context switches) 1.0-1.4 % of the backend in both modes, the shared loop
    // itself 0.3 %; the rest is the data path either way. So sharing wins where several queues would spin on fewer
    // cores, and as a default it would cost what per-queue threads give for free: a shared thread serialises every
    // port's transmit path (one core for all, whatever the host has), and a queue that stalls — e.g. on a hostile
    // frontend's blocking, full call eventfd, bounded at 200 ms per interrupt by the eventfd watchdog — stalls every
    // queue of its thread instead of one. The operator chooses it for more ports than cores, as OVS's pmd-cpu-mask.
    @Option(
            names = "--poll-threads",
            paramLabel = "N",
            defaultValue = "0",
            description = "Serve the transmit queues of all vhost-user ports on N shared threads (each queue on the"
                    + " thread with the fewest; one loop per thread, one batch per queue per round, one idle strategy"
                    + " and one epoll set for all its queues — OVS-DPDK's PMD threads). 0 (default): one thread per"
                    + " transmit queue. With more ports than cores, N = the cores given to the switch saves the"
                    + " context switches between per-queue threads.")
    int pollThreads;

    @CommandLine.Mixin
    LogOptions logOptions;

    @CommandLine.Mixin
    StatsOptions statsOptions;

    private static final java.util.logging.Logger LOG = java.util.logging.Logger.getLogger("iovirt.serve.net");

    @CommandLine.Mixin
    SocketAccessOptions socketAccess;

    @Override
    public Integer call() throws Exception {
        logOptions.apply();
        if (macAging < 1) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--mac-aging must be at least 1 second");
        }
        if (mtu < Ethernet.MIN_MTU || mtu > Ethernet.MAX_MTU) {
            throw new CommandLine.ParameterException(
                    spec.commandLine(), "--mtu must be " + Ethernet.MIN_MTU + ".." + Ethernet.MAX_MTU);
        }
        if (macsPerPort < 1 || macsPerPort > Switch.DEFAULT_MAC_CAPACITY) {
            throw new CommandLine.ParameterException(
                    spec.commandLine(), "--macs-per-port must be 1.." + Switch.DEFAULT_MAC_CAPACITY);
        }
        if (pollThreads < 0 || pollThreads > WorkerGroup.MAX_THREADS) {
            throw new CommandLine.ParameterException(
                    spec.commandLine(), "--poll-threads must be 0.." + WorkerGroup.MAX_THREADS);
        }
        List<PortFactory> factories = ports.stream().map(this::parse).toList();
        refuseSharedResources(ports);
        try (WorkerGroup group = pollThreads > 0 ? WorkerGroup.create("net poll", pollThreads) : null;
                Switch sw = new Switch(Switch.Config.defaults()
                        .withMtu(mtu)
                        .withMacAging(macAging)
                        .withMacTable(Switch.DEFAULT_MAC_CAPACITY, macsPerPort))) {
            for (PortFactory f : factories) {
                Port created = f.create();
                if (created instanceof VirtioNetPort v) {
                    v.workers(group);
                }
                Port p = sw.addPort(created);
                LOG.info("port " + p.index() + ": " + p.name());
            }
            String overcommit = sw.macTableOvercommit();
            if (overcommit != null) {
                LOG.warning(overcommit + "; or pin each guest to its address (vhost-user:PATH,mac=MAC,pin-mac: one"
                        + " entry)");
            }
            sw.startHousekeeping();
            if (group != null) {
                LOG.info("transmit queues of the vhost-user ports on " + pollThreads + " shared poll thread(s)");
            }
            LOG.info("switch running (MTU " + mtu + ", MAC aging " + macAging + " s, at most " + macsPerPort
                    + " MACs per port); stop with Ctrl-C, SIGTERM or SIGHUP");
            Thread printer = statsOptions.start(() -> logStats(sw, "counters"));
            String signal = Signals.awaitTermination();
            LOG.info("received " + signal + ", stopping");
            StatsOptions.stop(printer);
            sw.close(); // stop forwarding first, so the final counters are final
            logStats(sw, "final counters");
        }
        return 0;
    }

    /**
     * Every port's counters, one line each; with --log-format json also as a "stats" object: {"macs", "ports":
     * [{"port", counter: value...}]}, the counters named as {@code ctl net stats} names them.
     */
    private static void logStats(Switch sw, String title) {
        StringBuilder b =
                new StringBuilder(title + " (MAC table: " + sw.macTable().size() + " addresses):");
        java.util.List<Object> ports = new java.util.ArrayList<>();
        for (Port p : sw.ports()) {
            PortStats s = p.stats();
            b.append("\n  ").append(s);
            if (p instanceof VirtioNetPort v) {
                for (int i = 0; i < v.options().queuePairs(); i++) {
                    b.append("; tx").append(i).append(' ').append(v.txWorkerStats(i));
                    VirtioNetPort.RxQueueTotals t = v.rxQueueTotals(i);
                    if (t.lostSignals() + t.recheckSignals() > 0) { // the usual case says nothing
                        b.append("; rx").append(i).append(' ').append(t);
                    }
                }
            }
            ports.add(io.iovirt.daemon.Daemon.portCounters(s.port(), p, s));
        }
        java.util.Map<String, Object> doc = new java.util.LinkedHashMap<>();
        doc.put("macs", sw.macTable().size());
        doc.put("ports", ports);
        LogOptions.log(LOG, java.util.logging.Level.INFO, b.toString(), new LogOptions.Field("stats", doc));
    }

    @FunctionalInterface
    private interface PortFactory {
        Port create() throws Exception;
    }

    /**
     * Two ports on one socket path (or one TAP interface) cannot work: the second would find the first listening
     * and blame "another server". Said at parse time, naming both options.
     */
    private void refuseSharedResources(List<String> specs) {
        java.util.Map<String, String> seen = new java.util.HashMap<>();
        for (String spec : specs) {
            int colon = spec.indexOf(':');
            String kind = spec.substring(0, colon);
            String arg = spec.substring(colon + 1);
            String key = switch (kind) {
                case "tap" -> "TAP interface " + arg;
                case "vhost-user" ->
                    "socket " + Path.of(arg.split(",")[0]).toAbsolutePath().normalize();
                default -> "socket " + Path.of(arg).toAbsolutePath().normalize();
            };
            String earlier = seen.putIfAbsent(key, spec);
            if (earlier != null) {
                throw usage("--port " + earlier + " and --port " + spec + " both use " + key
                        + ": each port needs its own" + (kind.equals("tap") ? " interface" : " socket path"));
            }
        }
    }

    private PortFactory parse(String spec) {
        int colon = spec.indexOf(':');
        String kind = colon < 0 ? spec : spec.substring(0, colon);
        String arg = colon < 0 ? "" : spec.substring(colon + 1);
        if (arg.isEmpty()) {
            throw usage("--port " + spec + ": want KIND:ARG, e.g. stream:/run/b.sock or tap:iov0");
        }
        return switch (kind) {
            case "stream" -> () -> new StreamPort(Path.of(arg), socketAccess.access());
            case "tap" -> {
                try {
                    TapPort probe = new TapPort(arg); // validates the name now, before anything starts
                    yield () -> probe;
                } catch (IllegalArgumentException e) {
                    throw usage("--port " + spec + ": " + e.getMessage());
                }
            }
            case "vhost-user" -> {
                VirtioNetPort.Options o = vhostUserOptions(spec, arg);
                boolean pin = java.util.Arrays.asList(arg.split(",")).contains("pin-mac");
                if (pin && o.mac() == -1) {
                    throw usage("--port " + spec + ": pin-mac needs mac=MAC");
                }
                yield () ->
                        new VirtioNetPort(o).withAccess(socketAccess.access()).pinSource(pin);
            }
            default ->
                throw usage("--port " + spec + ": unknown port kind '" + kind + "' (known: vhost-user, stream, tap)");
        };
    }

    private VirtioNetPort.Options vhostUserOptions(String spec, String arg) {
        String[] parts = arg.split(",");
        int queues = 1;
        long mac = -1;
        PollOption poll = PollOption.DEFAULT;
        for (int i = 1; i < parts.length; i++) {
            String[] kv = parts[i].split("=", 2);
            if (parts[i].equals("pin-mac")) {
                continue;
            }
            try {
                switch (kv.length == 2 ? kv[0] : "") {
                    case "queues" -> queues = Integer.parseInt(kv[1]);
                    case "mac" -> {
                        try {
                            mac = Mac.parse(kv[1]);
                        } catch (IllegalArgumentException e) {
                            throw usage("--port " + spec + ": " + e.getMessage());
                        }
                    }
                    case "poll-us" -> {
                        try {
                            poll = PollOption.parse(kv[1]);
                        } catch (IllegalArgumentException e) {
                            throw usage("--port " + spec + ": " + e.getMessage());
                        }
                    }
                    default ->
                        throw usage("--port " + spec + ": unknown option '" + parts[i]
                                + "' (known: queues=N, mac=MAC, pin-mac, poll-us=US|adaptive[:US])");
                }
            } catch (NumberFormatException e) {
                throw usage("--port " + spec + ": '" + parts[i] + "' needs a number");
            }
        }
        try {
            return new VirtioNetPort.Options(Path.of(parts[0]), queues, mac, poll.micros(), poll.adaptive());
        } catch (IllegalArgumentException e) {
            throw usage("--port " + spec + ": " + e.getMessage());
        }
    }

    private CommandLine.ParameterException usage(String msg) {
        return new CommandLine.ParameterException(spec.commandLine(), msg);
    }
}
