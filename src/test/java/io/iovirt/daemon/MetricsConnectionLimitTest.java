// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.LinuxException;
import io.iovirt.linux.SdNotify;
import io.iovirt.testing.Await;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.VhostUserFrontend;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A hostile local user against {@code iovirt daemon --metrics} (any local user can connect to its loopback port):
 * hundreds of connections, idle ones and ones that send half a request and stop, kept open and reopened as the
 * daemon closes them. The daemon runs as systemd runs it (this test is the service manager: $NOTIFY_SOCKET,
 * $WATCHDOG_USEC) with a disk whose vhost-user socket a real frontend uses meanwhile. Unbounded, the daemon held a
 * descriptor (and a thread) per connection, and at RLIMIT_NOFILE every guest's backend in it broke; a watchdog that
 * asked the port to answer would then have had systemd restart it — either way one user hurt every guest.
 */
@Timeout(300)
class MetricsConnectionLimitTest {
    static final Duration WAIT = Duration.ofSeconds(60);
    /** The descriptors a JVM may open on its own meanwhile (class files, a GC log): well below the hogs' count. */
    static final int SLACK = 24;

    @TempDir
    Path dir;

    /** Connections the test holds: each idle or with half a request sent, as a user exhausting the daemon would. */
    static final class Hogs implements AutoCloseable {
        final InetSocketAddress target;
        final List<SocketChannel> live = new ArrayList<>();
        final ByteBuffer buf = ByteBuffer.allocate(256);
        int opened;
        /** Ended by the daemon with its 503 (the rest ended with no answer: closed at their deadline). */
        int refusedWith503;

        Hogs(InetSocketAddress target) {
            this.target = target;
        }

        /** Opens connections until {@code n} are live (every other one sends half a request). */
        void topUp(int n) throws IOException {
            while (live.size() < n) {
                SocketChannel c = SocketChannel.open(target);
                if (opened++ % 2 == 1) {
                    c.write(ByteBuffer.wrap("GET /metr".getBytes(StandardCharsets.US_ASCII)));
                }
                c.configureBlocking(false);
                live.add(c);
            }
        }

        /** Drops (and closes) the connections the daemon has ended; returns how many are still open. */
        int sweep() {
            live.removeIf(c -> {
                try {
                    int n = c.read(buf.clear());
                    if (n == 0) {
                        return false; // held open by the daemon, unanswered
                    }
                    if (n > 0 && new String(buf.array(), 0, n, StandardCharsets.US_ASCII).startsWith("HTTP/1.1 503")) {
                        refusedWith503++;
                    }
                } catch (IOException e) {
                    // reset: ended too
                }
                try {
                    c.close();
                } catch (IOException e) {
                    // closed anyway
                }
                return true;
            });
            return live.size();
        }

        @Override
        public void close() throws IOException {
            for (SocketChannel c : live) {
                c.close();
            }
        }
    }

    static long fds(long pid) {
        try (Stream<Path> s = Files.list(Path.of("/proc/" + pid + "/fd"))) {
            return s.count();
        } catch (IOException e) {
            throw new AssertionError("cannot count the daemon's descriptors (pid " + pid + "): " + e);
        }
    }

    static HttpResponse<String> scrape(HttpClient c, int port) throws Exception {
        return c.send(
                HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/metrics"))
                        .timeout(Duration.ofSeconds(30))
                        .build(),
                HttpResponse.BodyHandlers.ofString());
    }

    static long sample(String text, String name) {
        Matcher m = Pattern.compile("(?m)^" + name + " (\\d+)$").matcher(text);
        assertTrue(m.find(), name + " missing:\n" + text);
        return Long.parseLong(m.group(1));
    }

    /** The start of QEMU's vhost-user handshake with a disk: features, protocol features, owner, queue count. */
    static void negotiate(Path socket) throws IOException {
        try (VhostUserFrontend f = VhostUserFrontend.connect(socket, Duration.ofSeconds(30))) {
            long features = f.getFeatures();
            assertTrue((features & (1L << 32)) != 0, "VIRTIO_F_VERSION_1 not offered: " + Long.toHexString(features));
            assertTrue((features & Features.VHOST_USER_F_PROTOCOL_FEATURES) != 0, Long.toHexString(features));
            long protocol = f.getProtocolFeatures();
            assertTrue((protocol & (1L << Features.PROTOCOL_MQ)) != 0, Long.toHexString(protocol));
            f.setProtocolFeatures(protocol);
            f.setOwner();
            assertTrue(f.getQueueNum() >= 1);
        }
    }

    /** WATCHDOG=1 notifications among {@code notes} from index {@code from} on. */
    static long pings(List<String> notes, int from) {
        synchronized (notes) {
            return notes.subList(from, notes.size()).stream()
                    .filter(n -> n.lines().anyMatch("WATCHDOG=1"::equals))
                    .count();
        }
    }

    @Test
    void aUserHoldingMoreConnectionsThanTheLimitHurtsNoGuest() throws Exception {
        Path notify = dir.resolve("notify.sock");
        Path control = dir.resolve("control.sock");
        Path config = dir.resolve("daemon.json");
        Path disk = dir.resolve("disk.sock");
        Path image = dir.resolve("a.raw");
        try (RandomAccessFile r = new RandomAccessFile(image.toFile(), "rw")) {
            r.setLength(1 << 20);
        }
        Files.writeString(
                config, "{\"blk\": [{\"id\": \"a\", \"image\": \"%s\", \"socket\": \"%s\"}]}".formatted(image, disk));
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, 200);
                ChildProcess daemon = ChildProcess.builder(IovirtCli.command(
                                "daemon",
                                "--config",
                                config.toString(),
                                "--control",
                                control.toString(),
                                "--metrics",
                                "127.0.0.1:0"))
                        .name("iovirt daemon")
                        .log(dir.resolve("daemon.log"))
                        .env("NOTIFY_SOCKET", notify.toString())
                        .env("WATCHDOG_USEC", "2000000") // a ping every second while it serves
                        .start();
                HttpClient http = HttpClient.newBuilder()
                        .proxy(HttpClient.Builder.NO_PROXY)
                        .build()) {
            // every notification, as it arrives: the pings sent while the listener is full are told from earlier ones
            List<String> notes = Collections.synchronizedList(new ArrayList<>());
            AtomicBoolean listening = new AtomicBoolean(true);
            Thread collector = Thread.ofPlatform().start(() -> {
                try {
                    while (listening.get()) {
                        String n = systemd.receive(); // null after 200 ms without one
                        if (n != null) {
                            notes.add(n);
                        }
                    }
                } catch (LinuxException e) {
                    notes.add("receive failed: " + e);
                }
            });
            try {
                attack(daemon, http, control, disk, notes);
            } finally {
                listening.set(false);
                collector.join();
            }
        }
    }

    private void attack(ChildProcess daemon, HttpClient http, Path control, Path disk, List<String> notes)
            throws Exception {
        int cap = Metrics.DEFAULT_MAX_CONNECTIONS; // the daemon runs with the default, as the shipped unit does
        String ready = Await.value(WAIT, "READY=1", () -> {
            synchronized (notes) {
                return notes.stream()
                        .filter(n -> n.lines().anyMatch("READY=1"::equals))
                        .findFirst();
            }
        });
        Matcher m =
                Pattern.compile("metrics http://127\\.0\\.0\\.1:(\\d+)/metrics").matcher(ready);
        assertTrue(m.find(), "no metrics address in " + ready);
        int port = Integer.parseInt(m.group(1));
        assertEquals(200, scrape(http, port).statusCode()); // what a scrape opens is open before the baseline
        long baseline = fds(daemon.pid());

        // the daemon's descriptors, sampled throughout the attack
        AtomicLong most = new AtomicLong();
        AtomicBoolean attacking = new AtomicBoolean(true);
        Thread sampler = Thread.ofPlatform().start(() -> {
            while (attacking.get()) {
                most.accumulateAndGet(fds(daemon.pid()), Math::max);
                try {
                    Thread.sleep(10);
                } catch (InterruptedException e) {
                    return;
                }
            }
        });
        int opened;
        int refusedWith503;
        try (Hogs hogs = new Hogs(new InetSocketAddress("127.0.0.1", port))) {
            hogs.topUp(10 * cap); // a burst: ten times the limit
            // then the user keeps the listener full: whatever the daemon ends is reopened
            AtomicReference<Exception> failed = new AtomicReference<>();
            Thread flood = Thread.ofPlatform().start(() -> {
                try {
                    while (attacking.get()) {
                        synchronized (hogs) {
                            hogs.sweep();
                            hogs.topUp(cap + cap / 2);
                        }
                        Thread.sleep(100);
                    }
                } catch (IOException | InterruptedException e) {
                    failed.set(e);
                }
            });
            try {
                // (over the limit: answered 503 at once, no thread; the test's own scrape too while it is full)
                Await.until(WAIT, "a scrape answered 503 while the hogs fill the listener", daemon, () -> {
                    try {
                        return scrape(http, port).statusCode() == 503;
                    } catch (Exception e) {
                        return false; // reset while refused: try again
                    }
                });
                // (3) the watchdog keeps pinging while the listener is full, and never says it is not responding
                int full = notes.size();
                Await.until(WAIT, "three pings since the listener was full", daemon, () -> pings(notes, full) >= 3);
                // (4) the guests' side works meanwhile: a vhost-user frontend negotiates with the disk, and the
                // control socket adds a disk (opening its image and listening: descriptors the daemon needs)
                negotiate(disk);
                Path image2 = dir.resolve("b.raw");
                try (RandomAccessFile r = new RandomAccessFile(image2.toFile(), "rw")) {
                    r.setLength(1 << 20);
                }
                try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                    c.call(
                            "blk.add",
                            Map.of(
                                    "id",
                                    "b",
                                    "image",
                                    image2.toString(),
                                    "socket",
                                    dir.resolve("b.sock").toString()));
                    assertEquals(2, ((List<?>) c.call("blk.list", null)).size());
                }
                negotiate(dir.resolve("b.sock"));
                List<String> since;
                synchronized (notes) {
                    since = List.copyOf(notes.subList(full, notes.size()));
                }
                assertTrue(
                        since.stream().noneMatch(n -> n.startsWith("STATUS=not responding")),
                        "the watchdog stopped pinging while the metrics listener was full: " + since);
                assertTrue(
                        fds(daemon.pid()) - baseline < cap + SLACK,
                        "descriptors now " + fds(daemon.pid()) + ", before the attack " + baseline);
            } finally {
                attacking.set(false);
                flood.join();
                sampler.join();
            }
            if (failed.get() != null) {
                throw new AssertionError("the flood stopped: " + failed.get(), failed.get());
            }
            // (1) bounded: the limit's connections (and the second disk's image, socket and listener), not one
            // per hog — the test opened hundreds
            assertTrue(
                    hogs.opened > 10 * cap && most.get() - baseline < cap + SLACK,
                    "the daemon held up to " + most.get() + " descriptors while " + hogs.opened
                            + " connections were opened; " + baseline + " before: the limit is " + cap);
            assertTrue(hogs.refusedWith503 > 0, "no hog was answered 503");

            // The user stops reopening but keeps what it has: the daemon closes those at their deadline (idle
            // and half-sent alike), and the slots are free again.
            Await.until(WAIT, "the daemon closes the idle and half-sent connections it holds", daemon, () -> {
                synchronized (hogs) {
                    return hogs.sweep() == 0;
                }
            });
            opened = hogs.opened;
            refusedWith503 = hogs.refusedWith503;
        }
        // (2) a real scrape succeeds, and promtool accepts it
        HttpResponse<String> r = scrape(http, port);
        assertEquals(200, r.statusCode(), r.body());
        MetricsTest.promtool(r.body());
        // every hog was either refused or closed at its deadline (none was answered), and the last ones held
        // (at least the limit's worth) timed out
        long refused = sample(r.body(), "iovirt_metrics_connections_refused_total");
        long timedOut = sample(r.body(), "iovirt_metrics_connections_timed_out_total");
        assertTrue(refused + timedOut >= opened && refused >= refusedWith503 && timedOut >= cap, r.body());
        assertEquals(cap, sample(r.body(), "iovirt_metrics_connections_max"));
        // curl, as an operator would check it
        Process curl = new ProcessBuilder("curl", "-sSf", "--noproxy", "*", "http://127.0.0.1:" + port + "/metrics")
                .redirectErrorStream(true)
                .start();
        String out = new String(curl.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, curl.waitFor(), "curl: " + out);
        assertTrue(out.contains("iovirt_blk_frontend_connected{device=\"b\"}"), out);
        // logged at a bounded rate, not once per refused connection
        long refusedLines = daemon.log()
                .lines()
                .filter(l -> l.contains("refused a connection"))
                .count();
        assertTrue(refusedLines >= 1, "the refusals were not logged:\n" + daemon.logTail(40));
        assertTrue(refusedLines < refused / 8, refusedLines + " log lines for the refusals");
        assertTrue(daemon.isAlive(), daemon.logTail(40));
    }
}
