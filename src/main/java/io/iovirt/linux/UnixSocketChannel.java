// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.ref.WeakReference;
import java.nio.ByteBuffer;
import java.nio.channels.AsynchronousCloseException;
import java.nio.channels.ByteChannel;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.GatheringByteChannel;

/**
 * A connected {@link UnixSocket} as a blocking {@link ByteChannel}, for protocol code written against java.nio
 * channels (the NBD server) whose listener is ours: a UNIX one ({@link SocketPaths#listen}: socket mode set before
 * listen, peer uid checked at accept) or a loopback TCP one ({@link UnixSocket#listenTcp}). A read is one recvmsg, a
 * gathering write one sendmsg.
 *
 * <p>No allocation per call for direct buffers the channel has seen before (NbdAllocationTest measures it): the
 * kernel gets raw addresses through preallocated iovecs, and each direction remembers the native memory of the last
 * {@value #KNOWN} direct buffers it was given — a protocol's few long-lived header and payload buffers — so no
 * {@link MemorySegment} is made per call. It remembers them weakly: a buffer its owner dropped (a payload buffer
 * replaced by a larger one, a handshake's buffers) is collected, with its native memory, as if the channel had never
 * seen it. A direct buffer's memory must stay allocated while a call on it runs (for an arena's buffer: the arena
 * not closed meanwhile); one already freed is refused. Heap buffers (rare: handshake options, error messages) go
 * through native staging.
 *
 * <p>{@link #close} may come from any thread while another one is blocked in a read or write: it shuts the
 * socket down (the reader sees end-of-stream, a writer EPIPE) and marks the channel closed, but keeps the
 * descriptor, so its number cannot be reused under a thread still inside a syscall on it. The owner calls
 * {@link #release} once no thread uses the channel any more.
 */
public final class UnixSocketChannel implements ByteChannel, GatheringByteChannel {
    private static final int STAGING = 64 << 10;
    /** Direct buffers each direction remembers. */
    static final int KNOWN = 32;
    /** Buffers one gathering write sends at most (the rest go in the caller's next call). */
    private static final int GATHER = 16;
    /** Unread bytes {@link #release} drops at most before it closes (a TCP receive buffer's worth). */
    static final long DISCARD_MAX = 8 << 20;

    private final UnixSocket socket;
    private volatile boolean closed;
    /** Native copies of heap buffers, the iovecs and msghdrs; reads and writes each have their own. */
    private final Arena arena = Arena.ofShared();

    private final MemorySegment readStaging = arena.allocate(STAGING, 64);
    private final MemorySegment writeStaging = arena.allocate(STAGING, 64);
    private final MemorySegment readIov = UnixSocket.gatherScratch(arena, 1);
    private final MemorySegment writeIov = UnixSocket.gatherScratch(arena, GATHER);
    /** Reads come from one thread at a time, writes hold the channel's lock: each direction has its own. */
    private final KnownBuffers readBuffers = new KnownBuffers();

    private final KnownBuffers writeBuffers = new KnownBuffers();

    public UnixSocketChannel(UnixSocket socket) {
        this.socket = socket;
    }

    public UnixSocket socket() {
        return socket;
    }

    /**
     * The native address of recently used direct buffers, by identity: a buffer is its memory for its whole life.
     * The buffers are held weakly — neither the buffer nor a segment of it (whose scope, for a buffer not made from
     * an arena, references the buffer) is kept, only its address — so remembering a buffer never keeps it, or its
     * native memory, alive after its owner dropped it; a collected buffer's reference reads null, so no other object
     * is mistaken for it. Filled round-robin.
     */
    private static final class KnownBuffers {
        private final WeakReference<?>[] buffers = new WeakReference<?>[KNOWN];
        /** The address of {@code buffers[i]}'s index 0. */
        private final long[] base = new long[KNOWN];

        private int next;

        /**
         * The address of {@code b}'s position (b direct, with bytes remaining); makes a segment and a reference only
         * for a buffer not seen recently.
         */
        long address(ByteBuffer b) {
            try {
                b.get(b.position()); // an arena's buffer checks its arena on access: one closed throws
            } catch (IllegalStateException e) {
                throw new IllegalStateException("the buffer's memory was freed (its arena is closed)", e);
            }
            for (int i = 0; i < KNOWN; i++) {
                WeakReference<?> r = buffers[i];
                if (r != null && r.get() == b) {
                    return base[i] + b.position();
                }
            }
            long a = MemorySegment.ofBuffer(b.duplicate().clear()).address();
            buffers[next] = new WeakReference<>(b);
            base[next] = a;
            next = (next + 1) % KNOWN;
            return a + b.position();
        }
    }

    @Override
    public int read(ByteBuffer dst) throws IOException {
        checkOpen();
        if (dst.isReadOnly()) {
            throw new IllegalArgumentException("read into a read-only buffer");
        }
        if (!dst.hasRemaining()) {
            return 0;
        }
        int len = dst.remaining();
        if (dst.isDirect()) {
            UnixSocket.iovec(readIov, 0, readBuffers.address(dst), len);
        } else {
            UnixSocket.iovec(readIov, 0, readStaging.address(), Math.min(len, STAGING));
        }
        long n;
        try {
            n = socket.receiveIovecs(readIov, 1);
        } catch (LinuxException e) {
            if (closed) {
                throw new AsynchronousCloseException();
            }
            throw e;
        }
        if (n == 0) {
            if (closed) {
                throw new AsynchronousCloseException();
            }
            return -1;
        }
        if (!dst.isDirect()) {
            MemorySegment.copy(readStaging, JAVA_BYTE, 0, dst.array(), dst.arrayOffset() + dst.position(), (int) n);
        }
        dst.position(dst.position() + (int) n);
        return (int) n;
    }

    /** The one-buffer write's array, reused (writers hold the channel's lock). */
    private final ByteBuffer[] one = new ByteBuffer[1];

    @Override
    public synchronized int write(ByteBuffer src) throws IOException {
        one[0] = src;
        try {
            return (int) write(one, 0, 1);
        } finally {
            one[0] = null;
        }
    }

    @Override
    public long write(ByteBuffer[] srcs) throws IOException {
        return write(srcs, 0, srcs.length);
    }

    /** Writers serialize among themselves (the staging buffer and the iovecs are shared). */
    @Override
    public synchronized long write(ByteBuffer[] srcs, int offset, int length) throws IOException {
        checkOpen();
        int n = 0;
        long staged = 0;
        for (int i = offset; i < offset + length && n < GATHER; i++) {
            ByteBuffer b = srcs[i];
            if (!b.hasRemaining()) {
                continue;
            }
            if (b.isDirect()) {
                UnixSocket.iovec(writeIov, n++, writeBuffers.address(b), b.remaining());
            } else {
                int k = (int) Math.min(b.remaining(), STAGING - staged);
                if (k == 0) {
                    break;
                }
                if (b.hasArray()) {
                    MemorySegment.copy(b.array(), b.arrayOffset() + b.position(), writeStaging, JAVA_BYTE, staged, k);
                } else { // a read-only heap buffer
                    MemorySegment.copy(MemorySegment.ofBuffer(b), 0, writeStaging, staged, k);
                }
                UnixSocket.iovec(writeIov, n++, writeStaging.address() + staged, k);
                staged += k;
                if (k < b.remaining()) {
                    break; // the rest of this buffer first: a later one's bytes would count as this one's below
                }
            }
        }
        if (n == 0) {
            return 0;
        }
        long sent;
        try {
            sent = socket.sendIovecs(writeIov, n);
        } catch (LinuxException e) {
            if (closed) {
                throw new AsynchronousCloseException();
            }
            throw e;
        }
        long left = sent;
        for (int i = offset; i < offset + length && left > 0; i++) {
            ByteBuffer b = srcs[i];
            int k = (int) Math.min(b.remaining(), left);
            b.position(b.position() + k);
            left -= k;
        }
        return sent;
    }

    private void checkOpen() throws ClosedChannelException {
        if (closed) {
            throw new ClosedChannelException();
        }
    }

    @Override
    public boolean isOpen() {
        return !closed;
    }

    /**
     * Whether the peer sent bytes not read yet (or ended its stream): a read would not block. Looked at without
     * consuming anything, from any thread; false once the channel is closed.
     */
    public boolean inputReady() {
        if (closed) {
            return false;
        }
        try {
            return socket.inputReady();
        } catch (LinuxException | IllegalStateException e) {
            return false; // gone: nothing more will be read
        }
    }

    /** Shuts the connection down (waking a blocked reader or writer); the descriptor stays until {@link #release}. */
    @Override
    public void close() {
        closed = true;
        try {
            socket.shutdown(UnixSocket.SHUT_RDWR);
        } catch (LinuxException | IllegalStateException e) {
            // already gone
        }
    }

    /**
     * Closes the descriptor and frees the buffers: no thread may use the channel any more. What the peer sent and
     * nobody read is dropped first ({@link UnixSocket#discardUnread}, up to {@value #DISCARD_MAX} bytes): on a TCP
     * connection the close then ends the peer's stream after the replies, rather than resetting it and discarding
     * those it had not read.
     */
    public void release() {
        close();
        UnixSocket.iovec(readIov, 0, readStaging.address(), STAGING);
        socket.discardUnread(readIov, DISCARD_MAX);
        socket.close();
        arena.close();
    }
}
