// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.VhostUserFrontend;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code iovirt daemon --state FILE}: devices added through the control API survive a restart. Each test runs the
 * real daemon as a child process, changes its devices over the control socket, kills it (SIGKILL, as a crash before
 * systemd's Restart=) or stops it, starts it again on the same state file and checks with real peers — a vhost-user
 * frontend reading the disks' and NICs' configuration, qemu-io over NBD, a stream NIC's link — that they are back.
 */
@Timeout(300)
class DaemonStateTest {
    private static final Duration START = Duration.ofSeconds(120);

    @TempDir
    Path dir;

    private int starts;

    Path image(String name, long size) throws Exception {
        Path f = dir.resolve(name);
        try (RandomAccessFile r = new RandomAccessFile(f.toFile(), "rw")) {
            r.setLength(size);
        }
        return f;
    }

    private Path state() {
        return dir.resolve("lib/daemon-state.json");
    }

    private Path control() {
        return dir.resolve("control.sock");
    }

    /** The daemon with --config (a switch "lan" with one port) and --state, as iovirt.service runs it. */
    private ChildProcess.Builder daemon(Path control) throws Exception {
        return daemon(control, state());
    }

    /** The daemon with --state {@code stateArg} (a name for the file {@link #state()}, say). */
    private ChildProcess.Builder daemon(Path control, Path stateArg) throws Exception {
        Files.createDirectories(state().getParent());
        Path config = dir.resolve("daemon.json");
        if (!Files.exists(config)) {
            Files.writeString(config, """
                    {"net": [{"id": "lan", "ports": [{"id": "cfg", "kind": "stream", "path": "%s"}]}]}
                    """.formatted(dir.resolve("cfg.sock")));
        }
        return ChildProcess.builder(IovirtCli.command(
                        "daemon",
                        "--config",
                        config.toString(),
                        "--state",
                        stateArg.toString(),
                        "--control",
                        control.toString()))
                .name("iovirt daemon")
                .log(dir.resolve("daemon-" + ++starts + ".log"));
    }

    private ChildProcess start() throws Exception {
        return daemon(control()).startListening(control(), START);
    }

    private static Map<?, ?> call(RpcClient c, String method, Object... kv) throws Exception {
        Map<String, Object> params = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            params.put((String) kv[i], kv[i + 1]);
        }
        Object r = c.call(method, params);
        return r instanceof Map<?, ?> m ? m : Map.of("list", r);
    }

    private static List<?> list(RpcClient c, String method) throws Exception {
        return (List<?>) c.call(method, Map.of());
    }

    private static List<String> ids(List<?> entries) {
        List<String> ids = new ArrayList<>();
        for (Object e : entries) {
            ids.add((String) ((Map<?, ?>) e).get("id"));
        }
        return ids;
    }

    private static Map<?, ?> byId(List<?> entries, String id) {
        for (Object e : entries) {
            if (id.equals(((Map<?, ?>) e).get("id"))) {
                return (Map<?, ?>) e;
            }
        }
        throw new AssertionError("no " + id + " in " + entries);
    }

    /** What a vhost-user frontend reads from a disk: its capacity (sectors) and whether it offers VIRTIO_BLK_F_RO. */
    private static long[] blkAsSeenByAFrontend(Path socket) throws Exception {
        try (VhostUserFrontend fe = VhostUserFrontend.connect(socket, Duration.ofSeconds(10))) {
            long features = fe.getFeatures();
            fe.setProtocolFeatures(fe.getProtocolFeatures() & Features.CORE_PROTOCOL_FEATURES);
            ByteBuffer cfg = ByteBuffer.wrap(fe.getConfig(0, 36)).order(ByteOrder.LITTLE_ENDIAN);
            return new long[] {cfg.getLong(0), (features >>> 5) & 1};
        }
    }

    /** The MAC a vhost-user NIC's frontend reads from its configuration space. */
    private static String macAsSeenByAFrontend(Path socket) throws Exception {
        try (VhostUserFrontend fe = VhostUserFrontend.connect(socket, Duration.ofSeconds(10))) {
            fe.setProtocolFeatures(fe.getProtocolFeatures() & Features.CORE_PROTOCOL_FEATURES);
            byte[] cfg = fe.getConfig(0, 6);
            return io.iovirt.net.Mac.toString(io.iovirt.net.Mac.read(java.lang.foreign.MemorySegment.ofArray(cfg), 0));
        }
    }

    /**
     * A disk (resized, and one switched read-only), a switch with a vhost-user port, a port on the configuration
     * file's switch and an NBD export, all added through the API; SIGKILL; the same command again: every one is back
     * with origin api, served on its socket as before (a frontend reads the new size, the read-only flag and the
     * port's MAC; qemu-io reads what it wrote over NBD; the stream port's link comes up). Then some are removed and
     * the daemon stopped as systemctl restart does: at the next start those are gone and the others still there.
     */
    @Test
    void devicesAddedThroughTheApiSurviveASigkillAndRemovalsStay() throws Exception {
        Path d1 = dir.resolve("d1.sock");
        Path d2 = dir.resolve("d2.sock");
        Path p1 = dir.resolve("p1.sock");
        Path api = dir.resolve("api.sock");
        Path n1 = dir.resolve("n1.sock");
        String nbd = "nbd+unix:///n1?socket=" + n1;
        try (ChildProcess first = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            call(c, "blk.add", "id", "d1", "image", image("d1.raw", 1 << 20).toString(), "socket", d1.toString());
            call(c, "blk.resize", "id", "d1", "size", "2M");
            call(c, "blk.add", "id", "d2", "image", image("d2.raw", 1 << 20).toString(), "socket", d2.toString());
            call(c, "blk.set-readonly", "id", "d2", "readonly", true);
            call(c, "net.add", "id", "sw", "mtu", 9000);
            call(
                    c,
                    "net.port.add",
                    "net",
                    "sw",
                    "id",
                    "p1",
                    "kind",
                    "vhost-user",
                    "path",
                    p1.toString(),
                    "mac",
                    "52:54:00:12:34:56");
            call(c, "net.port.add", "net", "lan", "id", "api", "kind", "stream", "path", api.toString());
            call(c, "nbd.add", "id", "n1", "image", image("n1.raw", 1 << 20).toString(), "socket", n1.toString());
            QemuTools.qemuIoOk(nbd, "raw", "write -P 0x5a 64k 64k", "flush");

            // the file: the configuration file's shape, only the API's devices, readable as such
            Map<?, ?> saved = (Map<?, ?>) JsonParser.parse(Files.readString(state()));
            assertEquals(List.of("d1", "d2"), ids((List<?>) saved.get("blk")), saved.toString());
            assertEquals(false, byId((List<?>) saved.get("blk"), "d2").get("readonly"), "opened writable");
            assertEquals(true, byId((List<?>) saved.get("blk"), "d2").get("readonly-now"), "switched read-only");
            assertFalse(byId((List<?>) saved.get("blk"), "d1").containsKey("readonly-now"), saved.toString());
            assertEquals(List.of("n1"), ids((List<?>) saved.get("nbd")));
            assertEquals(List.of("sw"), ids((List<?>) saved.get("net")), "not the file's switch lan");
            assertEquals(List.of("api"), ids((List<?>) saved.get("ports")));
            assertEquals("lan", ((Map<?, ?>) ((List<?>) saved.get("ports")).get(0)).get("net"));
            assertEquals(
                    "rw-------",
                    java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(state())));
            first.kill(); // SIGKILL: no orderly stop, the sockets' files stay behind
            assertFalse(first.isAlive());
        }

        try (ChildProcess second = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            List<?> blks = list(c, "blk.list");
            assertEquals(List.of("d1", "d2"), ids(blks), second.log());
            for (String id : List.of("d1", "d2")) {
                assertEquals("api", call(c, "blk.info", "id", id).get("origin"));
            }
            assertArrayEquals(new long[] {(2 << 20) / 512, 0}, blkAsSeenByAFrontend(d1), "d1: resized, writable");
            assertArrayEquals(new long[] {(1 << 20) / 512, 1}, blkAsSeenByAFrontend(d2), "d2: read-only");
            Map<?, ?> sw = byId(list(c, "net.list"), "sw");
            assertEquals(9000L, sw.get("mtu"));
            assertEquals(List.of("p1"), ids((List<?>) sw.get("ports")));
            assertEquals("52:54:00:12:34:56", macAsSeenByAFrontend(p1));
            assertEquals(List.of("cfg", "api"), ids((List<?>)
                    byId(list(c, "net.list"), "lan").get("ports")));
            try (java.nio.channels.SocketChannel guest =
                    java.nio.channels.SocketChannel.open(java.net.UnixDomainSocketAddress.of(api))) {
                io.iovirt.testing.Await.until(Duration.ofSeconds(60), "lan/api's link up", second, () -> {
                    try {
                        return "up"
                                .equals(byId(
                                                (List<?>) byId(list(c, "net.list"), "lan")
                                                        .get("ports"),
                                                "api")
                                        .get("link"));
                    } catch (Exception e) {
                        throw new AssertionError(e);
                    }
                });
            }
            assertEquals(List.of("n1"), ids(list(c, "nbd.list")));
            String r = QemuTools.qemuIoOk(nbd, "raw", "read -P 0x5a 64k 64k");
            assertFalse(r.contains("Pattern verification failed"), r);

            call(c, "blk.remove", "id", "d2");
            call(c, "nbd.remove", "id", "n1");
            call(c, "net.port.remove", "net", "lan", "id", "api");
            second.stop(Duration.ofSeconds(60)); // SIGTERM, as systemctl restart: the stop itself removes nothing
            assertEquals(0, second.exitValue(), second.log());
        }

        try (ChildProcess third = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertEquals(List.of("d1"), ids(list(c, "blk.list")), third.log());
            assertEquals(List.of(), list(c, "nbd.list"));
            assertEquals(List.of("cfg"), ids((List<?>)
                    byId(list(c, "net.list"), "lan").get("ports")));
            assertEquals(List.of("p1"), ids((List<?>)
                    byId(list(c, "net.list"), "sw").get("ports")));
            assertFalse(Files.exists(n1), "the removed export's socket");
            assertArrayEquals(new long[] {(2 << 20) / 512, 0}, blkAsSeenByAFrontend(d1));
        }
    }

    /** A state file that is not valid JSON stops the daemon with the file named and what to do; it is kept. */
    @Test
    void aCorruptStateFileStopsTheDaemonAndIsKept() throws Exception {
        Files.createDirectories(state().getParent());
        byte[] broken = ("{\"blk\": [{\"id\": \"d1\", \"image\": \"" + image("d1.raw", 1 << 20) + "\",")
                .getBytes(java.nio.charset.StandardCharsets.UTF_8);
        Files.write(state(), broken);
        try (ChildProcess d = daemon(control()).start()) {
            assertTrue(d.waitFor(START), "the daemon runs on a corrupt state file");
            String log = d.log();
            assertTrue(d.exitValue() != 0, log);
            assertTrue(log.contains("state file " + state() + " is not valid JSON"), log);
            assertTrue(log.contains("left the file as it is") && log.contains(".broken"), log);
        }
        assertArrayEquals(broken, Files.readAllBytes(state()), "the state file was changed");
        assertFalse(Files.exists(dir.resolve("d1.sock")), "something started");
    }

    /**
     * A second daemon on the same state file is refused before it starts anything, naming the first (its pid); the
     * first keeps serving, and its file still lists its devices.
     */
    @Test
    void aSecondDaemonOnTheSameStateFileIsRefused() throws Exception {
        try (ChildProcess first = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            Path d1 = dir.resolve("d1.sock");
            call(c, "blk.add", "id", "d1", "image", image("d1.raw", 1 << 20).toString(), "socket", d1.toString());
            String saved = Files.readString(state());
            try (ChildProcess second = daemon(dir.resolve("control2.sock")).start()) {
                assertTrue(second.waitFor(START), "a second daemon runs on the same state file");
                String log = second.log();
                assertTrue(second.exitValue() != 0, log);
                assertTrue(log.contains("state file " + state() + " is in use by pid " + first.pid()), log);
                assertTrue(log.contains("give this one a --state of its own"), log);
            }
            assertEquals(saved, Files.readString(state()));
            assertEquals(List.of("d1"), ids(list(c, "blk.list")));
            assertArrayEquals(new long[] {(1 << 20) / 512, 0}, blkAsSeenByAFrontend(d1));
        }
    }

    /**
     * A state file that cannot be written fails the request that changed the devices, saying that the change runs
     * but is not saved; the next change that can be saved writes everything that runs.
     */
    @Test
    void aWriteThatFailsFailsTheRequestAndTheNextOneSavesEverything() throws Exception {
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            // a directory where the file goes: renaming the new file over it fails (also for root)
            Files.createDirectories(state().resolve("in-the-way"));
            RpcClient.RemoteError e = assertThrows(
                    RpcClient.RemoteError.class,
                    () -> call(
                            c,
                            "blk.add",
                            "id",
                            "d1",
                            "image",
                            image("d1.raw", 1 << 20).toString(),
                            "socket",
                            dir.resolve("d1.sock").toString()));
            assertEquals((long) RpcException.FAILED, e.code());
            assertTrue(e.getMessage().contains("blk.add was done ({\"id\":\"d1\"}) but is not saved"), e.getMessage());
            assertTrue(e.getMessage().contains("cannot write state file " + state()), e.getMessage());
            assertEquals(List.of("d1"), ids(list(c, "blk.list")), "the change runs");

            Files.delete(state().resolve("in-the-way"));
            Files.delete(state());
            call(c, "blk.set-readonly", "id", "d1", "readonly", false);
            Map<?, ?> saved = (Map<?, ?>) JsonParser.parse(Files.readString(state()));
            assertEquals(List.of("d1"), ids((List<?>) saved.get("blk")));
            try (var left = Files.list(state().getParent())) {
                assertEquals(
                        List.of("daemon-state.json", "daemon-state.json.lock"),
                        left.map(p -> p.getFileName().toString()).sorted().toList(),
                        "temporary files left behind");
            }
        }
    }

    private void addBlk(RpcClient c, String id, Path image) throws Exception {
        call(
                c,
                "blk.add",
                "id",
                id,
                "image",
                image.toString(),
                "socket",
                dir.resolve(id + ".sock").toString());
    }

    private static List<String> sorted(List<String> l) {
        return l.stream().sorted().toList();
    }

    private List<String> savedBlks() throws Exception {
        return ids((List<?>) ((Map<?, ?>) JsonParser.parse(Files.readString(state()))).get("blk"));
    }

    /**
     * An entry that cannot start (its image is gone) is reported and the others start; the file is not rewritten at
     * start, and later writes carry the entry forward until its image is back and it starts again.
     */
    @Test
    void anEntryThatFailsAtStartIsReportedAndCarriedForward() throws Exception {
        Path gone = image("gone.raw", 1 << 20);
        Path moved = dir.resolve("moved.raw");
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            addBlk(c, "ok", image("ok.raw", 1 << 20));
            addBlk(c, "gone", gone);
            d.kill();
        }
        Files.move(gone, moved); // an image on a file system not mounted yet
        String before = Files.readString(state());
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertEquals(List.of("ok"), ids(list(c, "blk.list")));
            assertTrue(d.log().contains("did not start: [blk gone: "), d.log());
            assertEquals(before, Files.readString(state()), "rewritten at start");
            call(c, "net.add", "id", "sw");
            assertEquals(List.of("ok", "gone"), savedBlks(), "the entry that did not start is carried forward");
            Map<?, ?> saved = (Map<?, ?>) JsonParser.parse(Files.readString(state()));
            assertEquals(List.of("sw"), ids((List<?>) saved.get("net")));
            d.stop(Duration.ofSeconds(60));
        }
        Files.move(moved, gone);
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertEquals(List.of("ok", "gone"), ids(list(c, "blk.list")), d.log());
            assertArrayEquals(new long[] {(1 << 20) / 512, 0}, blkAsSeenByAFrontend(dir.resolve("gone.sock")));
        }
    }

    /**
     * Two restarts, each with a different entry failing, and a change through the API after each: neither entry is
     * lost — both run once their images are back. An entry only the file carries is removed from it by the API's
     * remove, and one re-added through the API with its id is the API's.
     */
    @Test
    void entriesFailingAtDifferentStartsAreAllKeptAndCanBeRemovedOrReplaced() throws Exception {
        Path a = image("a.raw", 1 << 20);
        Path b = image("b.raw", 1 << 20);
        Path c3 = image("c.raw", 1 << 20);
        Path away = dir.resolve("away");
        Files.createDirectories(away);
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            addBlk(c, "a", a);
            addBlk(c, "b", b);
            addBlk(c, "c", c3);
            d.kill();
        }
        Files.move(a, away.resolve("a.raw"));
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertEquals(List.of("b", "c"), ids(list(c, "blk.list")), d.log());
            call(c, "net.add", "id", "sw1");
            d.kill();
        }
        Files.move(away.resolve("a.raw"), a);
        Files.move(b, away.resolve("b.raw"));
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertEquals(List.of("a", "c"), sorted(ids(list(c, "blk.list"))), d.log());
            call(c, "net.add", "id", "sw2");
            assertEquals(List.of("a", "b", "c"), sorted(savedBlks()));
            d.kill();
        }
        Files.move(away.resolve("b.raw"), b);
        Files.move(c3, away.resolve("c.raw"));
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertEquals(List.of("a", "b"), sorted(ids(list(c, "blk.list"))), d.log());
            Map<?, ?> r = call(c, "blk.remove", "id", "c");
            assertEquals(true, r.get("removed"));
            assertTrue(((String) r.get("notice")).contains("removed from the state file"), r.toString());
            assertEquals(List.of("a", "b"), sorted(savedBlks()), "removed from the file");
            RpcClient.RemoteError e = assertThrows(RpcClient.RemoteError.class, () -> call(c, "blk.remove", "id", "c"));
            assertEquals((long) RpcException.NOT_FOUND, e.code());
            // a carried entry replaced by a device the API adds with its id
            call(c, "blk.remove", "id", "a");
            Files.move(b, away.resolve("b.raw"));
            d.kill();
        }
        try (ChildProcess d = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertEquals(List.of(), ids(list(c, "blk.list")), d.log());
            Path other = image("other.raw", 2 << 20);
            addBlk(c, "b", other);
            Map<?, ?> saved = (Map<?, ?>) JsonParser.parse(Files.readString(state()));
            assertEquals(List.of("b"), ids((List<?>) saved.get("blk")));
            assertEquals(other.toString(), byId((List<?>) saved.get("blk"), "b").get("image"), "the API's wins");
        }
    }

    /**
     * A request that finishes while the daemon stops (a blk.remove, net.port.remove or blk.set-readonly slower than
     * the control socket's 10 s wait) writes nothing: the stop empties the registry without removing anything, so
     * such a write would record every device as removed; and once the file's lock is let go, nothing writes it, not
     * even a daemon that still runs. Driven step by step in the test's process — the stop, then the late request's
     * write — as making a real request outlast that wait on purpose takes a stalled file system.
     */
    @Test
    void aRequestFinishingDuringTheStopWritesNothing() throws Exception {
        Files.createDirectories(state().getParent());
        Path image = image("d1.raw", 1 << 20);
        String saved;
        try (StateFile s = StateFile.open(state());
                Daemon d = new Daemon(null)) {
            s.restore(d, s.read(d));
            d.state(s);
            d.call(
                    "blk.add",
                    Map.of(
                            "id",
                            "d1",
                            "image",
                            image.toString(),
                            "socket",
                            dir.resolve("d1.sock").toString()));
            saved = Files.readString(state());
            assertEquals(List.of("d1"), ids((List<?>) ((Map<?, ?>) JsonParser.parse(saved)).get("blk")));
            d.close(); // the stop: the registry is emptied
            assertFalse(s.save(d)); // what the late request's write does
            assertEquals(saved, Files.readString(state()), "the stop was saved as the removal of every device");
        }
        try (StateFile s = StateFile.open(state());
                Daemon d = new Daemon(null)) {
            s.restore(d, s.read(d));
            d.state(s);
            assertEquals(
                    List.of("d1"), d.blkExports().stream().map(e -> e.spec.id()).toList());
            s.close(); // the lock is let go: the file may be a successor's now
            RpcException e = assertThrows(RpcException.class, () -> d.call("blk.remove", Map.of("id", "d1")));
            assertTrue(
                    e.getMessage().contains("blk.remove was done")
                            && e.getMessage().contains("not saved"),
                    e.getMessage());
            assertEquals(saved, Files.readString(state()), "written after the lock was let go");
        }
    }

    /**
     * A disk added writable and switched read-only through the API comes back read-only — and still switchable:
     * blk.set-readonly false works after the restart, a frontend sees it writable and the image takes a write (a
     * resize grows it). It is opened as it was added, and switched read-only before its socket serves.
     */
    @Test
    void aDiskSwitchedReadOnlyComesBackSwitchableToWritable() throws Exception {
        Path d1 = dir.resolve("d1.sock");
        Path image = image("d1.raw", 1 << 20);
        try (ChildProcess first = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            call(c, "blk.add", "id", "d1", "image", image.toString(), "socket", d1.toString());
            call(c, "blk.set-readonly", "id", "d1", "readonly", true);
            first.kill();
        }
        try (ChildProcess second = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertArrayEquals(new long[] {(1 << 20) / 512, 1}, blkAsSeenByAFrontend(d1), "read-only after the restart");
            call(c, "blk.set-readonly", "id", "d1", "readonly", false);
            assertArrayEquals(new long[] {(1 << 20) / 512, 0}, blkAsSeenByAFrontend(d1), "writable again");
            call(c, "blk.resize", "id", "d1", "size", "2M");
            assertEquals(2 << 20, Files.size(image), "the image took the write");
            Map<?, ?> saved = (Map<?, ?>) JsonParser.parse(Files.readString(state()));
            assertFalse(byId((List<?>) saved.get("blk"), "d1").containsKey("readonly-now"), saved.toString());
        }
    }

    /**
     * A port the API added to a switch of the configuration file survives that switch leaving the file: a reload that
     * drops it keeps it running (it has an API port), and at the next start the switch is created as the port's
     * entry recorded it — as a switch of the API, its MTU kept — with the port on it.
     */
    @Test
    void apiPortsOnASwitchTheConfigurationNoLongerListsComeBackWithTheirSwitch() throws Exception {
        Path api = dir.resolve("api.sock");
        Path config = dir.resolve("daemon.json");
        Files.writeString(config, """
                {"net": [{"id": "lan", "mtu": 4000, "ports": [{"id": "cfg", "kind": "stream", "path": "%s"}]}]}
                """.formatted(dir.resolve("cfg.sock")));
        try (ChildProcess first = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            call(c, "net.port.add", "net", "lan", "id", "api", "kind", "stream", "path", api.toString());
            Files.writeString(config, "{}\n");
            assertThrows(RpcClient.RemoteError.class, () -> call(c, "reload"), "lan has an API port: kept");
            assertEquals(List.of("api"), ids((List<?>)
                    byId(list(c, "net.list"), "lan").get("ports")));
            first.kill();
        }
        try (ChildProcess second = start();
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            Map<?, ?> lan = byId(list(c, "net.list"), "lan");
            assertEquals(List.of("api"), ids((List<?>) lan.get("ports")), second.log());
            assertEquals(4000L, lan.get("mtu"));
            call(c, "net.add", "id", "sw");
            Map<?, ?> saved = (Map<?, ?>) JsonParser.parse(Files.readString(state()));
            assertEquals(List.of("lan", "sw"), ids((List<?>) saved.get("net")), "lan is the API's now");
            assertEquals(List.of(), saved.get("ports"));
        }
    }

    /**
     * Two names for one state file — a symbolic link to it, and a path through a linked directory — are one file:
     * the second daemon is refused, naming the first; and a temporary file a crash left beside the file (not beside
     * the link) is removed at start.
     */
    @Test
    void aStateFileReachedThroughLinksIsStillOwnedByOneDaemon() throws Exception {
        Files.createDirectories(state().getParent());
        Path link = dir.resolve("state-link.json");
        Files.createSymbolicLink(link, state()); // to a file not created yet
        Path linkedDir = dir.resolve("lib-link");
        Files.createSymbolicLink(linkedDir, state().getParent());
        Path leftover = state().resolveSibling(state().getFileName() + ".iovirt-tmp-1-2");
        Files.writeString(leftover, "{");
        try (ChildProcess first = daemon(control(), link).startListening(control(), START);
                RpcClient c = RpcClient.connect(control(), Duration.ofSeconds(30))) {
            assertFalse(Files.exists(leftover), "the crash's temporary file beside the file");
            addBlk(c, "d1", image("d1.raw", 1 << 20));
            assertTrue(Files.isSymbolicLink(link), "the link was replaced");
            assertEquals(List.of("d1"), savedBlks());
            try (ChildProcess second = daemon(dir.resolve("control2.sock"), linkedDir.resolve(state().getFileName()))
                    .start()) {
                assertTrue(second.waitFor(START), "a second daemon runs on the same state file");
                String log = second.log();
                assertTrue(second.exitValue() != 0, log);
                assertTrue(log.contains("is in use by pid " + first.pid()), log);
            }
            assertEquals(List.of("d1"), ids(list(c, "blk.list")));
        }
    }

    /**
     * A state directory that others can write and that belongs to another user is refused at start, saying why and
     * what to do ({@code --state /} too, with a message rather than a crash); nothing starts.
     */
    @Test
    void aStateDirectoryOthersCanWriteOrNoFileIsRefused() throws Exception {
        io.iovirt.testing.Require.that(
                io.iovirt.linux.SocketAccess.ownUid() == 0, "root (the test chowns a directory)");
        Path shared = dir.resolve("shared");
        Files.createDirectories(shared);
        Files.setAttribute(shared, "unix:mode", 01777); // as /tmp
        Path foreign = dir.resolve("foreign");
        Files.createDirectories(foreign);
        Files.setPosixFilePermissions(foreign, java.nio.file.attribute.PosixFilePermissions.fromString("rwx------"));
        Files.setAttribute(foreign, "unix:uid", 65534);
        for (String[] c : new String[][] {
            {"shared", "(mode rwxrwxrwx, uid 0)"}, // sticky as /tmp: the names can still be taken first
            {"foreign", "(mode rwx------, uid 65534)"}
        }) {
            Path d0 = dir.resolve(c[0]);
            try (ChildProcess d = daemon(control(), d0.resolve("state.json")).start()) {
                assertTrue(d.waitFor(START), "the daemon runs on state directory " + c[0]);
                String log = d.log();
                assertTrue(d.exitValue() != 0, log);
                assertTrue(log.contains("its directory " + d0 + " " + c[1] + " can be written by others"), log);
                assertTrue(log.contains("StateDirectory=iovirt"), log);
            }
            assertFalse(Files.exists(d0.resolve("state.json.lock")), "its lock file was made in " + c[0]);
        }
        try (ChildProcess d = daemon(control(), Path.of("/")).start()) {
            assertTrue(d.waitFor(START), "the daemon runs with --state /");
            String log = d.log();
            assertTrue(d.exitValue() != 0, log);
            assertTrue(log.contains("--state /: names a directory, not a file"), log);
            assertFalse(log.contains("NullPointerException"), log);
        }
    }
}
