// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.linux.Errno;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.UnixSocket;
import io.iovirt.util.Json;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** A control-socket client: one JSON-RPC request per line, the reply read back with a timeout. */
public final class RpcClient implements AutoCloseable {
    private final UnixSocket socket;
    private final Path path;
    private final Arena arena = Arena.ofConfined();
    private final MemorySegment buf = arena.allocate(64 * 1024);
    private final ByteArrayOutputStream pending = new ByteArrayOutputStream();
    private long nextId = 1;

    private RpcClient(UnixSocket socket, Path path) {
        this.socket = socket;
        this.path = path;
    }

    public static RpcClient connect(Path control, Duration timeout) throws IOException {
        UnixSocket s;
        try {
            s = UnixSocket.connect(control);
        } catch (LinuxException e) {
            String hint = switch (e.errno()) {
                case Errno.ENOENT, Errno.ECONNREFUSED -> " (is 'iovirt daemon --control " + control + "' running?)";
                case Errno.EACCES -> " (the socket is mode 0600: run as the daemon's user or root)";
                default -> "";
            };
            throw new IOException("cannot connect to " + control + ": " + e.getMessage() + hint, e);
        }
        s.setReceiveTimeout(timeout);
        s.setSendTimeout(timeout);
        return new RpcClient(s, control);
    }

    /** A JSON-RPC error reply. */
    public static final class RemoteError extends Exception {
        private final long code;

        RemoteError(long code, String message) {
            super(message, null, false, false);
            this.code = code;
        }

        public long code() {
            return code;
        }
    }

    /** Calls {@code method}; returns its result, or throws the daemon's error. */
    public Object call(String method, Map<String, Object> params) throws IOException, RemoteError {
        Map<String, Object> req = new LinkedHashMap<>();
        req.put("jsonrpc", "2.0");
        req.put("id", nextId++);
        req.put("method", method);
        if (params != null && !params.isEmpty()) {
            req.put("params", params);
        }
        sendLine(Json.compact(req));
        Map<?, ?> reply = replyObject(readLine());
        if (reply.get("error") instanceof Map<?, ?> err) {
            long code = err.get("code") instanceof Long l ? l : 0;
            throw new RemoteError(code, String.valueOf(err.get("message")));
        }
        return reply.get("result");
    }

    private static Map<?, ?> replyObject(String line) throws IOException {
        try {
            if (JsonParser.parse(line) instanceof Map<?, ?> m) {
                return m;
            }
        } catch (JsonParser.JsonException e) {
            throw new IOException("the daemon sent a malformed reply: " + e.getMessage());
        }
        throw new IOException("the daemon sent a reply that is not an object");
    }

    /** Sends raw text (tests send malformed lines with it). */
    public void sendLine(String line) throws IOException {
        byte[] b = (line + "\n").getBytes(StandardCharsets.UTF_8);
        sendRaw(b);
    }

    public void sendRaw(byte[] b) throws IOException {
        MemorySegment seg = b.length <= buf.byteSize() ? buf.asSlice(0, b.length) : arena.allocate(b.length);
        MemorySegment.copy(b, 0, seg, ValueLayout.JAVA_BYTE, 0, b.length);
        socket.send(seg, List.of());
    }

    /** The next reply line; IOException when the daemon closed the connection. */
    public String readLine() throws IOException {
        while (true) {
            byte[] have = pending.toByteArray();
            for (int i = 0; i < have.length; i++) {
                if (have[i] == '\n') {
                    pending.reset();
                    pending.write(have, i + 1, have.length - i - 1);
                    return new String(have, 0, i, StandardCharsets.UTF_8);
                }
            }
            UnixSocket.Received r = socket.recv(buf, 0);
            if (r.eof()) {
                throw new java.io.EOFException("the daemon at " + path + " closed the connection");
            }
            pending.write(buf.asSlice(0, r.bytes()).toArray(ValueLayout.JAVA_BYTE), 0, (int) r.bytes());
        }
    }

    @Override
    public void close() {
        socket.close();
        arena.close();
    }
}
