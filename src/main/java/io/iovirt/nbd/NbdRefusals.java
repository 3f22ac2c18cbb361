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
 * <p>What a refusal costs is bounded whatever the clients do: no thread, its descriptor for at most
 * {@link #WAIT_MILLIS} and {@link #MAX_OPTIONS} options, and at most {@link #MAX_PENDING} refusals at once per
 * server; past that, connections are closed at once, unanswered, so a flood of connections costs the server only
 * the accepts.
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
    /** Polls of a refusal start this soon and back off, doubling, to {@link #MAX_POLL_MILLIS}. */
    private static final long FIRST_POLL_MILLIS = 1;

    private static final long MAX_POLL_MILLIS = 64;

    /** A socket seen through the few non-blocking operations a refusal needs. */
    interface Peer {
        /** Reads into {@code dst} without waiting: the bytes read, 0 when none are there yet, -1 at end of stream. */
        int read(ByteBuffer dst) throws IOException;

        /** Writes all of {@code src} without waiting, or throws (a refusal's few bytes fit an idle socket's buffer). */
        void write(ByteBuffer src) throws IOException;

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
                peer.close();
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
        private final long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(WAIT_MILLIS);
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
                    progress = advance();
                } catch (IOException | RuntimeException e) {
                    progress = false;
                    done = true; // the client went, or sent what no NBD client sends
                }
            }
            if (done) {
                finish();
            } else if (System.nanoTime() - deadline > 0) {
                finish(); // no option in time: closed unanswered
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
                    // no error reply can reach this client (or it asked for none): closing is the answer
                    done = true;
                    return progress;
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
                    done = true;
                    return true;
                }
                got = 4; // the client's flags stay
                skip = -1;
                progress = true;
            }
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
