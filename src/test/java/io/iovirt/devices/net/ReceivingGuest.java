// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import io.iovirt.linux.EventFd;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.net.Switch;
import io.iovirt.vhostuser.VringSetup;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.VirtioFeatures;
import java.nio.file.Path;

/**
 * A second virtio-net guest on a switch, driven in-process by a test or benchmark: its own vhost-user port, a split
 * receive ring (EVENT_IDX, MRG_RXBUF) with one {@link #BUFFER}-byte buffer per entry posted, and its MAC learned by
 * the switch as after its first frame — the "into another guest's buffers" end of the forwarding path.
 */
final class ReceivingGuest {
    static final int BUFFER = 2048;

    final VirtioNetPort port;
    private final SplitDriverRing ring;
    private final long buffers;
    private final long[] addr = new long[1];
    private final int[] len = {BUFFER};
    private final boolean[] writeOnly = {true};

    /** Adds the port, starts its receive queue at {@code ringAddr} with buffers from {@code buffers} on. */
    ReceivingGuest(
            Switch sw,
            Path socket,
            GuestMemory mem,
            GuestMemoryHolder holder,
            EventFd call,
            long ringAddr,
            int size,
            long buffers,
            long mac)
            throws Exception {
        this.buffers = buffers;
        port = sw.addPort(new VirtioNetPort(VirtioNetPort.Options.of(socket)));
        ring = SplitDriverRing.create(mem, ringAddr, size, true);
        port.queueStarted(
                0,
                new VringSetup(
                        0,
                        size,
                        ring.descAddr(),
                        ring.driverAreaAddr(),
                        ring.deviceAreaAddr(),
                        0,
                        VirtioFeatures.VIRTIO_F_VERSION_1
                                | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
                                | VirtioNet.F_MRG_RXBUF,
                        null,
                        call,
                        null,
                        holder,
                        null));
        for (int i = 0; i < size; i++) {
            post(i);
        }
        sw.macTable().learn(mac, port.index(), sw.now());
    }

    private void post(int id) {
        addr[0] = buffers + (long) BUFFER * id;
        ring.add(addr, len, writeOnly, 1, DriverRing.NO_INDIRECT);
    }

    /**
     * Reaps the frames delivered since the last call and reposts their buffers (no allocation).
     *
     * @return the used entries reaped, summed into {@code sink[0]} (keeps a benchmark's work observable); their count
     */
    int reap(long[] sink) {
        int got = 0;
        for (long u; (u = ring.pollUsed()) != -1; ) {
            got++;
            sink[0] += u;
            post(DriverRing.usedId(u));
        }
        return got;
    }
}
