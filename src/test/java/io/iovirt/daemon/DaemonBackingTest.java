// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static io.iovirt.storage.qcow2.QemuTools.ok;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The configuration file's daemon-wide {@code backing} key: checked with the rest of the file (nothing applied when
 * it is wrong), applied before the file's devices open and to the API's adds after it, and followed by a reload both
 * ways. Before, the key was refused as unknown and the daemon opened whatever backing file an image named.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img: Failsafe
class DaemonBackingTest {
    @TempDir
    Path dir;

    Daemon daemon;
    RpcServer server;
    RpcClient client;
    Path bases;
    Path outside;
    Path evil;
    Path good;

    @BeforeEach
    void start() throws Exception {
        Require.program("qemu-img", "apt-get install qemu-utils");
        daemon = new Daemon(null);
        server = RpcServer.start(dir.resolve("control.sock"), daemon);
        client = RpcClient.connect(server.path(), Duration.ofSeconds(30));
        bases = Files.createDirectories(dir.resolve("bases"));
        outside = Files.createDirectories(dir.resolve("outside"));
        Path tenant = Files.createDirectories(dir.resolve("tenant"));
        Files.write(outside.resolve("secret.raw"), new byte[1 << 20]);
        Files.write(bases.resolve("base.raw"), new byte[1 << 20]);
        evil = tenant.resolve("evil.qcow2");
        good = tenant.resolve("good.qcow2");
        ok(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                outside.resolve("secret.raw").toString(),
                "-F",
                "raw",
                evil.toString(),
                "1M");
        ok(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                bases.resolve("base.raw").toString(),
                "-F",
                "raw",
                good.toString(),
                "1M");
    }

    @AfterEach
    void stop() {
        client.close();
        server.close();
        daemon.close();
    }

    private Path config(String backing, String devices) throws IOException {
        Path f = dir.resolve("daemon.json");
        Files.writeString(f, """
                {%s
                 "nbd": [{"id": "evil", "image": "%s", "socket": "%s", "readonly": true},
                         {"id": "good", "image": "%s", "socket": "%s", "readonly": true}],
                 "blk": [{"id": "evil-blk", "image": "%s", "socket": "%s", "readonly": true}]%s}
                """.formatted(
                        backing == null ? "" : "\"backing\": " + backing + ",",
                        evil,
                        dir.resolve("evil.sock"),
                        good,
                        dir.resolve("good.sock"),
                        evil,
                        dir.resolve("evil-blk.sock"),
                        devices));
        return f;
    }

    private Object nbdAdd(String id, Path image) throws Exception {
        Map<String, Object> p = new LinkedHashMap<>();
        p.put("id", id);
        p.put("image", image.toString());
        p.put("socket", dir.resolve(id + ".sock").toString());
        p.put("readonly", true);
        return client.call("nbd.add", p);
    }

    @Test
    void theKeyConfinesTheFilesDevicesAndTheApisAddsAndAReloadFollowsIt() throws Exception {
        Path f = config("{\"dirs\": [\"" + bases + "\"]}", "");
        ConfigFile.Outcome o = ConfigFile.apply(daemon, ConfigFile.read(f, daemon));
        assertEquals(List.of("nbd good"), o.added(), o.toString());
        assertEquals(List.of("backing"), o.changed(), o.toString());
        assertEquals(2, o.failed().size(), o.toString());
        for (String failed : o.failed()) {
            assertTrue(
                    failed.contains("backing file " + outside.resolve("secret.raw") + " of " + evil
                            + " is outside the allowed backing directories " + bases.toRealPath()),
                    failed);
            // the daemon has no --backing-dir: its remedy names the configuration key
            assertTrue(failed.contains("backing.dirs") && !failed.contains("--backing"), failed);
        }
        RpcClient.RemoteError e = assertThrows(RpcClient.RemoteError.class, () -> nbdAdd("api", evil));
        assertTrue(e.getMessage().contains("outside the allowed backing directories"), e.getMessage());

        // a reload without the key: QEMU's behaviour again, for the file's entries and the API's
        o = ConfigFile.apply(daemon, ConfigFile.read(config(null, ""), daemon));
        assertEquals(List.of("backing"), o.changed(), o.toString());
        assertEquals(
                List.of("blk evil-blk", "nbd evil"), o.added().stream().sorted().toList(), o.toString());
        assertEquals(List.of(), o.failed(), o.toString());
        nbdAdd("api", evil);
        client.call("nbd.remove", Map.of("id", "api"));
        // and with it again: what is open stays open, the next open is refused
        o = ConfigFile.apply(daemon, ConfigFile.read(config("{\"dirs\": [\"" + bases + "\"]}", ""), daemon));
        assertEquals(List.of("backing"), o.changed(), o.toString());
        assertEquals(List.of(), o.failed(), o.toString());
        e = assertThrows(RpcClient.RemoteError.class, () -> nbdAdd("api", evil));
        assertTrue(e.getMessage().contains("outside the allowed backing directories"), e.getMessage());
        // unchanged: no change reported
        o = ConfigFile.apply(daemon, ConfigFile.read(config("{\"dirs\": [\"" + bases + "\"]}", ""), daemon));
        assertEquals(List.of(), o.changed(), o.toString());
    }

    @Test
    void theKeyIsCheckedWithTheFile() throws Exception {
        Map<String, String> bad = new LinkedHashMap<>();
        bad.put("{\"dir\": [\"/\"]}", "unknown parameter 'dir' (known: devices, dirs)");
        bad.put("{\"dirs\": [\"relative/dir\"]}", "backing.dirs[0] 'relative/dir' is relative");
        bad.put("{\"dirs\": [\"rel\\nFORGED\"]}", "backing.dirs[0] 'rel\\nFORGED' is relative"); // not a new line
        bad.put("{\"dirs\": [\"" + dir.resolve("missing") + "\"]}", "does not exist");
        bad.put("{\"dirs\": [\"" + evil + "\"]}", "is not a directory");
        bad.put("{\"dirs\": \"/srv\"}", "\"backing.dirs\" must be a list");
        bad.put("{\"dirs\": [3]}", "backing.dirs[0] must be a directory's absolute path");
        bad.put("{\"devices\": \"maybe\"}", "devices");
        bad.put("[\"/srv\"]", "backing must be an object");
        for (var c : bad.entrySet()) {
            Path f = config(c.getKey(), "");
            IOException e = assertThrows(IOException.class, () -> ConfigFile.read(f, daemon), c.getKey());
            assertTrue(e.getMessage().contains(c.getValue()), c.getKey() + ": " + e.getMessage());
        }
        // a state file records devices, not the operator's policy
        IOException e = assertThrows(
                IOException.class,
                () -> ConfigFile.parse(
                        "{\"backing\": {\"dirs\": []}}", "state file", dir.resolve("state.json"), daemon));
        assertTrue(e.getMessage().contains("unknown top-level key 'backing'"), e.getMessage());
        // an empty list: no backing file at all; devices alone: any directory, no devices
        ConfigFile.Outcome o = ConfigFile.apply(daemon, ConfigFile.read(config("{\"dirs\": []}", ""), daemon));
        assertEquals(3, o.failed().size(), o.toString());
        assertTrue(o.failed().get(0).contains("no backing file is allowed"), o.toString());
        o = ConfigFile.apply(daemon, ConfigFile.read(config("{\"devices\": false}", ""), daemon));
        assertEquals(List.of(), o.failed(), o.toString());
    }
}
