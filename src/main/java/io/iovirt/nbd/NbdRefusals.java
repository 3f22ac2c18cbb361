// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static io.iovirt.nbd.Nbd.*;

import io.iovirt.linux.Errno;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.UnixSocket;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * Connections over the server's limit, refused without a thread of their own. A refusal sends the greeting, reads
 * the client's options as they arrive (non-blocking reads, polled on the server's timer thread) and answers each
 * with {@code NBD_REP_ERR_POLICY} naming the limit — so QEMU and nbd-client report "too many connections" instead
 * of a connection closed in the handshake, which reads like a broken server — until the client gives up
 * ({@code NBD_OPT_ABORT}, or it closes); then the connection is closed. {@code NBD_OPT_EXPORT_NAME} has no error
 * reply: that client is only closed.
 *
 * <p>Every refusal ends in an orderly close: the server ends its side of the stream (SHUT_WR: the client reads the
 * replies, then the end of the stream) and reads and drops what the client still sends, until the client closes or
 * for at most {@link #LINGER_MILLIS} and {@link #DISCARD_MAX} bytes, before it closes the socket. A TCP socket
 * closed with bytes of its peer unread sends a reset instead of the end of the stream, and drops what it had not
 * sent yet: a client whose handshake data (an EXPORT_NAME's name, an option the refusal did not read) was still
 * unread saw ECONNRESET — maybe before the refusal's error — instead of the error and a clean end.
 *
 * <p>What a refusal costs is bounded whatever the clients do: no thread, its descriptor for at most
 * {@link #WAIT_MILLIS} and {@link #MAX_OPTIONS} options, then {@link #LINGER_MILLIS} and {@link #DISCARD_MAX} bytes,
 * and at most {@link #MAX_PENDING} refusals at once per server; past that, connections are closed at once,
 * unanswered — after a SHUT_WR and one non-blocking read of what they already sent, {@link #DISCARD_MAX} bytes at
 * most — so a flood of connections costs the server only the accepts and a few system calls each.
 */
final class NbdRefusals {
    private static final System.Logger LOG = System.getLogger(NbdRefusals.class.getName());
    /** Refusals under way at once (per server); past this, connections over the limit are closed at once. */
    static final int MAX_PENDING = 32;
    /**
     * How long a refusal lasts at most. A client sends its options as soon as it has read the greeting and each
     * reply, i.e. after a round trip each; this is for clients behind a slow tunnel, not for ones that never send.
     */
    static final long WAIT_MILLIS = 2000;
    /** Options a refusal answers before it closes the connection (a client asks a handful at most). */
    static final int MAX_OPTIONS = 8;
    /**
     * How long a refusal that ended its side of the stream waits for the client's end at most, reading and dropping
     * what it sends: a client reads the error, or the end of the stream, and closes within a round trip.
     */
    static final long LINGER_MILLIS = 500;

    /** Bytes of a refused client dropped at most before the close (a client sends a few options: some bytes). */
    static final int DISCARD_MAX = 64 << 10;

    /** Polls of a refusal start this soon and back off, doubling, to {@link #MAX_POLL_MILLIS}. */
    private static final long FIRST_POLL_MILLIS = 1;

    private static final long MAX_POLL_MILLIS = 64;

    /** A socket seen through the few non-blocking operations a refusal needs. */
    interface Peer {
        /** Reads into {@code dst} without waiting: the bytes read, 0 when none are there yet, -1 at end of stream. */
        int read(ByteBuffer dst) throws IOException;

        /** Writes all of {@code src} without waiting, or throws (a refusal's few bytes fit an idle socket's buffer). */
        void write(ByteBuffer src) throws IOException;

        /** Ends the stream towards the client (SHUT_WR): it reads what was sent, then the end. */
        void endOutput() throws IOException;

        void close();

        /** {@code s}, made non-blocking; the buffers passed to it must be direct. */
        static Peer of(UnixSocket s) throws IOException {
            s.fd().setNonBlocking(true);
            return new Peer() {
                @Override
                public int read(ByteBuffer dst) throws IOException {
                    long n;
                    try {
                        n = s.read(MemorySegment.ofBuffer(dst));
                    } catch (LinuxException e) {
                        if (e.errno() == Errno.EAGAIN) {
                            return 0;
                        }
                        throw e;
                    }
                    if (n == 0) {
                        return -1;
                    }
                    dst.position(dst.position() + (int) n);
                    return (int) n;
                }

                @Override
                public void write(ByteBuffer src) throws IOException {
                    s.send(MemorySegment.ofBuffer(src)); // EAGAIN part-way throws
                    src.position(src.limit());
                }

                @Override
                public void endOutput() throws IOException {
                    s.shutdown(UnixSocket.SHUT_WR);
                }

                @Override
                public void close() {
                    s.close();
                }
            };
        }
    }

    private final String server;
    private final int limit;
    private final ScheduledExecutorService timer;
    /** The timer thread's scratch for every refusal's I/O (direct: a UNIX socket reads into native memory). */
    private final ByteBuffer scratch = ByteBuffer.allocateDirect(4096);

    /** The accept thread's, for what a connection closed unanswered already sent ({@link #refuse}). */
    private final ByteBuffer acceptScratch = ByteBuffer.allocateDirect(4096);

    private final byte[] message;
    private final Set<Refusal> pending = new HashSet<>();
    /** Connections over the limit since the server last admitted one (for the log). */
    private long streak;
    /** Of those, closed unanswered because {@link #MAX_PENDING} refusals were pending. */
    private long unanswered;

    private boolean closed;

    NbdRefusals(String server, int limit, ScheduledExecutorService timer) {
        this.server = server;
        this.limit = limit;
        this.timer = timer;
        this.message = ("too many connections: this server accepts " + limit + " at once; close another connection"
                        + " and retry")
                .getBytes(StandardCharsets.UTF_8);
    }

    /** Refuses a connection over the limit (on the accept thread: nothing here waits). */
    void refuse(Peer peer) {
        Refusal r = new Refusal(peer);
        synchronized (this) {
            if (streak++ == 0) {
                LOG.log(
                        System.Logger.Level.WARNING,
                        "nbd " + server + ": already serving " + limit + " connections, the most allowed at once:"
                                + " refusing new ones (each gets an error naming the limit) until one ends");
            }
            if (closed || pending.size() >= MAX_PENDING) {
                unanswered++;
                closeNow(peer, acceptScratch);
                return;
            }
            pending.add(r);
        }
        poll(r, 0);
    }

    /** Refusals still waiting for their client. */
    synchronized int pending() {
        return pending.size();
    }

    /** Closes every pending refusal; later ones are closed at once. */
    void close() {
        List<Refusal> all;
        synchronized (this) {
            closed = true;
            all = new ArrayList<>(pending);
        }
        for (Refusal r : all) {
            r.finish();
        }
    }

    /**
     * Closes a refused connection without waiting for its client, as orderly as that allows: the end of the stream
     * first, and what the client already sent dropped ({@link #DISCARD_MAX} bytes at most, without waiting), so the
     * close is not a reset for a client that sent its handshake without waiting for the greeting.
     */
    private static void closeNow(Peer peer, ByteBuffer scratch) {
        try {
            peer.endOutput();
            discard(peer, scratch, DISCARD_MAX);
        } catch (IOException | RuntimeException e) {
            // gone: closed below
        }
        peer.close();
    }

    /**
     * Reads and drops what the client sent, without waiting, {@code max} bytes at most: the bytes dropped, or -1 at
     * the end of the client's stream.
     */
    private static long discard(Peer peer, ByteBuffer scratch, long max) throws IOException {
        long total = 0;
        while (total < max) {
            int n = peer.read(scratch.clear().limit((int) Math.min(scratch.capacity(), max - total)));
            if (n < 0) {
                return -1;
            }
            if (n == 0) {
                break;
            }
            total += n;
        }
        return total;
    }

    private void poll(Refusal r, long delayMillis) {
        try {
            timer.schedule(() -> r.step(delayMillis), delayMillis, TimeUnit.MILLISECONDS);
        } catch (RejectedExecutionException e) { // the server is closing
            r.finish();
        }
    }

    /** The server admitted a connection: a streak of refusals, if any, ends with one log line. */
    synchronized void admitted() {
        if (streak > 0) {
            LOG.log(
                    System.Logger.Level.INFO,
                    "nbd " + server + ": accepting connections again after refusing " + streak + " over the limit of "
                            + limit
                            + (unanswered > 0
                                    ? " (" + unanswered + " closed unanswered while " + MAX_PENDING
                                            + " refusals were waiting for their clients)"
                                    : ""));
            streak = 0;
            unanswered = 0;
        }
    }

    private synchronized void ended(Refusal r) {
        pending.remove(r);
    }

    /** One refused connection: its progress through the handshake, touched by the timer thread only. */
    private final class Refusal {
        private final Peer peer;
        private long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(WAIT_MILLIS);
        /** The client's flags (4 bytes) and its current option's header (16 bytes), as far as they came. */
        private final byte[] head = new byte[20];

        private int got;
        /** Option data still to read past (the option's length, once the header is in). */
        private long skip = -1;

        /** Options answered so far. */
        private int answered;

        private boolean greeted;
        private boolean done;
        private boolean closed;

        /** Set once the refusal has ended its side of the stream: it drops what the client sends until its end. */
        private boolean ending;

        /** Bytes dropped since {@link #ending}. */
        private long discarded;

        Refusal(Peer peer) {
            this.peer = peer;
        }

        /** One poll: moves on as far as the client's bytes allow; then ends, or polls again after a back-off. */
        void step(long lastDelay) {
            boolean progress;
            synchronized (this) {
                if (done) {
                    return;
                }
                try {
                    progress = ending ? linger() : advance();
                    if (!done && !ending && System.nanoTime() - deadline > 0) {
                        end(); // no option in time: not answered, but closed in order
                        progress = linger();
                    }
                } catch (IOException | RuntimeException e) {
                    progress = false;
                    done = true; // the client went (a reset), or the socket failed: closed now
                }
            }
            if (done) {
                finish();
            } else if (ending && System.nanoTime() - deadline > 0) {
                finish(); // the client neither closed nor stopped sending in time
            } else {
                poll(this, progress ? FIRST_POLL_MILLIS : Math.min(MAX_POLL_MILLIS, Math.max(1, lastDelay * 2)));
            }
        }

        /** Returns whether bytes moved; sets {@link #done} once the connection can be closed. */
        private boolean advance() throws IOException {
            if (!greeted) {
                peer.write(greeting(scratch.clear()).flip());
                greeted = true;
            }
            boolean progress = false;
            while (true) {
                while (got < head.length) {
                    int n = peer.read(scratch.clear().limit(head.length - got));
                    if (n <= 0) {
                        done = n < 0;
                        return progress;
                    }
                    scratch.flip().get(head, got, n);
                    got += n;
                    progress = true;
                }
                ByteBuffer h = ByteBuffer.wrap(head);
                int flags = h.getInt();
                long magic = h.getLong();
                int option = h.getInt();
                long length = Integer.toUnsignedLong(h.getInt());
                if ((flags & FLAG_FIXED_NEWSTYLE) == 0
                        || magic != IHAVEOPT
                        || length > NbdHandshake.MAX_OPTION
                        || option == OPT_EXPORT_NAME
                        || option == OPT_ABORT) {
                    // no error reply can reach this client (or it asked for none): closing is the answer — in
                    // order, its option's data (an EXPORT_NAME's name) read and dropped rather than reset
                    end();
                    return linger() || progress;
                }
                if (skip < 0) {
                    skip = length;
                }
                // read past the option's data: a socket closed with unread bytes is reset, and the reset can
                // overtake the reply
                while (skip > 0) {
                    int n = peer.read(scratch.clear().limit((int) Math.min(scratch.capacity(), skip)));
                    if (n <= 0) {
                        done = n < 0;
                        return progress;
                    }
                    skip -= n;
                    progress = true;
                }
                peer.write(optionReplyHeader(scratch.clear(), option, REP_ERR_POLICY, message.length)
                        .put(message)
                        .flip());
                // A client may take the error for an option it can do without and go on: QEMU's goes on from
                // STRUCTURED_REPLY to GO, and reports the limit only when GO is refused. So every option gets
                // the answer, up to a few, until the client gives up (ABORT, or it closes).
                if (++answered == MAX_OPTIONS) {
                    end();
                    linger();
                    return true;
                }
                got = 4; // the client's flags stay
                skip = -1;
                progress = true;
            }
        }

        /**
         * Ends the server's side of the stream (the client reads what was sent, then the end) and starts dropping what
         * the client sends, for {@link #LINGER_MILLIS} at most.
         */
        private void end() throws IOException {
            ending = true;
            deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(LINGER_MILLIS);
            peer.endOutput();
        }

        /**
         * Drops what the client sent: whether bytes moved; sets {@link #done} at the client's end of the stream, or
         * once {@link #DISCARD_MAX} bytes were dropped (a client that goes on sending is closed on, reset or not).
         */
        private boolean linger() throws IOException {
            long n = discard(peer, scratch, DISCARD_MAX - discarded);
            if (n < 0) {
                done = true;
                return false;
            }
            discarded += n;
            if (discarded >= DISCARD_MAX) {
                done = true;
            }
            return n > 0;
        }

        /** Closes the connection (once) and gives its place back. */
        void finish() {
            synchronized (this) {
                done = true;
                if (closed) {
                    return;
                }
                closed = true;
                peer.close(); // under the lock: never while a poll reads or writes it
            }
            ended(this);
        }
    }
}
