// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import io.iovirt.linux.UnixSocket;
import io.iovirt.linux.UnixSocketChannel;
import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.ByteChannel;
import java.nio.channels.GatheringByteChannel;

/**
 * One client's socket, as both phases of its connection use it — {@link NbdHandshake}'s option haggling, then
 * {@link NbdConnection}'s transmission: whole reads, and whole gathering writes (a reply's header and payload leave
 * in one call). It keeps no buffers of its own, so it costs nothing per request.
 */
final class NbdChannel {
    private final ByteChannel in;
    /** The same channel, for gathering writes (a {@code linux.UnixSocketChannel}: UNIX or TCP, both through FFM). */
    private final GatheringByteChannel out;
    /** What a shutdown needs of the socket besides reads and writes. */
    private final Input input;

    /**
     * The receiving side of the socket, as the server's shutdown needs it: whether the client's bytes wait unread, and
     * stopping the reception (the client's stream ends there for the reader) without closing the socket.
     */
    interface Input {
        /** Whether the client sent bytes not read yet (or ended its stream); false when that cannot be told. */
        boolean ready();

        /**
         * Ends reception: a read blocked on the socket, and every later one, sees the end of the stream once the
         * bytes already received are read; replies can still be sent.
         */
        void stop() throws IOException;
    }

    <C extends ByteChannel & GatheringByteChannel> NbdChannel(C ch) {
        this(ch, inputOf(ch));
    }

    /** With {@code input} for {@link #inputReady} and {@link #stopInput} (a test's channel). */
    <C extends ByteChannel & GatheringByteChannel> NbdChannel(C ch, Input input) {
        this.in = ch;
        this.out = ch;
        this.input = input;
    }

    /**
     * The kernel's shutdown(SHUT_RD) for the server's sockets, UNIX and TCP alike: a read returns the bytes received
     * before it (a request that arrived after the last readiness check, the rest of a half-read header), then the
     * end of the stream. (java.nio's {@code SocketChannel.shutdownInput} makes every later read return the end at
     * once, dropping those bytes: the server's TCP connections are FFM sockets for that reason.) A TCP peer may
     * still send after it — Linux queues those bytes, where an AF_UNIX peer gets EPIPE — and
     * {@link UnixSocketChannel#release} drops them, so the close ends the client's stream cleanly.
     */
    static Input inputOf(ByteChannel ch) {
        if (ch instanceof UnixSocketChannel u) {
            return new Input() {
                @Override
                public boolean ready() {
                    return u.inputReady();
                }

                @Override
                public void stop() throws IOException {
                    u.socket().shutdown(UnixSocket.SHUT_RD);
                }
            };
        }
        return new Input() {
            @Override
            public boolean ready() {
                return false;
            }

            @Override
            public void stop() throws IOException {
                ch.close(); // nothing finer to do
            }
        };
    }

    /**
     * Reads until {@code b} is full. Returns false on EOF before the first byte when {@code eofOk}; EOF after a
     * partial read (a half-sent request) is an {@link EOFException}.
     */
    boolean readFully(ByteBuffer b, boolean eofOk) throws IOException {
        boolean first = true;
        while (b.hasRemaining()) {
            int n = in.read(b);
            if (n < 0) {
                if (first && eofOk) {
                    return false;
                }
                if (first && b.position() == 0) {
                    return false;
                }
                throw new EOFException("client disconnected in the middle of a request (" + b.position() + " of "
                        + b.limit() + " bytes)");
            }
            first = false;
        }
        return true;
    }

    /**
     * Writes all of {@code bufs}. Not synchronized: the transmission phase serializes its replies itself, and passes
     * each slot's preallocated array (a varargs call makes an array per call: fine in the handshake only).
     */
    void writeFully(ByteBuffer... bufs) throws IOException {
        long total = 0;
        for (ByteBuffer b : bufs) {
            total += b.remaining();
        }
        while (total > 0) {
            total -= out.write(bufs);
        }
    }

    /**
     * Whether the client sent bytes not read yet (or ended its stream), looked at without blocking or consuming
     * anything, from any thread: a request or option it sent before it could know the server is shutting down. False
     * when that cannot be told (a closed channel, a channel of another kind).
     */
    boolean inputReady() {
        return input.ready();
    }

    /**
     * Stops reading from the client without closing the socket (SHUT_RD): the reader, blocked or not, sees the end of
     * the client's stream after the bytes already received, while replies still go out. Unlike
     * {@link #close}, it cannot cut off a request the reader has already taken from the socket: the reader answers
     * it, and closes the connection itself. Failing (the socket is gone) is harmless.
     */
    void stopInput() {
        try {
            input.stop();
        } catch (IOException | RuntimeException e) {
            // closed meanwhile
        }
    }

    boolean isOpen() {
        return in.isOpen();
    }

    /** Closes the socket (a blocked read or write on it fails); closing twice, or a failing close, is harmless. */
    void close() {
        try {
            in.close();
        } catch (IOException e) {
            // closing
        }
    }
}
