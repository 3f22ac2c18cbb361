// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import io.iovirt.bench.StrictJson;
import io.iovirt.util.Json;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A QMP client for tests: connects to QEMU's {@code -qmp unix:PATH,server=on,wait=off} socket, leaves capabilities
 * negotiation mode and runs commands, one at a time. Asynchronous events are kept ({@link #events()}); a reader
 * thread takes QEMU's lines so every wait has a timeout.
 */
public final class Qmp implements AutoCloseable {
    private static final Object EOF = new Object();

    private final SocketChannel channel;
    private final BlockingQueue<Object> lines = new LinkedBlockingQueue<>();
    private final List<Map<String, Object>> events = new ArrayList<>();
    private final Duration timeout;

    private Qmp(SocketChannel channel, Duration timeout) {
        this.channel = channel;
        this.timeout = timeout;
        Thread.ofPlatform().daemon().name("qmp-reader").start(() -> {
            try (BufferedReader r = new BufferedReader(
                    new InputStreamReader(Channels.newInputStream(channel), StandardCharsets.UTF_8))) {
                String line;
                while ((line = r.readLine()) != null) {
                    lines.add(line);
                }
            } catch (IOException ignored) {
                // closed
            }
            lines.add(EOF);
        });
    }

    /** Connects (waiting up to {@code timeout} for QEMU to create the socket) and negotiates capabilities. */
    public static Qmp connect(Path socket, Duration timeout) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        for (; ; ) {
            if (Files.exists(socket)) {
                SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX);
                try {
                    ch.connect(UnixDomainSocketAddress.of(socket));
                    Qmp q = new Qmp(ch, timeout);
                    Map<String, Object> greeting = q.next();
                    if (!greeting.containsKey("QMP")) {
                        throw new IOException("not a QMP greeting: " + greeting);
                    }
                    q.execute("qmp_capabilities", Map.of());
                    return q;
                } catch (IOException e) {
                    ch.close();
                    if (System.nanoTime() > deadline) {
                        throw e;
                    }
                }
            } else if (System.nanoTime() > deadline) {
                throw new IOException("QMP socket " + socket + " did not appear within " + timeout);
            }
            Thread.sleep(50);
        }
    }

    /**
     * Runs {@code command} and returns its {@code return} value.
     *
     * @throws IOException QEMU answered with an error (its class and description are in the message), closed the
     *                     socket, or did not answer within the timeout
     */
    public Object execute(String command, Map<String, Object> arguments) throws IOException, InterruptedException {
        Map<String, Object> req = new LinkedHashMap<>();
        req.put("execute", command);
        if (!arguments.isEmpty()) {
            req.put("arguments", arguments);
        }
        ByteBuffer out = ByteBuffer.wrap((Json.write(req) + "\n").getBytes(StandardCharsets.UTF_8));
        synchronized (channel) {
            while (out.hasRemaining()) {
                channel.write(out);
            }
        }
        for (; ; ) {
            Map<String, Object> m = next();
            if (m.containsKey("event")) {
                events.add(m);
                continue;
            }
            if (m.containsKey("error")) {
                throw new IOException("QMP " + command + " failed: " + m.get("error"));
            }
            if (m.containsKey("return")) {
                return m.get("return");
            }
            throw new IOException("unexpected QMP message: " + m);
        }
    }

    /** Runs a command whose result is an object. */
    @SuppressWarnings("unchecked")
    public Map<String, Object> query(String command) throws IOException, InterruptedException {
        return (Map<String, Object>) execute(command, Map.of());
    }

    /** Polls query-status until the VM runs (a migration destination resumes shortly after the source completes). */
    public void awaitRunning(Duration limit) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + limit.toNanos();
        for (; ; ) {
            Object status = query("query-status").get("status");
            if ("running".equals(status)) {
                return;
            }
            if (System.nanoTime() > deadline) {
                throw new IOException("the VM is still '" + status + "' after " + limit);
            }
            Thread.sleep(100);
        }
    }

    /** Events seen so far. */
    public List<Map<String, Object>> events() {
        return events;
    }

    @SuppressWarnings("unchecked")
    private Map<String, Object> next() throws IOException, InterruptedException {
        Object line = lines.poll(timeout.toMillis(), TimeUnit.MILLISECONDS);
        if (line == null) {
            throw new IOException("QMP: no message within " + timeout);
        }
        if (line == EOF) {
            lines.add(EOF);
            throw new IOException("QMP: QEMU closed the socket");
        }
        return (Map<String, Object>) StrictJson.parse((String) line);
    }

    @Override
    public void close() {
        try {
            channel.close();
        } catch (IOException ignored) {
            // closing
        }
    }
}
