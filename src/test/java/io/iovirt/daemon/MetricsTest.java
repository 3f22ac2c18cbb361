// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.DaemonCalls;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The Prometheus endpoint: what it serves, that promtool accepts it, and that it stays on loopback. */
class MetricsTest {
    @TempDir
    Path dir;

    /** promtool check metrics: exit 0 and no lint complaint (skipped when promtool is not installed). */
    static void promtool(String text) throws Exception {
        assertTrue(
                Files.isExecutable(Path.of("/usr/local/bin/promtool"))
                        || Files.isExecutable(Path.of("/usr/bin/promtool")),
                "promtool is not installed: run scripts/install-deps.sh");
        Process p = new ProcessBuilder("promtool", "check", "metrics")
                .redirectErrorStream(true)
                .start();
        p.getOutputStream().write(text.getBytes(StandardCharsets.UTF_8));
        p.getOutputStream().close();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), "promtool: " + out + "\n" + text);
        assertEquals("", out.trim(), "promtool lint: " + out);
    }

    @Test
    void servesValidExpositionOnLoopback() throws Exception {
        try (Daemon d = new Daemon(null)) {
            Path img = dir.resolve("d.raw");
            try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
                f.setLength(1 << 20);
            }
            d.call(
                    "blk.add",
                    Map.of(
                            "id",
                            "d0",
                            "image",
                            img.toString(),
                            "socket",
                            dir.resolve("d.sock").toString(),
                            "queues",
                            2L));
            d.call("net.add", Map.of("id", "sw"));
            DaemonCalls.portAdd(d, "sw", "p", "stream", dir.resolve("p.sock"));
            DaemonCalls.portAdd(d, "sw", "v", "vhost-user", dir.resolve("v.sock"));
            // The client is closed here: one left open keeps its selector thread, epoll and eventfd until a garbage
            // collection finds it unreferenced, and they close under whatever test runs then (seen under a later
            // test in this JVM), which throws off a test that checks the process's descriptors.
            try (Metrics m = Metrics.start("127.0.0.1:0", d);
                    HttpClient c = HttpClient.newBuilder()
                            .proxy(HttpClient.Builder.NO_PROXY)
                            .build()) {
                String base = "http://127.0.0.1:" + m.address().getPort();
                HttpResponse<String> r = c.send(
                        HttpRequest.newBuilder(URI.create(base + "/metrics")).build(),
                        HttpResponse.BodyHandlers.ofString());
                assertEquals(200, r.statusCode());
                assertEquals(
                        "text/plain; version=0.0.4; charset=utf-8",
                        r.headers().firstValue("Content-Type").orElse(""));
                String text = r.body();
                for (String s : new String[] {
                    "iovirt_blk_size_bytes{device=\"d0\"} 1048576",
                    "iovirt_blk_request_duration_seconds_bucket{device=\"d0\",queue=\"1\",le=\"+Inf\"} 0",
                    "iovirt_blk_request_duration_seconds_bucket{device=\"d0\",queue=\"0\",le=\"0.00001\"} 0",
                    "iovirt_blk_errors_total{device=\"d0\",queue=\"0\",reason=\"io\"} 0",
                    "iovirt_net_port_dropped_total{net=\"sw\",port=\"p\",direction=\"tx\",reason=\"link_down\"} 0",
                    "iovirt_net_port_link_up{net=\"sw\",port=\"p\"} 0",
                    "iovirt_blk_queue_batches_total{device=\"d0\",queue=\"1\"} 0",
                    "iovirt_blk_queue_sleeps_total{device=\"d0\",queue=\"0\"} 0",
                    "iovirt_blk_queue_spin_hits_total{device=\"d0\",queue=\"0\"} 0",
                    "iovirt_blk_queue_lost_notifications_total{device=\"d0\",queue=\"0\"} 0",
                    "iovirt_blk_queue_recheck_interrupts_total{device=\"d0\",queue=\"0\"} 0",
                    "iovirt_net_port_queue_batches_total{net=\"sw\",port=\"v\",queue=\"tx0\"} 0",
                    "iovirt_net_port_queue_sleeps_total{net=\"sw\",port=\"v\",queue=\"tx0\"} 0",
                    "iovirt_net_port_queue_recheck_interrupts_total{net=\"sw\",port=\"v\",queue=\"rx0\"} 0",
                    "iovirt_net_port_queue_lost_notifications_total{net=\"sw\",port=\"v\",queue=\"rx0\"} 0",
                    "process_resident_memory_bytes ",
                    "iovirt_process_threads ",
                    "iovirt_jvm_gc_collections_total{gc="
                }) {
                    assertTrue(text.contains(s), s + " missing:\n" + text);
                }
                promtool(text);
                assertEquals(
                        404,
                        c.send(
                                        HttpRequest.newBuilder(URI.create(base + "/"))
                                                .build(),
                                        HttpResponse.BodyHandlers.ofString())
                                .statusCode());
                assertEquals(
                        405,
                        c.send(
                                        HttpRequest.newBuilder(URI.create(base + "/metrics"))
                                                .POST(HttpRequest.BodyPublishers.ofString("x"))
                                                .build(),
                                        HttpResponse.BodyHandlers.ofString())
                                .statusCode());
            }
        }
    }

    /**
     * A scrape while ports come and go: the switch's port map changes under net.port.add/remove, and a scrape that
     * walked it without the daemon's lock failed with ConcurrentModificationException.
     */
    @Test
    void scrapesWhilePortsComeAndGo() throws Exception {
        try (Daemon d = new Daemon(null)) {
            d.call("net.add", Map.of("id", "sw"));
            for (int i = 0; i < 8; i++) {
                DaemonCalls.portAdd(d, "sw", "s" + i, "stream", dir.resolve("s" + i + ".sock"));
            }
            java.util.concurrent.atomic.AtomicBoolean done = new java.util.concurrent.atomic.AtomicBoolean();
            java.util.concurrent.atomic.AtomicInteger changes = new java.util.concurrent.atomic.AtomicInteger();
            java.util.concurrent.atomic.AtomicReference<Throwable> churnFailed =
                    new java.util.concurrent.atomic.AtomicReference<>();
            Thread churn = Thread.ofPlatform().start(() -> {
                try {
                    for (int i = 0; i < 300; i++) {
                        String id = "c" + (i % 4);
                        DaemonCalls.portAdd(d, "sw", id, "stream", dir.resolve(id + ".sock"));
                        if (i >= 3) {
                            d.call("net.port.remove", Map.of("net", "sw", "id", "c" + ((i - 3) % 4)));
                        }
                        changes.incrementAndGet();
                    }
                } catch (Throwable e) { // seen below: thrown here, it would end the thread and leave the test green
                    churnFailed.set(e);
                } finally {
                    done.set(true);
                }
            });
            int scrapes = 0;
            while (!done.get() || scrapes == 0) {
                String text = Metrics.render(d);
                assertTrue(text.contains("iovirt_net_port_link_up{net=\"sw\",port=\"s7\"} 0"), text);
                scrapes++;
            }
            churn.join();
            if (churnFailed.get() != null) {
                throw new AssertionError(
                        "the ports' churn failed after " + changes.get() + " changes", churnFailed.get());
            }
            assertEquals(300, changes.get(), "changes made while scraping");
        }
    }

    /** What a raw client gets for {@code request}: the whole answer, up to the server's close. */
    static String raw(Metrics m, String request) throws IOException {
        try (java.net.Socket s = new java.net.Socket("127.0.0.1", m.address().getPort())) {
            s.setSoTimeout(30_000);
            s.getOutputStream().write(request.getBytes(StandardCharsets.US_ASCII));
            return new String(s.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        }
    }

    /**
     * The small HTTP server's edges: HEAD has the headers of GET and no body, a query string is ignored, a bare-LF
     * request is understood, a line that is not HTTP gets 400, an endless head gets 431 — each answer closes; an
     * absolute-form target and an empty line before the request line are accepted (RFC 9112 3.2.2, 2.2).
     */
    @Test
    void answersHeadQueriesAndMalformedRequests() throws Exception {
        try (Daemon d = new Daemon(null);
                Metrics m = Metrics.start("127.0.0.1:0", d)) {
            String head = raw(m, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            assertTrue(head.startsWith("HTTP/1.1 200 OK\r\n"), head);
            assertTrue(head.contains("Content-Length: ") && head.contains("Connection: close\r\n"), head);
            assertTrue(head.endsWith("\r\n\r\n"), "HEAD answered with a body: " + head);
            String get = raw(m, "GET /metrics?x=1 HTTP/1.0\n\n");
            assertTrue(get.startsWith("HTTP/1.1 200 OK") && get.contains("iovirt_build_info"), get);
            // The HEAD's connection leaves the count only once the server saw this client close after the answer's
            // end: a scrape right after it may still count it. Once it has left, a scrape counts itself alone.
            long deadline = System.nanoTime() + java.util.concurrent.TimeUnit.SECONDS.toNanos(30);
            while (!get.contains("iovirt_metrics_connections 1\n") && System.nanoTime() < deadline) {
                Thread.sleep(20);
                get = raw(m, "GET /metrics?x=1 HTTP/1.0\n\n");
            }
            assertTrue(get.contains("iovirt_metrics_connections 1\n"), "this connection is counted: " + get);
            assertTrue(raw(m, "hello\r\n\r\n").startsWith("HTTP/1.1 400 "));
            assertTrue(raw(m, "GET /other HTTP/1.1\r\n\r\n").startsWith("HTTP/1.1 404 "));
            String headOther = raw(m, "HEAD /other HTTP/1.1\r\n\r\n");
            assertTrue(headOther.startsWith("HTTP/1.1 404 ") && headOther.endsWith("\r\n\r\n"), headOther);
            String absolute = raw(m, "GET http://127.0.0.1:" + m.address().getPort() + "/metrics HTTP/1.1\r\n\r\n");
            assertTrue(absolute.startsWith("HTTP/1.1 200 OK") && absolute.contains("iovirt_build_info"), absolute);
            String blankFirst = raw(m, "\r\nGET /metrics HTTP/1.1\r\n\r\n");
            assertTrue(blankFirst.startsWith("HTTP/1.1 200 OK"), "an empty line before the request: " + blankFirst);
            assertTrue(raw(m, "GET / HTTP/1.1\r\nX: " + "a".repeat(Metrics.MAX_REQUEST_HEAD) + "\r\n\r\n")
                    .startsWith("HTTP/1.1 431 "));
        }
    }

    @Test
    void refusesNonLoopbackAndBadAddresses() throws Exception {
        try (Daemon d = new Daemon(null)) {
            IOException e = assertThrows(IOException.class, () -> Metrics.start("0.0.0.0:0", d));
            assertTrue(e.getMessage().contains("not a loopback address"), e.getMessage());
            assertThrows(IOException.class, () -> Metrics.start("9400", d));
            assertThrows(IOException.class, () -> Metrics.start("127.0.0.1:http", d));
        }
    }

    @Test
    void labelValuesAreEscaped() {
        assertEquals("path=\"a\\\"b\\\\c\\nd\"", Metrics.label("path", "a\"b\\c\nd"));
    }
}
