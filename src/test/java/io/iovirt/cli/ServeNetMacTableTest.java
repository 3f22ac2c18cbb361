// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.net.Switch;
import io.iovirt.testing.Await;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * serve net says at start-up, in one warning line, when its ports' shares of the MAC table (--macs-per-port each,
 * one for a pinned port) add up to more than the table holds: the numbers, what a few spraying ports then do to
 * everyone's traffic, and what to do. A switch whose shares fit says nothing.
 */
class ServeNetMacTableTest {
    @TempDir
    Path tmp;

    @Test
    void portsWhoseSharesExceedTheMacTableAreWarnedOfAtStartUp() throws Exception {
        int ports = Switch.DEFAULT_MAC_CAPACITY / Switch.DEFAULT_MACS_PER_PORT + 1; // 33: 33 × 256 = 8448 > 8192
        List<String> warned = warnings(start("open", ports, 0));
        assertEquals(1, warned.size(), warned.toString());
        String w = warned.getFirst();
        assertTrue(
                w.contains("33 ports may learn up to 256 source addresses each (macs-per-port), 8448 in all,"
                        + " more than the table's 8192: 32 ports spraying source addresses fill it"),
                w);
        assertTrue(
                w.contains("addresses new to the switch are not learned and frames to them are flooded to every port"),
                w);
        assertTrue(w.contains("set macs-per-port to 248 or less") && w.contains("pin-mac"), w);

        // a pinned port holds one entry: 32 × 256 + 1 is still one too many, 31 × 256 + 2 fits
        List<String> onePinned = warnings(start("pin1", ports, 1));
        assertEquals(1, onePinned.size(), onePinned.toString());
        assertTrue(onePinned.getFirst().contains("33 ports (1 pinned)")
                && onePinned.getFirst().contains("8193 in all"));
        assertTrue(onePinned.getFirst().contains("set macs-per-port to 255 or less"), onePinned.getFirst());
        assertEquals(List.of(), warnings(start("pin2", ports, 2)));
        assertEquals(List.of(), warnings(start("fits", ports, 0, "--macs-per-port", "248")));
    }

    /** serve net with {@code ports} vhost-user ports, the first {@code pinned} of them pinned; its log once running. */
    private String start(String name, int ports, int pinned, String... extra) throws Exception {
        List<String> args = new ArrayList<>(List.of("serve", "net"));
        Path last = null;
        for (int i = 0; i < ports; i++) {
            last = tmp.resolve(name + i + ".sock");
            args.add("--port");
            args.add("vhost-user:" + last
                    + (i < pinned ? String.format(",mac=52:54:00:00:00:%02x,pin-mac", i + 1) : ""));
        }
        args.addAll(List.of(extra));
        try (ChildProcess p = ChildProcess.builder(IovirtCli.command(args))
                .name("iovirt serve net")
                .log(tmp.resolve(name + ".log"))
                .startListening(last, Duration.ofSeconds(60))) {
            Await.until(
                    Duration.ofSeconds(60), "serve net to run", () -> p.log().contains("switch running"));
            p.stop(Duration.ofSeconds(20));
            return p.log();
        }
    }

    private static List<String> warnings(String log) {
        return log.lines()
                .filter(l -> l.contains(" warn ") && l.contains("MAC table"))
                .toList();
    }
}
