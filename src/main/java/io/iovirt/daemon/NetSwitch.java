// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.devices.net.VirtioNetPort;
import io.iovirt.linux.LinuxException;
import io.iovirt.net.Port;
import io.iovirt.net.StreamPort;
import io.iovirt.net.Switch;
import io.iovirt.net.TapPort;
import io.iovirt.virtio.WorkerGroup;
import java.io.IOException;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * One switch in the daemon and its ports, by id. Every port owns its threads (see {@link Port}); a port that fails
 * drops its own frames only. {@link #ports} is guarded by the daemon's lock; starting and stopping ports is not.
 */
final class NetSwitch implements AutoCloseable {
    /** {@code pollThreads}: shared poll threads for the vhost-user ports' transmit queues (0: a thread per queue). */
    record Spec(String id, int mtu, int macAgingSeconds, int macsPerPort, int pollThreads) {}

    /** A port as requested: kind vhost-user|stream|tap, path (sockets) or ifname (tap). */
    record PortSpec(String id, String kind, String path, int queues, long mac) {}

    record PortEntry(PortSpec spec, Port port, boolean fromConfig) {}

    final Spec spec;
    final Switch sw;
    final boolean fromConfig;
    final Map<String, PortEntry> ports = new LinkedHashMap<>();
    /** Whether the last look found the MAC table overcommitted ({@link #overcommitted}); guarded by the daemon's lock. */
    private boolean overcommitted;
    /** The shared poll threads ({@link Spec#pollThreads}), or null. */
    private final WorkerGroup group;

    NetSwitch(Spec spec, boolean fromConfig) throws LinuxException {
        this.spec = spec;
        this.fromConfig = fromConfig;
        this.group = spec.pollThreads() > 0 ? WorkerGroup.create("net " + spec.id(), spec.pollThreads()) : null;
        this.sw = new Switch(Switch.Config.defaults()
                .withMtu(spec.mtu())
                .withMacAging(spec.macAgingSeconds())
                .withMacTable(Switch.DEFAULT_MAC_CAPACITY, spec.macsPerPort()));
        sw.startHousekeeping();
    }

    /** Starts a port on the switch; the daemon puts it in {@link #ports} (under its lock) if it keeps it. */
    PortEntry startPort(PortSpec ps, boolean fromConfig, io.iovirt.linux.SocketAccess access) throws IOException {
        Port p = switch (ps.kind()) {
            case "vhost-user" ->
                new VirtioNetPort(VirtioNetPort.Options.defaults(Path.of(ps.path()), ps.queues(), ps.mac()))
                        .withAccess(access)
                        .workers(group);
            case "stream" -> new StreamPort(Path.of(ps.path()), access);
            case "tap" -> new TapPort(ps.path());
            default -> throw new IllegalArgumentException("unknown port kind " + ps.kind());
        };
        sw.addPort(p);
        return new PortEntry(ps, p, fromConfig);
    }

    /**
     * Records whether the ports' shares overcommit the MAC table now ({@link Switch#macTableOvercommit()}), after a
     * port came or went (daemon's lock held); true when it has just become so — the daemon warns once per crossing,
     * not at every further port.
     */
    boolean overcommitted(boolean now) {
        boolean began = now && !overcommitted;
        overcommitted = now;
        return began;
    }

    /** Stops a port the daemon has taken out of {@link #ports}: it waits for the port's threads. */
    void stopPort(PortEntry e) {
        sw.removePort(e.port());
    }

    /** Closes every port (each waits for its threads); the daemon empties {@link #ports} under its lock. */
    @Override
    public void close() {
        try {
            sw.close();
        } finally {
            if (group != null) {
                group.close(); // after the ports, even when one's close failed: their queues have left it
            }
        }
    }
}
