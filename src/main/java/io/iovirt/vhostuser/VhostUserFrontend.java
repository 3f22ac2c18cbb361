// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.UnixSocket;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/**
 * The front-end (master) side of vhost-user, for a driver without a VM (like DPDK's virtio-user): typed requests
 * with their descriptors, and replies awaited with a timeout so a silent backend fails the caller instead of
 * hanging it. Once REPLY_ACK is negotiated, requests without a reply body ask for an acknowledgement and a
 * non-zero status throws {@link RequestRejectedException}.
 *
 * <p>Requests are serialized (one outstanding request at a time, from any thread).
 */
public final class VhostUserFrontend implements AutoCloseable {
    /** A memory region as the frontend sends it; {@code fd} stays owned by the caller. */
    public record RegionDescriptor(long guestPhysAddr, long size, long userAddr, long mmapOffset, Fd fd) {}

    private final Connection connection;
    private final MemorySegment payload = Arena.ofAuto().allocate(Payloads.MAX_PAYLOAD_SIZE, 8);
    private boolean replyAck;

    private VhostUserFrontend(Connection connection) {
        this.connection = connection;
    }

    public static VhostUserFrontend connect(Path socketPath, Duration replyTimeout) throws IOException {
        return over(UnixSocket.connect(socketPath), replyTimeout, socketPath.toString());
    }

    /** Uses an already connected socket (e.g. one end of a socketpair); takes ownership. */
    public static VhostUserFrontend over(UnixSocket socket, Duration replyTimeout, String name) throws LinuxException {
        try {
            socket.setReceiveTimeout(replyTimeout);
            socket.setSendTimeout(replyTimeout);
        } catch (LinuxException e) {
            socket.close();
            throw e;
        }
        return new VhostUserFrontend(new Connection(socket, Connection.Role.FRONTEND, name));
    }

    /** The framing layer, for sending hand-made messages (tests of a backend's input validation). */
    public Connection connection() {
        return connection;
    }

    // ---- negotiation ------------------------------------------------------------------------------------------

    public synchronized long getFeatures() throws IOException {
        return requestU64(MessageType.GET_FEATURES);
    }

    public synchronized void setFeatures(long features) throws IOException {
        sendU64(MessageType.SET_FEATURES, features);
    }

    public synchronized long getProtocolFeatures() throws IOException {
        return requestU64(MessageType.GET_PROTOCOL_FEATURES);
    }

    /** Negotiates protocol features; from now on REPLY_ACK is used when it is among them. */
    public synchronized void setProtocolFeatures(long features) throws IOException {
        sendU64(MessageType.SET_PROTOCOL_FEATURES, features);
        replyAck = (features & Features.bit(Features.PROTOCOL_REPLY_ACK)) != 0;
    }

    public synchronized void setOwner() throws IOException {
        send(MessageType.SET_OWNER, 0, List.of());
    }

    public synchronized void resetOwner() throws IOException {
        send(MessageType.RESET_OWNER, 0, List.of());
    }

    public synchronized int getQueueNum() throws IOException {
        return (int) requestU64(MessageType.GET_QUEUE_NUM);
    }

    public synchronized long getMaxMemSlots() throws IOException {
        return requestU64(MessageType.GET_MAX_MEM_SLOTS);
    }

    // ---- memory -----------------------------------------------------------------------------------------------

    /** SET_MEM_TABLE with up to 8 regions and their descriptors. */
    public synchronized void setMemTable(List<RegionDescriptor> regions) throws IOException {
        if (regions.size() > Payloads.MAX_MEMORY_TABLE_REGIONS) {
            throw new IllegalArgumentException(
                    "SET_MEM_TABLE carries at most " + Payloads.MAX_MEMORY_TABLE_REGIONS + " regions");
        }
        MemorySegment p = payload(Payloads.MemoryTable.sizeFor(regions.size()));
        Payloads.MemoryTable.writeCount(p, regions.size());
        List<Fd> fds = new ArrayList<>(regions.size());
        for (int i = 0; i < regions.size(); i++) {
            RegionDescriptor r = regions.get(i);
            Payloads.Region.write(
                    Payloads.MemoryTable.region(p, i), r.guestPhysAddr(), r.size(), r.userAddr(), r.mmapOffset());
            fds.add(r.fd());
        }
        send(MessageType.SET_MEM_TABLE, p.byteSize(), fds);
    }

    public synchronized void addMemRegion(RegionDescriptor r) throws IOException {
        MemorySegment p = payload(Payloads.SINGLE_REGION_SIZE);
        Payloads.Region.write(
                Payloads.SingleRegion.region(p), r.guestPhysAddr(), r.size(), r.userAddr(), r.mmapOffset());
        send(MessageType.ADD_MEM_REG, p.byteSize(), List.of(r.fd()));
    }

    /** REM_MEM_REG: identified by guest address, size and user address; no descriptor is sent. */
    public synchronized void removeMemRegion(RegionDescriptor r) throws IOException {
        MemorySegment p = payload(Payloads.SINGLE_REGION_SIZE);
        Payloads.Region.write(
                Payloads.SingleRegion.region(p), r.guestPhysAddr(), r.size(), r.userAddr(), r.mmapOffset());
        send(MessageType.REM_MEM_REG, p.byteSize(), List.of());
    }

    // ---- rings ------------------------------------------------------------------------------------------------

    public synchronized void setVringNum(int index, int size) throws IOException {
        sendVringState(MessageType.SET_VRING_NUM, index, size);
    }

    /** Ring addresses are frontend virtual addresses (e.g. {@link FrontendMemory#userAddrOf}). */
    public synchronized void setVringAddr(int index, long descUserAddr, long usedUserAddr, long availUserAddr)
            throws IOException {
        MemorySegment p = payload(Payloads.VRING_ADDR_SIZE);
        Payloads.VringAddr.write(p, index, 0, descUserAddr, usedUserAddr, availUserAddr, 0);
        send(MessageType.SET_VRING_ADDR, p.byteSize(), List.of());
    }

    /**
     * SET_VRING_ADDR with VHOST_VRING_F_LOG when {@code logGuestAddr} is not -1: the backend logs used-ring writes
     * at that guest address (migration).
     */
    public synchronized void setVringAddr(
            int index, long descUserAddr, long usedUserAddr, long availUserAddr, long logGuestAddr) throws IOException {
        MemorySegment p = payload(Payloads.VRING_ADDR_SIZE);
        Payloads.VringAddr.write(
                p,
                index,
                logGuestAddr == -1 ? 0 : Payloads.VringAddr.F_LOG,
                descUserAddr,
                usedUserAddr,
                availUserAddr,
                logGuestAddr == -1 ? 0 : logGuestAddr);
        send(MessageType.SET_VRING_ADDR, p.byteSize(), List.of());
    }

    /**
     * SET_LOG_BASE (needs LOG_SHMFD): the dirty log is {@code size} bytes of {@code log} from {@code offset}. Waits
     * for the backend's reply, which the message always has.
     */
    public synchronized void setLogBase(Fd log, long size, long offset) throws IOException {
        MemorySegment p = payload(Payloads.LOG_SIZE);
        Payloads.Log.write(p, size, offset);
        connection.sendRequest(MessageType.SET_LOG_BASE, false, p, List.of(log));
        connection.receiveReply(MessageType.SET_LOG_BASE).close();
    }

    /** What GET_INFLIGHT_FD returned: the backend's in-flight memory. The caller owns {@code fd}. */
    public record Inflight(long mmapSize, long mmapOffset, int numQueues, int queueSize, Fd fd) {}

    /** GET_INFLIGHT_FD (needs INFLIGHT_SHMFD): asks the backend for in-flight memory for the queues. */
    public synchronized Inflight getInflightFd(int numQueues, int queueSize) throws IOException {
        MemorySegment p = payload(Payloads.INFLIGHT_SIZE);
        Payloads.Inflight.write(p, 0, 0, numQueues, queueSize);
        connection.sendRequest(MessageType.GET_INFLIGHT_FD, false, p, List.of());
        try (Message reply = connection.receiveReply(MessageType.GET_INFLIGHT_FD)) {
            if (reply.fdCount() != 1 || reply.payload().byteSize() != Payloads.INFLIGHT_SIZE) {
                throw new ProtocolException("GET_INFLIGHT_FD reply has " + reply.fdCount() + " descriptors and "
                        + reply.payload().byteSize() + " bytes");
            }
            MemorySegment r = reply.payload();
            return new Inflight(
                    Payloads.Inflight.mmapSize(r),
                    Payloads.Inflight.mmapOffset(r),
                    Payloads.Inflight.numQueues(r),
                    Payloads.Inflight.queueSize(r),
                    reply.takeFd(0));
        }
    }

    /** SET_INFLIGHT_FD: gives the backend the in-flight memory (after a reconnect: what the previous one handed out). */
    public synchronized void setInflightFd(Inflight inflight) throws IOException {
        MemorySegment p = payload(Payloads.INFLIGHT_SIZE);
        Payloads.Inflight.write(
                p, inflight.mmapSize(), inflight.mmapOffset(), inflight.numQueues(), inflight.queueSize());
        send(MessageType.SET_INFLIGHT_FD, p.byteSize(), List.of(inflight.fd()));
    }

    public synchronized void setVringBase(int index, int base) throws IOException {
        sendVringState(MessageType.SET_VRING_BASE, index, base);
    }

    /** Stops the ring and returns where the backend stopped. */
    public synchronized int getVringBase(int index) throws IOException {
        MemorySegment p = payload(Payloads.VRING_STATE_SIZE);
        Payloads.VringState.write(p, index, 0);
        connection.sendRequest(MessageType.GET_VRING_BASE, false, p, List.of());
        try (Message reply = connection.receiveReply(MessageType.GET_VRING_BASE)) {
            int got = Payloads.VringState.index(reply.payload());
            if (got != index) {
                throw new ProtocolException("GET_VRING_BASE reply is for queue " + got + ", asked for " + index);
            }
            return Payloads.VringState.num(reply.payload());
        }
    }

    /** SET_VRING_KICK with {@code kick}, or with the no-descriptor flag (polling) when null. */
    public synchronized void setVringKick(int index, EventFd kick) throws IOException {
        sendNotifier(MessageType.SET_VRING_KICK, index, kick);
    }

    public synchronized void setVringCall(int index, EventFd call) throws IOException {
        sendNotifier(MessageType.SET_VRING_CALL, index, call);
    }

    public synchronized void setVringErr(int index, EventFd err) throws IOException {
        sendNotifier(MessageType.SET_VRING_ERR, index, err);
    }

    public synchronized void setVringEnable(int index, boolean enable) throws IOException {
        sendVringState(MessageType.SET_VRING_ENABLE, index, enable ? 1 : 0);
    }

    // ---- device -----------------------------------------------------------------------------------------------

    public synchronized byte[] getConfig(int offset, int size) throws IOException {
        if (size < 0 || size > Payloads.CONFIG_MAX_DATA) {
            throw new IllegalArgumentException("configuration reads are 0.." + Payloads.CONFIG_MAX_DATA + " bytes");
        }
        MemorySegment p = payload(Payloads.CONFIG_HEADER_SIZE + size);
        Payloads.Config.writeHeader(p, offset, size, 0);
        connection.sendRequest(MessageType.GET_CONFIG, false, p, List.of());
        try (Message reply = connection.receiveReply(MessageType.GET_CONFIG)) {
            MemorySegment r = reply.payload();
            if (r.byteSize() == 0) {
                throw new RequestRejectedException("backend refused GET_CONFIG of " + size + " bytes at " + offset, 1);
            }
            if (Payloads.Config.size(r) != size || Payloads.Config.offset(r) != offset) {
                throw new ProtocolException("GET_CONFIG reply covers " + Payloads.Config.offset(r) + "+"
                        + Payloads.Config.size(r) + ", asked for " + offset + "+" + size);
            }
            return Payloads.Config.data(r).toArray(ValueLayout.JAVA_BYTE);
        }
    }

    /** SET_CONFIG; {@code flags} 0 for a driver write, 1 for migration. */
    public synchronized void setConfig(int offset, byte[] data, int flags) throws IOException {
        MemorySegment p = payload(Payloads.CONFIG_HEADER_SIZE + data.length);
        Payloads.Config.writeHeader(p, offset, data.length, flags);
        MemorySegment.copy(data, 0, p, ValueLayout.JAVA_BYTE, Payloads.CONFIG_HEADER_SIZE, data.length);
        send(MessageType.SET_CONFIG, p.byteSize(), List.of());
    }

    public synchronized void setStatus(int status) throws IOException {
        sendU64(MessageType.SET_STATUS, status & 0xffL);
    }

    public synchronized int getStatus() throws IOException {
        return (int) requestU64(MessageType.GET_STATUS);
    }

    public synchronized void resetDevice() throws IOException {
        send(MessageType.RESET_DEVICE, 0, List.of());
    }

    public synchronized void sendRarp(byte[] mac) throws IOException {
        if (mac.length != 6) {
            throw new IllegalArgumentException("a MAC address has 6 bytes");
        }
        MemorySegment p = payload(Payloads.U64_SIZE);
        MemorySegment.copy(mac, 0, p, ValueLayout.JAVA_BYTE, 0, 6);
        send(MessageType.SEND_RARP, p.byteSize(), List.of());
    }

    public synchronized void setMtu(int mtu) throws IOException {
        sendU64(MessageType.NET_SET_MTU, mtu);
    }

    // ---- plumbing ---------------------------------------------------------------------------------------------

    private MemorySegment payload(int size) {
        MemorySegment p = payload.asSlice(0, size);
        p.fill((byte) 0);
        return p;
    }

    private long requestU64(MessageType type) throws IOException {
        connection.sendRequest(type, false, payload(0), List.of());
        try (Message reply = connection.receiveReply(type)) {
            return Payloads.u64(reply.payload());
        }
    }

    private void sendU64(MessageType type, long value) throws IOException {
        MemorySegment p = payload(Payloads.U64_SIZE);
        Payloads.u64(p, value);
        send(type, p.byteSize(), List.of());
    }

    private void sendVringState(MessageType type, int index, int num) throws IOException {
        MemorySegment p = payload(Payloads.VRING_STATE_SIZE);
        Payloads.VringState.write(p, index, num);
        send(type, p.byteSize(), List.of());
    }

    private void sendNotifier(MessageType type, int index, EventFd fd) throws IOException {
        if (index < 0 || index > Payloads.VRING_IDX_MASK) {
            throw new IllegalArgumentException("queue index " + index + " does not fit in 8 bits");
        }
        MemorySegment p = payload(Payloads.U64_SIZE);
        Payloads.u64(p, index | (fd == null ? Payloads.VRING_NOFD_MASK : 0));
        send(type, p.byteSize(), fd == null ? List.of() : List.of(fd.fd()));
    }

    /** Sends a request whose payload is in {@link #payload}; waits for the acknowledgement when REPLY_ACK is on. */
    private void send(MessageType type, long size, List<Fd> fds) throws IOException {
        connection.sendRequest(type, replyAck, payload.asSlice(0, size), fds);
        if (replyAck) {
            try (Message reply = connection.receiveReply(type)) {
                long status = Payloads.u64(reply.payload());
                if (status != 0) {
                    throw new RequestRejectedException(
                            "backend " + connection.name() + " rejected " + type.specName() + " (status " + status
                                    + ")",
                            status);
                }
            }
        }
    }

    @Override
    public void close() {
        connection.close();
    }
}
