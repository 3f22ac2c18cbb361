// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * The root host commands' default state directory is shared with no packaged unit: systemd gives a unit's
 * StateDirectory= to its User= (iovirt) at every start, and {@link StateStore} refuses a directory the caller does
 * not own, so a shared default stopped every root {@code iovirt host ...} once a service had run.
 */
class HostPathsTest {
    @Test
    void theDefaultStateDirectoryIsNoUnitsStateDirectory() throws Exception {
        List<Path> unitDirs = new ArrayList<>();
        try (Stream<Path> units = Files.list(Path.of("packaging/systemd"))) {
            for (Path unit : units.filter(p -> !p.toString().endsWith(".md")).toList()) {
                for (String line : Files.readAllLines(unit)) {
                    if (line.strip().startsWith("StateDirectory=")) {
                        for (String d : line.strip()
                                .substring("StateDirectory=".length())
                                .split("\\s+")) {
                            unitDirs.add(Path.of("/var/lib", d.replaceFirst(":.*", "")));
                        }
                    }
                }
            }
        }
        assertFalse(unitDirs.isEmpty(), "no StateDirectory= found in packaging/systemd");
        Path host = HostPaths.DEFAULT_STATE_DIR;
        assertTrue(host.isAbsolute(), host.toString());
        for (Path d : unitDirs) {
            assertFalse(
                    host.startsWith(d) || d.startsWith(host),
                    "the host commands' default " + host + " overlaps a unit's StateDirectory= " + d);
        }
        assertTrue(HostPaths.system().stateDir().equals(host), "HostPaths.system() uses the default");
    }
}
