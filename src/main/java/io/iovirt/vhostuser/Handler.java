// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static io.iovirt.vhostuser.Features.VHOST_USER_F_PROTOCOL_FEATURES;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryFault;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.virtio.VirtioRing;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The vhost-user protocol state of one connection: validates each message against what was negotiated and the
 * state of the rings, then acts on it and calls the device. Runs on the connection's control thread only.
 *
 * <p>Ring states follow the spec: a ring is <em>started</em> by SET_VRING_KICK and <em>stopped</em> by
 * GET_VRING_BASE; with VHOST_USER_F_PROTOCOL_FEATURES negotiated it also has to be enabled (SET_VRING_ENABLE) and
 * starts disabled, otherwise it is always enabled. The device runs a queue exactly while it is started, enabled and
 * has its addresses; disabling a running queue stops the device's processing (QEMU 7.2 disables before
 * GET_VRING_BASE), and GET_VRING_BASE then reports the index the device stopped at.
 */
final class Handler implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.vhostuser");

    /** GET_MAX_MEM_SLOTS: as many regions as {@link GuestMemory} holds (libvhost-user and rust-vmm offer the same). */
    static final int MAX_MEM_SLOTS = GuestMemory.MAX_REGIONS;
    /** Largest ring the virtio spec allows. */
    static final int MAX_RING_SIZE = 32768;
    /** Queue indices travel in 8 bits (VHOST_USER_VRING_IDX_MASK). */
    static final int MAX_QUEUES = 256;
    private static final int MAX_STATUS = 0xff;
    private static final MemorySegment EMPTY = MemorySegment.ofArray(new byte[0]);

    private final VhostUserBackend backend;
    private final String name;
    private final long offeredFeatures;
    private final long offeredProtocolFeatures;
    private final int maxQueueSize;
    private final Queue[] queues;
    private final GuestMemoryHolder memory = new GuestMemoryHolder();

    private long ackedFeatures;
    private long ackedProtocolFeatures;
    /** SET_PROTOCOL_FEATURES was received: the frontend speaks the protocol-features dialect. */
    private boolean protocolFeaturesExchanged;
    private int status;
    /** SET_BACKEND_REQ_FD's channel, handed to the device; closed with the connection. */
    private BackendChannel backendChannel;

    /** One virtqueue's protocol-side state. */
    private static final class Queue {
        final int index;
        int size;
        boolean addrSet;
        long descGpa;
        long availGpa;
        long usedGpa;
        int base;
        /** SET_VRING_KICK received since the last stop: the spec's "started". */
        boolean ringStarted;
        boolean enabled;
        /** The device is processing it. */
        boolean running;
        EventFd kick;
        EventFd call;
        EventFd err;
        /** migration: log_guest_addr of SET_VRING_ADDR when it had VHOST_VRING_F_LOG, else -1. */
        long usedLogAddr = -1;

        Queue(int index) {
            this.index = index;
        }
    }

    Handler(VhostUserBackend backend, String name) {
        this.backend = backend;
        this.name = name;
        int n = backend.queueCount();
        if (n < 1 || n > MAX_QUEUES) {
            throw new IllegalArgumentException("a vhost-user device has 1.." + MAX_QUEUES + " queues, not " + n);
        }
        this.maxQueueSize = backend.maxQueueSize();
        if (maxQueueSize < 1 || maxQueueSize > MAX_RING_SIZE) {
            throw new IllegalArgumentException("maximum queue size must be 1.." + MAX_RING_SIZE + ": " + maxQueueSize);
        }
        long extra = backend.protocolFeatures();
        if ((extra & ~Features.DEVICE_PROTOCOL_FEATURES) != 0) {
            throw new IllegalArgumentException("a device may add only RARP, NET_MTU, INFLIGHT_SHMFD and BACKEND_REQ protocol features, not 0x"
                    + Long.toHexString(extra));
        }
        // VHOST_F_LOG_ALL is the protocol layer's own (dirty logging, issue 11); the device never sees it.
        this.offeredFeatures = (backend.features() | VHOST_USER_F_PROTOCOL_FEATURES | Features.VHOST_F_LOG_ALL)
                & ~Features.VIRTIO_F_ACCESS_PLATFORM;
        this.offeredProtocolFeatures = Features.CORE_PROTOCOL_FEATURES | extra;
        this.queues = new Queue[n];
        for (int i = 0; i < n; i++) {
            queues[i] = new Queue(i);
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
            if (required >= 0 && (ackedProtocolFeatures & Features.bit(required)) == 0) {
                throw new ProtocolException(type.specName() + " needs protocol feature " + required
                        + ", which was not negotiated");
            }
            try {
                dispatch(m, c);
                if (!type.hasReplyBody() && m.needReply() && replyAck()) {
                    c.sendReply(type, 0);
                }
            } catch (BackendException e) {
                LOG.log(System.Logger.Level.WARNING, name + ": " + type.specName() + " refused: " + e.getMessage());
                if (type == MessageType.GET_CONFIG) {
                    c.sendReply(type, EMPTY); // an empty reply is GET_CONFIG's failure
                } else if (!type.hasReplyBody() && m.needReply() && replyAck()) {
                    c.sendReply(type, 1);
                }
            }
        }
    }

    private boolean replyAck() {
        return (ackedProtocolFeatures & Features.bit(Features.PROTOCOL_REPLY_ACK)) != 0;
    }

    /**
     * True when the frontend speaks the protocol-features dialect: it acknowledged VHOST_USER_F_PROTOCOL_FEATURES, or
     * it completed SET_PROTOCOL_FEATURES. The second matters: QEMU 7.2's vhost-user-net drops bit 30 from the
     * SET_FEATURES it sends (fixed in later QEMU), yet enables rings with SET_VRING_ENABLE; DPDK and libvhost-user
     * accept that, and so do we.
     */
    private boolean protocolFeaturesNegotiated() {
        return (ackedFeatures & VHOST_USER_F_PROTOCOL_FEATURES) != 0 || protocolFeaturesExchanged;
    }

    private void dispatch(Message m, Connection c) throws IOException, BackendException {
        MemorySegment p = m.payload();
        switch (m.type()) {
            case GET_FEATURES -> c.sendReply(m.type(), offeredFeatures);
            case SET_FEATURES -> setFeatures(Payloads.u64(p));
            case SET_OWNER -> {
                // marks the start of a session; all session state already belongs to this connection
            }
            case SET_LOG_BASE -> setLogBase(m, c); // migration (issue 11)
            case GET_INFLIGHT_FD -> getInflightFd(p, c); // crash recovery (issue 11)
            case SET_INFLIGHT_FD -> setInflightFd(m);
            case SET_LOG_FD -> throw new BackendException("SET_LOG_FD is not supported: the log is shared memory (LOG_SHMFD)");
            case RESET_OWNER -> stopAll(); // deprecated; the spec recommends at most disabling the rings
            case GET_PROTOCOL_FEATURES -> c.sendReply(m.type(), offeredProtocolFeatures);
            case SET_PROTOCOL_FEATURES -> setProtocolFeatures(Payloads.u64(p));
            case GET_QUEUE_NUM -> c.sendReply(m.type(), queues.length);
            case GET_MAX_MEM_SLOTS -> c.sendReply(m.type(), MAX_MEM_SLOTS);
            case SET_MEM_TABLE -> setMemTable(m);
            case ADD_MEM_REG -> addMemRegion(m);
            case REM_MEM_REG -> removeMemRegion(Payloads.SingleRegion.region(p));
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
            case GET_STATUS -> c.sendReply(m.type(), (status | backend.deviceStatus()) & MAX_STATUS);
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
        if ((features & ~offeredFeatures) != 0) {
            throw new ProtocolException(String.format("SET_FEATURES acknowledges 0x%x, which was not offered (offered 0x%x)",
                    features & ~offeredFeatures, offeredFeatures));
        }
        for (Queue q : queues) {
            // migration: the frontend turns dirty logging on and off (VHOST_F_LOG_ALL) while the rings run
            if (q.running && (features ^ ackedFeatures) != 0 && (features ^ ackedFeatures) != Features.VHOST_F_LOG_ALL) {
                throw new ProtocolException("SET_FEATURES changes features while queue " + q.index + " is running");
            }
        }
        boolean wasLogging = logging();
        ackedFeatures = features;
        backend.setFeatures(deviceFeatures());
        publishLog(); // migration (issue 11)
        if (wasLogging != logging()) {
            LOG.log(System.Logger.Level.INFO, name + ": dirty page logging " + (logging() ? "on" : "off")
                    + (dirtyLog == null && logging() ? " (no log yet)" : ""));
        }
    }

    /** What the device sees of the acknowledged features: no vhost-user protocol bit, no VHOST_F_LOG_ALL. */
    private long deviceFeatures() {
        return ackedFeatures & ~(VHOST_USER_F_PROTOCOL_FEATURES | Features.VHOST_F_LOG_ALL);
    }

    private void setProtocolFeatures(long features) throws ProtocolException {
        if ((features & ~offeredProtocolFeatures) != 0) {
            throw new ProtocolException(String.format("SET_PROTOCOL_FEATURES acknowledges 0x%x, which was not offered (offered 0x%x)",
                    features & ~offeredProtocolFeatures, offeredProtocolFeatures));
        }
        ackedProtocolFeatures = features;
        protocolFeaturesExchanged = true;
    }

    // ---- memory -----------------------------------------------------------------------------------------------

    /**
     * How many times each region (GPA, size, UVA) was added. QEMU's vhost-user-net with several queue pairs runs one
     * vhost device per pair over the same connection, and each sends ADD_MEM_REG (and later REM_MEM_REG) for the same
     * regions: a region is mapped once and unmapped when the last of them removes it, as libvhost-user does.
     */
    private final Map<List<Long>, Integer> regionRefs = new HashMap<>();

    private static List<Long> regionKey(long gpa, long size, long uva) {
        return List.of(gpa, size, uva);
    }

    /**
     * Most guest memory one connection may have mapped: the host's RAM. A frontend cannot make a guest larger than
     * that useful, and sparse memory files with MAP_NORESERVE would otherwise let it reserve address space and page
     * tables without bound.
     */
    static final long MAX_MAPPED_BYTES = hostMemory();

    private static long hostMemory() {
        java.lang.management.OperatingSystemMXBean os = java.lang.management.ManagementFactory.getOperatingSystemMXBean();
        long total = os instanceof com.sun.management.OperatingSystemMXBean sun ? sun.getTotalMemorySize() : 0;
        return total > 0 ? total : 1L << 40;
    }

    private static void checkMappedTotal(String what, long total) throws ProtocolException {
        if (total < 0 || total > MAX_MAPPED_BYTES) {
            throw new ProtocolException(what + ": " + (total < 0 ? "overflowing sizes" : Long.toUnsignedString(total)
                    + " bytes of guest memory") + " exceed the " + MAX_MAPPED_BYTES + " bytes this host has");
        }
    }

    private void setMemTable(Message m) throws ProtocolException {
        MemorySegment p = m.payload();
        int n = Payloads.MemoryTable.count(p);
        long total = 0;
        for (int i = 0; i < n; i++) {
            long size = Payloads.Region.size(Payloads.MemoryTable.region(p, i));
            total = size < 0 || total + size < 0 ? -1 : total + size;
            checkMappedTotal("SET_MEM_TABLE", total);
        }
        List<MemoryRegion> mapped = new ArrayList<>(n);
        GuestMemory next;
        try {
            for (int i = 0; i < n; i++) {
                mapped.add(mapRegion(Payloads.MemoryTable.region(p, i), m.takeFd(i), "SET_MEM_TABLE region " + i));
            }
            next = GuestMemory.of(mapped);
        } catch (ProtocolException | IllegalArgumentException e) {
            for (MemoryRegion r : mapped) {
                release(r);
            }
            throw e instanceof ProtocolException pe ? pe : new ProtocolException("SET_MEM_TABLE: " + e.getMessage());
        }
        install(next);
        regionRefs.clear();
        for (MemoryRegion r : mapped) {
            regionRefs.put(regionKey(r.guestPhysAddr(), r.size(), r.userAddr()), 1);
        }
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": memory table " + next);
    }

    private void addMemRegion(Message m) throws ProtocolException {
        MemorySegment region = Payloads.SingleRegion.region(m.payload());
        List<Long> key = regionKey(Payloads.Region.guestPhysAddr(region), Payloads.Region.size(region),
                Payloads.Region.userAddr(region));
        MemoryRegion same = memory.get().find(key.get(0), key.get(1), key.get(2));
        if (same != null && same.mmapOffset() == Payloads.Region.mmapOffset(region)) {
            m.takeFd(0).close(); // already mapped for another of the frontend's vhost devices
            regionRefs.merge(key, 1, Integer::sum);
            return;
        }
        long size = Payloads.Region.size(region);
        long total = memory.get().totalBytes() + size;
        checkMappedTotal("ADD_MEM_REG", size < 0 || total < 0 ? -1 : total);
        MemoryRegion r = mapRegion(region, m.takeFd(0), "ADD_MEM_REG");
        GuestMemory next;
        try {
            next = memory.get().with(r);
        } catch (IllegalArgumentException e) {
            release(r);
            throw new ProtocolException("ADD_MEM_REG: " + e.getMessage());
        }
        install(next);
        regionRefs.put(key, 1);
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": added " + r);
    }

    private void removeMemRegion(MemorySegment region) throws ProtocolException {
        long gpa = Payloads.Region.guestPhysAddr(region);
        long size = Payloads.Region.size(region);
        long uva = Payloads.Region.userAddr(region);
        GuestMemory current = memory.get();
        if (current.find(gpa, size, uva) == null) {
            throw new ProtocolException(String.format("REM_MEM_REG of a region that is not mapped: GPA 0x%x size 0x%x UVA 0x%x",
                    gpa, size, uva));
        }
        List<Long> key = regionKey(gpa, size, uva);
        int refs = regionRefs.getOrDefault(key, 1);
        if (refs > 1) {
            regionRefs.put(key, refs - 1); // another vhost device of the frontend still uses it
            return;
        }
        regionRefs.remove(key);
        GuestMemory next = current.without(gpa, size, uva);
        install(next);
    }

    /**
     * Installs {@code next} and drops our reference to the snapshot it replaces: regions that left are unmapped as
     * soon as no queue pins that snapshot any more (queues let go before they sleep), without waiting here.
     */
    private void install(GuestMemory next) {
        memory.swap(next);
        backend.memoryChanged(next);
    }

    /**
     * Checks one region and maps it. The descriptor is consumed (closed once mapped: the mapping keeps the file).
     * A region must lie inside its file: mapping past the end would turn guest accesses into SIGBUS.
     */
    private MemoryRegion mapRegion(MemorySegment region, Fd fd, String what) throws ProtocolException {
        try (fd) {
            long gpa = Payloads.Region.guestPhysAddr(region);
            long size = Payloads.Region.size(region);
            long uva = Payloads.Region.userAddr(region);
            long offset = Payloads.Region.mmapOffset(region);
            String desc = String.format("%s (GPA 0x%x size 0x%x UVA 0x%x offset 0x%x)", what, gpa, size, uva, offset);
            if (size <= 0) {
                throw new ProtocolException(desc + ": size must be positive");
            }
            if (Long.compareUnsigned(gpa + size - 1, gpa) < 0) {
                throw new ProtocolException(desc + ": guest physical range wraps around");
            }
            if (Long.compareUnsigned(uva + size - 1, uva) < 0) {
                throw new ProtocolException(desc + ": frontend address range wraps around");
            }
            if (offset < 0 || offset > Long.MAX_VALUE - size) {
                throw new ProtocolException(desc + ": file offset overflows");
            }
            FileIo.Stat st;
            try {
                st = FileIo.stat(fd);
            } catch (LinuxException e) {
                throw new ProtocolException(desc + ": " + e.getMessage(), e);
            }
            if (!st.isRegularFile()) {
                throw new ProtocolException(desc + ": the descriptor is not a shared memory file (mode 0"
                        + Integer.toOctalString(st.mode()) + ")");
            }
            if (offset + size > st.size()) {
                throw new ProtocolException(desc + ": extends past the end of its " + st.size() + "-byte file");
            }
            long fsType;
            try {
                fsType = FileIo.filesystemType(fd);
            } catch (LinuxException e) {
                throw new ProtocolException(desc + ": " + e.getMessage(), e);
            }
            if (fsType != FileIo.TMPFS_MAGIC && fsType != FileIo.HUGETLBFS_MAGIC) {
                // A file on a disk file system could be truncated by anyone with access to it, and its pages
                // written back to disk: guest RAM must come from memfd, tmpfs (/dev/shm) or hugetlbfs.
                throw new ProtocolException(desc + ": the file is on a file system of type 0x" + Long.toHexString(fsType)
                        + "; guest memory must be a memfd, or a file on tmpfs or hugetlbfs (QEMU: memory-backend-memfd"
                        + " or memory-backend-file with mem-path on /dev/shm or /dev/hugepages)");
            }
            Mmap.Mapping mapping;
            try {
                mapping = Mmap.map(fd, offset, size, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED | Mmap.MAP_NORESERVE);
            } catch (LinuxException e) {
                throw new ProtocolException(desc + ": " + e.getMessage(), e);
            }
            return new MemoryRegion(gpa, size, uva, offset, mapping.segment(), () -> unmap(mapping));
        }
    }

    /**
     * Unmaps a region whose last snapshot was released, on whichever thread released it. No queue pins it, so no
     * access is in progress; should the JDK still refuse (a native call holding the segment), the mapping is left
     * in place and reported rather than retried.
     */
    private void unmap(Mmap.Mapping mapping) {
        try {
            mapping.close();
        } catch (IllegalStateException inUse) {
            LOG.log(System.Logger.Level.ERROR, name + ": a guest memory mapping is still in use after its region was"
                    + " released; leaving it mapped");
        }
    }

    /** Unmaps a region that never made it into a snapshot. */
    private void release(MemoryRegion r) {
        try {
            r.owner().close();
        } catch (Exception e) {
            LOG.log(System.Logger.Level.WARNING, name + ": unmapping " + r + " failed: " + e);
        }
    }

    // ---- rings ------------------------------------------------------------------------------------------------

    private Queue queue(MessageType type, long index) throws ProtocolException {
        if (index < 0 || index >= queues.length) {
            throw new ProtocolException(type.specName() + " for queue " + Long.toUnsignedString(index)
                    + ", but the device has " + queues.length);
        }
        return queues[(int) index];
    }

    private void requireStopped(Queue q, MessageType type) throws ProtocolException {
        if (q.ringStarted) {
            throw new ProtocolException(type.specName() + " for queue " + q.index
                    + " while it is started (stop it with GET_VRING_BASE first)");
        }
    }

    private boolean packed() {
        return (ackedFeatures & Features.VIRTIO_F_RING_PACKED) != 0;
    }

    private void setVringNum(int index, int num) throws ProtocolException {
        Queue q = queue(MessageType.SET_VRING_NUM, Integer.toUnsignedLong(index));
        requireStopped(q, MessageType.SET_VRING_NUM);
        checkRingSize(q.index, num);
        q.size = num;
    }

    private void checkRingSize(int index, int num) throws ProtocolException {
        if (num < 1 || num > maxQueueSize) {
            throw new ProtocolException("queue " + index + " size " + Integer.toUnsignedString(num) + " is outside 1.."
                    + maxQueueSize);
        }
        if (!packed() && Integer.bitCount(num) != 1) {
            throw new ProtocolException("queue " + index + " size " + num + " is not a power of two (split ring)");
        }
    }

    private void setVringAddr(MemorySegment p) throws ProtocolException {
        Queue q = queue(MessageType.SET_VRING_ADDR, Integer.toUnsignedLong(Payloads.VringAddr.index(p)));
        int flags = Payloads.VringAddr.flags(p);
        if ((flags & ~Payloads.VringAddr.F_LOG) != 0) {
            throw new ProtocolException("SET_VRING_ADDR for queue " + q.index + " has unknown flags 0x" + Integer.toHexString(flags));
        }
        if (q.ringStarted && setVringLog(q, p)) {
            return; // migration: only logging changed on a started ring
        }
        requireStopped(q, MessageType.SET_VRING_ADDR);
        GuestMemory mem = memory.get();
        int size = q.size == 0 ? 1 : q.size; // checked again with the final size when the queue starts
        try {
            long desc = Payloads.VringAddr.desc(p);
            long avail = Payloads.VringAddr.avail(p);
            long used = Payloads.VringAddr.used(p);
            q.descGpa = mem.userToGuestPhys(desc, descBytes(size));
            q.availGpa = mem.userToGuestPhys(avail, availBytes(size));
            q.usedGpa = mem.userToGuestPhys(used, usedBytes(size));
        } catch (GuestMemoryFault e) {
            q.addrSet = false;
            throw new ProtocolException("SET_VRING_ADDR for queue " + q.index + ": " + e.getMessage()
                    + (mem.regionCount() == 0 ? " (no memory table yet)" : ""));
        }
        q.addrSet = true;
        q.usedLogAddr = (flags & Payloads.VringAddr.F_LOG) != 0 ? Payloads.VringAddr.log(p) : -1;
        publishLog();
    }

    private long descBytes(int size) {
        return VirtioRing.splitDescBytes(size);
    }

    /** Sizes as {@link VirtioRing} gives them, with the event fields only when EVENT_IDX was negotiated. */
    private long availBytes(int size) {
        return packed() ? VirtioRing.PACKED_EVENT_BYTES : VirtioRing.splitAvailBytes(size, eventIdx());
    }

    private long usedBytes(int size) {
        return packed() ? VirtioRing.PACKED_EVENT_BYTES : VirtioRing.splitUsedBytes(size, eventIdx());
    }

    private boolean eventIdx() {
        return (ackedFeatures & Features.VIRTIO_RING_F_EVENT_IDX) != 0;
    }

    private void setVringBase(int index, int num) throws ProtocolException {
        Queue q = queue(MessageType.SET_VRING_BASE, Integer.toUnsignedLong(index));
        requireStopped(q, MessageType.SET_VRING_BASE);
        if (!packed() && Integer.compareUnsigned(num, 0xffff) > 0) {
            throw new ProtocolException("SET_VRING_BASE for queue " + q.index + ": " + Integer.toUnsignedString(num)
                    + " is not a 16-bit ring index");
        }
        q.base = num;
    }

    private void getVringBase(int index, Connection c) throws IOException {
        Queue q = queue(MessageType.GET_VRING_BASE, Integer.toUnsignedLong(index));
        stopDevice(q);
        if (logging()) { // a migration's switch-over: worth a line with its time
            LOG.log(System.Logger.Level.INFO, name + ": queue " + q.index + " stopped at " + q.base + " (logging on)");
        }
        q.ringStarted = false;
        closeQuietly(q.kick);
        q.kick = null;
        MemorySegment reply = Arena.ofAuto().allocate(Payloads.VRING_STATE_SIZE);
        Payloads.VringState.write(reply, q.index, q.base);
        c.sendReply(MessageType.GET_VRING_BASE, reply);
    }

    private void setVringKick(Message m) throws IOException, BackendException {
        long v = Payloads.u64(m.payload());
        Queue q = queue(MessageType.SET_VRING_KICK, v & Payloads.VRING_IDX_MASK);
        stopDevice(q); // a new kick descriptor: restart the device's processing on it
        closeQuietly(q.kick);
        q.kick = m.fdCount() == 1 ? peerEventFd(m, "SET_VRING_KICK", q.index) : null;
        q.ringStarted = true;
        maybeStart(q);
    }

    private void setVringNotifier(Message m) throws IOException {
        boolean call = m.type() == MessageType.SET_VRING_CALL;
        long v = Payloads.u64(m.payload());
        Queue q = queue(m.type(), v & Payloads.VRING_IDX_MASK);
        EventFd current = call ? q.call : q.err;
        EventFd next = m.fdCount() == 1 ? peerEventFd(m, m.type().specName(), q.index) : null;
        if (q.running && current != null) {
            // The device is signalling this descriptor: swap the file behind its number instead of closing it.
            try (EventFd replacement = next != null ? next : EventFd.create(true)) {
                current.fd().replaceWith(replacement.fd());
            }
            return;
        }
        closeQuietly(current);
        if (call) {
            q.call = next;
        } else {
            q.err = next;
        }
    }

    /**
     * The message's descriptor as an eventfd, checked: a frontend may send a socket, a pipe, a regular file or a
     * blocking eventfd it pre-filled. Anything but an eventfd is a protocol error; the eventfd is made non-blocking
     * (see {@link EventFd#adoptFromPeer} for why that alone is not relied on).
     */
    private static EventFd peerEventFd(Message m, String what, int queue) throws ProtocolException {
        try {
            return EventFd.adoptFromPeer(m.takeFd(0), what + " descriptor of queue " + queue);
        } catch (EventFd.NotAnEventFd e) {
            throw new ProtocolException(e.getMessage() + " (kick, call and err descriptors must be eventfds)");
        } catch (LinuxException e) {
            throw new ProtocolException(what + " descriptor of queue " + queue + ": " + e.getMessage(), e);
        }
    }

    private void setVringEnable(int index, int num) throws IOException, BackendException {
        Queue q = queue(MessageType.SET_VRING_ENABLE, Integer.toUnsignedLong(index));
        // QEMU's vhost-user-net disables every ring (SET_VRING_ENABLE 0) in vhost_net_init, after the protocol
        // features handshake but before SET_FEATURES: "negotiated" there means offered and handshaken.
        if (!protocolFeaturesNegotiated()) {
            throw new ProtocolException("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated");
        }
        if (num != 0 && num != 1) {
            throw new ProtocolException("SET_VRING_ENABLE for queue " + q.index + " with " + Integer.toUnsignedString(num)
                    + ", expected 0 or 1");
        }
        q.enabled = num == 1;
        if (q.enabled) {
            maybeStart(q);
        } else {
            stopDevice(q);
        }
    }

    /** Hands the queue to the device once it is started, enabled (when that applies) and fully described. */
    private void maybeStart(Queue q) throws IOException, BackendException {
        if (q.running || !q.ringStarted || (protocolFeaturesNegotiated() && !q.enabled)) {
            return;
        }
        if (q.size == 0 || !q.addrSet) {
            throw new ProtocolException("queue " + q.index + " started without "
                    + (q.size == 0 ? "SET_VRING_NUM" : "SET_VRING_ADDR"));
        }
        checkRingSize(q.index, q.size);
        GuestMemory mem = memory.get();
        checkArea(mem, q, "descriptor table", q.descGpa, descBytes(q.size), 16);
        checkArea(mem, q, packed() ? "driver event area" : "available ring", q.availGpa, availBytes(q.size), packed() ? 4 : 2);
        checkArea(mem, q, packed() ? "device event area" : "used ring", q.usedGpa, usedBytes(q.size), 4);
        if (packed() && ((q.base & 0x7fff) >= q.size || ((q.base >>> 16) & 0x7fff) >= q.size)) {
            throw new ProtocolException("queue " + q.index + " base 0x" + Integer.toHexString(q.base)
                    + " points outside its " + q.size + "-entry packed ring");
        }
        if (q.call == null) {
            q.call = EventFd.create(true); // the driver polls; the device may signal freely
        }
        VringSetup setup = new VringSetup(q.index, q.size, q.descGpa, q.availGpa, q.usedGpa, q.base,
                deviceFeatures(), q.kick, q.call, q.err, memory,
                inflight == null ? null : inflight.queue(q.index, q.size)); // crash recovery (issue 11)
        backend.queueStarted(q.index, setup);
        q.running = true;
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": started " + setup);
    }

    private static void checkArea(GuestMemory mem, Queue q, String what, long gpa, long len, int align) throws ProtocolException {
        MemorySegment host;
        try {
            host = mem.translate(gpa, len);
        } catch (GuestMemoryFault e) {
            throw new ProtocolException("queue " + q.index + " " + what + ": " + e.getMessage());
        }
        if (gpa % align != 0 || host.address() % align != 0) {
            throw new ProtocolException(String.format("queue %d %s at GPA 0x%x is not %d-byte aligned", q.index, what, gpa, align));
        }
    }

    private void stopDevice(Queue q) {
        if (q.running) {
            q.running = false;
            q.base = backend.queueStopped(q.index);
            LOG.log(System.Logger.Level.DEBUG, () -> name + ": stopped queue " + q.index + " at base " + q.base);
        }
    }

    private void stopAll() {
        for (Queue q : queues) {
            stopDevice(q);
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

    private boolean logging() {
        return (ackedFeatures & Features.VHOST_F_LOG_ALL) != 0;
    }

    /**
     * Installs what devices mark (or nothing) after any change of the log or of LOG_ALL. Ring writes are logged at
     * the rings' guest addresses; QEMU's log_guest_addr is the used ring's guest address, so that is the same bit.
     */
    private void publishLog() {
        memory.writeLog(logging() ? dirtyLog : null);
    }

    /**
     * SET_VRING_ADDR on a started ring: accepted only when nothing but logging changes (the same three addresses).
     *
     * @return true when handled; false when the addresses differ (the caller then refuses: the ring runs)
     */
    private boolean setVringLog(Queue q, MemorySegment p) throws ProtocolException {
        GuestMemory mem = memory.get();
        int size = q.size == 0 ? 1 : q.size;
        try {
            if (!q.addrSet || mem.userToGuestPhys(Payloads.VringAddr.desc(p), descBytes(size)) != q.descGpa
                    || mem.userToGuestPhys(Payloads.VringAddr.avail(p), availBytes(size)) != q.availGpa
                    || mem.userToGuestPhys(Payloads.VringAddr.used(p), usedBytes(size)) != q.usedGpa) {
                return false;
            }
        } catch (GuestMemoryFault e) {
            return false;
        }
        q.usedLogAddr = (Payloads.VringAddr.flags(p) & Payloads.VringAddr.F_LOG) != 0 ? Payloads.VringAddr.log(p) : -1;
        publishLog();
        LOG.log(System.Logger.Level.DEBUG, () -> name + ": queue " + q.index + " used-ring logging "
                + (q.usedLogAddr == -1 ? "off" : String.format("at 0x%x", q.usedLogAddr)));
        return true;
    }

    /**
     * SET_LOG_BASE: maps the new log, installs it, retires the old one and replies (the frontend waits for it). The
     * frontend syncs and frees the old log as soon as we reply, while a device thread may be between reading the
     * old log and marking it: {@link DirtyLog#retire} waits for such marks and forwards any later one to the new
     * log, so the queues keep running (and a blk export keeps its image lock) across the swap.
     */
    private void setLogBase(Message m, Connection c) throws IOException, BackendException {
        if ((ackedProtocolFeatures & Features.bit(Features.PROTOCOL_LOG_SHMFD)) == 0) {
            throw new ProtocolException("SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD negotiated");
        }
        MemorySegment p = m.payload();
        if (p.byteSize() != Payloads.LOG_SIZE || m.fdCount() != 1) {
            throw new ProtocolException("SET_LOG_BASE needs a " + Payloads.LOG_SIZE + "-byte log description and one "
                    + "descriptor, got " + p.byteSize() + " bytes and " + m.fdCount());
        }
        DirtyLog next = DirtyLog.map(name, m.takeFd(0), Payloads.Log.size(p), Payloads.Log.offset(p));
        DirtyLog old = dirtyLog;
        dirtyLog = next;
        publishLog();
        if (old != null) {
            old.retire(next);
            old.close();
        }
        LOG.log(System.Logger.Level.INFO, name + ": " + next + (logging() ? " (logging on)" : ""));
        c.sendReply(MessageType.SET_LOG_BASE, 0L);
    }

    private boolean anyRunning() {
        for (Queue q : queues) {
            if (q.running) {
                return true;
            }
        }
        return false;
    }

    private void closeLogs() {
        memory.writeLog(null);
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
        if (n < 1 || n > queues.length || qs < 1 || qs > maxQueueSize) {
            throw new ProtocolException("GET_INFLIGHT_FD for " + n + " queues of " + qs + ": the device has " + queues.length
                    + " queues of at most " + maxQueueSize);
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
        if (n < 1 || n > queues.length || qs < 1 || qs > maxQueueSize) {
            throw new ProtocolException("SET_INFLIGHT_FD for " + n + " queues of " + qs + ": the device has " + queues.length
                    + " queues of at most " + maxQueueSize);
        }
        InflightRegion next = InflightRegion.map(m.takeFd(0), Payloads.Inflight.mmapSize(p), Payloads.Inflight.mmapOffset(p), n, qs);
        replaceInflight(next);
        LOG.log(System.Logger.Level.INFO, name + ": frontend kept " + next);
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
        backend.writeConfig(offset, Payloads.Config.data(p).toArray(JAVA_BYTE),
                flags == Payloads.Config.FLAG_MIGRATION);
    }

    private void setStatus(long value) throws ProtocolException, BackendException {
        if (value < 0 || value > MAX_STATUS) {
            throw new ProtocolException("SET_STATUS " + Long.toUnsignedString(value) + " is not a device status byte");
        }
        if (value == 0) {
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
        for (Queue q : queues) {
            closeQuietly(q.kick);
            q.kick = null;
            q.ringStarted = false;
            q.enabled = false;
            q.addrSet = false;
            q.size = 0;
            q.base = 0;
            q.usedLogAddr = -1;
        }
        ackedFeatures = 0;
        publishLog();
        status = 0;
        backend.reset();
    }

    private void setBackendReqFd(Message m) throws BackendException {
        BackendChannel next = BackendChannel.adopt(io.iovirt.linux.UnixSocket.adopt(m.takeFd(0), name + " backend channel"),
                name, replyAck());
        BackendChannel previous = backendChannel;
        backendChannel = next;
        backend.backendChannel(next);
        if (previous != null) {
            previous.close();
        }
    }

    /** The connection ended: stop everything, reset the device and unmap guest memory. */
    @Override
    public void close() {
        if (backendChannel != null) {
            backend.backendChannel(null);
            backendChannel.close();
            backendChannel = null;
        }
        stopAll();
        for (Queue q : queues) {
            closeQuietly(q.kick);
            closeQuietly(q.call);
            closeQuietly(q.err);
            q.kick = q.call = q.err = null;
        }
        try {
            backend.reset();
        } finally {
            install(GuestMemory.empty());
            closeLogs(); // migration (issue 11): every queue is stopped, nothing marks the logs any more
            if (inflight != null) {
                inflight.close();
                inflight = null;
            }
        }
    }

    private static void closeQuietly(EventFd e) {
        if (e != null) {
            e.close();
        }
    }
}
