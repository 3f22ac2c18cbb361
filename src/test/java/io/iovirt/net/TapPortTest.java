// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.SocketAccess;
import io.iovirt.testing.Await;
import io.iovirt.testing.Frames;
import io.iovirt.testing.Require;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A TAP port whose interface goes away under it (ip link del): the port goes down — its link reported down, the
 * switch no longer sends to it — instead of keeping a dead receive loop behind a port that says it is up. And one
 * whose /dev/net/tun is missing says how to get it back.
 */
@Timeout(60)
class TapPortTest {
    @TempDir
    Path dir;

    @Test
    void aDeletedInterfaceTakesThePortDown() throws Exception {
        Require.that(Files.exists(Path.of("/dev/net/tun")), "/dev/net/tun is missing (modprobe tun)");
        Require.that(Require.onPath("ip"), "iproute2 is not installed");
        String ifname = "iovtp" + (ProcessHandle.current().pid() % 100000);
        try (Switch sw = new Switch(Switch.Config.defaults())) {
            TestPort peer = sw.addPort(new TestPort("peer"));
            TapPort tap;
            try {
                tap = sw.addPort(new TapPort(ifname));
            } catch (java.io.IOException e) {
                Require.that(false, "cannot create a TAP interface here (needs CAP_NET_ADMIN): " + e.getMessage());
                return;
            }
            assertTrue(tap.isLinkUp());
            Process del = new ProcessBuilder("ip", "link", "del", ifname)
                    .redirectErrorStream(true)
                    .start();
            String out = new String(del.getInputStream().readAllBytes());
            assertEquals(0, del.waitFor(), "ip link del " + ifname + ": " + out);

            Await.until(Duration.ofSeconds(10), "the port to go down", () -> !tap.isLinkUp());
            peer.inject(Frames.ethernet("ff:ff:ff:ff:ff:ff", "52:54:00:00:00:0a", 60)); // a flood skips the port
            assertEquals(0, tap.stats().txPackets());
            assertEquals(0, tap.stats().get(PortStat.TX_DROPPED_ERROR), "no write to the dead interface was tried");
        }
    }

    /**
     * Without /dev/net/tun (no tun module, or a systemd unit with PrivateDevices=yes, which gives the service a /dev
     * without it) a TAP port's open fails with ENOENT, and serve net says what to do about both causes. Here {@code
     * serve net} runs in a private mount namespace with an empty tmpfs over /dev/net: the host's /dev is not touched.
     */
    @Test
    void aMissingTunDeviceNamesTheModuleAndPrivateDevices() throws Exception {
        Require.program("unshare", "apt-get install util-linux");
        Require.that(SocketAccess.ownUid() == 0, "root (a private mount namespace with its own /dev/net)");
        String script = """
                set -e
                if [ -d /dev/net ]; then mount -t tmpfs -o mode=755 iovirt-no-tun /dev/net; fi
                [ ! -e /dev/net/tun ] || { echo "could not hide /dev/net/tun"; exit 97; }
                exec "$@"
                """;
        List<String> cmd = new ArrayList<>(
                List.of("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "no-tun"));
        cmd.addAll(IovirtCli.command("serve", "net", "--port", "tap:iovnotun0"));
        try (ChildProcess p = ChildProcess.builder(cmd)
                .name("iovirt serve net")
                .log(dir.resolve("serve-net.log"))
                .start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(45)), "serve net did not give up:\n" + p.log());
            String log = p.log();
            assertEquals(1, p.exitValue(), log);
            assertTrue(log.contains("cannot open TAP interface iovnotun0") && log.contains("ENOENT"), log);
            assertTrue(log.contains("/dev/net/tun is missing") && log.contains("modprobe tun"), log);
            assertTrue(log.contains("PrivateDevices=no") && log.contains("DeviceAllow=/dev/net/tun rw"), log);
        }
    }
}
