// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryFault;
import io.iovirt.virtio.QueueWorker;
import io.iovirt.virtio.VirtioRing;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * One virtqueue as the vhost-user protocol sees it: its layout (num, addresses, base), its descriptors (kick, call,
 * err) and where it is in its life. Control thread only; the device sees the ring only through the
 * {@link VringSetup} {@link #start} hands it.
 *
 * <p>States (vhost-user.rst, "Ring states"):
 * <pre>
 *   STOPPED ──SET_VRING_KICK──► STARTED ──enabled (or no protocol features) and described──► RUNNING
 *      ▲                          │  ▲                                                        │
 *      └──────GET_VRING_BASE──────┘  └─────SET_VRING_ENABLE 0, SET_VRING_KICK, RESET_DEVICE─────┘
 * </pre>
 * SET_VRING_NUM, SET_VRING_BASE and SET_VRING_ADDR (other than toggling the used-ring log) are accepted only while
 * STOPPED; {@link #move} refuses any transition not drawn above with an {@link IllegalStateException}, which is a
 * bug here, never the frontend's doing (its messages are checked before a transition is asked for).
 */
final class Vring implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.vhostuser");

    /** Largest ring the virtio spec allows. */
    static final int MAX_SIZE = VirtioRing.MAX_QUEUE_SIZE;

    enum State {
        /** No kick since the last GET_VRING_BASE (or ever): the frontend may lay the ring out. */
        STOPPED,
        /** SET_VRING_KICK received: waiting to be enabled and fully described. */
        STARTED,
        /** The device is processing it. */
        RUNNING;

        boolean canMoveTo(State next) {
            return switch (this) {
                case STOPPED -> next == STARTED;
                case STARTED -> next == RUNNING || next == STOPPED;
                case RUNNING -> next == STARTED;
            };
        }
    }

    /**
     * What the negotiated features make of ring sizes: the layout (split or packed), EVENT_IDX and the device's
     * largest queue. Changes only with SET_FEATURES, which is refused while a ring runs.
     */
    record Layout(boolean packed, boolean eventIdx, int maxSize) {
        void checkSize(int index, int num) throws ProtocolException {
            if (num < 1 || num > maxSize) {
                throw new ProtocolException(
                        "queue " + index + " size " + Integer.toUnsignedString(num) + " is outside 1.." + maxSize);
            }
            if (!packed && Integer.bitCount(num) != 1) {
                throw new ProtocolException("queue " + index + " size " + num + " is not a power of two (split ring)");
            }
        }

        long descBytes(int size) {
            return VirtioRing.descAreaBytes(size);
        }

        long driverBytes(int size) {
            return VirtioRing.driverAreaBytes(packed, size, eventIdx);
        }

        long deviceBytes(int size) {
            return VirtioRing.deviceAreaBytes(packed, size, eventIdx);
        }
    }

    final int index;
    private final String name;
    private final VhostUserBackend device;

    private State state = State.STOPPED;
    private boolean enabled;
    private int size;
    private boolean addrSet;
    private long descGpa;
    private long driverGpa;
    private long deviceGpa;
    private int base;
    private EventFd kick;
    private EventFd call;
    private EventFd err;
    /** The in-flight region the device's queue records its requests in while it runs, or null. */
    private InflightRegion runningInflight;
    /** migration: log_guest_addr of SET_VRING_ADDR when it had VHOST_VRING_F_LOG, else -1. */
    private long usedLogAddr = -1;

    /**
     * What this device's frontends did to the eventfds they sent ({@link EventFd.PeerConduct}); the stand-ins the
     * device signals until the frontend's call and err eventfds are swapped in behind them share it.
     */
    private final EventFd.PeerConduct eventFds;

    Vring(int index, String name, VhostUserBackend device) {
        this(index, name, device, new EventFd.PeerConduct());
    }

    Vring(int index, String name, VhostUserBackend device, EventFd.PeerConduct eventFds) {
        this.index = index;
        this.name = name;
        this.device = device;
        this.eventFds = eventFds;
    }

    State state() {
        return state;
    }

    boolean running() {
        return state == State.RUNNING;
    }

    int base() {
        return base;
    }

    int size() {
        return size;
    }

    private void move(State next) {
        if (!state.canMoveTo(next)) {
            throw new IllegalStateException(name + ": queue " + index + " cannot go from " + state + " to " + next);
        }
        state = next;
    }

    /** Layout messages are for a stopped ring only. */
    private void requireStopped(MessageType type) throws ProtocolException {
        if (state != State.STOPPED) {
            throw new ProtocolException(type.specName() + " for queue " + index + " while it is started"
                    + (state == State.RUNNING ? " and running" : "") + " (stop it with GET_VRING_BASE first)");
        }
    }

    /** SET_VRING_NUM. */
    void setNum(int num, Layout layout) throws ProtocolException {
        requireStopped(MessageType.SET_VRING_NUM);
        layout.checkSize(index, num);
        size = num;
    }

    /**
     * SET_VRING_ADDR: the frontend's addresses translated to guest physical ones, each area inside one region. On a
     * started ring only the used-ring log may change (migration), with the same three addresses.
     */
    void setAddr(MemorySegment p, MemoryTable memory, Layout layout) throws ProtocolException {
        int flags = Payloads.VringAddr.flags(p);
        if ((flags & ~Payloads.VringAddr.F_LOG) != 0) {
            throw new ProtocolException(
                    "SET_VRING_ADDR for queue " + index + " has unknown flags 0x" + Integer.toHexString(flags));
        }
        long logAddr = (flags & Payloads.VringAddr.F_LOG) != 0 ? Payloads.VringAddr.log(p) : -1;
        int n = size == 0 ? 1 : size; // checked again with the final size when the queue starts
        if (state != State.STOPPED && sameAddresses(p, memory, layout, n)) {
            usedLogAddr = logAddr; // migration: only logging changed on a started ring
            LOG.log(
                    System.Logger.Level.DEBUG,
                    () -> name + ": queue " + index + " used-ring logging "
                            + (usedLogAddr == -1 ? "off" : String.format("at 0x%x", usedLogAddr)));
            return;
        }
        requireStopped(MessageType.SET_VRING_ADDR);
        try {
            descGpa = memory.toGuestPhys(Payloads.VringAddr.desc(p), layout.descBytes(n));
            driverGpa = memory.toGuestPhys(Payloads.VringAddr.avail(p), layout.driverBytes(n));
            deviceGpa = memory.toGuestPhys(Payloads.VringAddr.used(p), layout.deviceBytes(n));
        } catch (GuestMemoryFault e) {
            addrSet = false;
            throw new ProtocolException("SET_VRING_ADDR for queue " + index + ": " + e.getMessage()
                    + (memory.current().regionCount() == 0 ? " (no memory table yet)" : ""));
        }
        addrSet = true;
        usedLogAddr = logAddr;
    }

    private boolean sameAddresses(MemorySegment p, MemoryTable memory, Layout layout, int n) {
        try {
            return addrSet
                    && memory.toGuestPhys(Payloads.VringAddr.desc(p), layout.descBytes(n)) == descGpa
                    && memory.toGuestPhys(Payloads.VringAddr.avail(p), layout.driverBytes(n)) == driverGpa
                    && memory.toGuestPhys(Payloads.VringAddr.used(p), layout.deviceBytes(n)) == deviceGpa;
        } catch (GuestMemoryFault e) {
            return false;
        }
    }

    /** SET_VRING_BASE. */
    void setBase(int num, Layout layout) throws ProtocolException {
        requireStopped(MessageType.SET_VRING_BASE);
        if (!layout.packed() && Integer.compareUnsigned(num, 0xffff) > 0) {
            throw new ProtocolException("SET_VRING_BASE for queue " + index + ": " + Integer.toUnsignedString(num)
                    + " is not a 16-bit ring index");
        }
        base = num;
    }

    /** SET_VRING_KICK: the ring is started on {@code next} (null: the frontend polls). The caller stopped it first. */
    void setKick(EventFd next) {
        if (state == State.RUNNING) {
            closeQuietly(next);
            throw new IllegalStateException(
                    name + ": queue " + index + " kick replaced while the device still runs it");
        }
        closeQuietly(kick);
        kick = next;
        if (state == State.STOPPED) {
            move(State.STARTED);
        }
    }

    /**
     * SET_VRING_CALL / SET_VRING_ERR. While the device runs it signals the current descriptor: the new file is
     * swapped in behind the same number instead (a private eventfd when the frontend withdraws it).
     *
     * <p>A new call eventfd is signalled once, as libvhost-user does: an interrupt the device sent to the file being
     * replaced may be one the driver never sees. QEMU (up to at least 7.2) masks an MSI-X vector by pointing the call
     * at an eventfd of its own and, on unmask, sends the guest's eventfd again and at once looks whether the masked one
     * was signalled, without waiting for the backend to take the new one — so an interrupt sent in between is lost
     * and a guest waiting for that completion hangs (fixed in QEMU by "vhost-user: Make vhost_set_vring_file()
     * synchronous", 2025). After a backend restart the same holds for the used entries the previous process
     * published and never signalled. An extra interrupt costs the driver one look at its used ring.
     */
    void setNotifier(boolean isCall, EventFd next) throws LinuxException {
        EventFd current = isCall ? call : err;
        if (state == State.RUNNING && current != null) {
            try (EventFd replacement = next != null ? next : EventFd.create(true)) {
                current.fd().replaceWith(replacement.fd());
                if (isCall && next != null) {
                    interruptOnce(replacement); // the same file, through an object the device's thread does not use
                }
            }
            return;
        }
        closeQuietly(current);
        if (isCall) {
            call = next;
            if (next != null) {
                interruptOnce(next);
            }
        } else {
            err = next;
        }
    }

    private void interruptOnce(EventFd call) throws LinuxException {
        if (!call.trySignal()) { // its counter is full: an interrupt is pending anyway (or the frontend's fault)
            LOG.log(System.Logger.Level.DEBUG, () -> name + ": queue " + index + ": new call eventfd is full");
        }
    }

    /** SET_VRING_ENABLE 0 or 1. The caller stops the device on 0 and tries {@link #start} on 1. */
    void setEnabled(boolean on) {
        enabled = on;
    }

    /** Started and, with the protocol-features dialect, enabled: the device should run it. */
    boolean ready(boolean protocolFeatures) {
        return state == State.STARTED && (enabled || !protocolFeatures);
    }

    /**
     * Hands the ring to the device: checks it is fully described, that its areas lie inside guest memory, aligned,
     * and that a packed base points inside the ring.
     *
     * @param features the virtio features the device sees
     * @param region the connection's crash-recovery memory, or null; the queue gets its part when the region's
     *     description covers it
     */
    VringSetup start(Layout layout, MemoryTable memory, long features, InflightRegion region)
            throws IOException, BackendException {
        if (size == 0 || !addrSet) {
            throw new ProtocolException(
                    "queue " + index + " started without " + (size == 0 ? "SET_VRING_NUM" : "SET_VRING_ADDR"));
        }
        layout.checkSize(index, size);
        boolean packed = layout.packed();
        GuestMemory mem = memory.current();
        checkArea(
                mem,
                VirtioRing.descAreaName(packed),
                descGpa,
                layout.descBytes(size),
                VirtioRing.descAreaAlign(packed));
        checkArea(
                mem,
                VirtioRing.driverAreaName(packed),
                driverGpa,
                layout.driverBytes(size),
                VirtioRing.driverAreaAlign(packed));
        checkArea(
                mem,
                VirtioRing.deviceAreaName(packed),
                deviceGpa,
                layout.deviceBytes(size),
                VirtioRing.deviceAreaAlign(packed));
        if (packed && ((base & 0x7fff) >= size || ((base >>> 16) & 0x7fff) >= size)) {
            throw new ProtocolException("queue " + index + " base 0x" + Integer.toHexString(base)
                    + " points outside its " + size + "-entry packed ring");
        }
        // Without a call or err eventfd the device still gets one of ours: it may signal freely, and a SET_VRING_CALL
        // or SET_VRING_ERR that comes while the ring runs swaps the frontend's file in behind its number
        // (setNotifier) — the device keeps the descriptor it was started with.
        MemorySegment inflight = region == null ? null : region.queue(index, size);
        if (call == null) {
            call = EventFd.createStandIn(eventFds);
        }
        if (err == null) {
            err = EventFd.createStandIn(eventFds);
        }
        VringSetup setup = new VringSetup(
                index, size, descGpa, driverGpa, deviceGpa, base, features, kick, call, err, memory.holder(), inflight);
        device.queueStarted(index, setup);
        runningInflight = inflight == null ? null : region;
        move(State.RUNNING);
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": started " + setup);
        return setup;
    }

    private void checkArea(GuestMemory mem, String what, long gpa, long len, int align) throws ProtocolException {
        MemorySegment host;
        try {
            host = mem.translate(gpa, len);
        } catch (GuestMemoryFault e) {
            throw new ProtocolException("queue " + index + " " + what + ": " + e.getMessage());
        }
        if (gpa % align != 0 || host.address() % align != 0) {
            throw new ProtocolException(
                    String.format("queue %d %s at GPA 0x%x is not %d-byte aligned", index, what, gpa, align));
        }
    }

    /**
     * When several rings stop together: asks the device to begin stopping this one without waiting
     * ({@link VhostUserBackend#queueStopping}); {@link #stopDevice} then waits for it.
     */
    void requestStop() {
        if (state == State.RUNNING) {
            device.queueStopping(index);
        }
    }

    /**
     * Takes the ring from the device, which reports where it stopped (the next base).
     *
     * @return true when the device was running it
     */
    boolean stopDevice() {
        if (state != State.RUNNING) {
            return false;
        }
        move(State.STARTED);
        base = device.queueStopped(index);
        QueueWorker still = device.stillRunning(index);
        if (still != null) {
            park(still);
        }
        runningInflight = null;
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": stopped queue " + index + " at base " + base);
        return true;
    }

    /**
     * The device gave the queue up with its thread still running ({@link VhostUserBackend#stillRunning}): that thread
     * may still read the kick, or signal call or err once its blocked call returns, through the raw numbers it holds.
     * Closed here, as a stop closes them, a number could be reused at once by an unrelated open — another guest's
     * image file or socket — and an 8-byte write of that thread land there. So each number is pointed at a fresh
     * eventfd of ours (dup3, atomic whatever the thread does meanwhile: a late signal reaches no one's file) and the
     * worker closes it once its thread has ended. The frontend's call and err stay with this ring under new numbers
     * (they outlive a stop and a reset), its kick goes (a stop closes it); descriptors the frontend sends from now on
     * are this ring's alone. The in-flight region the thread records its requests in stays mapped until then too
     * ({@link InflightRegion#pin}).
     */
    private void park(QueueWorker worker) {
        List<AutoCloseable> parked = new ArrayList<>(4);
        if (runningInflight != null) {
            parked.add(runningInflight.pin());
        }
        if (kick != null) {
            parked.add(kick);
            setAside(kick, "kick");
            kick = null;
        }
        if (call != null) {
            parked.add(call);
            call = keep(call, "call");
        }
        if (err != null) {
            parked.add(err);
            err = keep(err, "err");
        }
        worker.closeWhenEnded(parked);
        LOG.log(
                System.Logger.Level.WARNING,
                name + ": queue " + index + ": its thread still runs; the descriptor numbers it uses stay open,"
                        + " pointed at eventfds of ours, until it has ended");
    }

    /** A new descriptor for {@code e}'s file, for this ring, and {@code e} set aside; null when dup fails. */
    private EventFd keep(EventFd e, String what) {
        EventFd kept = null;
        try {
            kept = e.duplicate();
        } catch (LinuxException ex) {
            LOG.log(
                    System.Logger.Level.WARNING,
                    name + ": queue " + index + ": cannot keep its " + what + " descriptor (" + ex.getMessage()
                            + "); the frontend has to send it again");
        }
        setAside(e, what);
        return kept;
    }

    /** Points {@code e}'s number at a fresh eventfd of ours: the frontend's file is no longer reached through it. */
    private void setAside(EventFd e, String what) {
        try (EventFd standIn = EventFd.create(true)) {
            e.fd().replaceWith(standIn.fd());
        } catch (LinuxException ex) { // the number stays the frontend's file, and open: no one else's either
            LOG.log(
                    System.Logger.Level.WARNING,
                    name + ": queue " + index + ": cannot set its " + what + " descriptor aside (" + ex.getMessage()
                            + "); the thread still running it may signal it");
        }
    }

    /** GET_VRING_BASE, once the device let go: stopped, its kick closed. */
    void stop() {
        if (state == State.RUNNING) {
            throw new IllegalStateException(name + ": queue " + index + " stopped while the device still runs it");
        }
        if (state == State.STARTED) {
            move(State.STOPPED);
        }
        closeQuietly(kick);
        kick = null;
    }

    /**
     * RESET_DEVICE, once the device let go: stopped, disabled, layout forgotten. call and err stay (the spec keeps
     * them across a device reset).
     */
    void reset() {
        stop();
        enabled = false;
        addrSet = false;
        size = 0;
        base = 0;
        usedLogAddr = -1;
    }

    /** The connection ended, the device let go: every descriptor closed. */
    @Override
    public void close() {
        if (state == State.RUNNING) {
            throw new IllegalStateException(name + ": queue " + index + " closed while the device still runs it");
        }
        stop();
        closeQuietly(call);
        closeQuietly(err);
        call = err = null;
    }

    private static void closeQuietly(EventFd e) {
        if (e != null) {
            e.close();
        }
    }
}
