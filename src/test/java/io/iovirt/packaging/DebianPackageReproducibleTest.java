// SPDX-License-Identifier: Apache-2.0
package io.iovirt.packaging;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import io.iovirt.vm.ChildProcess;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * scripts/package.sh builds the same .deb, byte for byte, from the same commit: two builds of this checkout, in build
 * directories of their own, give identical files — the jar's entries, the changelog's date, the files' mtimes and the
 * ar members' dates are the commit's, not each build's clock. Tagged "peer": it runs Maven, asciidoctor and dpkg-deb
 * (no install, no root).
 */
@Tag("peer")
class DebianPackageReproducibleTest {
    private static final Path ROOT = Path.of("").toAbsolutePath();

    @Test
    void sameCommitGivesTheSameDeb(@TempDir Path dir) throws Exception {
        Require.program("dpkg-deb", "apt-get install dpkg");
        Require.program("asciidoctor", "scripts/install-deps.sh installs it, or: apt-get install asciidoctor");
        Path first = build(dir, "first");
        Path second = build(dir, "second");
        assertEquals(first.getFileName(), second.getFileName());
        assertArrayEquals(
                Files.readAllBytes(first),
                Files.readAllBytes(second),
                () -> "two builds of one commit differ: " + first + " and " + second
                        + " (compare them with diffoscope, or dpkg-deb --fsys-tarfile | tar -tv --full-time)");
    }

    /** Builds the package in {@code dir/name} (its own build directory: this suite runs from target/iovirt.jar). */
    private static Path build(Path dir, String name) throws Exception {
        Path log = dir.resolve(name + ".log");
        try (ChildProcess p = ChildProcess.builder(
                        ROOT.resolve("scripts/package.sh").toString(),
                        "--build-dir",
                        dir.resolve(name).toString())
                .log(log)
                .start()) {
            if (!p.waitFor(Duration.ofMinutes(20))) {
                throw new AssertionError("package.sh did not finish within 20 minutes:\n" + p.logTail(40));
            }
            assertEquals(0, p.exitValue(), () -> "package.sh failed:\n" + p.logTail(40));
        }
        String last = Files.readAllLines(log).getLast().strip();
        Path deb = Path.of(last);
        assertTrue(last.endsWith(".deb") && Files.isRegularFile(deb), "package.sh's last line names no .deb: " + last);
        return deb;
    }
}
