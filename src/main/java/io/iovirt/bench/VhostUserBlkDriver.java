// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.UnixSocket;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.FrontendMemory;
import io.iovirt.vhostuser.VhostUserFrontend;
import io.iovirt.virtio.DeviceStatus;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.PackedDriverRing;
import io.iovirt.virtio.QueueConfig;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.VirtioFeatures;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/**
 * A virtio-blk driver without a VM (like DPDK's virtio-user): connects to a vhost-user-blk backend as QEMU would,
 * negotiates features, reads the configuration space, shares "guest RAM" (two memfd regions: rings and request
 * headers at GPA 0, data buffers at GPA 4 GiB) and sets up the rings with their kick and call eventfds. The
 * messages and their order follow QEMU's vhost-user-blk, so any backend QEMU can use can be driven.
 *
 * <p>Requests themselves are made by {@link QueueRunner}s on the {@link DriverQueue}s this returns.
 */
public final class VhostUserBlkDriver implements AutoCloseable {
    // virtio-blk feature bits (VIRTIO 1.2 §5.2.3)
    static final int F_SIZE_MAX = 1;
    static final int F_SEG_MAX = 2;
    static final int F_RO = 5;
    static final int F_BLK_SIZE = 6;
    static final int F_FLUSH = 9;
    static final int F_MQ = 12;

    static final int HEADER_BYTES = 16;
    static final long DATA_GPA = 1L << 32;
    private static final int PAGE = 4096;
    private static final int CONFIG_BYTES = 36; // capacity .. num_queues

    /** What the backend offered and what was negotiated; sizes from the configuration space. */
    public record Device(
            long offeredFeatures,
            long features,
            long protocolFeatures,
            long capacitySectors,
            int blockSize,
            long sizeMax,
            int segMax,
            int numQueues) {
        public boolean has(long featureMask) {
            return (features & featureMask) == featureMask;
        }

        public boolean hasBlk(int bit) {
            return has(1L << bit);
        }

        public boolean readOnly() {
            return hasBlk(F_RO);
        }

        public long capacityBytes() {
            return capacitySectors * 512;
        }
    }

    /** How the rings and request slots are laid out. */
    public record Layout(
            int queues, int queueSize, int slotsPerQueue, int blockBytes, boolean packed, boolean indirect) {}

    private final VhostUserFrontend frontend;
    private final UnixSocket socket;
    private Device device;
    private FrontendMemory control;
    private FrontendMemory data;
    private final List<DriverQueue> queues = new ArrayList<>();
    private final List<EventFd> eventFds = new ArrayList<>();

    private VhostUserBlkDriver(VhostUserFrontend frontend) {
        this.frontend = frontend;
        this.socket = frontend.connection().socket();
    }

    /** Connects to the backend listening on {@code socket}; each reply is awaited at most {@code replyTimeout}. */
    public static VhostUserBlkDriver connect(Path socket, Duration replyTimeout) throws IOException {
        try {
            return new VhostUserBlkDriver(VhostUserFrontend.connect(socket, replyTimeout));
        } catch (LinuxException e) {
            throw new IOException(
                    "cannot connect to the vhost-user-blk backend at " + socket + ": " + e.getMessage()
                            + " — is the backend running and listening there?",
                    e);
        }
    }

    /** The control socket (for the backend's credentials and hang-up checks). */
    public UnixSocket socket() {
        return socket;
    }

    /**
     * Negotiates as QEMU's vhost-user-blk does: VERSION_1 (required), EVENT_IDX and INDIRECT_DESC when offered, the
     * blk features a Linux driver acknowledges (SIZE_MAX, SEG_MAX, BLK_SIZE, FLUSH, RO, MQ), RING_PACKED when asked;
     * protocol features MQ, REPLY_ACK, CONFIG (required: the capacity comes from it) and STATUS.
     */
    public Device negotiate(boolean packed) throws IOException {
        long offered = frontend.getFeatures();
        if ((offered & VirtioFeatures.VIRTIO_F_VERSION_1) == 0) {
            throw new IOException(String.format(
                    "backend does not offer VIRTIO_F_VERSION_1 (features 0x%x); only "
                            + "modern virtio devices can be driven",
                    offered));
        }
        if ((offered & Features.VHOST_USER_F_PROTOCOL_FEATURES) == 0) {
            throw new IOException(String.format(
                    "backend does not offer VHOST_USER_F_PROTOCOL_FEATURES (features 0x%x);"
                            + " the disk's capacity cannot be read without VHOST_USER_PROTOCOL_F_CONFIG",
                    offered));
        }
        if (packed && (offered & VirtioFeatures.VIRTIO_F_RING_PACKED) == 0) {
            throw new IOException(String.format(
                    "backend does not offer VIRTIO_F_RING_PACKED (features 0x%x); run " + "without --packed", offered));
        }
        long optional = VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
                | VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC
                | bit(F_SIZE_MAX)
                | bit(F_SEG_MAX)
                | bit(F_BLK_SIZE)
                | bit(F_FLUSH)
                | bit(F_RO)
                | bit(F_MQ);
        long features = VirtioFeatures.VIRTIO_F_VERSION_1
                | Features.VHOST_USER_F_PROTOCOL_FEATURES
                | (offered & optional)
                | (packed ? VirtioFeatures.VIRTIO_F_RING_PACKED : 0);

        long offeredProtocol = frontend.getProtocolFeatures();
        if ((offeredProtocol & Features.bit(Features.PROTOCOL_CONFIG)) == 0) {
            throw new IOException(String.format(
                    "backend does not offer VHOST_USER_PROTOCOL_F_CONFIG (protocol "
                            + "features 0x%x): the disk's capacity cannot be read",
                    offeredProtocol));
        }
        long protocol = offeredProtocol
                & (Features.bit(Features.PROTOCOL_MQ)
                        | Features.bit(Features.PROTOCOL_REPLY_ACK)
                        | Features.bit(Features.PROTOCOL_CONFIG)
                        | Features.bit(Features.PROTOCOL_STATUS));
        frontend.setProtocolFeatures(protocol);
        int backendQueues = (protocol & Features.bit(Features.PROTOCOL_MQ)) != 0 ? frontend.getQueueNum() : 1;
        frontend.setOwner();

        ByteBuffer cfg = ByteBuffer.wrap(frontend.getConfig(0, CONFIG_BYTES)).order(ByteOrder.LITTLE_ENDIAN);
        long capacity = cfg.getLong(0);
        long sizeMax = (features & bit(F_SIZE_MAX)) != 0 ? Integer.toUnsignedLong(cfg.getInt(8)) : 0;
        int segMax = (features & bit(F_SEG_MAX)) != 0 ? cfg.getInt(12) : 0;
        int blockSize = (features & bit(F_BLK_SIZE)) != 0 ? cfg.getInt(20) : 512;
        int numQueues = (features & bit(F_MQ)) != 0 ? Short.toUnsignedInt(cfg.getShort(34)) : 1;
        if (blockSize < 512 || Integer.bitCount(blockSize) != 1) {
            throw new IOException(
                    "backend reports a block size of " + blockSize + " bytes; expected a power of two >= 512");
        }
        frontend.setFeatures(features);
        if ((protocol & Features.bit(Features.PROTOCOL_STATUS)) != 0) {
            frontend.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
        }
        device = new Device(
                offered, features, protocol, capacity, blockSize, sizeMax, segMax, Math.min(numQueues, backendQueues));
        return device;
    }

    private static long bit(int n) {
        return 1L << n;
    }

    /** Data descriptors per request: one per {@code size_max} bytes when the backend limits segment size. */
    static int dataSegments(Device d, int blockBytes) {
        return d.sizeMax() > 0 ? (int) ((blockBytes + d.sizeMax() - 1) / d.sizeMax()) : 1;
    }

    /**
     * Shares memory with the backend, sets up and enables {@code layout.queues()} rings, and returns them. In
     * polling mode the caller disables interrupts on each ring before the first request.
     */
    public List<DriverQueue> start(Layout layout) throws IOException {
        Device d = device;
        if (d == null) {
            throw new IllegalStateException("negotiate first");
        }
        int segs = dataSegments(d, layout.blockBytes());
        int descsPerRequest = segs + 2;
        long ringBytes = layout.packed()
                ? PackedDriverRing.bytesNeeded(layout.queueSize())
                : SplitDriverRing.bytesNeeded(layout.queueSize());
        int slots = layout.slotsPerQueue();
        // per queue: ring | headers | status bytes | indirect tables, each part page-aligned
        long headersOff = align(ringBytes, PAGE);
        long statusOff = headersOff + align((long) HEADER_BYTES * slots, 64);
        long indirectOff = align(statusOff + slots, 64);
        long perQueue = align(indirectOff + (layout.indirect() ? 16L * descsPerRequest * slots : 0), PAGE);
        long bufferBytes = align(layout.blockBytes(), PAGE); // page-aligned buffers: O_DIRECT backends need no bounce
        control = FrontendMemory.allocate(0, perQueue * layout.queues());
        data = FrontendMemory.allocate(DATA_GPA, bufferBytes * slots * layout.queues());
        GuestMemory mem = GuestMemory.of(List.of(region(control), region(data)));
        frontend.setMemTable(List.of(control.descriptor(), data.descriptor()));

        for (int q = 0; q < layout.queues(); q++) {
            long base = perQueue * q;
            DriverRing ring = layout.packed()
                    ? PackedDriverRing.create(
                            mem, base, layout.queueSize(), d.has(VirtioFeatures.VIRTIO_RING_F_EVENT_IDX))
                    : SplitDriverRing.create(
                            mem, base, layout.queueSize(), d.has(VirtioFeatures.VIRTIO_RING_F_EVENT_IDX));
            EventFd kick = eventFd();
            EventFd call = eventFd();
            QueueConfig qc = ring.queueConfig(q, layout.indirect());
            frontend.setVringNum(q, layout.queueSize());
            frontend.setVringBase(q, vringBase(qc));
            frontend.setVringAddr(
                    q,
                    control.userAddrOf(ring.descAddr()),
                    control.userAddrOf(ring.deviceAreaAddr()),
                    control.userAddrOf(ring.driverAreaAddr()));
            frontend.setVringKick(q, kick);
            frontend.setVringCall(q, call);
            queues.add(new DriverQueue(
                    q,
                    ring,
                    kick,
                    call,
                    control.segment(),
                    data.segment(),
                    slots,
                    segs,
                    layout.blockBytes(),
                    d.sizeMax(),
                    base + headersOff,
                    base + statusOff,
                    layout.indirect() ? base + indirectOff : -1,
                    DATA_GPA + bufferBytes * slots * q,
                    bufferBytes));
        }
        for (int q = 0; q < layout.queues(); q++) {
            frontend.setVringEnable(q, true);
        }
        if ((d.protocolFeatures() & Features.bit(Features.PROTOCOL_STATUS)) != 0) {
            frontend.setStatus(
                    DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK);
        }
        return List.copyOf(queues);
    }

    /** The VHOST_USER_SET_VRING_BASE value for a ring in this state, encoded as QEMU does. */
    static int vringBase(QueueConfig qc) {
        if (!qc.packed()) {
            return qc.availIndex();
        }
        int avail = qc.availIndex() | (qc.availWrap() ? 0x8000 : 0);
        int used = qc.usedIndex() | (qc.usedWrap() ? 0x8000 : 0);
        return avail | used << 16;
    }

    private static MemoryRegion region(FrontendMemory m) {
        return new MemoryRegion(m.guestPhysAddr(), m.size(), m.userAddr(), 0, m.segment(), null);
    }

    private EventFd eventFd() throws LinuxException {
        EventFd e = EventFd.create(true);
        eventFds.add(e);
        return e;
    }

    private static long align(long v, long a) {
        return (v + a - 1) / a * a;
    }

    /** Bytes of shared memory (both regions), i.e. what the backend maps of ours. */
    public long sharedMemoryBytes() {
        return (control == null ? 0 : control.size()) + (data == null ? 0 : data.size());
    }

    /**
     * Stops every ring (SET_VRING_ENABLE 0, GET_VRING_BASE) once nothing is in flight, and checks that the backend
     * consumed exactly what was made available.
     */
    public void stop() throws IOException {
        for (DriverQueue q : queues) {
            frontend.setVringEnable(q.index(), false);
        }
        for (DriverQueue q : queues) {
            int base = frontend.getVringBase(q.index());
            QueueConfig qc = q.ring().queueConfig(q.index(), false);
            int expected = qc.packed() ? qc.availIndex() | (qc.availWrap() ? 0x8000 : 0) : qc.availIndex();
            if ((base & 0xffff) != expected) {
                throw new IOException(String.format(
                        "backend stopped queue %d at ring position 0x%x, but the driver "
                                + "made requests available up to 0x%x: the backend lost or invented requests",
                        q.index(), base & 0xffff, expected));
            }
        }
    }

    @Override
    public void close() {
        frontend.close();
        eventFds.forEach(EventFd::close);
        if (control != null) {
            control.close();
        }
        if (data != null) {
            data.close();
        }
    }
}
