// SPDX-License-Identifier: Apache-2.0
package io.iovirt.packaging;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.daemon.RpcClient;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import io.iovirt.vm.UnixSockets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The configuration the package ships as /etc/iovirt/daemon.json (iovirt.service's --config): the daemon starts on it
 * with no devices, so a fresh install does not fail and restart in a loop; and a --config that does not exist says
 * so and what to do (an administrator who deleted the conffile sees that in the journal).
 */
@Timeout(300)
class ShippedDaemonConfigTest {
    @TempDir
    Path dir;

    @Test
    void theDaemonStartsOnTheShippedConfigWithNoDevices() throws Exception {
        Path control = dir.resolve("control");
        try (ChildProcess daemon = ChildProcess.builder(IovirtCli.command(
                        "daemon", "--config", "packaging/etc/iovirt/daemon.json", "--control", control.toString()))
                .name("iovirt daemon")
                .log(dir.resolve("daemon.log"))
                .start()) {
            UnixSockets.awaitListening(control, daemon, Duration.ofSeconds(120));
            try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                for (String list : List.of("blk.list", "nbd.list", "net.list")) {
                    assertEquals(List.of(), c.call(list, Map.of()), list + "\n" + daemon.log());
                }
            }
        }
    }

    @Test
    void aMissingConfigSaysSoAndWhatToDo() throws Exception {
        Path missing = dir.resolve("daemon.json");
        try (ChildProcess daemon = ChildProcess.builder(IovirtCli.command(
                        "daemon",
                        "--config",
                        missing.toString(),
                        "--control",
                        dir.resolve("control").toString()))
                .name("iovirt daemon")
                .log(dir.resolve("daemon.log"))
                .start()) {
            assertTrue(daemon.waitFor(Duration.ofSeconds(120)), "the daemon runs without its configuration");
            String log = daemon.log();
            assertTrue(
                    log.contains("configuration " + missing + " does not exist; create it ({} is a configuration"
                            + " with no devices"),
                    log);
            assertTrue(daemon.exitValue() != 0, log);
        }
    }
}
