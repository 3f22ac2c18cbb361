// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.linux.Acceptor;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.SocketAccess;
import io.iovirt.linux.SocketPaths;
import io.iovirt.linux.UnixSocket;
import io.iovirt.util.Json;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * The control socket: JSON-RPC 2.0, one request (or batch) per line, over a UNIX stream socket that only the
 * daemon's user may open (mode 0600) and whose peers are checked again with SO_PEERCRED (the daemon's uid or root).
 *
 * <p>Clients are untrusted and cannot harm the daemon: a line longer than {@link #MAX_LINE} bytes gets an error
 * and the connection is closed; a client idle for {@link #IDLE_TIMEOUT} is disconnected; at most
 * {@link #MAX_CLIENTS} are served at once and more are told so and closed; descriptors sent along are closed;
 * malformed JSON gets a parse error and the connection stays usable. Every client has its own platform thread
 * (the socket calls are blocking FFM calls).
 */
public final class RpcServer implements AutoCloseable {
    public static final int MAX_LINE = 1 << 20;
    public static final int MAX_CLIENTS = 32;
    public static final Duration IDLE_TIMEOUT = Duration.ofSeconds(60);
    /**
     * The most JSON values a request line may hold: a batch of 100 requests of 100 values each. A line of the most
     * values {@link #MAX_LINE} allows (about half a million) took tens of MB of heap to parse.
     */
    public static final int MAX_VALUES = 10_000;
    /**
     * Lines longer than this are decoded and parsed one at a time across all clients: each takes several times its
     * length in heap while it is (its bytes, its text, its values), and {@link #MAX_CLIENTS} of {@link #MAX_LINE}
     * at once would not fit the daemon's heap. Ordinary requests are far shorter and never wait for each other.
     */
    static final int LARGE_LINE = 64 * 1024;
    /**
     * The longest string id echoed in a reply, in characters (numbers are at most 40, {@link JsonParser}): ids name
     * requests and are short. A longer one is refused with an error whose id is null. Echoed, the ids of up to {@link
     * #MAX_LINE} bytes of a client that never reads made each reply as long, held for up to {@link #IDLE_TIMEOUT} per
     * connection.
     */
    public static final int MAX_ID = 256;
    /**
     * How long {@link #close} waits for the client threads: a disconnected client's thread ends at once, one inside
     * a call (a blk.add opening a slow image) when the call returns.
     */
    static final Duration CLOSE_WAIT = Duration.ofSeconds(10);

    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    private final Path path;
    private final Daemon daemon;
    private final UnixSocket listener;
    private final int ownUid;
    private final Acceptor<UnixSocket> acceptor;
    private final Set<UnixSocket> clients = ConcurrentHashMap.newKeySet();
    /** Held while a line longer than {@link #LARGE_LINE} is decoded and parsed. */
    private final java.util.concurrent.locks.ReentrantLock largeLine = new java.util.concurrent.locks.ReentrantLock();
    /** The client threads still running (each removes itself once its socket is closed). */
    private final Set<Thread> handlers = ConcurrentHashMap.newKeySet();

    private volatile boolean closed;

    private RpcServer(Path path, Daemon daemon, UnixSocket listener, int ownUid) {
        this.path = path;
        this.daemon = daemon;
        this.listener = listener;
        this.ownUid = ownUid;
        this.acceptor = Acceptor.builder("control socket " + path, LOG, listener::accept, () -> closed)
                .threadName("control accept")
                .peerCheck(Acceptor.peerCheck(SocketAccess.ownerOnly()), this::refusePeer)
                .maxConnections(
                        MAX_CLIENTS,
                        (s, why) -> reject(
                                s,
                                RpcException.LIMIT,
                                "too many control clients (" + MAX_CLIENTS + " at once); retry later"))
                .build(this::admit);
    }

    /** Listens on {@code path} (mode 0600); a stale socket file nobody listens on is replaced. */
    public static RpcServer start(Path path, Daemon daemon) throws IOException {
        UnixSocket l = SocketPaths.listen(path, 16, SocketAccess.ownerOnly(), "--control path"); // mode 0600
        int uid = (Integer) Files.getAttribute(Path.of("/proc/self"), "unix:uid");
        RpcServer s = new RpcServer(path, daemon, l, uid);
        s.acceptor.start();
        return s;
    }

    public Path path() {
        return path;
    }

    /**
     * True while the accept thread runs and its accepts have not all failed for {@code boundMillis} or more (the
     * watchdog's check that the control socket still serves: out of descriptors, the thread lives and backs off).
     */
    boolean accepting(long boundMillis) {
        return !closed
                && acceptor.thread().isAlive()
                && acceptor.failingForNanos() < TimeUnit.MILLISECONDS.toNanos(boundMillis);
    }

    /** A client whose uid may control us, within the limit: its own platform thread serves it. */
    private void admit(UnixSocket s, Runnable release) {
        String pid;
        try {
            pid = Integer.toString(s.peerCredentials().pid());
        } catch (LinuxException e) {
            pid = "?";
        }
        clients.add(s);
        Thread t = Thread.ofPlatform().name("control client pid " + pid).unstarted(() -> serve(s, release));
        handlers.add(t);
        try {
            t.start();
        } catch (OutOfMemoryError e) { // no thread could be created
            handlers.remove(t);
            clients.remove(s);
            throw e; // the acceptor releases and closes
        }
    }

    private void refusePeer(UnixSocket s, String why) {
        LOG.log(
                System.Logger.Level.WARNING,
                "control socket: refused " + why + ": only uid " + ownUid + " and root may control this daemon");
        String who;
        try {
            who = "uid " + s.peerCredentials().uid();
        } catch (LinuxException e) {
            s.close(); // credentials unreadable: nothing to tell whom
            return;
        }
        reject(
                s,
                RpcException.PERMISSION_DENIED,
                who + " may not control this daemon (it runs as uid " + ownUid + "); connect as that user or root");
    }

    private static void reject(UnixSocket s, int code, String message) {
        try {
            s.setSendTimeout(Duration.ofMillis(200));
            send(s, error(null, code, message));
        } catch (IOException e) {
            // the client is gone: nothing to tell
        } finally {
            s.close();
        }
    }

    private void serve(UnixSocket s, Runnable release) {
        try (Arena arena = Arena.ofConfined()) {
            s.setReceiveTimeout(IDLE_TIMEOUT);
            s.setSendTimeout(IDLE_TIMEOUT); // a client that never reads cannot hold this thread forever
            MemorySegment buf = arena.allocate(64 * 1024);
            LineBuffer line = new LineBuffer();
            boolean discarding = false;
            while (!closed) {
                UnixSocket.Received r = s.recv(buf, 0);
                if (r.eof()) {
                    return;
                }
                byte[] chunk = buf.asSlice(0, r.bytes()).toArray(ValueLayout.JAVA_BYTE);
                int start = 0;
                for (int i = 0; i < chunk.length; i++) {
                    if (chunk[i] != '\n') {
                        continue;
                    }
                    if (line.size() + (i - start) > MAX_LINE) { // also a line whose end came with its newline
                        refuseLongLine(s);
                        return;
                    }
                    line.write(chunk, start, i - start);
                    start = i + 1;
                    if (!discarding) {
                        String reply = handleLine(line.toByteArray());
                        if (reply != null) {
                            send(s, reply);
                        }
                    }
                    discarding = false;
                    line.done();
                }
                if (line.size() + (chunk.length - start) > MAX_LINE) {
                    refuseLongLine(s);
                    return;
                }
                line.write(chunk, start, chunk.length - start);
            }
        } catch (SocketTimeoutException e) {
            // idle client: disconnected
        } catch (IOException e) {
            if (!closed) {
                LOG.log(System.Logger.Level.DEBUG, "control client: " + e.getMessage());
            }
        } catch (RuntimeException | Error e) {
            LOG.log(System.Logger.Level.ERROR, "control client: internal error; connection closed", e);
        } finally {
            clients.remove(s);
            release.run();
            s.close();
            handlers.remove(Thread.currentThread());
        }
    }

    /**
     * Tells a client its line is longer than {@link #MAX_LINE} bytes (its newline not counted); the caller then drops
     * it: the rest of the line cannot be trusted to be a request. Checked before the bytes are kept, wherever in a read
     * the line ends, so that the limit is exact and the buffer never holds more.
     */
    private static void refuseLongLine(UnixSocket s) throws IOException {
        send(
                s,
                error(
                        null,
                        RpcException.LIMIT,
                        "request longer than " + MAX_LINE + " bytes; requests are one JSON object per line"));
    }

    /** One request line → the reply line (null: nothing to send, e.g. a notification or an empty line). */
    String handleLine(byte[] bytes) {
        Object req;
        if (bytes.length <= LARGE_LINE) {
            req = parseLine(bytes);
        } else {
            largeLine.lock();
            try {
                req = parseLine(bytes);
            } finally {
                largeLine.unlock();
            }
        }
        if (req instanceof ParseFailure f) {
            return f.reply();
        }
        if (req == null) {
            return null;
        }
        return handleRequest(req);
    }

    /** What a line that is no request is answered (a null reply: a blank line, nothing to answer). */
    private record ParseFailure(String reply) {}

    /** A line → its JSON value, a {@link ParseFailure}, or null for a blank line. */
    private static Object parseLine(byte[] bytes) {
        String text;
        try {
            text = StandardCharsets.UTF_8
                    .newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(bytes))
                    .toString();
        } catch (CharacterCodingException e) {
            return new ParseFailure(error(null, RpcException.PARSE_ERROR, "request is not UTF-8 text"));
        }
        if (text.isBlank()) {
            return null;
        }
        try {
            return JsonParser.parse(text, MAX_VALUES);
        } catch (JsonParser.JsonException e) {
            return new ParseFailure(error(
                    null,
                    RpcException.PARSE_ERROR,
                    "request is not JSON: " + e.getMessage()
                            + "; send one JSON-RPC 2.0 object per line, e.g."
                            + " {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\"}"));
        }
    }

    /** A parsed request or batch → the reply line (null: nothing to send). */
    private String handleRequest(Object req) {
        if (req instanceof List<?> batch) {
            if (batch.isEmpty()) {
                return error(null, RpcException.INVALID_REQUEST, "empty batch");
            }
            if (batch.size() > 100) {
                return error(null, RpcException.INVALID_REQUEST, "batch of " + batch.size() + " requests; at most 100");
            }
            List<Object> replies = new ArrayList<>();
            for (Object o : batch) {
                Object reply = handle(o);
                if (reply != null) {
                    replies.add(reply);
                }
            }
            return replies.isEmpty() ? null : Json.compact(replies);
        }
        Object reply = handle(req);
        return reply == null ? null : Json.compact(reply);
    }

    /** One request object → the reply object, or null for a notification. */
    @SuppressWarnings("unchecked")
    private Object handle(Object req) {
        if (!(req instanceof Map<?, ?> m)) {
            return errorObject(
                    null,
                    RpcException.INVALID_REQUEST,
                    "a request is a JSON object with jsonrpc, method, params and id");
        }
        Object id = m.get("id");
        boolean notification = !m.containsKey("id");
        if (id != null && !(id instanceof String) && !(id instanceof Long) && !(id instanceof java.math.BigDecimal)) {
            return errorObject(null, RpcException.INVALID_REQUEST, "id must be a string, a number or null");
        }
        if (id instanceof String text && text.length() > MAX_ID) { // a number's length JsonParser bounds
            return errorObject(
                    null,
                    RpcException.INVALID_REQUEST,
                    "id is longer than " + MAX_ID + " characters; use a short string or a number to name a request");
        }
        if (!"2.0".equals(m.get("jsonrpc"))) {
            return errorObject(id, RpcException.INVALID_REQUEST, "\"jsonrpc\": \"2.0\" is missing");
        }
        if (!(m.get("method") instanceof String method)) {
            return errorObject(id, RpcException.INVALID_REQUEST, "\"method\" must be a string");
        }
        Object params = m.get("params");
        if (params != null && !(params instanceof Map)) {
            return errorObject(id, RpcException.INVALID_PARAMS, "params must be an object of named parameters");
        }
        Object result;
        try {
            result = daemon.call(method, (Map<String, Object>) params);
        } catch (RpcException e) {
            return notification ? null : errorObject(id, e.code(), e.getMessage());
        } catch (RuntimeException | Error e) {
            LOG.log(System.Logger.Level.ERROR, "control: " + method + " failed unexpectedly", e);
            return notification
                    ? null
                    : errorObject(
                            id,
                            RpcException.INTERNAL_ERROR,
                            method + " failed: " + e
                                    + "; the daemon keeps running — please report this with the daemon's log");
        }
        if (notification) {
            return null;
        }
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("jsonrpc", "2.0");
        r.put("id", id);
        r.put("result", result);
        return r;
    }

    /**
     * A client's request line being received. Once a line is done the buffer is emptied, and when a large line grew it
     * beyond {@link #LARGE_LINE} it goes back to its normal size: it grows to the longest line (up to {@link
     * #MAX_LINE}), and kept that for the connection's life, so a client that sent one large line and then idled or
     * sent short ones pinned it.
     */
    static final class LineBuffer extends ByteArrayOutputStream {
        private static final int NORMAL = 4 * 1024;

        LineBuffer() {
            super(NORMAL);
        }

        /** Empties the buffer after a line, back at its normal size if the line was large. */
        void done() {
            if (buf.length > LARGE_LINE) {
                buf = new byte[NORMAL];
            }
            reset();
        }

        /** Bytes the buffer holds on to (tests). */
        int capacity() {
            return buf.length;
        }
    }

    private static Map<String, Object> errorObject(Object id, int code, String message) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("code", code);
        e.put("message", message);
        Map<String, Object> r = new LinkedHashMap<>();
        r.put("jsonrpc", "2.0");
        r.put("id", id);
        r.put("error", e);
        return r;
    }

    private static String error(Object id, int code, String message) {
        return Json.compact(errorObject(id, code, message));
    }

    /**
     * Waits for the client threads, woken by the shutdown of their sockets, to end. A thread inside a call ends when
     * the call returns; one still running at the deadline is named in the log and left (the caller goes on closing).
     */
    private void awaitHandlers() {
        long deadline = System.nanoTime() + CLOSE_WAIT.toNanos();
        for (Thread t : handlers) {
            if (t == Thread.currentThread()) {
                continue; // a client's call closing the server: its thread ends after this returns
            }
            try {
                long left = deadline - System.nanoTime();
                if (left <= 0 || !t.join(Duration.ofNanos(left))) {
                    break;
                }
            } catch (IllegalThreadStateException notStarted) {
                // admitted by an accept thread that has not started it yet (that thread outlived its join): it
                // serves a socket already shut down, and ends at once when it starts
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        List<String> running = handlers.stream()
                .filter(t -> t != Thread.currentThread())
                .map(Thread::getName)
                .toList();
        if (!running.isEmpty()) {
            LOG.log(
                    System.Logger.Level.WARNING,
                    "control socket " + path + ": closing while " + running + " still run after "
                            + CLOSE_WAIT.toSeconds()
                            + " s (each inside a call: a thread dump, jcmd PID Thread.print, shows where)");
        }
    }

    private static void send(UnixSocket s, String line) throws IOException {
        byte[] b = (line + "\n").getBytes(StandardCharsets.UTF_8);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment seg = a.allocate(b.length);
            MemorySegment.copy(b, 0, seg, ValueLayout.JAVA_BYTE, 0, b.length);
            s.send(seg, List.of());
        }
    }

    /**
     * Stops accepting, disconnects every client, waits (up to {@link #CLOSE_WAIT}) for their threads to close their
     * sockets — so that what the caller closes next (the daemon) is no longer used by a request — and removes the
     * socket file.
     */
    @Override
    public void close() {
        closed = true;
        try {
            listener.shutdown(UnixSocket.SHUT_RDWR);
        } catch (LinuxException e) {
            // not listening any more
        }
        try {
            acceptor.join(Duration.ofSeconds(10));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        for (UnixSocket c : clients) {
            try {
                c.shutdown(UnixSocket.SHUT_RDWR);
            } catch (LinuxException | IllegalStateException e) {
                // gone
            }
        }
        awaitHandlers();
        listener.close();
        try {
            Files.deleteIfExists(path);
        } catch (IOException e) {
            LOG.log(System.Logger.Level.WARNING, "could not remove control socket " + path + ": " + e.getMessage());
        }
    }
}
