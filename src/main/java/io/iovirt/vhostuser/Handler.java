// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.util.LogLimiter;
import io.iovirt.virtio.DeviceStatus;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * Dispatch for one connection: each message {@link Connection} decoded and shape-checked ({@link MessageType}'s
 * table) is checked for the protocol feature it needs, routed to the component that owns its state, and answered.
 * Runs on the connection's control thread only.
 *
 * <ul>
 * <li>{@link Negotiation}: virtio and protocol features, what the device sees of them, the ring layout;
 * <li>{@link MemoryTable}: guest memory regions, their reference counts and the frontend-VA → GPA index;
 * <li>{@link Vring}: each ring's state machine (STOPPED → STARTED → RUNNING) and its descriptors;
 * <li>here: what spans rings — dirty logging (SET_LOG_BASE, LOG_ALL), the in-flight memory (INFLIGHT_SHMFD),
 *     config space, device status, reset, the backend channel — and the calls into the device.
 * </ul>
 *
 * <p>A ring runs on the device exactly while it is started, enabled (with the protocol-features dialect; otherwise
 * always) and described; disabling a running ring stops the device's processing (QEMU 7.2 disables before
 * GET_VRING_BASE), and GET_VRING_BASE then reports the index the device stopped at.
 */
final class Handler implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.vhostuser");

    /** Queue indices travel in 8 bits (VHOST_USER_VRING_IDX_MASK). */
    static final int MAX_QUEUES = 256;

    private static final MemorySegment EMPTY = MemorySegment.ofArray(new byte[0]);

    private final VhostUserBackend backend;
    private final String name;
    private final Negotiation negotiated;
    private final Vring[] vrings;
    private final MemoryTable memory;
    /** The device's share of descriptor checks that may wait at once; its server's, shared by its sessions. */
    private final PeerFile.Quota checks;

    private int status;
    /** SET_BACKEND_REQ_FD's channel, handed to the device; closed with the connection. */
    private BackendChannel backendChannel;

    /**
     * Lines a frontend can repeat at will — refused requests, dirty logging turned on or off, a new dirty log or
     * in-flight region, a queue stopped while logging: the server's bucket for them, shared by sessions.
     */
    private final LogLimiter frontendLines;

    /**
     * What the device's frontends did to the eventfds they sent — its server's, shared by sessions: a frontend that
     * once made a write of ours block has every eventfd looked at before each write, also after a reconnect.
     */
    private final EventFd.PeerConduct eventFds;

    /** A handler logging through a bucket of its own (tests, and the server's check of a device). */
    Handler(VhostUserBackend backend, String name, PeerFile.Quota checks) {
        this(backend, name, checks, new LogLimiter(LOG), new EventFd.PeerConduct());
    }

    Handler(
            VhostUserBackend backend,
            String name,
            PeerFile.Quota checks,
            LogLimiter frontendLines,
            EventFd.PeerConduct eventFds) {
        this.frontendLines = frontendLines;
        this.eventFds = eventFds;
        this.backend = backend;
        this.name = name;
        this.checks = checks;
        this.memory = new MemoryTable(name, checks, backend::memoryChanged);
        int n = backend.queueCount();
        if (n < 1 || n > MAX_QUEUES) {
            throw new IllegalArgumentException("a vhost-user device has 1.." + MAX_QUEUES + " queues, not " + n);
        }
        this.negotiated = new Negotiation(backend);
        this.vrings = new Vring[n];
        for (int i = 0; i < n; i++) {
            vrings[i] = new Vring(i, name, backend, eventFds);
        }
    }

    /**
     * Acts on one message and sends its reply. The message's unused descriptors are closed on return.
     *
     * @throws ProtocolException the frontend broke the protocol: the caller closes the connection
     * @throws IOException       the reply could not be sent
     */
    void handle(Message m, Connection c) throws IOException {
        try (m) {
            LOG.log(System.Logger.Level.DEBUG, () -> name + ": " + m);
            MessageType type = m.type();
            int required = type.protocolFeature();
            if (required >= 0 && !negotiated.hasProtocolFeature(required)) {
                throw new ProtocolException(
                        type.specName() + " needs protocol feature " + required + ", which was not negotiated");
            }
            try {
                dispatch(m, c);
                if (!type.hasReplyBody() && m.needReply() && replyAck()) {
                    c.sendReply(type, 0);
                }
            } catch (BackendException e) {
                frontendLines.log(
                        System.Logger.Level.WARNING, name + ": " + type.specName() + " refused: " + e.getMessage());
                if (type == MessageType.GET_CONFIG) {
                    c.sendReply(type, EMPTY); // an empty reply is GET_CONFIG's failure
                } else if (!type.hasReplyBody() && m.needReply() && replyAck()) {
                    c.sendReply(type, 1);
                }
            }
        }
    }

    private boolean replyAck() {
        return negotiated.replyAck();
    }

    private void dispatch(Message m, Connection c) throws IOException, BackendException {
        MemorySegment p = m.payload();
        switch (m.type()) {
            case GET_FEATURES -> c.sendReply(m.type(), negotiated.offeredFeatures());
            case SET_FEATURES -> setFeatures(Payloads.u64(p));
            case SET_OWNER -> {
                // marks the start of a session; all session state already belongs to this connection
            }
            case SET_LOG_BASE -> setLogBase(m, c); // migration (issue 11)
            case GET_INFLIGHT_FD -> getInflightFd(p, c); // crash recovery (issue 11)
            case SET_INFLIGHT_FD -> setInflightFd(m);
            case SET_LOG_FD ->
                throw new BackendException("SET_LOG_FD is not supported: the log is shared memory (LOG_SHMFD)");
            case RESET_OWNER -> stopAll(); // deprecated; the spec recommends at most disabling the rings
            case GET_PROTOCOL_FEATURES -> c.sendReply(m.type(), negotiated.offeredProtocolFeatures());
            case SET_PROTOCOL_FEATURES -> negotiated.ackProtocolFeatures(Payloads.u64(p));
            case GET_QUEUE_NUM -> c.sendReply(m.type(), vrings.length);
            case GET_MAX_MEM_SLOTS -> c.sendReply(m.type(), MemoryTable.MAX_SLOTS);
            case SET_MEM_TABLE -> memory.set(m);
            case ADD_MEM_REG -> memory.add(m);
            case REM_MEM_REG -> memory.remove(Payloads.SingleRegion.region(p));
            case SET_VRING_NUM -> setVringNum(Payloads.VringState.index(p), Payloads.VringState.num(p));
            case SET_VRING_ADDR -> setVringAddr(p);
            case SET_VRING_BASE -> setVringBase(Payloads.VringState.index(p), Payloads.VringState.num(p));
            case GET_VRING_BASE -> getVringBase(Payloads.VringState.index(p), c);
            case SET_VRING_KICK -> setVringKick(m);
            case SET_VRING_CALL, SET_VRING_ERR -> setVringNotifier(m);
            case SET_VRING_ENABLE -> setVringEnable(Payloads.VringState.index(p), Payloads.VringState.num(p));
            case GET_CONFIG -> getConfig(p, c);
            case SET_CONFIG -> setConfig(p);
            case SET_STATUS -> setStatus(Payloads.u64(p));
            case GET_STATUS -> c.sendReply(m.type(), (status | backend.deviceStatus()) & DeviceStatus.MAX);
            case RESET_DEVICE -> resetDevice();
            case SET_BACKEND_REQ_FD -> setBackendReqFd(m);
            case SEND_RARP -> {
                byte[] mac = new byte[6];
                MemorySegment.copy(p, JAVA_BYTE, 0, mac, 0, 6);
                backend.sendRarp(mac);
            }
            case NET_SET_MTU -> {
                long mtu = Payloads.u64(p);
                if (mtu < 68 || mtu > 65535) {
                    throw new BackendException("MTU " + Long.toUnsignedString(mtu) + " is outside 68..65535");
                }
                backend.setMtu((int) mtu);
            }
            default -> throw new ProtocolException(m.type().specName() + " is not supported by this backend");
        }
    }

    // ---- features ---------------------------------------------------------------------------------------------

    private void setFeatures(long features) throws ProtocolException, BackendException {
        long changed = negotiated.checkFeatures(features);
        for (Vring v : vrings) {
            // migration: the frontend turns dirty logging on and off (VHOST_F_LOG_ALL) while the rings run
            if (v.running() && changed != 0 && changed != Features.VHOST_F_LOG_ALL) {
                throw new ProtocolException("SET_FEATURES changes features while queue " + v.index + " is running");
            }
        }
        boolean wasLogging = logging();
        negotiated.ackFeatures(features);
        backend.setFeatures(deviceFeatures());
        publishLog(); // migration (issue 11)
        if (wasLogging != logging()) {
            frontendLines.log(
                    System.Logger.Level.INFO,
                    name + ": dirty page logging " + (logging() ? "on" : "off")
                            + (dirtyLog == null && logging() ? " (no log yet)" : ""));
        }
    }

    private long deviceFeatures() {
        return negotiated.deviceFeatures();
    }

    private boolean protocolFeaturesNegotiated() {
        return negotiated.protocolFeaturesNegotiated();
    }

    // ---- rings: routed to their Vring ----------------------------------------------------------------------------

    private Vring vring(MessageType type, long index) throws ProtocolException {
        if (index < 0 || index >= vrings.length) {
            throw new ProtocolException(type.specName() + " for queue " + Long.toUnsignedString(index)
                    + ", but the device has " + vrings.length);
        }
        return vrings[(int) index];
    }

    private Vring.Layout layout() {
        return negotiated.ringLayout();
    }

    private void setVringNum(int index, int num) throws ProtocolException {
        vring(MessageType.SET_VRING_NUM, Integer.toUnsignedLong(index)).setNum(num, layout());
    }

    private void setVringAddr(MemorySegment p) throws ProtocolException {
        vring(MessageType.SET_VRING_ADDR, Integer.toUnsignedLong(Payloads.VringAddr.index(p)))
                .setAddr(p, memory, layout());
        publishLog(); // migration (issue 11)
    }

    private void setVringBase(int index, int num) throws ProtocolException {
        vring(MessageType.SET_VRING_BASE, Integer.toUnsignedLong(index)).setBase(num, layout());
    }

    private void getVringBase(int index, Connection c) throws IOException {
        Vring v = vring(MessageType.GET_VRING_BASE, Integer.toUnsignedLong(index));
        v.stopDevice();
        if (logging()) { // a migration's switch-over: worth a line with its time
            frontendLines.log(
                    System.Logger.Level.INFO,
                    name + ": queue " + v.index + " stopped at " + v.base() + " (logging on)");
        }
        v.stop();
        MemorySegment reply = Arena.ofAuto().allocate(Payloads.VRING_STATE_SIZE);
        Payloads.VringState.write(reply, v.index, v.base());
        c.sendReply(MessageType.GET_VRING_BASE, reply);
    }

    private void setVringKick(Message m) throws IOException, BackendException {
        long idx = Payloads.u64(m.payload());
        Vring v = vring(MessageType.SET_VRING_KICK, idx & Payloads.VRING_IDX_MASK);
        v.stopDevice(); // a new kick descriptor: restart the device's processing on it
        v.setKick(m.fdCount() == 1 ? peerEventFd(m, "SET_VRING_KICK", v.index) : null);
        maybeStart(v);
    }

    private void setVringNotifier(Message m) throws IOException {
        long idx = Payloads.u64(m.payload());
        Vring v = vring(m.type(), idx & Payloads.VRING_IDX_MASK);
        v.setNotifier(
                m.type() == MessageType.SET_VRING_CALL,
                m.fdCount() == 1 ? peerEventFd(m, m.type().specName(), v.index) : null);
    }

    /**
     * The message's descriptor as an eventfd, checked: a frontend may send a socket, a pipe, a regular file or a
     * blocking eventfd it pre-filled. Anything but an eventfd is a protocol error; the eventfd is made non-blocking
     * (see {@link EventFd#adoptFromPeer} for why that alone is not relied on).
     */
    private EventFd peerEventFd(Message m, String what, int queue) throws ProtocolException {
        try {
            return EventFd.adoptFromPeer(m.takeFd(0), what + " descriptor of queue " + queue, eventFds);
        } catch (EventFd.NotAnEventFd e) {
            throw new ProtocolException(e.getMessage() + " (kick, call and err descriptors must be eventfds)");
        } catch (LinuxException e) {
            throw new ProtocolException(what + " descriptor of queue " + queue + ": " + e.getMessage(), e);
        }
    }

    private void setVringEnable(int index, int num) throws IOException, BackendException {
        Vring v = vring(MessageType.SET_VRING_ENABLE, Integer.toUnsignedLong(index));
        // QEMU's vhost-user-net disables every ring (SET_VRING_ENABLE 0) in vhost_net_init, after the protocol
        // features handshake but before SET_FEATURES: "negotiated" there means offered and handshaken.
        if (!protocolFeaturesNegotiated()) {
            throw new ProtocolException("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated");
        }
        if (num != 0 && num != 1) {
            throw new ProtocolException("SET_VRING_ENABLE for queue " + v.index + " with "
                    + Integer.toUnsignedString(num) + ", expected 0 or 1");
        }
        v.setEnabled(num == 1);
        if (num == 1) {
            maybeStart(v);
        } else {
            v.stopDevice();
        }
    }

    /** Hands the ring to the device once it is started, enabled (when that applies) and fully described. */
    private void maybeStart(Vring v) throws IOException, BackendException {
        if (v.ready(protocolFeaturesNegotiated())) {
            v.start(layout(), memory, deviceFeatures(), inflight); // crash recovery (issue 11)
        }
    }

    /**
     * Every ring asked to stop first, then each waited for: queues a frontend holds up (a request stuck in I/O) stop
     * together within the device's one bound, not one bound each in a row on this connection's thread.
     */
    private void stopAll() {
        for (Vring v : vrings) {
            v.requestStop();
        }
        // every ring was asked to stop: each is stopped (its state, position and NEEDS_RESET settled) even when an
        // earlier one's stop fails, and the first failure is reported after
        RuntimeException failure = null;
        for (Vring v : vrings) {
            try {
                v.stopDevice();
            } catch (RuntimeException e) {
                if (failure == null) {
                    failure = e;
                } else {
                    failure.addSuppressed(e);
                }
            }
        }
        if (failure != null) {
            throw failure;
        }
    }

    // ---- migration: dirty page logging (issue 11) ----------------------------------------------------------------
    //
    // QEMU, when a migration starts: SET_LOG_BASE (the bitmap), SET_FEATURES with VHOST_F_LOG_ALL, then SET_VRING_ADDR
    // with VHOST_VRING_F_LOG for each ring - all while the rings run; the reverse when it ends or fails, and
    // SET_LOG_BASE again with a bigger log when guest memory grows meanwhile. Devices see the log through their
    // memory holder (WriteLog), and only while it is on.

    /** The log the frontend gave last (mapped), or null. */
    private DirtyLog dirtyLog;

    /** Whether this connection has had a log (see {@link #setLogBase}: the first one arriving with LOG_ALL on). */
    private boolean hadLog;

    private boolean logging() {
        return negotiated.logging();
    }

    /**
     * Installs what devices mark (or nothing) after any change of the log or of LOG_ALL. Ring writes are logged at
     * the rings' guest addresses; QEMU's log_guest_addr is the used ring's guest address, so that is the same bit.
     */
    private void publishLog() {
        memory.holder().writeLog(logging() ? dirtyLog : null);
    }

    /**
     * SET_LOG_BASE: maps the new log, installs it, retires the old one, moves what is still marked in it to the
     * new one and replies (the frontend waits for it). The frontend syncs and frees the old log as soon as we
     * reply, while a device thread may be between reading the old log and marking it: {@link DirtyLog#retire} waits
     * for such marks and forwards any later one to the new log, so the queues keep running (and a blk export keeps
     * its image lock) across the swap. The frontend may also have synced and freed the old log long before: QEMU
     * 7.2 does when it restarts a device during a migration, and the rings it starts before the new log arrives
     * mark the old one ({@link #publishLog} installs it again with LOG_ALL) — {@link DirtyLog#carryOver}.
     */
    private void setLogBase(Message m, Connection c) throws IOException, BackendException {
        if (!negotiated.hasProtocolFeature(Features.PROTOCOL_LOG_SHMFD)) {
            throw new ProtocolException("SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD negotiated");
        }
        MemorySegment p = m.payload();
        if (p.byteSize() != Payloads.LOG_SIZE || m.fdCount() != 1) {
            throw new ProtocolException("SET_LOG_BASE needs a " + Payloads.LOG_SIZE + "-byte log description and one "
                    + "descriptor, got " + p.byteSize() + " bytes and " + m.fdCount());
        }
        DirtyLog next =
                DirtyLog.map(name, checks, m.takeFd(0), Payloads.Log.size(p), Payloads.Log.offset(p), frontendLines);
        if (!hadLog && logging()) {
            // A migration starts with SET_LOG_BASE, then LOG_ALL. LOG_ALL before this connection's first log is a
            // frontend that (re)connected while a migration runs - after a backend crash or restart. QEMU 7.2 then
            // drops what the previous connection logged since its last sync: on the hang-up vhost-user-blk marks
            // the device stopped, so vhost_dev_stop's final sync (vhost_log_put -> vhost_sync_dirty_bitmap, which
            // returns early when !started) reads nothing before the log is freed. Nobody knows which pages the
            // previous process wrote in that window, so all of them are reported: QEMU copies guest RAM once more.
            // All of guest memory, not all the log covers: the log's size is the frontend's to choose (up to 4 GiB,
            // sparse), and marking past the guest's RAM would only fault in the frontend's file at the backend's
            // expense.
            long pages = next.markAll(memory.holder().get());
            frontendLines.log(
                    System.Logger.Level.INFO,
                    name + ": logging was on before this connection's first dirty log (the frontend reconnected "
                            + "during a migration): marked all " + pages + " pages of guest memory dirty, for what "
                            + "the previous connection wrote after the frontend's last sync");
        }
        hadLog = true;
        DirtyLog old = dirtyLog;
        dirtyLog = next;
        publishLog();
        long carried = 0;
        if (old != null) {
            old.retire(next);
            // What the frontend has not read of the old log moves to the new one: QEMU may have synced and freed
            // the old log already, with a ring marking it since (see DirtyLog.carryOver).
            carried = old.carryOver(next, memory.holder().get());
            old.close();
        }
        frontendLines.log(
                System.Logger.Level.INFO,
                name + ": " + next + (logging() ? " (logging on)" : "")
                        + (carried > 0 ? ", " + carried + " pages still marked in the previous log carried over" : ""));
        c.sendReply(MessageType.SET_LOG_BASE, 0L);
    }

    private boolean anyRunning() {
        for (Vring v : vrings) {
            if (v.running()) {
                return true;
            }
        }
        return false;
    }

    private void closeLogs() {
        memory.holder().writeLog(null);
        if (dirtyLog != null) {
            dirtyLog.retire(null);
            dirtyLog.close();
            dirtyLog = null;
        }
    }

    // ---- crash recovery: in-flight memory (issue 11) ---------------------------------------------------------------

    /** The in-flight region queues record their requests in (INFLIGHT_SHMFD), or null. */
    private InflightRegion inflight;

    private void getInflightFd(MemorySegment p, Connection c) throws IOException {
        int n = Payloads.Inflight.numQueues(p);
        int qs = Payloads.Inflight.queueSize(p);
        if (n < 1 || n > vrings.length || qs < 1 || qs > negotiated.maxQueueSize()) {
            throw new ProtocolException("GET_INFLIGHT_FD for " + n + " queues of " + qs + ": the device has "
                    + vrings.length + " queues of at most " + negotiated.maxQueueSize());
        }
        InflightRegion next;
        try {
            next = InflightRegion.create(name, n, qs);
        } catch (LinuxException e) {
            throw new ProtocolException("GET_INFLIGHT_FD: cannot create the in-flight memory: " + e.getMessage(), e);
        }
        replaceInflight(next);
        MemorySegment reply = Arena.ofAuto().allocate(Payloads.INFLIGHT_SIZE);
        Payloads.Inflight.write(reply, next.size(), 0, n, qs);
        c.sendReply(MessageType.GET_INFLIGHT_FD, reply, List.of(next.fd()));
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": created " + next);
    }

    private void setInflightFd(Message m) throws ProtocolException {
        MemorySegment p = m.payload();
        int n = Payloads.Inflight.numQueues(p);
        int qs = Payloads.Inflight.queueSize(p);
        if (n < 1 || n > vrings.length || qs < 1 || qs > negotiated.maxQueueSize()) {
            throw new ProtocolException("SET_INFLIGHT_FD for " + n + " queues of " + qs + ": the device has "
                    + vrings.length + " queues of at most " + negotiated.maxQueueSize());
        }
        InflightRegion next = InflightRegion.map(
                checks, m.takeFd(0), Payloads.Inflight.mmapSize(p), Payloads.Inflight.mmapOffset(p), n, qs);
        replaceInflight(next);
        frontendLines.log(System.Logger.Level.INFO, name + ": frontend kept " + next);
    }

    private void replaceInflight(InflightRegion next) throws ProtocolException {
        if (anyRunning()) {
            next.close();
            throw new ProtocolException("in-flight memory changed while queues run");
        }
        if (inflight != null) {
            inflight.close();
        }
        inflight = next;
    }

    // ---- config, status, reset --------------------------------------------------------------------------------

    private void getConfig(MemorySegment p, Connection c) throws IOException, BackendException {
        int offset = Payloads.Config.offset(p);
        int size = Payloads.Config.size(p);
        int flags = Payloads.Config.flags(p);
        if (offset < 0 || offset > Payloads.CONFIG_MAX_DATA || size > Payloads.CONFIG_MAX_DATA - offset) {
            throw new BackendException("GET_CONFIG range " + Integer.toUnsignedString(offset) + "+" + size
                    + " is outside the configuration space");
        }
        byte[] data = backend.readConfig(offset, size);
        if (data.length != size) {
            throw new BackendException("device returned " + data.length + " bytes of configuration for " + size);
        }
        MemorySegment reply = Arena.ofAuto().allocate(Payloads.CONFIG_HEADER_SIZE + size);
        Payloads.Config.writeHeader(reply, offset, size, flags);
        MemorySegment.copy(data, 0, reply, JAVA_BYTE, Payloads.CONFIG_HEADER_SIZE, size);
        c.sendReply(MessageType.GET_CONFIG, reply);
    }

    private void setConfig(MemorySegment p) throws ProtocolException, BackendException {
        int offset = Payloads.Config.offset(p);
        int size = Payloads.Config.size(p);
        int flags = Payloads.Config.flags(p);
        if (flags != Payloads.Config.FLAG_WRITABLE && flags != Payloads.Config.FLAG_MIGRATION) {
            throw new ProtocolException("SET_CONFIG with unknown flags " + Integer.toUnsignedString(flags));
        }
        if (offset < 0 || offset > Payloads.CONFIG_MAX_DATA || size > Payloads.CONFIG_MAX_DATA - offset) {
            throw new BackendException("SET_CONFIG range " + Integer.toUnsignedString(offset) + "+" + size
                    + " is outside the configuration space");
        }
        backend.writeConfig(
                offset, Payloads.Config.data(p).toArray(JAVA_BYTE), flags == Payloads.Config.FLAG_MIGRATION);
    }

    private void setStatus(long value) throws ProtocolException, BackendException {
        if (!DeviceStatus.valid(value)) {
            throw new ProtocolException("SET_STATUS " + Long.toUnsignedString(value) + " is not a device status byte");
        }
        if (value == DeviceStatus.RESET) {
            stopAll(); // a status of 0 resets the device
        }
        status = (int) value;
        backend.setStatus(status);
    }

    /**
     * RESET_DEVICE: rings stopped and disabled, queue layout and features forgotten, device reset. Connection
     * state stays: protocol features, the memory table (the frontend keeps its own copy and only sends changes)
     * and the call/err notifiers.
     */
    private void resetDevice() {
        stopAll();
        for (Vring v : vrings) {
            v.reset();
        }
        negotiated.ackFeatures(0);
        publishLog();
        status = 0;
        backend.reset();
    }

    private void setBackendReqFd(Message m) throws BackendException {
        BackendChannel next = BackendChannel.adopt(
                io.iovirt.linux.UnixSocket.adopt(m.takeFd(0), name + " backend channel"), name, replyAck());
        BackendChannel previous = backendChannel;
        backendChannel = next;
        backend.backendChannel(next);
        if (previous != null) {
            previous.close();
        }
    }

    /**
     * The connection ended: stop everything, reset the device and unmap guest memory. Every step runs even when an
     * earlier one threw (a device failing to stop one queue must not leave the others running, or the mappings and
     * descriptors of the connection behind); the first failure is rethrown at the end. Unmapping is safe whatever
     * failed: guest memory is reference counted (a queue still running keeps its snapshot), and a retired log takes
     * no more marks.
     */
    @Override
    public void close() {
        List<Runnable> steps = new ArrayList<>();
        steps.add(() -> {
            if (backendChannel != null) {
                backend.backendChannel(null);
                backendChannel.close();
                backendChannel = null;
            }
        });
        for (Vring v : vrings) {
            steps.add(v::requestStop); // all at once, then each waited for (see stopAll)
        }
        for (Vring v : vrings) {
            steps.add(v::stopDevice);
        }
        for (Vring v : vrings) {
            steps.add(v::close);
        }
        steps.add(backend::reset);
        steps.add(memory::close);
        steps.add(this::closeLogs); // migration (issue 11): every queue is stopped, nothing marks the logs any more
        steps.add(() -> {
            if (inflight != null) {
                inflight.close();
                inflight = null;
            }
        });
        RuntimeException first = null;
        for (Runnable step : steps) {
            try {
                step.run();
            } catch (RuntimeException e) {
                LOG.log(System.Logger.Level.ERROR, name + ": while closing the connection: " + e, e);
                if (first == null) {
                    first = e;
                } else {
                    first.addSuppressed(e);
                }
            }
        }
        if (first != null) {
            throw first;
        }
    }
}
