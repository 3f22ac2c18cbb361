// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import io.iovirt.linux.LinuxException;
import io.iovirt.memory.GuestMemory;
import io.iovirt.net.Burst;
import io.iovirt.net.Ethernet;
import io.iovirt.net.Frame;
import io.iovirt.net.Ingress;
import io.iovirt.net.Mac;
import io.iovirt.net.Port;
import io.iovirt.net.PortStat;
import io.iovirt.util.LogLimiter;
import io.iovirt.vhostuser.BackendException;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.VhostUserBackend;
import io.iovirt.vhostuser.VhostUserServer;
import io.iovirt.vhostuser.VringSetup;
import io.iovirt.virtio.DeviceStatus;
import io.iovirt.virtio.QueueWorker;
import io.iovirt.virtio.RingHandler;
import io.iovirt.virtio.VirtioFeatures;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.Objects;

/**
 * {@code vhost-user:PATH} — a virtio-net device (VIRTIO 1.2 §5.1) served over vhost-user, as a switch port. iovirt
 * listens on PATH; the frontend (QEMU {@code -netdev vhost-user}, DPDK {@code net_virtio_user}) connects, shares the
 * guest's memory and hands over the rings. Queue 2k receives (switch → guest), queue 2k+1 transmits (guest →
 * switch), for k below the number of queue pairs (MQ when more than one).
 *
 * <p>Offered: VERSION_1, MRG_RXBUF, MTU, STATUS, MAC (when one is configured), MQ (with more than one pair), split
 * and packed rings, EVENT_IDX, INDIRECT_DESC, ANY_LAYOUT. Not offered: checksum and segmentation offloads
 * (CSUM, GUEST_CSUM, *_TSO*, *_UFO, *_USO) — the switch passes frames between guests, TAP and QEMU's stream netdev
 * that could not all honour them, so drivers send complete, checksummed frames, and the transmit header is not read
 * ({@link NetTxQueue}). Protocol extras: NET_MTU (the guest may lower its MTU, never raise it above the switch's; it
 * then receives no longer frame) and RARP (SEND_RARP broadcasts a RARP frame from the guest's address into the
 * switch). After a frontend reconnects,
 * the port announces the guest's address the same way (the configured MAC, else the last source address the guest
 * used), so the switch and anything behind a TAP learn where it is before the guest speaks.
 *
 * <p>QEMU's own virtio-net model owns the configuration space, the control queue and the guest-visible MAC
 * ({@code -device virtio-net-pci,mac=...}); the configuration this device serves (GET_CONFIG) is for frontends
 * without a device model of their own.
 */
public final class VirtioNetPort extends Port implements VhostUserBackend {
    private static final System.Logger LOG = System.getLogger(VirtioNetPort.class.getName());

    /** Largest ring this device accepts (the spec's maximum). */
    public static final int MAX_QUEUE_SIZE = 32768;
    /**
     * Most buffers in one chain, on either ring: a 64 KiB frame plus its header in page-sized pieces needs 18 (Linux
     * uses at most MAX_SKB_FRAGS + 2 = 19); DPDK may chain small mbufs, so a margin. Longer chains fail the queue
     * as soon as the walk reaches the bound, which keeps per-request state small whatever the guest builds.
     */
    public static final int MAX_CHAIN = 256;

    /**
     * VIRTIO_F_IN_ORDER holds for every queue of the port: a transmit batch is pushed in the order it was popped
     * ({@link io.iovirt.virtio.RingHandler}), and a receive queue pushes each frame's chains as it fills them and
     * returns a chain it cannot use at once, in its place ({@link NetRxQueue}). Nothing here relies on the driver
     * keeping its side of it: the rings are read and checked as without it. The driver gains a descriptor
     * allocator in ring order (DPDK's virtio PMD takes its in-order paths; Linux 6.1 does not know the bit), and a
     * split transmit queue returns each batch with one used entry (see {@link Virtqueue}'s batch push).
     */
    private static final long RING_FEATURES = VirtioFeatures.VIRTIO_F_VERSION_1
            | VirtioFeatures.VIRTIO_F_RING_PACKED
            | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
            | VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC
            | VirtioFeatures.VIRTIO_F_IN_ORDER;

    /**
     * @param socket     where to listen
     * @param queuePairs receive/transmit queue pairs (1..128: vhost-user queue indices are 8 bits, two per pair)
     * @param mac        the guest's address if known (offered as VIRTIO_NET_F_MAC and announced), else -1
     * @param pollMicros how long a transmit queue keeps polling after it ran dry (0: sleep at once until kicked);
     *                   with {@code adaptivePoll}, the most it polls
     * @param adaptivePoll poll for as long as recent gaps between the guest's bursts say is worth it, up to
     *                   {@code pollMicros} ({@link io.iovirt.virtio.QueueWorker.Builder#adaptiveSpin})
     */
    public record Options(Path socket, int queuePairs, long mac, int pollMicros, boolean adaptivePoll) {
        /** The adaptive polling bound ports get by default ({@link QueueWorker#DEFAULT_ADAPTIVE_SPIN_NANOS}). */
        public static final int DEFAULT_ADAPTIVE_POLL_MICROS = (int) (QueueWorker.DEFAULT_ADAPTIVE_SPIN_NANOS / 1000);

        /** A fixed poll time ({@code pollMicros}; 0: none). */
        public Options(Path socket, int queuePairs, long mac, int pollMicros) {
            this(socket, queuePairs, mac, pollMicros, false);
        }

        public Options {
            Objects.requireNonNull(socket);
            if (queuePairs < 1 || queuePairs > 128) {
                throw new IllegalArgumentException("queue pairs must be 1..128: " + queuePairs);
            }
            if (mac != -1 && (mac < 0 || mac > Mac.BROADCAST || !Mac.isValidSource(mac))) {
                throw new IllegalArgumentException("the guest MAC must be a unicast address: " + Mac.toString(mac));
            }
            if (pollMicros < 0 || pollMicros > 1_000_000) {
                throw new IllegalArgumentException("poll time must be 0..1000000 µs: " + pollMicros);
            }
        }

        /**
         * What {@code serve net}, the daemon and {@code vm run} give a guest: adaptive polling up to
         * {@link #DEFAULT_ADAPTIVE_POLL_MICROS} (one burst in flight port to port: 8.1 vs 2.1 Mpps without polling,
         * docs/benchmarks.md).
         */
        public static Options defaults(Path socket, int queuePairs, long mac) {
            return new Options(socket, queuePairs, mac, DEFAULT_ADAPTIVE_POLL_MICROS, true);
        }

        /** One queue pair, no MAC, no polling. */
        public static Options of(Path socket) {
            return new Options(socket, 1, -1, 0);
        }
    }

    private final Options options;
    private final Object control = new Object();
    /**
     * Made with the port, not at its start: the switch publishes a port (a pinned one is a unicast destination from
     * then on) before it starts it, and other ports' threads send to these queues from that moment. Final, so those
     * threads see them whole; a queue not running counts what it is sent as dropped, link down.
     */
    private final NetRxQueue[] rxQueues;

    private final QueueWorker[] txWorkers;
    /** Each transmit queue's worker counters, kept across connections (the workers are made per connection). */
    private final QueueWorker.Stats[] txWorkerStats;

    private final Virtqueue[] txRings;
    /**
     * Per transmit queue, guarded by itself: its worker did not stop within {@link #stopWaitLimit} and was given up on
     * ({@link #queueStopped}); it stays in {@link #txWorkers}, so no second worker starts on its ring, until its
     * thread has ended. NEEDS_RESET meanwhile.
     */
    private final boolean[] txAbandoned;
    /** How long {@link #queueStopped} waits in all for a transmit worker still finishing its batch. */
    private volatile java.time.Duration stopWaitLimit = QueueWorker.STOP_WAIT_LIMIT;

    private Ingress[] txIngress; // per transmit queue (the port's rx side), kept across reconnects
    private Ingress announceIngress;
    private Frame announceFrame;
    private VhostUserServer server;
    /** Lines this port's frontend can cause at will (a queue it broke, rx or tx), however often it repeats that. */
    private final LogLimiter frontendLines = new LogLimiter(LOG);

    private volatile long guestMac;
    private volatile boolean needsReset;
    private volatile int guestMtu;
    // guarded by control
    private long ackedFeatures;
    private boolean announced;
    private long announcements;
    private boolean closed;

    public VirtioNetPort(Options options) {
        super("vhost-user:" + options.socket());
        this.options = options;
        this.txWorkers = new QueueWorker[options.queuePairs()];
        this.txWorkerStats = new QueueWorker.Stats[options.queuePairs()];
        for (int i = 0; i < txWorkerStats.length; i++) {
            txWorkerStats[i] = new QueueWorker.Stats();
        }
        this.txRings = new Virtqueue[options.queuePairs()];
        this.txAbandoned = new boolean[options.queuePairs()];
        this.guestMac = options.mac();
        this.rxQueues = new NetRxQueue[options.queuePairs()];
        for (int i = 0; i < rxQueues.length; i++) {
            rxQueues[i] = new NetRxQueue(2 * i, name(), newCounters());
        }
    }

    public VirtioNetPort(Path socket) {
        this(Options.of(socket));
    }

    private io.iovirt.linux.SocketAccess access = io.iovirt.linux.SocketAccess.ownerOnly();

    private boolean pin;

    private volatile io.iovirt.virtio.WorkerGroup workers;

    /**
     * Serves the transmit queues on the shared threads of {@code group} (null, the default: one thread per transmit
     * queue). Queues started afterwards use it; the caller closes the group after the port.
     */
    public VirtioNetPort workers(io.iovirt.virtio.WorkerGroup group) {
        this.workers = group;
        return this;
    }

    /**
     * Pins the guest's source MAC to the configured one ({@link Options#mac()}): frames from any other source are
     * dropped, so the guest cannot spoof other stations or fill the MAC table.
     */
    public VirtioNetPort pinSource(boolean on) {
        if (on && options.mac() == -1) {
            throw new IllegalArgumentException("pinning the source MAC needs a configured MAC (mac=...)");
        }
        this.pin = on;
        return this;
    }

    @Override
    protected long pinnedSource() {
        return pin ? options.mac() : -1;
    }

    /** The socket file's mode/group and the frontend uids served (before the port is added to a switch). */
    public VirtioNetPort withAccess(io.iovirt.linux.SocketAccess a) {
        this.access = java.util.Objects.requireNonNull(a);
        return this;
    }

    public Options options() {
        return options;
    }

    /** True while a frontend is connected. */
    public boolean connected() {
        VhostUserServer s = server;
        return s != null && s.connected();
    }

    @Override
    public boolean isLinkUp() {
        for (NetRxQueue q : rxQueues) {
            if (q.running()) {
                return true;
            }
        }
        return false;
    }

    /**
     * What transmit queue {@code pair}'s worker did so far (all connections): batches, sleeps, spin hits. Frames
     * taken per batch is the port's rx packets over the batches; each sleep cost the guest a kick.
     */
    public QueueWorker.Totals txWorkerStats(int pair) {
        return txWorkerStats[pair].totals();
    }

    /**
     * A receive queue's interrupts so far (it has no worker: senders fill it on their threads): eventfd writes dropped
     * because the frontend's eventfd was full or made blocking, and interrupts sent again after an idle spell to a
     * driver that may have missed one ({@link io.iovirt.virtio.QueueWorker#RECHECK_MILLIS}).
     */
    public record RxQueueTotals(long lostSignals, long recheckSignals) {
        /** For log lines, as {@link QueueWorker.Totals} words them: {@code "0 lost notifications, 2 interrupts..."}. */
        @Override
        public String toString() {
            return lostSignals + " lost notifications, " + recheckSignals
                    + " interrupts sent again after an idle spell";
        }
    }

    /** Receive queue {@code pair}'s interrupts so far (all connections), zeros before the port started. */
    public RxQueueTotals rxQueueTotals(int pair) {
        return rxQueues[pair].totals();
    }

    /** Receive queues the frontend has enabled and the device is filling (MQ: the guest's active queue pairs). */
    public int activeQueuePairs() {
        int n = 0;
        for (NetRxQueue q : rxQueues) {
            if (q.running()) {
                n++;
            }
        }
        return n;
    }

    @Override
    protected void start() throws IOException {
        int pairs = options.queuePairs();
        txIngress = new Ingress[pairs];
        for (int i = 0; i < pairs; i++) {
            txIngress[i] = newIngress();
        }
        announceIngress = newDetachedIngress(); // announcements are ours, not the guest's: not in its counters
        announceFrame = new Frame(Arena.ofAuto().allocate(Ethernet.MIN_FRAME, 8));
        guestMtu = mtu();
        server = VhostUserServer.start(options.socket(), this, access);
    }

    // ---- the switch side ---------------------------------------------------------------------------------------

    @Override
    protected void transmit(Frame frame) {
        NetRxQueue[] rqs = rxQueues;
        int n = rqs.length;
        int first = n == 1 ? 0 : Math.floorMod(FlowHash.of(frame), n);
        for (int k = 0; k < n; k++) { // the flow's queue, else the next one the guest enabled
            NetRxQueue q = rqs[(first + k) % n];
            if (k == n - 1 || q.running()) {
                q.transmit(frame);
                return;
            }
        }
    }

    @Override
    protected void transmit(Burst burst, int from, int to) {
        NetRxQueue[] rqs = rxQueues;
        if (rqs.length == 1) {
            rqs[0].transmit(burst, from, to); // one lock acquisition for the lot
        } else {
            super.transmit(burst, from, to); // frame by frame: each flow to its own queue
        }
    }

    /** A transmit queue forwards a frame from the guest. */
    void forward(Ingress rx, Frame frame) {
        receive(rx, frame);
    }

    /** A transmit queue forwards a burst of frames from the guest. */
    void forward(Ingress rx, Burst burst) {
        receive(rx, burst);
    }

    /** The receive context of transmit queue pair {@code pair}. */
    Ingress ingress(int pair) {
        return txIngress[pair];
    }

    /** A transmit queue ends its batch. */
    void endBatch(Ingress rx) {
        endBurst(rx);
    }

    @Override
    protected void flush() {
        for (NetRxQueue q : rxQueues) {
            q.flush();
        }
    }

    void guestAddressSeen(long mac) {
        if (options.mac() == -1 && Mac.isValidSource(mac)) {
            guestMac = mac;
        }
    }

    /**
     * A receive queue failed (the guest's fault, found on whatever thread touched its ring): NEEDS_RESET and a line,
     * through {@link #frontendLines}: a frontend that breaks its ring, resets and restarts it in a loop gets a burst of
     * lines, then one a second with the count of the ones left out.
     */
    void queueFailed(int index, String why) {
        needsReset = true;
        frontendLines.log(
                System.Logger.Level.WARNING,
                name() + " queue " + index + ": " + why + "; queue stopped until the driver resets the device");
    }

    // ---- vhost-user backend ------------------------------------------------------------------------------------

    private volatile long driverFeatures;

    @Override
    public long features() {
        long f = RING_FEATURES | VirtioNet.F_MRG_RXBUF | VirtioNet.F_MTU | VirtioNet.F_STATUS | VirtioNet.F_ANY_LAYOUT;
        if (options.mac() != -1) {
            f |= VirtioNet.F_MAC;
        }
        if (options.queuePairs() > 1) {
            f |= VirtioNet.F_MQ;
        }
        return f;
    }

    /** The virtio features the driver acknowledged, as the last queue it started saw them (0 before any). */
    public long driverFeatures() {
        return driverFeatures;
    }

    @Override
    public long protocolFeatures() {
        return Features.bit(Features.PROTOCOL_RARP) | Features.bit(Features.PROTOCOL_NET_MTU);
    }

    @Override
    public int queueCount() {
        return 2 * options.queuePairs();
    }

    @Override
    public int maxQueueSize() {
        return MAX_QUEUE_SIZE;
    }

    @Override
    public void setFeatures(long acked) throws BackendException {
        synchronized (control) {
            ackedFeatures = acked;
        }
    }

    @Override
    public byte[] readConfig(int offset, int size) throws BackendException {
        if (offset < 0 || size < 0 || offset + size > VirtioNet.CFG_READ_LIMIT) {
            throw new BackendException("virtio-net configuration read " + offset + "+" + size + " is outside 0.."
                    + VirtioNet.CFG_READ_LIMIT);
        }
        MemorySegment cfg = MemorySegment.ofArray(new byte[VirtioNet.CFG_READ_LIMIT]);
        ValueLayout.OfShort le16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
        long mac = guestMac;
        if (mac != -1) {
            Mac.write(cfg, VirtioNet.CFG_MAC, mac);
        }
        cfg.set(le16, VirtioNet.CFG_STATUS, (short) VirtioNet.S_LINK_UP);
        cfg.set(le16, VirtioNet.CFG_MAX_VQ_PAIRS, (short) options.queuePairs());
        cfg.set(le16, VirtioNet.CFG_MTU, (short) mtu());
        cfg.set(ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), VirtioNet.CFG_SPEED, -1); // unknown
        cfg.set(ValueLayout.JAVA_BYTE, VirtioNet.CFG_DUPLEX, (byte) 0xff); // unknown
        return cfg.asSlice(offset, size).toArray(ValueLayout.JAVA_BYTE);
    }

    @Override
    public void queueStarted(int index, VringSetup setup) throws BackendException {
        int pair = index / 2;
        if (index < 0 || pair >= options.queuePairs()) {
            throw new BackendException(
                    "queue " + index + " does not exist: " + options.queuePairs() + " queue pair(s)");
        }
        if (index % 2 == 1 && txWorkers[pair] != null) {
            if (!isTxAbandoned(pair)) {
                throw new BackendException(name() + ": transmit queue " + index + " is already running");
            }
            if (!reapTx(pair)) {
                throw new BackendException(name() + ": transmit queue " + index + ": the thread of its previous run"
                        + " has not stopped yet (see the log); no second one is started on its ring before it has");
            }
        }
        long f = setup.features();
        driverFeatures = f;
        boolean version1 = (f & VirtioFeatures.VIRTIO_F_VERSION_1) != 0;
        boolean mrg = (f & VirtioNet.F_MRG_RXBUF) != 0;
        int hdr = version1 || mrg ? VirtioNet.HDR_SIZE : VirtioNet.HDR_SIZE_LEGACY;
        Virtqueue vq;
        try {
            vq = Virtqueue.create(setup.queueConfig(), setup.memory()).limitChain(MAX_CHAIN);
        } catch (VirtqueueException e) {
            throw new BackendException(name() + ": cannot attach queue " + index + ": " + e.getMessage());
        }
        if (index % 2 == 0) {
            try {
                int limit = (f & VirtioNet.F_MTU) != 0 ? rxFrameLimit(guestMtu) : NetRxQueue.NO_LIMIT;
                rxQueues[pair].start(this, vq, setup.call(), setup.err(), hdr, mrg, limit);
            } catch (VirtqueueException e) {
                vq.releaseMemory();
                throw new BackendException(name() + ": cannot start receive queue " + index + ": " + e.getMessage());
            }
            synchronized (control) {
                if (!announced) {
                    announced = true;
                    announce();
                }
            }
        } else {
            NetTxQueue tq = new NetTxQueue(this, index, ingress(pair), hdr, Ethernet.maxFrame(mtu()));
            try {
                QueueWorker w = QueueWorker.builder(name() + " tx" + index)
                        .kick(setup.kick())
                        .err(setup.err())
                        .poll(options.pollMicros() * 1000L, options.adaptivePoll())
                        .stats(txWorkerStats[pair])
                        .pollEvery(setup.kick() == null ? 1 : -1)
                        .onFailure(why -> needsReset = true)
                        .failureLog(frontendLines)
                        .group(workers)
                        .build(new RingHandler(vq, setup.call(), NetTxQueue.BATCH, tq));
                txWorkers[pair] = w;
                txRings[pair] = vq;
                w.start();
            } catch (LinuxException | IllegalStateException e) {
                vq.releaseMemory();
                throw new BackendException(name() + ": cannot start transmit queue " + index + ": " + e.getMessage());
            }
        }
    }

    /** Changes how long {@link #queueStopped} waits for a transmit worker still finishing its batch (tests). */
    void stopWaitLimit(java.time.Duration limit) {
        this.stopWaitLimit = limit;
    }

    /**
     * A transmit queue's worker is waited for until it has ended, up to {@link #stopWaitLimit} ({@link
     * QueueWorker#stopAndWait}); one still running after that is given up on: the port keeps the queue (a start on
     * the same ring is refused until that thread has ended), reports NEEDS_RESET and says so in a log line; that
     * thread only finishes the requests it took ({@link Virtqueue#servedBy}), and the protocol layer keeps the ring's
     * descriptors open for it until it has ended ({@link #stillRunning}).
     */
    @Override
    public int queueStopped(int index) {
        int pair = index / 2;
        if (index % 2 == 0) {
            return rxQueues[pair].stop();
        }
        QueueWorker w = txWorkers[pair];
        Virtqueue vq = txRings[pair];
        if (w == null) {
            return 0;
        }
        if (isTxAbandoned(pair)) { // given up on earlier: handed back once its thread has ended
            reapTx(pair);
            return vq.vringBase();
        }
        if (!w.stopAndWait(stopWaitLimit)) {
            synchronized (txAbandoned) {
                txAbandoned[pair] = true;
            }
            LOG.log(
                    System.Logger.Level.ERROR,
                    "{0} tx{1}: the queue thread did not stop within {2} s; the port keeps the queue (it is not started"
                            + " again on this ring while that thread runs) and reports NEEDS_RESET; ring position {3}"
                            + " handed back (that thread only finishes the requests it took)",
                    name(),
                    index,
                    stopWaitLimit.toSeconds(),
                    Integer.toString(vq.vringBase()));
            return vq.vringBase();
        }
        txWorkers[pair] = null;
        txRings[pair] = null;
        return vq.vringBase();
    }

    /** A transmit queue's worker is asked to stop without waiting: {@link #queueStopped} then waits for it. */
    @Override
    public void queueStopping(int index) {
        int pair = index / 2;
        if (index % 2 == 0 || pair >= txWorkers.length) {
            return; // a receive queue has no thread of its own to wait for
        }
        QueueWorker w = txWorkers[pair];
        if (w != null && !isTxAbandoned(pair)) {
            w.requestStop();
        }
    }

    /** The transmit worker given up on ({@link #txAbandoned}) for queue {@code index}, still running, or null. */
    @Override
    public QueueWorker stillRunning(int index) {
        int pair = index / 2;
        if (index % 2 == 0 || pair >= txWorkers.length) {
            return null; // receive queues have no thread of their own
        }
        synchronized (txAbandoned) {
            return txAbandoned[pair] ? txWorkers[pair] : null;
        }
    }

    private boolean isTxAbandoned(int pair) {
        synchronized (txAbandoned) {
            return txAbandoned[pair];
        }
    }

    /** A transmit worker given up on: forgotten once its thread has ended; true then. */
    private boolean reapTx(int pair) {
        if (!txWorkers[pair].reap()) {
            return false;
        }
        LOG.log(
                System.Logger.Level.WARNING,
                "{0} tx{1}: the queue thread given up on has stopped now",
                name(),
                2 * pair + 1);
        synchronized (txAbandoned) {
            txAbandoned[pair] = false;
        }
        txWorkers[pair] = null;
        txRings[pair] = null;
        return true;
    }

    /** Queues pin the memory snapshot they use and let go when idle: nothing to wait for. */
    @Override
    public void memoryChanged(GuestMemory memory) {}

    @Override
    public int deviceStatus() {
        if (needsReset) {
            return DeviceStatus.DEVICE_NEEDS_RESET; // after a queue failed
        }
        synchronized (txAbandoned) {
            for (boolean a : txAbandoned) {
                if (a) {
                    return DeviceStatus.DEVICE_NEEDS_RESET; // a transmit thread that did not stop
                }
            }
        }
        return 0;
    }

    @Override
    public void reset() {
        synchronized (control) {
            ackedFeatures = 0;
            announced = false; // a new connection or driver: announce again when its receive queue starts
        }
        needsReset = false;
        guestMtu = mtu();
        peerGone();
    }

    @Override
    public void sendRarp(byte[] mac) throws BackendException {
        if (mac.length != 6) {
            throw new BackendException("SEND_RARP needs a 6-byte MAC");
        }
        long m = Mac.read(MemorySegment.ofArray(mac), 0);
        if (!Mac.isValidSource(m)) {
            throw new BackendException("SEND_RARP for " + Mac.toString(m) + ", which is not a unicast address");
        }
        synchronized (control) {
            injectRarp(m);
        }
    }

    @Override
    public void setMtu(int mtu) throws BackendException {
        if (mtu > mtu()) {
            throw new BackendException("guest MTU " + mtu + " is larger than the switch MTU " + mtu()
                    + "; start the switch with a larger --mtu or give the guest a smaller one");
        }
        guestMtu = mtu;
        NetRxQueue[] rqs = rxQueues;
        long acked;
        synchronized (control) {
            acked = ackedFeatures;
        }
        if ((acked & VirtioNet.F_MTU) != 0) { // usually sent before the queues start
            for (NetRxQueue q : rqs) {
                q.maxFrame(rxFrameLimit(mtu));
            }
        }
    }

    /** The longest frame a guest of MTU {@code mtu} takes, or NO_LIMIT when that is all the switch forwards. */
    private int rxFrameLimit(int mtu) {
        int max = Ethernet.maxFrame(mtu);
        return max >= maxFrame() ? NetRxQueue.NO_LIMIT : max;
    }

    /**
     * The MTU the frontend set (NET_SET_MTU), else the switch's. With VIRTIO_NET_F_MTU negotiated the guest gets no
     * longer frame (counted as tx_dropped_oversize).
     */
    public int guestMtu() {
        return guestMtu;
    }

    /** Broadcasts a RARP from the guest's address, if it is known (control thread, under {@link #control}). */
    private void announce() {
        long mac = guestMac;
        if (mac != -1) {
            injectRarp(mac);
        }
    }

    private void injectRarp(long mac) {
        MemorySegment b = announceFrame.buffer();
        Rarp.write(b, mac);
        receive(announceIngress, announceFrame.set(0, Ethernet.MIN_FRAME));
        endBurst(announceIngress);
        announcements++;
    }

    /** RARP announcements sent on the guest's behalf (SEND_RARP and reconnects). */
    public long announcements() {
        synchronized (control) {
            return announcements;
        }
    }

    @Override
    public void close() {
        synchronized (control) {
            if (closed) {
                return;
            }
            closed = true;
        }
        VhostUserServer s = server;
        if (s != null) {
            s.close(); // stops every queue through the backend interface
        }
    }

    /** Requests the guest sent that were dropped as too short for a virtio-net header (for tests and statistics). */
    long malformed() {
        return stats().get(PortStat.RX_DROPPED_MALFORMED);
    }
}
