// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import io.iovirt.linux.TooManyFdsException;
import io.iovirt.linux.UnixSocket;
import java.io.EOFException;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * vhost-user framing over a UNIX socket: the 12-byte header, the payload and the descriptors that come with them.
 * Everything structural is checked here, before the payload is read where possible: the request code, the flags,
 * the size against the type's expected size and against the largest message we accept, and the number of
 * descriptors each message may carry (stray ones are closed). Anything wrong is a {@link ProtocolException}.
 *
 * <p>One thread receives; sending is serialized, so a frontend may send from any thread.
 */
public final class Connection implements AutoCloseable {
    /** Most descriptors any message carries (SET_MEM_TABLE with 8 regions): the receive control buffer's size. */
    static final int MAX_FDS = Payloads.MAX_MEMORY_TABLE_REGIONS;

    /** Which side of the protocol this end is. */
    public enum Role {
        BACKEND,
        FRONTEND
    }

    private final UnixSocket socket;
    /** Guards {@link #closed}; held by {@link #shutdown()} and {@link #close()} only, never while sending or receiving. */
    private final Object closeLock = new Object();

    private boolean closed;
    private final Role role;
    private final String name;
    private final MemorySegment rxHeader;
    private final MemorySegment rxPayload;
    private final MemorySegment txBuffer;

    public Connection(UnixSocket socket, Role role, String name) {
        this.socket = socket;
        this.role = role;
        this.name = name;
        Arena arena = Arena.ofAuto();
        this.rxHeader = arena.allocate(Payloads.HEADER_SIZE, 8);
        this.rxPayload = arena.allocate(Payloads.MAX_PAYLOAD_SIZE, 8);
        this.txBuffer = arena.allocate(Payloads.HEADER_SIZE + Payloads.MAX_PAYLOAD_SIZE, 8);
    }

    public String name() {
        return name;
    }

    public UnixSocket socket() {
        return socket;
    }

    /**
     * Receives the next front-end request (backend role).
     *
     * @return the message, or null when the frontend closed the connection between messages
     */
    public Message receiveRequest() throws IOException {
        requireRole(Role.BACKEND);
        List<Fd> fds = new ArrayList<>(0);
        try {
            if (!receiveHeader(fds)) {
                return null;
            }
            int code = rxHeader.get(Payloads.U32, 0);
            int flags = rxHeader.get(Payloads.U32, 4);
            int size = rxHeader.get(Payloads.U32, 8);
            MessageType type = MessageType.frontendRequest(code);
            if (type == null) {
                throw new ProtocolException("unknown request code " + Integer.toUnsignedString(code));
            }
            if ((flags & Header.VERSION_MASK) != Header.VERSION) {
                throw new ProtocolException(type.specName() + " has protocol version " + (flags & Header.VERSION_MASK)
                        + ", expected " + Header.VERSION);
            }
            if ((flags & ~Header.REQUEST_FLAGS) != 0) {
                throw new ProtocolException(type.specName() + " has invalid flags 0x" + Integer.toHexString(flags));
            }
            checkSize(type, size);
            MemorySegment payload = receivePayload(size, fds);
            checkRequestFds(type, payload, fds.size());
            return new Message(type, flags, payload, fds);
        } catch (IOException | RuntimeException e) {
            Fd.closeAll(fds);
            throw e;
        }
    }

    /**
     * Receives the reply to {@code request} (frontend role); checks the REPLY flag, the request code and the size
     * the reply must have. A GET_CONFIG failure reply (empty payload) is returned as a zero-length payload.
     */
    public Message receiveReply(MessageType request) throws IOException {
        requireRole(Role.FRONTEND);
        List<Fd> fds = new ArrayList<>(0);
        try {
            if (!receiveHeader(fds)) {
                throw new EOFException(
                        "backend " + name + " closed the connection instead of answering " + request.specName());
            }
            int code = rxHeader.get(Payloads.U32, 0);
            int flags = rxHeader.get(Payloads.U32, 4);
            int size = rxHeader.get(Payloads.U32, 8);
            if (code != request.code()) {
                throw new ProtocolException(
                        "reply to " + request.specName() + " has request code " + Integer.toUnsignedString(code));
            }
            if ((flags & Header.VERSION_MASK) != Header.VERSION
                    || (flags & Header.REPLY) == 0
                    || (flags & ~(Header.VERSION_MASK | Header.REPLY)) != 0) {
                throw new ProtocolException(
                        "reply to " + request.specName() + " has flags 0x" + Integer.toHexString(flags));
            }
            int allowedFds = request == MessageType.GET_INFLIGHT_FD ? 1 : 0; // the in-flight memory (issue 11)
            if (fds.size() > allowedFds) {
                throw new ProtocolException(
                        "reply to " + request.specName() + " carries " + fds.size() + " descriptors");
            }
            boolean ok = switch (request.reply()) {
                case ACK, U64, VRING_STATE -> size == 8;
                case CONFIG -> size == 0 || (size >= Payloads.CONFIG_HEADER_SIZE && size <= Payloads.CONFIG_MAX_SIZE);
                case ANY -> size >= 0 && size <= Payloads.MAX_PAYLOAD_SIZE;
            };
            if (!ok) {
                throw new ProtocolException("reply to " + request.specName() + " has a "
                        + Integer.toUnsignedString(size) + "-byte payload");
            }
            MemorySegment payload = receivePayload(size, fds);
            if (fds.size() > allowedFds) {
                throw new ProtocolException("reply to " + request.specName() + " carries descriptors");
            }
            if (request.reply() == MessageType.Reply.CONFIG
                    && size > 0
                    && size != Payloads.CONFIG_HEADER_SIZE + Payloads.Config.size(payload)) {
                throw new ProtocolException("GET_CONFIG reply of " + size + " bytes says it holds "
                        + Integer.toUnsignedString(Payloads.Config.size(payload)) + " bytes of configuration");
            }
            return new Message(request, flags, payload, fds);
        } catch (IOException | RuntimeException e) {
            Fd.closeAll(fds);
            throw e;
        }
    }

    /** Sends a request with {@code payload} (may be empty) and descriptors. */
    public synchronized void sendRequest(MessageType type, boolean needReply, MemorySegment payload, List<Fd> fds)
            throws IOException {
        requireRole(Role.FRONTEND);
        send(type.code(), Header.VERSION | (needReply ? Header.NEED_REPLY : 0), payload, fds);
    }

    /** Sends a reply carrying {@code payload}. */
    public synchronized void sendReply(MessageType type, MemorySegment payload) throws IOException {
        requireRole(Role.BACKEND);
        send(type.code(), Header.VERSION | Header.REPLY, payload, List.of());
    }

    /** Sends a reply carrying {@code payload} and descriptors (GET_INFLIGHT_FD). */
    public synchronized void sendReply(MessageType type, MemorySegment payload, List<Fd> fds) throws IOException {
        requireRole(Role.BACKEND);
        send(type.code(), Header.VERSION | Header.REPLY, payload, fds);
    }

    /** Sends a u64 reply (REPLY_ACK status: 0 success, non-zero failure; or a GET_* value). */
    public synchronized void sendReply(MessageType type, long value) throws IOException {
        requireRole(Role.BACKEND);
        MemorySegment p = txBuffer.asSlice(Payloads.HEADER_SIZE, 8);
        Payloads.u64(p, value);
        send(type.code(), Header.VERSION | Header.REPLY, p, List.of());
    }

    /**
     * Sends raw bytes: a header with any values and any payload, for tests of how a peer handles malformed
     * messages. Not for normal use.
     */
    public synchronized void sendRaw(int code, int flags, int sizeField, MemorySegment payload, List<Fd> fds)
            throws IOException {
        writeHeader(code, flags, sizeField);
        MemorySegment.copy(payload, 0, txBuffer, Payloads.HEADER_SIZE, payload.byteSize());
        socket.send(txBuffer.asSlice(0, Payloads.HEADER_SIZE + payload.byteSize()), fds);
    }

    private void send(int code, int flags, MemorySegment payload, List<Fd> fds) throws IOException {
        long size = payload.byteSize();
        if (size > Payloads.MAX_PAYLOAD_SIZE) {
            throw new IllegalArgumentException("payload of " + size + " bytes exceeds " + Payloads.MAX_PAYLOAD_SIZE);
        }
        writeHeader(code, flags, (int) size);
        if (payload.address() != txBuffer.address() + Payloads.HEADER_SIZE || !payload.isNative()) {
            MemorySegment.copy(payload, 0, txBuffer, Payloads.HEADER_SIZE, size);
        }
        socket.send(txBuffer.asSlice(0, Payloads.HEADER_SIZE + size), fds); // one sendmsg: fds ride with the header
    }

    private void writeHeader(int code, int flags, int size) {
        txBuffer.set(Payloads.U32, 0, code);
        txBuffer.set(Payloads.U32, 4, flags);
        txBuffer.set(Payloads.U32, 8, size);
    }

    private boolean receiveHeader(List<Fd> fds) throws IOException {
        UnixSocket.Received r;
        try {
            r = socket.recvFully(rxHeader, MAX_FDS);
        } catch (TooManyFdsException e) {
            throw new ProtocolException("message carries more than " + MAX_FDS + " file descriptors (all closed)", e);
        } catch (EOFException e) {
            throw new ProtocolException("peer hung up in the middle of a message header", e);
        }
        if (r.eof()) {
            return false;
        }
        fds.addAll(r.fds());
        return true;
    }

    private MemorySegment receivePayload(int size, List<Fd> fds) throws IOException {
        MemorySegment payload = rxPayload.asSlice(0, size);
        if (size == 0) {
            return payload;
        }
        UnixSocket.Received r;
        try {
            r = socket.recvFully(payload, MAX_FDS - fds.size());
        } catch (TooManyFdsException e) {
            throw new ProtocolException("message carries more than " + MAX_FDS + " file descriptors (all closed)", e);
        } catch (EOFException e) {
            throw new ProtocolException("peer hung up in the middle of a " + size + "-byte payload", e);
        }
        if (r.eof()) {
            throw new ProtocolException("peer hung up before the " + size + "-byte payload");
        }
        fds.addAll(r.fds());
        return payload;
    }

    private static void checkSize(MessageType type, int size) throws ProtocolException {
        if (size < 0 || size > Payloads.MAX_PAYLOAD_SIZE) {
            throw new ProtocolException(type.specName() + " announces a " + Integer.toUnsignedString(size)
                    + "-byte payload, more than the largest message (" + Payloads.MAX_PAYLOAD_SIZE + " bytes)");
        }
        if (size < type.minSize() || size > type.maxSize()) {
            throw new ProtocolException(type.specName() + " has a " + size + "-byte payload, expected "
                    + (type.minSize() == type.maxSize()
                            ? String.valueOf(type.minSize())
                            : type.minSize() + ".." + type.maxSize()));
        }
    }

    private static void checkRequestFds(MessageType type, MemorySegment payload, int fdCount) throws ProtocolException {
        int expectedMin = type.minFds();
        int expectedMax = type.maxFds();
        switch (type) {
            case SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR -> {
                long v = Payloads.u64(payload);
                if ((v & ~(Payloads.VRING_IDX_MASK | Payloads.VRING_NOFD_MASK)) != 0) {
                    throw new ProtocolException(type.specName() + " has reserved bits set: 0x" + Long.toHexString(v));
                }
                expectedMin = expectedMax = (v & Payloads.VRING_NOFD_MASK) != 0 ? 0 : 1;
            }
            case SET_MEM_TABLE -> {
                int n = Payloads.MemoryTable.count(payload);
                if (n < 0 || n > Payloads.MAX_MEMORY_TABLE_REGIONS) {
                    throw new ProtocolException("SET_MEM_TABLE with " + Integer.toUnsignedString(n)
                            + " regions, at most " + Payloads.MAX_MEMORY_TABLE_REGIONS + " allowed");
                }
                if (payload.byteSize() != Payloads.MemoryTable.sizeFor(n)) {
                    throw new ProtocolException("SET_MEM_TABLE with " + n + " regions has a " + payload.byteSize()
                            + "-byte payload, expected " + Payloads.MemoryTable.sizeFor(n));
                }
                expectedMin = expectedMax = n;
            }
            case GET_CONFIG, SET_CONFIG -> {
                int n = Payloads.Config.size(payload);
                if (n < 0 || n > Payloads.CONFIG_MAX_DATA || payload.byteSize() != Payloads.CONFIG_HEADER_SIZE + n) {
                    throw new ProtocolException(type.specName() + " says " + Integer.toUnsignedString(n)
                            + " bytes of configuration in a " + payload.byteSize() + "-byte payload (at most "
                            + Payloads.CONFIG_MAX_DATA + ")");
                }
            }
            default -> {}
        }
        if (fdCount < expectedMin || fdCount > expectedMax) {
            throw new ProtocolException(type.specName() + " came with " + fdCount + " file descriptor"
                    + (fdCount == 1 ? "" : "s") + ", expected "
                    + (expectedMin == expectedMax ? String.valueOf(expectedMin) : expectedMin + ".." + expectedMax)
                    + " (all closed)");
        }
    }

    private void requireRole(Role r) {
        if (role != r) {
            throw new IllegalStateException("not available on a " + role + " connection");
        }
    }

    /**
     * Shuts the socket down in both directions: a thread blocked receiving sees end-of-stream, the peer sees a
     * hang-up. The descriptor stays open until {@link #close()} (by the receiving thread, once it has returned). Any
     * thread, any time: after {@link #close()} it does nothing. (Shutdown and close exclude each other: a server
     * closing while the receiving thread ends on its own and closes must not shut down a closed descriptor, whose
     * number may already belong to an unrelated file.)
     */
    public void shutdown() {
        synchronized (closeLock) {
            if (!closed) {
                shutdownSocket();
            }
        }
    }

    @Override
    public void close() {
        synchronized (closeLock) {
            if (closed) {
                return;
            }
            shutdownSocket();
            closed = true;
            socket.close();
        }
    }

    /** Under {@link #closeLock}, the socket still open. */
    private void shutdownSocket() {
        try {
            socket.shutdown(UnixSocket.SHUT_RDWR);
        } catch (IOException e) {
            // already disconnected: nothing to wake
        }
    }
}
