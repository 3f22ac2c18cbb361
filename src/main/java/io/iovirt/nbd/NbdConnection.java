// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static io.iovirt.nbd.Nbd.*;

import io.iovirt.linux.Errno;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageIo;
import java.io.EOFException;
import java.io.IOException;
import java.io.InterruptedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.channels.ByteChannel;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.GatheringByteChannel;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;

/**
 * One client connection: its life cycle, the fixed newstyle handshake ({@link NbdHandshake}, on this connection's
 * thread), then the transmission phase with several requests in flight. A reader (this connection's thread) parses
 * each request into a free {@link Slot} — reading a write's payload into the slot's buffer — and hands it to the
 * slot's own worker thread; the worker does the image I/O and sends the reply (one gathering write under
 * {@link #writeLock}, so replies never interleave; a structured read reply is one OFFSET_DATA chunk with the DONE
 * flag). Replies may leave in any order, as the protocol allows; the cookie says which request each one answers.
 *
 * <p>No allocation per request on the success paths (NbdAllocationTest): a slot holds every buffer and buffer array
 * its request and reply need, and slots go between the reader and the workers through a bit set and
 * {@link LockSupport#park}/{@link LockSupport#unpark} rather than a blocking queue, whose condition wait allocates a
 * node each time a thread waits. Error replies allocate their message (they are rare, and already log it).
 *
 * <p>Bounded memory per connection: {@link #WORKERS} slots, each keeping a buffer of at most {@link #RETAINED}
 * bytes; a larger request (up to {@link #MAX_PAYLOAD}) borrows from a per-connection budget of
 * {@link #MAX_PAYLOAD} bytes, freed when it is answered. When every slot is busy the reader stops reading, so a
 * client that sends faster than it reads replies only fills its own socket buffers.
 *
 * <p>FLUSH: {@link DiskImage#flush()} covers every write completed before it is called; a write is answered only
 * after it completed, so a FLUSH covers every write the client saw answered before it sent the FLUSH, which is
 * what the NBD protocol asks (writes still in flight at the same time may or may not be covered).
 *
 * <p>Every length, offset and flag of a request is checked before use; a violation gets the protocol's error
 * reply, or — where the stream can no longer be trusted (a bad magic, a write payload we will not read) — a
 * disconnect of this client only.
 */
final class NbdConnection implements Runnable {
    private static final System.Logger LOG = System.getLogger(NbdConnection.class.getName());
    /** Largest request payload (the NBD spec's recommended maximum block size). */
    static final int MAX_PAYLOAD = 32 << 20;

    private static final int MAX_EXTENTS = 256;
    /**
     * Longest error message sent in a structured error reply (bytes of UTF-8): the protocol's limit for strings is
     * 4096; a message is a line for a human, and the log has it whole.
     */
    static final int MAX_ERROR_MESSAGE = 1024;
    /**
     * Requests of one connection served at once. QEMU's client keeps up to 16 in flight on one connection; with a
     * few workers a slow request (a qcow2 allocation, a flush) does not hold up reads behind it.
     */
    static final int WORKERS = 4;
    /** Largest buffer a slot keeps between requests (QEMU's clients rarely send more than 1 MiB at once). */
    static final int RETAINED = 1 << 20;

    private final NbdServer server;
    private final NbdChannel ch;

    private final int id;
    /** A request's header, read by the reader. */
    private final ByteBuffer header = ByteBuffer.allocateDirect(32);

    private volatile boolean transmission;

    // What the handshake agreed on (NbdHandshake.Negotiated), set before the workers start.
    private NbdExport export;
    private boolean structured;
    /** Whether base:allocation was set for {@link #export}: BLOCK_STATUS is allowed. */
    private boolean baseAllocation;
    /** Requests' offsets and lengths must be multiples of this. */
    private int minimumBlock;
    /**
     * Slots not in use, one bit each (bit i: {@code slots[i]}): the reader takes one per request, parking when all are
     * busy (back-pressure); whoever answered a request gives its slot back.
     */
    private final AtomicInteger freeSlots = new AtomicInteger();
    /** Every slot's bit: {@link #freeSlots} when no request is in flight. */
    private static final int ALL_SLOTS = (1 << WORKERS) - 1;
    /** The reader (this connection's thread), which parks for a free slot, or for all of them when draining. */
    private Thread reader;
    /** Set while the reader is about to park or parked for slots: whoever frees one unparks it. */
    private volatile boolean readerWaiting;

    private Slot[] slots;
    /** {@code workers[i]} serves {@code slots[i]} only. */
    private Thread[] workers;
    /** Bytes of requests larger than {@link #RETAINED} in flight on this connection. */
    private final Semaphore largeBudget = new Semaphore(MAX_PAYLOAD, true);

    private final Object writeLock = new Object();

    /**
     * One request in flight: owned by the reader while it parses the request, then by its worker (or still the reader,
     * when the reader serves it itself).
     */
    private static final class Slot {
        /** Its bit in {@link #freeSlots} and its worker in {@link #workers}. */
        final int index;

        final ImageIo io;
        final ByteBuffer reply = ByteBuffer.allocateDirect(64);
        /** Direct, as the reply header: a heap buffer would be copied into native memory by the channel. */
        final ByteBuffer extents = ByteBuffer.allocateDirect(4 + MAX_EXTENTS * 8);
        /** A reply without data (the gathering write's array: a varargs call would make one per reply). */
        final ByteBuffer[] header = {reply};
        /** A reply with data: {@link #reply} and, for the time of the write, its data. */
        final ByteBuffer[] headerAndData = {reply, null};
        /** Set by the reader when it hands the slot to its worker; cleared by the worker when it takes it. */
        volatile boolean ready;

        private ByteBuffer retained = ByteBuffer.allocateDirect(64 << 10);
        /** The retained buffer's memory (made once per buffer, not per request). */
        private MemorySegment retainedMemory = MemorySegment.ofBuffer(retained);

        int type;
        int flags;
        long cookie;
        long offset;
        long length;
        /** The request's data buffer (the retained one, or a large one from {@link #large}); null if none yet. */
        ByteBuffer payload;
        /** {@link #payload}'s memory from its start, for the image I/O. */
        MemorySegment payloadMemory;
        /** Memory of a request larger than {@link #RETAINED}, freed when it is answered. */
        private Arena large;

        private int largeBytes;

        Slot(int index, ImageIo io) {
            this.index = index;
            this.io = io;
        }

        /** A buffer of {@code length} bytes for this request; large ones wait for the connection's budget. */
        ByteBuffer payload(int length, Semaphore budget) throws InterruptedIOException {
            if (length <= RETAINED) {
                if (retained.capacity() < length) {
                    retained = ByteBuffer.allocateDirect(Math.max(length, Math.min(RETAINED, retained.capacity() * 2)));
                    retainedMemory = MemorySegment.ofBuffer(retained);
                }
                payloadMemory = retainedMemory;
                return payload = retained.clear().limit(length);
            }
            try {
                budget.acquire(length);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new InterruptedIOException("interrupted waiting for buffer space");
            }
            large = Arena.ofShared();
            largeBytes = length;
            payloadMemory = large.allocate(length, 4096);
            return payload = payloadMemory.asByteBuffer();
        }

        /** Ends the request: a large buffer goes back to the budget. */
        void release(Semaphore budget) {
            if (large != null) {
                large.close();
                large = null;
                budget.release(largeBytes);
            }
            payload = null;
            payloadMemory = null;
        }
    }

    <C extends ByteChannel & GatheringByteChannel> NbdConnection(NbdServer server, C ch, int id) {
        this(server, new NbdChannel(ch), id);
    }

    /** Over a channel made by the caller (a test's, whose reads it steers). */
    NbdConnection(NbdServer server, NbdChannel ch, int id) {
        this.server = server;
        this.ch = ch;
        this.id = id;
    }

    int id() {
        return id;
    }

    /** Called by the server's timer: a client still in the handshake after the timeout is dropped. */
    void handshakeDeadline() {
        if (!transmission) {
            event(
                    System.Logger.Level.INFO,
                    "handshake not finished in " + NbdServer.HANDSHAKE_TIMEOUT_SECONDS + " s: disconnecting");
            close();
        }
    }

    void close() {
        ch.close();
    }

    /**
     * Set by {@link #shutdown}: the server is stopping. Requests read from then on are answered with NBD_ESHUTDOWN,
     * options with NBD_REP_ERR_SHUTDOWN, and the connection is closed once nothing of it is under way.
     */
    private volatile boolean shuttingDown;

    /**
     * Whether this connection's thread is waiting for the client's next option or request, with nothing of the
     * message before it left to do ({@link #awaiting}); requests handed to workers may still be in flight.
     */
    private volatile boolean idle;

    /**
     * The server is shutting down (doc/proto.md, "Terminating the transmission phase": on a shutdown the server
     * SHOULD wait for requests in flight to be served before it disconnects, and SHOULD answer requests received
     * after it with ESHUTDOWN; during the handshake it SHOULD answer options with NBD_REP_ERR_SHUTDOWN). Requests
     * in flight go on and get their own replies; requests and options read from now on get the shutdown error; the
     * connection is closed as soon as its thread waits for the client with no request in flight — at once when it
     * does now. Does not wait: a request stuck in image I/O is the server's to give up on ({@link NbdServer#close}).
     */
    void shutdown() {
        shuttingDown = true;
        closeIfDone();
    }

    boolean shuttingDown() {
        return shuttingDown;
    }

    /**
     * Messages (requests, options) received after the shutdown began that a connection answers with the shutdown
     * error at most; the next one ends it. doc/proto.md: a client told ESHUTDOWN (NBD_REP_ERR_SHUTDOWN) MUST
     * disconnect, and either side MAY hard-disconnect a peer that breaks a MUST. What a client sent before it could
     * read the first such reply is answered — QEMU's client keeps 16 requests in flight, the kernel's up to its queue
     * depth of 128 — but one that goes on sending is not answered for the whole {@link NbdServer#SHUTDOWN_GRACE}:
     * its connection ends as soon as the requests in flight before the shutdown are answered.
     */
    static final int SHUTDOWN_ANSWERS = 256;

    /**
     * Write payload bytes (and handshake option data read past) received after the shutdown began that the reader
     * reads (to answer their message with the shutdown error) at most: a message past that is answered without its
     * data being read, and the connection ends there.
     */
    static final long SHUTDOWN_PAYLOAD = MAX_PAYLOAD;

    /** Messages answered with the shutdown error so far (this connection's thread only). */
    private int shutdownAnswers;

    /** Write payload and option data bytes received after the shutdown began (this connection's thread only). */
    private long shutdownPayload;

    /**
     * Counts {@code bytes} of a message's data received after the shutdown began: false once that makes more than
     * {@link #SHUTDOWN_PAYLOAD} (they are not to be read: the message is answered, and the connection ends).
     */
    boolean shutdownPayload(long bytes) {
        if ((shutdownPayload += bytes) <= SHUTDOWN_PAYLOAD) {
            return true;
        }
        event(
                System.Logger.Level.INFO,
                "the client sent more than " + SHUTDOWN_PAYLOAD + " bytes of data after the server began shutting"
                        + " down (it was told to disconnect): disconnecting without reading the rest");
        return false;
    }

    /**
     * Counts one message answered with the shutdown error: false once {@link #SHUTDOWN_ANSWERS} have been (the
     * client goes on sending after being told to disconnect: the connection is to end now).
     */
    boolean shutdownAnswered() {
        if (++shutdownAnswers < SHUTDOWN_ANSWERS) {
            return true;
        }
        event(
                System.Logger.Level.INFO,
                "the client went on sending after " + SHUTDOWN_ANSWERS + " replies telling it the server is shutting"
                        + " down (it must disconnect): disconnecting");
        return false;
    }

    /**
     * Ends the connection if the server is shutting down, this connection's thread waits for the client, no
     * request is in flight and nothing the client sent waits unread. Each of the three (the shutdown, the thread's
     * wait, the last reply) calls this after its own volatile write, so whichever comes last sees the other two and
     * ends it — unless the client's bytes wait in the socket: then the thread, woken by them, reads them and answers
     * with the shutdown error, and its next {@link #awaiting} decides.
     *
     * <p>It stops the socket's input ({@link NbdChannel#stopInput}) rather than closing it: {@link #idle} is still
     * set while the thread's read returns a request it has just taken from the socket (between the read and
     * {@link #busy}), when nothing waits unread any more. A close there cut that request off, unanswered; with the
     * input stopped the thread reads the end of the stream after it, or answers it (with the shutdown error), and
     * then sees the end, and closes the connection itself. The reader's path pays nothing for this.
     */
    private void closeIfDone() {
        if (shuttingDown && idle && (!transmission || freeSlots.get() == ALL_SLOTS) && !ch.inputReady()) {
            ch.stopInput();
        }
    }

    /**
     * Called before this connection's thread waits for the client's next option or request: false when the server
     * is shutting down, nothing is in flight and nothing the client sent waits unread (the connection ends now);
     * otherwise the thread reads on, and {@link #busy} must follow the read. A request or option waiting in the
     * socket was sent before the client could know of the shutdown (while this thread was busy, e.g. writing a
     * reply the client had not read yet): it is read and answered with the shutdown error (doc/proto.md: requests
     * received after the shutdown SHOULD get ESHUTDOWN), not cut off by the close.
     */
    boolean awaiting() {
        idle = true;
        if (shuttingDown && (!transmission || freeSlots.get() == ALL_SLOTS) && !ch.inputReady()) {
            return false;
        }
        return true;
    }

    /** The client's next message has arrived (or is arriving): the connection is not to be closed under it. */
    void busy() {
        idle = false;
    }

    /**
     * False when a worker may still use the channel and the image (stuck in image I/O at disconnect): then they are
     * let go of only once its workers have ended ({@link #whenWorkersEnded}).
     */
    private volatile boolean quiet = true;

    /** Set at disconnect, before the workers are interrupted: a worker that finishes its request stops then. */
    private volatile boolean stopping;

    /** Worker threads started and not yet ended. */
    private final AtomicInteger workersRunning = new AtomicInteger();

    /** What {@link #whenWorkersEnded} was given, until the last worker ends (guarded by this). */
    private Runnable afterWorkers;

    /** Whether every worker started has ended (guarded by this). */
    private boolean workersEnded;

    /**
     * Whether no thread of this connection can touch its channel or its export's image any more (after {@link #run}
     * returned); otherwise see {@link #whenWorkersEnded}.
     */
    boolean quiet() {
        return quiet;
    }

    /**
     * For a connection that ended with workers given up on ({@link #quiet()} false): once every worker thread has
     * ended, closes the slots' image contexts and runs {@code then} (on the last worker's thread; at once, on this
     * one, when they have ended already). Until then the channel, the contexts and the export's image may still be
     * used by a worker: closed earlier, a descriptor number could be reused by another open (another export's image,
     * another client's socket) and take that worker's writes.
     */
    void whenWorkersEnded(Runnable then) {
        Runnable run = () -> {
            for (Slot sl : slots) {
                sl.io.close();
            }
            log(
                    System.Logger.Level.WARNING,
                    "the requests given up on at disconnect have ended: their image contexts and socket are freed");
            then.run();
        };
        synchronized (this) {
            if (!workersEnded) {
                afterWorkers = run;
                return;
            }
        }
        run.run();
    }

    /** A worker thread ends: the last one runs what {@link #whenWorkersEnded} was given. */
    private void workerEnded() {
        if (workersRunning.decrementAndGet() != 0) {
            return;
        }
        Runnable then;
        synchronized (this) {
            workersEnded = true;
            then = afterWorkers;
            afterWorkers = null;
        }
        if (then != null) {
            then.run();
        }
    }

    @Override
    public void run() {
        try {
            if (new NbdHandshake(this, server, ch).negotiate() != null) {
                transmission();
            }
        } catch (ClosedChannelException e) {
            // closed by the server (shutdown, handshake timeout)
        } catch (EOFException e) {
            if (e.getMessage() != null && !shuttingDown) { // when shutting down: the input stopped (closeIfDone)
                event(System.Logger.Level.INFO, e.getMessage());
            }
        } catch (ProtocolViolation e) {
            event(System.Logger.Level.WARNING, "protocol violation, disconnecting: " + e.getMessage());
        } catch (IOException e) {
            event(System.Logger.Level.INFO, "connection ended: " + e.getMessage());
        } catch (RuntimeException e) {
            event(System.Logger.Level.ERROR, "internal error, disconnecting this client: " + e);
        } finally {
            close();
            if (workers != null) {
                quiet = stopWorkers();
            }
            if (export != null) {
                export.stats().connections.decrementAndGet();
            }
        }
    }

    /**
     * After the reader stopped: lets the requests already handed over finish their image I/O (their replies fail
     * on the closed socket), stops the workers and frees the slots' image contexts. A worker stuck in image I/O
     * for a minute is given up on: false, and the contexts stay until it has ended ({@link #whenWorkersEnded}).
     */
    private boolean stopWorkers() {
        boolean idle = drain(TimeUnit.SECONDS.toNanos(60));
        stopping = true;
        for (Thread t : workers) {
            if (t != null) {
                t.interrupt();
            }
        }
        for (Thread t : workers) {
            try {
                if (t != null) {
                    t.join(TimeUnit.SECONDS.toMillis(5));
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        if (!idle) {
            log(
                    System.Logger.Level.WARNING,
                    "requests still in image I/O 60 s after the disconnect: given up on; the connection keeps its"
                            + " image contexts and socket, and the export its image, until they end");
            return false;
        }
        for (Slot sl : slots) {
            sl.io.close();
        }
        return true;
    }

    void log(System.Logger.Level level, String msg) {
        LOG.log(level, about() + msg);
    }

    /**
     * Logs a line about this connection's end (the client gone, a protocol violation, a handshake not finished, an
     * unknown export, an internal error): a client connecting in a loop causes one per connection, so these go
     * through the server's {@link NbdServer#connectionLog} — a burst, then one a second, with the count of those
     * left out — and not straight to the log.
     */
    void event(System.Logger.Level level, String msg) {
        server.connectionLog().log(level, about() + msg);
    }

    private String about() {
        return "nbd " + server.name() + " client #" + id + (export != null ? " export '" + export.name() + "'" : "")
                + ": ";
    }

    /** The stream cannot be trusted any more: disconnect. */
    static final class ProtocolViolation extends IOException {
        ProtocolViolation(String m) {
            super(m);
        }
    }

    /**
     * The handshake settled on an export (called by {@link NbdHandshake} where that happens, before its last reply
     * when that reply is EXPORT_NAME's): counts the connection and starts the workers, which find the agreed state
     * set. From here on the handshake deadline no longer applies.
     */
    void open(NbdHandshake.Negotiated agreed) {
        NbdExport e = agreed.export();
        export = e;
        structured = agreed.structured();
        baseAllocation = agreed.baseAllocation();
        minimumBlock = agreed.minimumBlock();
        e.stats().connections.incrementAndGet();
        e.stats().connectionsTotal.increment();
        reader = Thread.currentThread();
        slots = new Slot[WORKERS];
        for (int i = 0; i < WORKERS; i++) {
            slots[i] = new Slot(i, e.image().newContext(1, 1 << 20)); // O_DIRECT bounce buffer: 1 MiB chunks
        }
        freeSlots.set(ALL_SLOTS);
        workers = new Thread[WORKERS];
        for (int i = 0; i < WORKERS; i++) {
            Slot slot = slots[i];
            workersRunning.incrementAndGet();
            try {
                // platform threads: image I/O is blocking FFM calls, which would pin a virtual thread's carrier
                workers[i] = Thread.ofPlatform()
                        .name("nbd " + server.name() + " #" + id + " worker " + i)
                        .daemon()
                        .start(() -> {
                            try {
                                workerLoop(slot);
                            } finally {
                                workerEnded();
                            }
                        });
            } catch (OutOfMemoryError oom) { // no thread could be created
                workerEnded();
                throw oom;
            }
        }
        transmission = true;
    }

    // ---- transmission ------------------------------------------------------------------------------------------

    /** The reader: parses requests (and write payloads) and hands them to the workers, until EOF or DISC. */
    private void transmission() throws IOException {
        while (true) {
            if (!awaiting()) {
                return; // the server is shutting down and every request has been answered
            }
            ByteBuffer h = header.clear().limit(28);
            if (!ch.readFully(h, true)) {
                drain(TimeUnit.SECONDS.toNanos(60));
                return; // clean EOF between requests
            }
            busy();
            h.flip();
            int magic = h.getInt();
            if (magic != REQUEST_MAGIC) {
                throw new ProtocolViolation("request magic 0x" + Integer.toHexString(magic));
            }
            int flags = Short.toUnsignedInt(h.getShort());
            int type = Short.toUnsignedInt(h.getShort());
            long cookie = h.getLong();
            long offset = h.getLong();
            long length = Integer.toUnsignedLong(h.getInt());
            if (type == CMD_DISC) {
                drain(TimeUnit.SECONDS.toNanos(60)); // answer what is in flight, then close
                return;
            }
            Slot slot = takeSlot();
            // Until a worker (or serveAndRelease) owns the slot, the reader gives it back on any way out: a slot
            // missing from freeSlots is a request in flight, which the disconnect would wait a minute for.
            boolean handedOver = false;
            try {
                slot.type = type;
                slot.flags = flags;
                slot.cookie = cookie;
                slot.offset = offset;
                slot.length = length;
                if (type == CMD_WRITE) {
                    if (length > MAX_PAYLOAD) {
                        // We will not read that much: answer, then disconnect, since the payload still follows.
                        done(
                                slot,
                                EINVAL,
                                "write of " + length + " bytes, more than the " + MAX_PAYLOAD + "-byte maximum");
                        throw new ProtocolViolation(
                                "write payload of " + length + " bytes exceeds the advertised maximum");
                    }
                    if (shuttingDown && !shutdownPayload(length)) {
                        // a client that goes on sending writes after the shutdown: not read any further (what
                        // follows is dropped at the close), answered, and disconnected
                        done(slot, ESHUTDOWN, SHUTTING_DOWN);
                        shutdownAnswered();
                        handedOver = true;
                        free(slot);
                        drain(TimeUnit.SECONDS.toNanos(60)); // the requests in flight are answered, then it ends
                        return;
                    }
                    ByteBuffer buf = slot.payload((int) length, largeBudget);
                    if (!readPayload(buf)) {
                        // The shutdown stopped the input between this write's header and its payload: received
                        // after the shutdown began, it gets ESHUTDOWN (the client must disconnect), and the
                        // connection ends, its stream cut in the middle of a request.
                        done(slot, ESHUTDOWN, SHUTTING_DOWN);
                        return;
                    }
                    buf.flip();
                }
                if (shuttingDown) {
                    // Received after the shutdown began: not served (doc/proto.md: such requests SHOULD get
                    // ESHUTDOWN, upon which the client MUST disconnect). Its slot is freed below.
                    done(slot, ESHUTDOWN, SHUTTING_DOWN);
                    if (!shutdownAnswered()) {
                        handedOver = true;
                        free(slot);
                        drain(TimeUnit.SECONDS.toNanos(60)); // the requests in flight are answered, then it ends
                        return;
                    }
                    continue;
                }
                if (servedByReader(type, flags) && freeSlots.get() == (ALL_SLOTS & ~(1 << slot.index))) {
                    // The only request in flight: served here, saving the worker's wake-up and a context switch per
                    // request (qemu-img bench, 4 KiB at QD 1: 2.92 -> 1.62 switches per read).
                    handedOver = true; // serveAndRelease frees the slot whatever happens
                    serveAndRelease(slot, export.image(), export.stats());
                } else {
                    slot.ready = true; // its worker is idle: the slot was free
                    LockSupport.unpark(workers[slot.index]);
                    handedOver = true;
                }
            } finally {
                if (!handedOver) {
                    free(slot); // a large payload's memory and budget too
                }
            }
        }
    }

    private static final String SHUTTING_DOWN = "the NBD server is shutting down: request not served; reconnect later";

    /**
     * Reads a write's payload: false when its stream ended in it because the server's shutdown stopped the input
     * ({@link #closeIfDone}); a client gone in the middle of it is an {@link EOFException}.
     */
    private boolean readPayload(ByteBuffer buf) throws IOException {
        try {
            if (ch.readFully(buf, false)) {
                return true;
            }
        } catch (EOFException e) {
            if (shuttingDown) {
                return false;
            }
            throw e;
        }
        if (shuttingDown) {
            return false;
        }
        throw new EOFException("client disconnected in the middle of a write payload");
    }

    /**
     * Whether a request that is the connection's only one is served on the reader: reads, and writes without FUA —
     * both a copy to or from the page cache (or one io_uring round trip for O_DIRECT). A FLUSH, a FUA write, TRIM,
     * WRITE_ZEROES and BLOCK_STATUS may take milliseconds (an fsync, a qcow2 metadata walk) and go to a worker, so
     * requests pipelined behind them are read and started meanwhile.
     */
    private static boolean servedByReader(int type, int flags) {
        return type == CMD_READ || (type == CMD_WRITE && (flags & CMD_FLAG_FUA) == 0);
    }

    /**
     * The reader takes a free slot, parking until one is freed when all are busy. The reader sets
     * {@link #readerWaiting} and then looks at {@link #freeSlots} again before it parks; {@link #free} changes
     * {@link #freeSlots} and then looks at {@link #readerWaiting}: with both volatile, at least one of them sees the
     * other's write, so a freed slot never leaves the reader parked.
     */
    private Slot takeSlot() throws InterruptedIOException {
        while (true) {
            int free = freeSlots.get();
            if (free != 0) {
                int i = Integer.numberOfTrailingZeros(free);
                if (freeSlots.compareAndSet(free, free & ~(1 << i))) {
                    return slots[i];
                }
                continue; // a slot came back meanwhile
            }
            readerWaiting = true;
            if (freeSlots.get() == 0) {
                LockSupport.park(this);
            }
            readerWaiting = false;
            if (Thread.currentThread().isInterrupted()) {
                throw new InterruptedIOException("interrupted waiting for a request slot");
            }
        }
    }

    /** Ends a slot's request (its large buffer goes back to the budget) and gives the slot back to the reader. */
    private void free(Slot slot) {
        slot.release(largeBudget);
        int bit = 1 << slot.index;
        int free;
        do {
            free = freeSlots.get();
        } while (!freeSlots.compareAndSet(free, free | bit));
        if (readerWaiting) {
            LockSupport.unpark(reader);
        }
        if (shuttingDown) { // the last reply of a connection whose server is shutting down closes it
            closeIfDone();
        }
    }

    /**
     * The reader waits until every request handed to the workers has been answered; false if that took longer than
     * allowed (or the reader was interrupted).
     */
    private boolean drain(long timeoutNanos) {
        long deadline = System.nanoTime() + timeoutNanos;
        while (freeSlots.get() != ALL_SLOTS) {
            long left = deadline - System.nanoTime();
            if (left <= 0 || Thread.currentThread().isInterrupted()) {
                return false;
            }
            readerWaiting = true;
            if (freeSlots.get() != ALL_SLOTS) {
                LockSupport.parkNanos(this, left);
            }
            readerWaiting = false;
        }
        return true;
    }

    /**
     * A worker: serves its slot each time the reader hands it over, until interrupted at disconnect (which comes
     * after the slots drained, or after the drain gave up on a request stuck in image I/O: that worker stops once
     * its request has ended).
     */
    private void workerLoop(Slot slot) {
        DiskImage image = export.image();
        NbdExportStats st = export.stats();
        while (true) {
            while (!slot.ready) {
                if (stopping) { // a request given up on ended after the disconnect (its interrupt may be gone)
                    return;
                }
                LockSupport.park(this);
                if (Thread.interrupted()) {
                    return;
                }
            }
            slot.ready = false;
            serveAndRelease(slot, image, st);
        }
    }

    /** Serves one request (on a worker, or on the reader when it is the only one) and frees its slot. */
    private void serveAndRelease(Slot slot, DiskImage image, NbdExportStats st) {
        try {
            serve(slot, image, st);
        } catch (IOException e) {
            if (ch.isOpen()) {
                event(System.Logger.Level.INFO, "reply failed, disconnecting: " + e.getMessage());
            }
            close(); // the reader sees the closed channel and ends the connection
        } catch (RuntimeException e) {
            // a bug, not a client that went away: say so, as the reader does
            event(System.Logger.Level.ERROR, "internal error in a request, disconnecting this client: " + e);
            close();
        } finally {
            free(slot);
        }
    }

    /** One request on a worker: its I/O and its reply. */
    private void serve(Slot slot, DiskImage image, NbdExportStats st) throws IOException {
        int flags = slot.flags;
        long offset = slot.offset;
        long length = slot.length;
        switch (slot.type) {
            case CMD_READ -> read(slot, image, st);
            case CMD_WRITE -> write(slot, image, st);
            case CMD_FLUSH -> {
                // FUA is accepted on every command (doc/proto.md: the server MUST accept it when SEND_FUA was
                // advertised, and clients are known to set it on FLUSH); a flush persists everything anyway.
                int err = checkFlags(flags, CMD_FLAG_FUA);
                if (err == 0 && (offset != 0 || length != 0)) {
                    err = EINVAL;
                }
                if (err == 0) {
                    err = flush(image);
                    st.flushes.increment();
                }
                done(slot, err, null);
            }
            case CMD_TRIM -> {
                int err = checkFlags(flags, CMD_FLAG_FUA);
                if (err == 0) {
                    err = checkWritable(offset, length, image);
                }
                if (err == 0) {
                    try {
                        image.discard(offset, length);
                    } catch (IOException e) {
                        err = errno(e);
                    }
                    st.trims.increment();
                }
                if (err == 0 && (flags & CMD_FLAG_FUA) != 0) {
                    err = flush(image);
                }
                done(slot, err, null);
            }
            case CMD_WRITE_ZEROES -> {
                int err = checkFlags(flags, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO);
                if (err == 0) {
                    err = checkWritable(offset, length, image);
                }
                if (err == 0 && (flags & CMD_FLAG_FAST_ZERO) != 0) {
                    long g = image.zeroGranularity();
                    // Fast means metadata only: the range must be whole units of the image's zero granularity,
                    // and a raw file zeroes by fallocate either way.
                    if (g > 1 && (offset % g != 0 || (length % g != 0 && offset + length != image.size()))) {
                        err = ENOTSUP;
                    }
                }
                if (err == 0) {
                    try {
                        image.writeZeroes(offset, length, (flags & CMD_FLAG_NO_HOLE) == 0);
                    } catch (IOException e) {
                        err = errno(e);
                    }
                    st.writeZeroes.increment();
                }
                if (err == 0 && (flags & CMD_FLAG_FUA) != 0) {
                    err = flush(image);
                }
                done(slot, err, null);
            }
            case CMD_BLOCK_STATUS -> blockStatus(slot, image, st);
            default -> done(slot, EINVAL, "unknown command " + slot.type);
        }
    }

    private void read(Slot slot, DiskImage image, NbdExportStats st) throws IOException {
        long offset = slot.offset;
        long length = slot.length;
        int err = checkFlags(slot.flags, CMD_FLAG_DF | CMD_FLAG_FUA);
        if (err == 0) {
            err = length > MAX_PAYLOAD ? EINVAL : checkRange(offset, length, image, EINVAL);
        }
        if (err != 0) {
            done(slot, err, null);
            return;
        }
        ByteBuffer buf = slot.payload((int) length, largeBudget);
        ImageIo io = slot.io;
        io.clear();
        io.add(slot.payloadMemory, 0, length);
        try {
            io.read(offset);
        } catch (IOException e) {
            err = errno(e);
        }
        io.clear();
        if (err != 0) {
            done(slot, err, null);
            return;
        }
        st.reads.increment();
        st.bytesRead.add(length);
        ByteBuffer h = slot.reply.clear();
        if (structured) {
            h.putInt(STRUCTURED_REPLY_MAGIC)
                    .putShort((short) REPLY_FLAG_DONE)
                    .putShort((short) REPLY_TYPE_OFFSET_DATA)
                    .putLong(slot.cookie)
                    .putInt((int) (8 + length))
                    .putLong(offset)
                    .flip();
        } else {
            h.putInt(SIMPLE_REPLY_MAGIC).putInt(0).putLong(slot.cookie).flip();
        }
        reply(slot, buf);
    }

    /** A write whose payload the reader already put in the slot. */
    private void write(Slot slot, DiskImage image, NbdExportStats st) throws IOException {
        long offset = slot.offset;
        long length = slot.length;
        int err = checkFlags(slot.flags, CMD_FLAG_FUA);
        if (err == 0) {
            err = export.readOnly() ? EPERM : checkRange(offset, length, image, ENOSPC);
        }
        if (err == 0) {
            ImageIo io = slot.io;
            io.clear();
            io.add(slot.payloadMemory, 0, length);
            try {
                io.write(offset);
            } catch (IOException e) {
                err = errno(e);
            }
            io.clear();
        }
        if (err == 0 && (slot.flags & CMD_FLAG_FUA) != 0) {
            err = flush(image);
        }
        if (err == 0) {
            st.writes.increment();
            st.bytesWritten.add(length);
        }
        done(slot, err, null);
    }

    private void blockStatus(Slot slot, DiskImage image, NbdExportStats st) throws IOException {
        long offset = slot.offset;
        long length = slot.length;
        int err = checkFlags(slot.flags, CMD_FLAG_REQ_ONE | CMD_FLAG_FUA); // FUA: accepted on every command, no-op
        if (err == 0 && (!structured || !baseAllocation)) {
            err = EINVAL; // no metadata context negotiated
        }
        if (err == 0) {
            err = checkRange(offset, length, image, EINVAL);
        }
        if (err != 0) {
            done(slot, err, null);
            return;
        }
        int max = (slot.flags & CMD_FLAG_REQ_ONE) != 0 ? 1 : MAX_EXTENTS;
        ByteBuffer ext = slot.extents.clear();
        ext.putInt(CONTEXT_ID);
        long pos = offset;
        long end = offset + length;
        try {
            for (int n = 0; n < max && pos < end; n++) {
                long e = image.extent(pos, Math.min(end - pos, 0xffff_f000L));
                int state = (DiskImage.Extent.hole(e) ? STATE_HOLE : 0) | (DiskImage.Extent.zero(e) ? STATE_ZERO : 0);
                ext.putInt((int) DiskImage.Extent.length(e)).putInt(state);
                pos += DiskImage.Extent.length(e);
            }
        } catch (IOException ex) {
            done(slot, EIO, "block status " + offset + "+" + length + ": " + ex.getMessage());
            return;
        }
        st.blockStatus.increment();
        ext.flip();
        ByteBuffer h = slot.reply.clear();
        h.putInt(STRUCTURED_REPLY_MAGIC)
                .putShort((short) REPLY_FLAG_DONE)
                .putShort((short) REPLY_TYPE_BLOCK_STATUS)
                .putLong(slot.cookie)
                .putInt(ext.remaining())
                .flip();
        reply(slot, ext);
    }

    private static final String[] COMMANDS = {
        "read", "write", "disconnect", "flush", "trim", "cmd 5", "write zeroes", "block status"
    };

    /**
     * Replies to the slot's request without data: success, or {@code err} (logged, counted) with {@code what}
     * as the structured error message (null: the command and its range; built only for errors).
     */
    private void done(Slot slot, int err, String what) throws IOException {
        ByteBuffer h = slot.reply.clear();
        if (err != 0) {
            if (what == null) {
                what = (slot.type < COMMANDS.length ? COMMANDS[slot.type] : "command " + slot.type) + " " + slot.offset
                        + "+" + slot.length;
            }
            export.stats().errors.increment();
            log(System.Logger.Level.DEBUG, what + ": error " + err);
        }
        if (!structured) {
            h.putInt(SIMPLE_REPLY_MAGIC).putInt(err).putLong(slot.cookie).flip();
            reply(slot.header);
        } else if (err == 0) {
            h.putInt(STRUCTURED_REPLY_MAGIC)
                    .putShort((short) REPLY_FLAG_DONE)
                    .putShort((short) REPLY_TYPE_NONE)
                    .putLong(slot.cookie)
                    .putInt(0)
                    .flip();
            reply(slot.header);
        } else {
            // allocates (the message, its bytes, their wrapper): errors are rare, and their message is logged anyway
            byte[] msg = what.getBytes(StandardCharsets.UTF_8);
            int n = Nbd.utf8Prefix(msg, MAX_ERROR_MESSAGE); // a message made from a path may be long, and not ASCII
            h.putInt(STRUCTURED_REPLY_MAGIC)
                    .putShort((short) REPLY_FLAG_DONE)
                    .putShort((short) REPLY_TYPE_ERROR)
                    .putLong(slot.cookie)
                    .putInt(6 + n)
                    .putInt(err)
                    .putShort((short) n)
                    .flip();
            reply(slot, ByteBuffer.wrap(msg, 0, n));
        }
    }

    private static int checkFlags(int flags, int allowed) {
        return (flags & ~allowed) != 0 ? EINVAL : 0;
    }

    private int checkWritable(long offset, long length, DiskImage image) {
        if (export.readOnly()) {
            return EPERM;
        }
        return checkRange(offset, length, image, ENOSPC);
    }

    private int checkRange(long offset, long length, DiskImage image, int beyondEnd) {
        if (length == 0) {
            return EINVAL;
        }
        if (Long.compareUnsigned(offset, image.size()) > 0 || length > image.size() - offset) {
            return beyondEnd;
        }
        int min = minimumBlock;
        if (min > 1 && ((offset | length) & (min - 1)) != 0) {
            return EINVAL;
        }
        return 0;
    }

    private int flush(DiskImage image) {
        if (export.readOnly()) {
            return 0;
        }
        try {
            image.flush();
            return 0;
        } catch (IOException e) {
            return errno(e);
        }
    }

    /** An image I/O error as its NBD errno (logged; the connection goes on). */
    private int errno(IOException e) {
        log(System.Logger.Level.WARNING, "I/O error: " + e.getMessage());
        if (e instanceof LinuxException le) {
            return switch (le.errno()) {
                case Errno.ENOSPC -> ENOSPC;
                case Errno.EROFS, Errno.EPERM -> EPERM;
                case Errno.EINVAL -> EINVAL;
                default -> EIO;
            };
        }
        return EIO;
    }

    /** Sends the slot's reply header and {@code data} together, through the slot's array. */
    private void reply(Slot slot, ByteBuffer data) throws IOException {
        ByteBuffer[] bufs = slot.headerAndData;
        bufs[1] = data;
        try {
            reply(bufs);
        } finally {
            bufs[1] = null; // a large request's buffer is freed once answered: keep no reference to it
        }
    }

    /** Sends one reply (one gathering write), from the reader or any worker. */
    private void reply(ByteBuffer[] bufs) throws IOException {
        synchronized (writeLock) {
            ch.writeFully(bufs);
        }
    }
}
