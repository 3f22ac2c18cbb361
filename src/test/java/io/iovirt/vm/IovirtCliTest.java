// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class IovirtCliTest {

    @TempDir
    Path dir;

    @Test
    void runsTheCliInAChildJvm() {
        try (ChildProcess p = ChildProcess.builder(IovirtCli.command("--version"))
                .name("iovirt")
                .log(dir.resolve("iovirt.log"))
                .start()) {
            assertTrue(p.waitFor(Duration.ofSeconds(60)), "the child JVM did not finish");
            assertEquals(0, p.exitValue(), p.log());
            assertTrue(p.log().contains("iovirt"), p.log());
        }
    }
}
