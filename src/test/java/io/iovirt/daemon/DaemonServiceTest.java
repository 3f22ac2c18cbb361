// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.SdNotify;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code iovirt daemon} started the way systemd starts a Type=notify service: this test is the service manager — it
 * listens on the $NOTIFY_SOCKET datagram socket and sets $WATCHDOG_USEC — and checks READY=1 (sent only once the
 * control socket answers), WATCHDOG=1 pings, RELOADING=1/READY=1 around a SIGHUP that re-reads the configuration
 * file and applies the difference, and STOPPING=1 on SIGTERM followed by a clean exit.
 */
@Timeout(300)
class DaemonServiceTest {
    @TempDir
    Path dir;

    Path image(String name) throws Exception {
        Path f = dir.resolve(name);
        try (RandomAccessFile r = new RandomAccessFile(f.toFile(), "rw")) {
            r.setLength(1 << 20);
        }
        return f;
    }

    /** Receives notifications until one contains {@code what}; returns every message seen on the way. */
    static List<String> until(SdNotify.Listener l, String what) throws Exception {
        List<String> seen = new ArrayList<>();
        // an overall deadline: WATCHDOG=1 arrives every 250 ms, so a per-receive timeout alone never ends the wait
        // (a daemon started with SIGHUP ignored — e.g. under nohup — never reloads; this ran for 90 min once)
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (true) {
            assertTrue(
                    System.nanoTime() < deadline, "no notification containing " + what + " within 60 s; saw " + seen);
            String m = l.receive();
            assertNotNull(m, "no notification containing " + what + " within the timeout; saw " + seen);
            seen.add(m);
            if (m.lines().anyMatch(what::equals)) {
                return seen;
            }
        }
    }

    /**
     * The watchdog pings only while the daemon responds: with its registry lock held for ever (a deadlock) or its
     * control socket no longer accepting, WATCHDOG=1 stops — systemd restarts it — and STATUS= says why; once the
     * lock is free again the pings resume. It pinged regardless, from a thread of its own.
     */
    @Test
    void theWatchdogPingsOnlyWhileTheDaemonResponds() throws Exception {
        Path notify = dir.resolve("notify.sock");
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, 60_000);
                Daemon d = new Daemon(null);
                RpcServer rpc = RpcServer.start(dir.resolve("control.sock"), d);
                Watchdog w = Watchdog.start(SdNotify.of(notify.toString()), 100, d, rpc, null)) {
            until(systemd, "WATCHDOG=1");
            java.util.concurrent.CountDownLatch held = new java.util.concurrent.CountDownLatch(1);
            java.util.concurrent.CountDownLatch release = new java.util.concurrent.CountDownLatch(1);
            Thread deadlock = Thread.ofPlatform()
                    .start(() -> d.locked(() -> {
                        held.countDown();
                        try {
                            release.await();
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                        }
                        return null;
                    }));
            try {
                held.await();
                String status = untilStartsWith(systemd, "STATUS=not responding: the daemon's device registry lock");
                assertTrue(status.contains("WATCHDOG=1 withheld"), status);
                for (int i = 0; i < 3; i++) { // while it is held: reasons, never a ping
                    String m = systemd.receive();
                    assertNotNull(m);
                    assertTrue(m.startsWith("STATUS=not responding"), m);
                }
            } finally {
                release.countDown(); // also when an assertion failed: closing the daemon takes the lock
            }
            deadlock.join();
            until(systemd, "WATCHDOG=1");
            rpc.close();
            untilStartsWith(systemd, "STATUS=not responding: the control socket");
            String m = systemd.receive();
            assertTrue(m.startsWith("STATUS=not responding"), m);
        }
    }

    /**
     * With a /metrics server the watchdog also checks that it serves: one that accepts connections but can serve none
     * (no thread can be started for them) stops the pings, and STATUS= names it. It was not looked at: a wedged metrics
     * server kept being reported alive. (A full one is not wedged: MetricsConnectionLimitTest.)
     */
    @Test
    void aWedgedMetricsListenerStopsThePings() throws Exception {
        Path notify = dir.resolve("notify.sock");
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, 60_000);
                Daemon d = new Daemon(null);
                RpcServer rpc = RpcServer.start(dir.resolve("control.sock"), d);
                Metrics m = Metrics.start("127.0.0.1:0", d);
                Watchdog w = Watchdog.start(SdNotify.of(notify.toString()), 200, d, rpc, m)) {
            until(systemd, "WATCHDOG=1");
            m.exchanges.shutdownNow(); // the dispatcher still accepts, but hands the connections to no one
            String status = untilStartsWith(
                    systemd,
                    "STATUS=not responding: the metrics listener http://127.0.0.1:"
                            + m.address().getPort() + "/");
            assertTrue(status.contains("WATCHDOG=1 withheld"), status);
            for (int i = 0; i < 3; i++) {
                String n = systemd.receive();
                assertNotNull(n);
                assertTrue(n.startsWith("STATUS=not responding"), n);
            }
        }
    }

    /**
     * A local client that sends half a request and stalls (anyone may connect to the loopback port) holds only its
     * own exchange thread: other scrapes are answered and the watchdog keeps pinging. On the one shared thread it
     * stalled every scrape after it — and with the watchdog's check it would have had systemd restart the daemon.
     */
    @Test
    void aStalledMetricsClientStallsNeitherScrapesNorThePings() throws Exception {
        Path notify = dir.resolve("notify.sock");
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, 60_000);
                Daemon d = new Daemon(null);
                RpcServer rpc = RpcServer.start(dir.resolve("control.sock"), d);
                Metrics m = Metrics.start("127.0.0.1:0", d);
                Watchdog w = Watchdog.start(SdNotify.of(notify.toString()), 1000, d, rpc, m);
                java.net.Socket stalled =
                        new java.net.Socket("127.0.0.1", m.address().getPort())) {
            until(systemd, "WATCHDOG=1");
            stalled.getOutputStream().write("GET /metr".getBytes(java.nio.charset.StandardCharsets.US_ASCII));
            stalled.getOutputStream().flush();
            systemd.receive(); // a period later: the server has long handed the stalled connection to a thread
            java.net.http.HttpClient c = java.net.http.HttpClient.newBuilder()
                    .proxy(java.net.http.HttpClient.Builder.NO_PROXY)
                    .build();
            java.net.http.HttpResponse<String> r = c.send(
                    java.net.http.HttpRequest.newBuilder(java.net.URI.create(
                                    "http://127.0.0.1:" + m.address().getPort() + "/metrics"))
                            .timeout(Duration.ofSeconds(10))
                            .build(),
                    java.net.http.HttpResponse.BodyHandlers.ofString());
            assertEquals(200, r.statusCode());
            assertTrue(r.body().contains("iovirt_build_info"), r.body());
            until(systemd, "WATCHDOG=1");
            until(systemd, "WATCHDOG=1");
        }
    }

    /** Receives notifications until one starts with {@code prefix}; returns it. */
    static String untilStartsWith(SdNotify.Listener l, String prefix) throws Exception {
        List<String> seen = new ArrayList<>();
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (System.nanoTime() < deadline) {
            String m = l.receive();
            assertNotNull(m, "no notification starting with " + prefix + "; saw " + seen);
            if (m.startsWith(prefix)) {
                return m;
            }
            seen.add(m);
        }
        throw new AssertionError("no notification starting with " + prefix + " within 60 s; saw " + seen);
    }

    /** The daemon as systemd starts it (Type=notify): its readiness and status come to {@code notify}. */
    private ChildProcess startDaemon(Path config, Path control, Path notify) throws IOException {
        return ChildProcess.builder(
                        IovirtCli.command("daemon", "--config", config.toString(), "--control", control.toString()))
                .name("iovirt daemon")
                .log(dir.resolve("daemon.log"))
                .env("NOTIFY_SOCKET", notify.toString())
                .start();
    }

    @Test
    void notifiesLikeATypeNotifyServiceAndReloadsOnSighup() throws Exception {
        Path notify = dir.resolve("notify.sock");
        Path control = dir.resolve("control.sock");
        Path config = dir.resolve("daemon.json");
        Path a = image("a.raw");
        Path b = image("b.raw");
        Files.writeString(
                config, """
                {"blk": [{"id": "a", "image": "%s", "socket": "%s"},
                         {"id": "b", "image": "%s", "socket": "%s", "queues": 1}],
                 "net": [{"id": "sw", "ports": [{"id": "p1", "kind": "stream", "path": "%s"}]}]}
                """.formatted(a, dir.resolve("a.sock"), b, dir.resolve("b.sock"), dir.resolve("p1.sock")));
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, 60_000);
                ChildProcess daemon = ChildProcess.builder(IovirtCli.command(
                                "daemon", "--config", config.toString(), "--control", control.toString()))
                        .name("iovirt daemon")
                        .log(dir.resolve("daemon.log"))
                        .env("NOTIFY_SOCKET", notify.toString())
                        .env("WATCHDOG_USEC", "500000")
                        .start()) {
            List<String> first = until(systemd, "READY=1");
            String ready = first.get(first.size() - 1);
            assertTrue(ready.contains("MAINPID=" + daemon.pid()), ready);
            // READY=1 means the control socket answers and the configured devices run
            try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                assertEquals(2, ((List<?>) c.call("blk.list", null)).size());
                assertEquals(
                        1, ((List<?>) ((Map<?, ?>) ((List<?>) c.call("net.list", null)).get(0)).get("ports")).size());
                c.call(
                        "blk.add",
                        Map.of(
                                "id",
                                "api",
                                "image",
                                image("c.raw").toString(),
                                "socket",
                                dir.resolve("c.sock").toString()));
            }
            until(systemd, "WATCHDOG=1");
            until(systemd, "WATCHDOG=1");

            // the file changes: a goes, b gets two queues, d is new, the switch gets a second port
            Path d = image("d.raw");
            Files.writeString(config, """
                    {"blk": [{"id": "b", "image": "%s", "socket": "%s", "queues": 2},
                             {"id": "d", "image": "%s", "socket": "%s"}],
                     "net": [{"id": "sw", "ports": [{"id": "p1", "kind": "stream", "path": "%s"},
                                                    {"id": "p2", "kind": "vhost-user", "path": "%s"}]}]}
                    """.formatted(
                            b,
                            dir.resolve("b.sock"),
                            d,
                            dir.resolve("d.sock"),
                            dir.resolve("p1.sock"),
                            dir.resolve("p2.sock")));
            signal("HUP", daemon.pid());
            until(systemd, "RELOADING=1");
            until(systemd, "READY=1");
            try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                List<String> ids = new ArrayList<>();
                for (Object o : (List<?>) c.call("blk.list", null)) {
                    ids.add((String) ((Map<?, ?>) o).get("id"));
                }
                assertEquals(
                        List.of("api", "b", "d"),
                        ids.stream().sorted().toList(),
                        "the API's export survives, a is gone, d is new");
                assertEquals(2L, ((Map<?, ?>) c.call("blk.info", Map.of("id", "b"))).get("queues"));
                assertEquals(
                        2, ((List<?>) ((Map<?, ?>) ((List<?>) c.call("net.list", null)).get(0)).get("ports")).size());
            }
            assertTrue(!Files.exists(dir.resolve("a.sock")), "a's socket remains");

            // a broken file changes nothing
            Files.writeString(config, "{\"blk\": [ {\"id\": ");
            signal("HUP", daemon.pid());
            until(systemd, "READY=1");
            try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                assertEquals(3, ((List<?>) c.call("blk.list", null)).size());
            }
            assertTrue(daemon.log().contains("the running configuration is unchanged"), daemon.log());

            signal("TERM", daemon.pid());
            until(systemd, "STOPPING=1");
            assertTrue(daemon.waitFor(Duration.ofSeconds(60)), "the daemon did not stop");
            assertEquals(0, daemon.exitValue(), daemon.log());
            assertTrue(!Files.exists(control), "the control socket remains");
        }
    }

    /**
     * NBD exports declared in the configuration file: served at start (qemu-io writes and reads through one), made
     * read-only by a reload (QEMU's client is refused the write), removed by the next one, while an export added
     * through the API survives both; the image is consistent for qemu-img afterwards.
     */
    @Test
    void nbdExportsFromTheConfigurationFile() throws Exception {
        Path notify = dir.resolve("notify.sock");
        Path control = dir.resolve("control.sock");
        Path config = dir.resolve("daemon.json");
        Path q = dir.resolve("q.qcow2");
        io.iovirt.storage.qcow2.QemuTools.ok("qemu-img", "create", "-q", "-f", "qcow2", q.toString(), "16M");
        Path sock = dir.resolve("q-nbd.sock");
        String entry = "{\"id\": \"q\", \"image\": \"%s\", \"socket\": \"%s\"%s}";
        Files.writeString(config, "{\"nbd\": [" + entry.formatted(q, sock, "") + "]}");
        String uri = "nbd+unix:///q?socket=" + sock;
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, 60_000);
                ChildProcess daemon = startDaemon(config, control, notify)) {
            until(systemd, "READY=1");
            io.iovirt.storage.qcow2.QemuTools.qemuIoOk(
                    uri, "raw", "write -P 0x6e 1M 256k", "read -P 0x6e 1M 256k", "flush");
            try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                c.call(
                        "nbd.add",
                        Map.of(
                                "id",
                                "api",
                                "image",
                                image("api.raw").toString(),
                                "socket",
                                dir.resolve("api.sock").toString()));
            }

            Files.writeString(config, "{\"nbd\": [" + entry.formatted(q, sock, ", \"readonly\": true") + "]}");
            signal("HUP", daemon.pid());
            until(systemd, "READY=1");
            var w = io.iovirt.storage.qcow2.QemuTools.run("qemu-io", "-f", "raw", "-c", "write 0 4k", uri);
            assertTrue(
                    w.output().contains("Operation not permitted")
                            || w.output().contains("read-only")
                            || w.output().contains("Permission denied"),
                    w.output());
            String r = io.iovirt.storage.qcow2.QemuTools.ok(
                    "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x6e 1M 256k", uri);
            assertTrue(!r.contains("Pattern verification failed"), r);

            Files.writeString(config, "{\"nbd\": []}");
            signal("HUP", daemon.pid());
            until(systemd, "READY=1");
            try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                List<?> list = (List<?>) c.call("nbd.list", null);
                assertEquals(1, list.size(), list.toString());
                assertEquals("api", ((Map<?, ?>) list.get(0)).get("id"));
            }
            assertTrue(!Files.exists(sock), "the removed export's socket remains");
            io.iovirt.storage.qcow2.QemuTools.qemuIoOk(
                    "nbd+unix:///api?socket=" + dir.resolve("api.sock"),
                    "raw",
                    "write -P 0x61 0 4k",
                    "read -P 0x61 0 4k");
            signal("TERM", daemon.pid());
            assertTrue(daemon.waitFor(Duration.ofSeconds(60)), "the daemon did not stop");
            assertEquals(0, daemon.exitValue(), daemon.log());
        }
        io.iovirt.storage.qcow2.QemuTools.check(q, false);
        io.iovirt.storage.qcow2.QemuTools.qemuIoOk(q, "qcow2", "read -P 0x6e 1M 256k");
    }

    /**
     * A port added through the API to a switch of the file survives reloads that would recreate the switch (its
     * mtu changed) or remove it: that part is refused and reported, the switch keeps running with the API's port
     * connected, and the rest of the file — its own ports — is applied. Once the API's port is gone, the next
     * reload applies the change.
     */
    @Test
    void aReloadKeepsASwitchWithPortsAddedThroughTheApi() throws Exception {
        Path notify = dir.resolve("notify.sock");
        Path control = dir.resolve("control.sock");
        Path config = dir.resolve("daemon.json");
        String port = "{\"id\": \"%s\", \"kind\": \"stream\", \"path\": \"%s\"}";
        String p1 = port.formatted("p1", dir.resolve("p1.sock"));
        String p2 = port.formatted("p2", dir.resolve("p2.sock"));
        String sw = "{\"net\": [{\"id\": \"sw\", \"mtu\": %d, \"ports\": [%s]}]}";
        Files.writeString(config, sw.formatted(1500, p1));
        Path apiSock = dir.resolve("api.sock");
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, 60_000);
                ChildProcess daemon = startDaemon(config, control, notify)) {
            until(systemd, "READY=1");
            RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30));
            c.call("net.port.add", Map.of("net", "sw", "id", "api", "kind", "stream", "path", apiSock.toString()));
            try (java.nio.channels.SocketChannel guest = java.nio.channels.SocketChannel.open(
                    java.net.UnixDomainSocketAddress.of(apiSock))) { // the API port's guest NIC
                io.iovirt.testing.Await.until(Duration.ofSeconds(60), "the API port's link up", daemon, () -> {
                    try {
                        return "up".equals(port(c, "sw", "api").get("link"));
                    } catch (Exception e) {
                        throw new AssertionError(e);
                    }
                });
                Files.writeString(config, sw.formatted(9000, p1 + ", " + p2));
                signal("HUP", daemon.pid());
                until(systemd, "RELOADING=1");
                until(systemd, "READY=1");
                Map<?, ?> net = (Map<?, ?>) ((List<?>) c.call("net.list", null)).get(0);
                assertEquals(1500L, net.get("mtu"), "not recreated");
                assertEquals(List.of("p1", "api", "p2"), portIds(net), "the file's new port is added");
                assertEquals("up", port(c, "sw", "api").get("link"));
                assertTrue(daemon.log().contains("switch 'sw' has ports added through the API (api)"), daemon.log());

                Files.writeString(config, "{}");
                signal("HUP", daemon.pid());
                until(systemd, "RELOADING=1");
                until(systemd, "READY=1");
                net = (Map<?, ?>) ((List<?>) c.call("net.list", null)).get(0);
                assertEquals(List.of("api"), portIds(net), "kept, without the file's ports");
                assertEquals("up", port(c, "sw", "api").get("link"));
                guest.configureBlocking(false);
                assertEquals(0, guest.read(java.nio.ByteBuffer.allocate(64)), "the guest's connection is open");
            }
            c.call("net.port.remove", Map.of("net", "sw", "id", "api"));
            Files.writeString(config, sw.formatted(9000, p1));
            signal("HUP", daemon.pid());
            until(systemd, "RELOADING=1");
            until(systemd, "READY=1");
            Map<?, ?> net = (Map<?, ?>) ((List<?>) c.call("net.list", null)).get(0);
            assertEquals(9000L, net.get("mtu"), "recreated now");
            assertEquals(List.of("p1"), portIds(net));
            c.close();
            signal("TERM", daemon.pid());
            assertTrue(daemon.waitFor(Duration.ofSeconds(60)), "the daemon did not stop");
            assertEquals(0, daemon.exitValue(), daemon.log());
        }
    }

    private static List<String> portIds(Map<?, ?> net) {
        List<String> ids = new ArrayList<>();
        for (Object p : (List<?>) net.get("ports")) {
            ids.add((String) ((Map<?, ?>) p).get("id"));
        }
        return ids;
    }

    private static Map<?, ?> port(RpcClient c, String net, String id) throws Exception {
        for (Object n : (List<?>) c.call("net.list", null)) {
            if (((Map<?, ?>) n).get("id").equals(net)) {
                for (Object p : (List<?>) ((Map<?, ?>) n).get("ports")) {
                    if (((Map<?, ?>) p).get("id").equals(id)) {
                        return (Map<?, ?>) p;
                    }
                }
            }
        }
        throw new AssertionError("no port " + net + "/" + id);
    }

    /**
     * A reload of a file whose values cannot be read — a path with a NUL character, a number whose exponent overflows
     * — is refused like any broken file: the daemon keeps running with the configuration it has, says why, and the
     * next good file is applied.
     */
    @Test
    void aReloadOfAnUnreadableFileKeepsTheDaemonRunning() throws Exception {
        Path notify = dir.resolve("notify.sock");
        Path control = dir.resolve("control.sock");
        Path config = dir.resolve("daemon.json");
        String entry = "{\"id\": \"%s\", \"image\": \"%s\", \"socket\": \"%s\"}";
        String n1 = entry.formatted("n1", image("n1.raw"), dir.resolve("n1.sock"));
        Files.writeString(config, "{\"nbd\": [" + n1 + "]}");
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, 60_000);
                ChildProcess daemon = startDaemon(config, control, notify)) {
            until(systemd, "READY=1");
            String nul = entry.formatted("n2", dir + "/n2\\u0000.raw", dir.resolve("n2.sock"));
            String huge = "{\"id\": \"sw\", \"mtu\": 1e99999999999}";
            List<String> why = List.of("is not a valid path", "number out of range");
            List<String> files =
                    List.of("{\"nbd\": [" + n1 + ", " + nul + "]}", "{\"nbd\": [" + n1 + "], \"net\": [" + huge + "]}");
            for (int i = 0; i < files.size(); i++) {
                Files.writeString(config, files.get(i));
                signal("HUP", daemon.pid());
                until(systemd, "READY=1");
                try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                    List<?> list = (List<?>) c.call("nbd.list", null);
                    assertEquals(1, list.size(), list.toString());
                    assertEquals("n1", ((Map<?, ?>) list.get(0)).get("id"));
                    assertTrue(((List<?>) c.call("net.list", null)).isEmpty());
                }
                String log = daemon.log();
                assertTrue(log.contains(why.get(i)) && log.contains("the running configuration is unchanged"), log);
            }
            String n3 = entry.formatted("n3", image("n3.raw"), dir.resolve("n3.sock"));
            Files.writeString(config, "{\"nbd\": [" + n3 + "]}");
            signal("HUP", daemon.pid());
            until(systemd, "READY=1");
            try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                List<?> list = (List<?>) c.call("nbd.list", null);
                assertEquals(1, list.size(), list.toString());
                assertEquals("n3", ((Map<?, ?>) list.get(0)).get("id"));
            }
            signal("TERM", daemon.pid());
            assertTrue(daemon.waitFor(Duration.ofSeconds(60)), "the daemon did not stop");
            assertEquals(0, daemon.exitValue(), daemon.log());
        }
    }

    static void signal(String sig, long pid) throws Exception {
        assertEquals(
                0,
                new ProcessBuilder("kill", "-" + sig, Long.toString(pid))
                        .start()
                        .waitFor());
    }

    /**
     * Every unit file in packaging/systemd (what scripts/package.sh ships) passes systemd's own checker, with ExecStart
     * pointed at this checkout; templates are checked as instance "vm1", side by side so that references between
     * them (the standby pair's target and members) resolve.
     */
    @Test
    void unitFilesVerify() throws Exception {
        assertTrue(
                Files.isExecutable(Path.of("/usr/bin/systemd-analyze")),
                "systemd-analyze is missing (Debian package systemd)");
        Path launcher = Path.of("iovirt").toAbsolutePath();
        List<String> cmd = new ArrayList<>(List.of("systemd-analyze", "verify", "--man=no"));
        List<String> units;
        try (var files = Files.list(Path.of("packaging/systemd"))) {
            units = files.map(f -> f.getFileName().toString())
                    .filter(n -> n.matches(".*\\.(service|socket|path|target)"))
                    .sorted()
                    .toList();
        }
        for (String unit : List.of(
                "iovirt.service",
                "iovirt-blk@.service",
                "iovirt-blk-standby@.target",
                "iovirt-blk-standby-a@.service",
                "iovirt-blk-standby-b@.service")) {
            assertTrue(units.contains(unit), unit + " is missing from packaging/systemd: " + units);
        }
        for (String unit : units) {
            String text = Files.readString(Path.of("packaging/systemd", unit))
                    .replace("/usr/bin/iovirt", launcher.toString());
            Path copy = dir.resolve(unit.replace("@.", "@vm1."));
            Files.writeString(copy, text);
            cmd.add(copy.toString());
        }
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, java.util.concurrent.TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), out);
        assertEquals("", out.trim(), "systemd-analyze verify complains");
    }
}
