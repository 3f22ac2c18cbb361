// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import io.iovirt.linux.UnixSocketChannel;
import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.ByteChannel;
import java.nio.channels.GatheringByteChannel;
import java.nio.channels.SocketChannel;

/**
 * One client's socket, as both phases of its connection use it — {@link NbdHandshake}'s option haggling, then
 * {@link NbdConnection}'s transmission: whole reads, and whole gathering writes (a reply's header and payload leave
 * in one call). It keeps no buffers of its own, so it costs nothing per request.
 */
final class NbdChannel {
    private final ByteChannel in;
    /** The same channel, for gathering writes (a java.nio SocketChannel, or a {@code linux.UnixSocketChannel}). */
    private final GatheringByteChannel out;

    <C extends ByteChannel & GatheringByteChannel> NbdChannel(C ch) {
        this.in = ch;
        this.out = ch;
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
        try {
            if (in instanceof UnixSocketChannel u) {
                return u.inputReady();
            }
            if (in instanceof SocketChannel s && s.isOpen()) {
                return s.socket().getInputStream().available() > 0;
            }
        } catch (IOException e) {
            // closed meanwhile: nothing more will be read
        }
        return false;
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
