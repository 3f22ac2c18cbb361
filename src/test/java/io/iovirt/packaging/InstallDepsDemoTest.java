// SPDX-License-Identifier: Apache-2.0
package io.iovirt.packaging;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code ./iovirt demo} checks only the packages the demo needs: it used to run the test suite's full list, so a user
 * who is not root and has QEMU but not libvirt's daemon, promtool or gdb was refused ("run as root"), and as root the
 * demo installed libvirt's daemon on the host. Run here as a user (a fake {@code id}) on a host where every package but
 * libvirt-daemon and gdb is installed (a fake {@code dpkg-query}); nothing is installed either way.
 */
class InstallDepsDemoTest {
    private static final Path ROOT = Path.of("").toAbsolutePath();

    @TempDir
    Path dir;

    private record Run(int exit, String output) {}

    private Run installDeps(String... args) throws Exception {
        Path bin = Files.createDirectories(dir.resolve("bin"));
        fake(bin.resolve("id"), "echo 1000");
        fake(bin.resolve("dpkg-query"), """
                case "$3" in libvirt-daemon|gdb) exit 1 ;; esac
                printf 'install ok installed'""");
        java.util.List<String> cmd = new java.util.ArrayList<>(java.util.List.of(
                "bash", ROOT.resolve("scripts/install-deps.sh").toString()));
        cmd.addAll(java.util.List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        pb.environment().put("PATH", bin + ":" + System.getenv("PATH"));
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), out);
        return new Run(p.exitValue(), out);
    }

    private static void fake(Path file, String body) throws Exception {
        Files.writeString(file, "#!/bin/sh\n" + body + "\n");
        Files.setPosixFilePermissions(file, PosixFilePermissions.fromString("rwxr-xr-x"));
    }

    @Test
    void theDemoNeedsNeitherLibvirtNorTheTestTools() throws Exception {
        Run demo = installDeps("--demo");
        assertEquals(0, demo.exit(), demo.output());
        assertFalse(demo.output().contains("missing"), demo.output());
        // the fakes work: the full list (./iovirt test) does want them
        Run all = installDeps();
        assertEquals(1, all.exit(), all.output());
        assertTrue(all.output().contains("missing packages: gdb — run as root"), all.output());
        // and the launcher's demo asks for the demo's list
        assertTrue(
                Files.readString(ROOT.resolve("iovirt")).contains("\"$ROOT/scripts/install-deps.sh\" --demo >&2"),
                "./iovirt demo does not pass --demo");
    }
}
