// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.LinuxException;
import io.iovirt.linux.UnixSocket;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.net.SocketTimeoutException;
import java.time.Duration;
import java.util.List;

/**
 * The backend-to-frontend channel ({@code VHOST_USER_PROTOCOL_F_BACKEND_REQ}, formerly SLAVE_REQ): the socket the
 * frontend handed over with SET_BACKEND_REQ_FD, on which the backend sends requests of its own. Only
 * BACKEND_CONFIG_CHANGE_MSG is sent here (a disk was resized): QEMU then re-reads the configuration space with
 * GET_CONFIG on the main connection and raises the guest's configuration-change interrupt.
 *
 * <p>The descriptor comes from the frontend, so it is not trusted to behave: sends and the wait for the reply have a
 * timeout, and a channel that failed once is closed. Callers are control threads (never queue threads); the
 * session thread closes the channel when the connection ends. Sends are serialized.
 */
public final class BackendChannel implements AutoCloseable {
    /** How long a frontend may take to accept the message and answer it. */
    public static final Duration TIMEOUT = Duration.ofSeconds(5);

    private final UnixSocket socket;
    private final String name;
    private final boolean replyAck;
    private final MemorySegment tx;
    private final MemorySegment rx;
    private boolean closed; // guarded by this

    private BackendChannel(UnixSocket socket, String name, boolean replyAck) {
        this.socket = socket;
        this.name = name;
        this.replyAck = replyAck;
        Arena arena = Arena.ofAuto();
        this.tx = arena.allocate(Payloads.HEADER_SIZE, 8);
        this.rx = arena.allocate(Payloads.HEADER_SIZE + 8, 8);
    }

    /**
     * Adopts the descriptor of SET_BACKEND_REQ_FD. {@code replyAck}: REPLY_ACK was negotiated, so each message asks
     * for (and waits for) the frontend's status.
     *
     * @throws BackendException the descriptor is not a socket (timeouts cannot be set on it); it is closed
     */
    static BackendChannel adopt(UnixSocket socket, String name, boolean replyAck) throws BackendException {
        try {
            socket.setSendTimeout(TIMEOUT);
            socket.setReceiveTimeout(TIMEOUT);
        } catch (LinuxException e) {
            socket.close();
            throw new BackendException(
                    "SET_BACKEND_REQ_FD: the descriptor is not a usable socket (" + e.getMessage() + ")");
        }
        return new BackendChannel(socket, name, replyAck);
    }

    /**
     * Tells the frontend that the configuration space changed (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG) and, with
     * REPLY_ACK, waits for its answer.
     *
     * @throws IOException the frontend did not take the message, did not answer in time, or reported a failure;
     *                     the channel is closed then
     */
    public synchronized void configChanged() throws IOException {
        if (closed) {
            throw new IOException(name + ": the frontend's backend channel is closed");
        }
        MessageType type = MessageType.BACKEND_CONFIG_CHANGE_MSG;
        try {
            tx.set(Payloads.U32, 0, type.code());
            tx.set(Payloads.U32, 4, Header.VERSION | (replyAck ? Header.NEED_REPLY : 0));
            tx.set(Payloads.U32, 8, 0);
            socket.send(tx, List.of());
            if (!replyAck) {
                return;
            }
            UnixSocket.Received r = socket.recvFully(rx, 0);
            if (r.eof()) {
                throw new IOException(
                        name + ": the frontend closed its backend channel instead of answering " + type.specName());
            }
            int code = rx.get(Payloads.U32, 0);
            int flags = rx.get(Payloads.U32, 4);
            int size = rx.get(Payloads.U32, 8);
            if (code != type.code() || (flags & Header.REPLY) == 0 || size != 8) {
                throw new IOException(name + ": malformed reply to " + type.specName() + " (code " + code + ", flags 0x"
                        + Integer.toHexString(flags) + ", size " + size + ")");
            }
            long status = rx.get(Payloads.U64, Payloads.HEADER_SIZE);
            if (status != 0) {
                throw new IOException(name + ": the frontend reported failure " + status + " for " + type.specName());
            }
        } catch (SocketTimeoutException e) {
            closeLocked();
            throw new IOException(
                    name + ": the frontend did not answer " + type.specName() + " within " + TIMEOUT.toSeconds() + " s",
                    e);
        } catch (IOException e) {
            closeLocked();
            throw e instanceof LinuxException
                    ? new IOException(name + ": " + type.specName() + ": " + e.getMessage(), e)
                    : e;
        }
    }

    private void closeLocked() {
        if (!closed) {
            closed = true;
            socket.close();
        }
    }

    @Override
    public synchronized void close() {
        closeLocked();
    }
}
