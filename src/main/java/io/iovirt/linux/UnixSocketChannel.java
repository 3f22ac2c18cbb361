// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.AsynchronousCloseException;
import java.nio.channels.ByteChannel;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.GatheringByteChannel;

/**
 * A connected {@link UnixSocket} as a blocking {@link ByteChannel}, for protocol code written against java.nio
 * channels (the NBD server) whose UNIX listener is ours ({@link SocketPaths#listen}: socket mode set before listen,
 * peer uid checked at accept). A read is one read(2), a gathering write one sendmsg; no buffer or array is allocated per call.
 *
 * <p>{@link #close} may come from any thread while another one is blocked in a read or write: it shuts the
 * socket down (the reader sees end-of-stream, a writer EPIPE) and marks the channel closed, but keeps the
 * descriptor, so its number cannot be reused under a thread still inside a syscall on it. The owner calls
 * {@link #release} once no thread uses the channel any more.
 */
public final class UnixSocketChannel implements ByteChannel, GatheringByteChannel {
    private static final int STAGING = 64 << 10;

    private final UnixSocket socket;
    private volatile boolean closed;
    /** Native copies of heap buffers (rare: handshake options); reads and writes each have their own. */
    private final Arena arena = Arena.ofShared();

    private final MemorySegment readStaging = arena.allocate(STAGING, 64);
    private final MemorySegment writeStaging = arena.allocate(STAGING, 64);
    private final MemorySegment[] segs = new MemorySegment[16];
    private final MemorySegment gather = UnixSocket.gatherScratch(arena, 16);

    public UnixSocketChannel(UnixSocket socket) {
        this.socket = socket;
    }

    public UnixSocket socket() {
        return socket;
    }

    @Override
    public int read(ByteBuffer dst) throws IOException {
        checkOpen();
        if (!dst.hasRemaining()) {
            return 0;
        }
        int len = dst.remaining();
        MemorySegment target =
                dst.isDirect() ? MemorySegment.ofBuffer(dst) : readStaging.asSlice(0, Math.min(len, STAGING));
        long n;
        try {
            n = socket.read(target);
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
            MemorySegment.copy(target, 0, MemorySegment.ofBuffer(dst), 0, n);
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

    /** Writers serialize among themselves (the staging buffer and segment array are shared). */
    @Override
    public synchronized long write(ByteBuffer[] srcs, int offset, int length) throws IOException {
        checkOpen();
        int n = 0;
        long staged = 0;
        for (int i = offset; i < offset + length && n < segs.length; i++) {
            ByteBuffer b = srcs[i];
            if (!b.hasRemaining()) {
                continue;
            }
            if (b.isDirect()) {
                segs[n++] = MemorySegment.ofBuffer(b);
            } else {
                long k = Math.min(b.remaining(), STAGING - staged);
                if (k == 0) {
                    break;
                }
                MemorySegment.copy(MemorySegment.ofBuffer(b), 0, writeStaging, staged, k);
                segs[n++] = writeStaging.asSlice(staged, k);
                staged += k;
            }
        }
        if (n == 0) {
            return 0;
        }
        long sent;
        try {
            sent = socket.sendGather(gather, segs, n);
        } catch (LinuxException e) {
            if (closed) {
                throw new AsynchronousCloseException();
            }
            throw e;
        } finally {
            java.util.Arrays.fill(segs, 0, n, null);
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

    /** Closes the descriptor and frees the buffers: no thread may use the channel any more. */
    public void release() {
        close();
        socket.close();
        arena.close();
    }
}
