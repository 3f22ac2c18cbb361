// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import io.iovirt.linux.Errno;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.PacketIo;
import io.iovirt.linux.Tun;
import io.iovirt.virtio.QueueWorker;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * {@code tap:IFNAME} — the host's network stack through a TAP interface (IFF_TAP | IFF_NO_PI, no virtio-net header:
 * the kernel hands over whole, already segmented and checksummed frames). The interface is created if it does not
 * exist (needs CAP_NET_ADMIN) and disappears when the port closes unless it was made persistent beforehand; its
 * address and link state are the host administrator's business ({@code ip addr add ... dev IFNAME; ip link set
 * IFNAME up}). Keep the interface's MTU at or below the switch's: longer frames are dropped as oversize.
 *
 * <p>One {@link QueueWorker} reads frames (non-blocking descriptor) into a 64 KiB buffer and forwards each in place. Transmit writes one frame per write(2) under this port's lock; a full queue drops.
 */
public final class TapPort extends Port {
    private static final int RX_BUFFER = 65536 + 64;
    private static final long TAP = 0;
    /** Frames read per readiness event, see {@link #readAvailable}. */
    private static final int FRAMES_PER_EVENT = 256;

    private final String ifname;
    private final Object txLock = new Object();
    private final RateLimitedLog txLog = new RateLimitedLog(5000);
    private Tun tun;
    private QueueWorker worker;
    private volatile boolean closing;
    /**
     * Set once start() has everything in place (its fields are published by this write): the switch may call
     * {@link #transmit} from the moment the port is added, before start() ran. Cleared when the receive loop ends on
     * its own (the interface was deleted, or a read failed): the port is then down, not silently half-alive.
     */
    private volatile boolean up;

    private MemorySegment rxBuf;
    private Frame rxFrame;
    private Ingress rx;
    private Counters tx; // guarded by txLock

    public TapPort(String ifname) {
        super("tap:" + ifname);
        if (ifname.isEmpty() || ifname.length() > 15 || ifname.contains("/") || ifname.contains(" ")) {
            throw new IllegalArgumentException(
                    "not a valid interface name (1..15 characters, no '/' or spaces): " + ifname);
        }
        this.ifname = ifname;
    }

    /** The interface's name as the kernel reports it. */
    public String interfaceName() {
        return tun != null ? tun.name() : ifname;
    }

    @Override
    public boolean isLinkUp() {
        return up && !closing;
    }

    @Override
    protected void start() throws IOException {
        rxBuf = Arena.ofAuto().allocate(RX_BUFFER, 64);
        rxFrame = new Frame(rxBuf);
        rx = newIngress();
        tx = newCounters();
        try {
            try {
                tun = Tun.openTap(ifname);
            } catch (LinuxException e) {
                if (e.errno() == Errno.EPERM || e.errno() == Errno.EACCES) {
                    throw new IOException(
                            "cannot open TAP interface " + ifname + ": " + e.getMessage()
                                    + " — run as root or with CAP_NET_ADMIN; under systemd, a unit with device rules"
                                    + " (DeviceAllow=, or ProtectClock=yes, which implies one) also needs"
                                    + " DeviceAllow=/dev/net/tun rw (systemctl edit iovirt)",
                            e);
                }
                if (e.errno() == Errno.ENOENT || e.errno() == Errno.ENODEV) {
                    throw new IOException(
                            "cannot open TAP interface " + ifname + ": " + e.getMessage()
                                    + " — /dev/net/tun is missing or has no driver: load the tun module (modprobe"
                                    + " tun); under systemd, PrivateDevices=yes hides it: set PrivateDevices=no and"
                                    + " DeviceAllow=/dev/net/tun rw (systemctl edit iovirt)",
                            e);
                }
                if (e.errno() == Errno.EBUSY) {
                    throw new IOException(
                            "TAP interface " + ifname + " is in use by another process: " + e.getMessage(), e);
                }
                throw new IOException("cannot open TAP interface " + ifname + ": " + e.getMessage(), e);
            }
            tun.fd().setNonBlocking(true);
            worker = receiveWorker(tun.fd(), TAP, (token, events) -> readAvailable(), this::receiveEnded);
        } catch (IOException | RuntimeException e) {
            close();
            throw e;
        }
        up = true;
        worker.start();
    }

    /** The receive loop ended; unless the port is closing, it failed (its error is logged by the loop). */
    private void receiveEnded() {
        if (!closing && up) {
            up = false;
            System.getLogger("io.iovirt.net")
                    .log(
                            System.Logger.Level.ERROR,
                            this + ": the TAP interface stopped working (deleted, or a read failed): the port is down;"
                                    + " remove it and add it again once the interface is back");
        }
    }

    /**
     * Reads frames until the queue is empty or {@link #FRAMES_PER_EVENT} were read: the bound hands the thread back to
     * its loop (level-triggered: a queue still readable is reported again at once), so a host that sends faster than
     * the switch forwards cannot keep it from seeing a stop request.
     */
    private void readAvailable() throws LinuxException {
        try {
            for (int n = 1; n <= FRAMES_PER_EVENT; n++) {
                long len = PacketIo.read(tun.fd(), rxBuf, 0, RX_BUFFER);
                if (len == PacketIo.WOULD_BLOCK) {
                    return;
                }
                receive(rx, rxFrame.set(0, (int) len)); // the switch counts runts and oversize frames
                if (n % 64 == 0) {
                    endBurst(rx);
                }
            }
        } finally {
            endBurst(rx);
        }
    }

    @Override
    protected void transmit(Frame frame) {
        synchronized (txLock) {
            if (!up || closing) {
                if (tx != null) {
                    tx.increment(PortStat.TX_DROPPED_LINK_DOWN);
                }
                return;
            }
            long n;
            try {
                n = PacketIo.write(tun.fd(), frame.buffer(), frame.offset(), frame.length());
            } catch (LinuxException e) {
                if (e.errno() == Errno.EIO) {
                    tx.increment(PortStat.TX_DROPPED_LINK_DOWN); // the interface is administratively down
                } else {
                    tx.increment(PortStat.TX_DROPPED_ERROR);
                    txLog.warn(this + ": write failed: " + e.getMessage());
                }
                return;
            }
            if (n == PacketIo.WOULD_BLOCK) {
                tx.increment(PortStat.TX_DROPPED_NO_BUFFERS);
                return;
            }
            tx.tx(frame.length());
        }
    }

    @Override
    public void close() {
        synchronized (txLock) {
            if (closing) {
                return;
            }
            closing = true;
        }
        stopReceiveWorker(worker);
        if (tun != null) {
            tun.close();
        }
    }
}
