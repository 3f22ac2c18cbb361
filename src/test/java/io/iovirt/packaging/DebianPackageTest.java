// SPDX-License-Identifier: Apache-2.0
package io.iovirt.packaging;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.vm.ChildProcess;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

/**
 * The Debian package as an administrator gets it: scripts/package.sh builds it with dpkg-deb, dpkg installs it on
 * this machine, and the installed command, man page and completion work; it is removed again afterwards. Needs root
 * and dpkg; tagged "peer" (Failsafe, with the real third-party tools it drives: dpkg, man, bash).
 */
@Tag("peer")
class DebianPackageTest {
    private static final Path ROOT = Path.of("").toAbsolutePath();
    private static Path deb;
    private static Path buildDir;

    @BeforeAll
    static void buildAndInstall() throws Exception {
        assertTrue(
                "root".equals(System.getProperty("user.name")) && Files.isExecutable(Path.of("/usr/bin/dpkg")),
                "installing a package needs root and dpkg");
        // Its own build directory: Failsafe runs this suite from target/iovirt.jar, and a package build in target/
        // rewrote that jar in place, so every class the suite had not loaded yet failed with NoClassDefFoundError.
        buildDir = Files.createTempDirectory("iovirt-package-");
        Path suiteJar = ROOT.resolve("target/iovirt.jar");
        String before = Files.exists(suiteJar) ? jarIdentity(suiteJar) : "";
        Result built =
                run(List.of(ROOT.resolve("scripts/package.sh").toString(), "--build-dir", buildDir.toString()), 1200);
        assertEquals(0, built.exit, built.out);
        assertEquals(
                before,
                Files.exists(suiteJar) ? jarIdentity(suiteJar) : "",
                "the package build left target/iovirt.jar, which this suite runs from, alone");
        deb = Path.of(built.out.strip().lines().reduce((a, b) -> b).orElseThrow());
        assertTrue(deb.getFileName().toString().matches("iovirt_.*_all\\.deb"), built.out);
        Result info = run(List.of("dpkg-deb", "--info", deb.toString()), 60);
        assertTrue(info.out.contains("Package: iovirt"), info.out);
        // apt-get, not dpkg -i: it waits for the dpkg lock (an unattended upgrade on a fresh CI machine holds it) and
        // resolves the package's Depends as an administrator's install would
        Result installed = run(aptGet("install", deb.toAbsolutePath().toString()), 900);
        assertEquals(0, installed.exit, installed.out);
    }

    @AfterAll
    static void remove() throws Exception {
        if (deb != null) {
            run(aptGet("purge", "iovirt"), 900);
        }
        if (buildDir != null) {
            run(List.of("rm", "-rf", "--", buildDir.toString()), 120);
        }
    }

    private static List<String> aptGet(String action, String what) {
        return List.of(
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "-y",
                "-o",
                "DPkg::Lock::Timeout=600",
                action,
                what);
    }

    @Test
    void versionShowsVersionAndCommit() throws Exception {
        Result r = run(List.of("/usr/bin/iovirt", "--version"), 120);
        assertEquals(0, r.exit, r.out);
        String commit = run(List.of("git", "-C", ROOT.toString(), "rev-parse", "--short", "HEAD"), 30)
                .out
                .strip();
        assertTrue(r.out.startsWith("iovirt 0.") && r.out.contains("(commit " + commit + ")"), r.out);
    }

    @Test
    void hostCheckAndServeBlkHelpRun() throws Exception {
        Result check = run(List.of("/usr/bin/iovirt", "host", "check"), 120);
        assertTrue(check.exit == 0 || check.exit == 3, check.out); // 3: a requirement failed on this host
        assertTrue(check.out.contains("kvm") && check.out.contains("iommu"), check.out);
        Result help = run(List.of("/usr/bin/iovirt", "serve", "blk", "--help"), 120);
        assertEquals(0, help.exit, help.out);
        assertTrue(help.out.startsWith("Usage: iovirt serve blk") && help.out.contains("Examples:"), help.out);
    }

    @Test
    void manPagesOpenAndCompletionIsInstalled() throws Exception {
        Result where = run(List.of("man", "-w", "iovirt"), 60);
        assertEquals("/usr/share/man/man1/iovirt.1.gz", where.out.strip());
        Result page = run(List.of("sh", "-c", "MANPAGER=cat MANWIDTH=100 man iovirt-serve-blk"), 120);
        assertEquals(0, page.exit, page.out);
        assertTrue(page.out.contains("iovirt-serve-blk") && page.out.contains("--image"), page.out);
        Result completion = run(
                List.of(
                        "bash",
                        "-c",
                        "source /usr/share/bash-completion/completions/iovirt && "
                                + "COMP_WORDS=(iovirt ho) COMP_CWORD=1 && _complete_iovirt && echo \"${COMPREPLY[@]}\""),
                60);
        assertTrue(completion.out.contains("host"), completion.out);
    }

    /**
     * Every unit in packaging/systemd is installed as it is in the repository (the daemon, the per-export template and
     * the warm standby pair: target and both members), and the documentation its Documentation= lines name exists.
     */
    @Test
    void systemdUnitsAreInstalledWithTheirDocumentation() throws Exception {
        List<Path> units;
        try (var files = Files.list(ROOT.resolve("packaging/systemd"))) {
            units = files.filter(f -> f.getFileName().toString().matches(".*\\.(service|socket|path|target)"))
                    .sorted()
                    .toList();
        }
        assertTrue(
                units.stream()
                        .map(u -> u.getFileName().toString())
                        .toList()
                        .containsAll(List.of(
                                "iovirt.service",
                                "iovirt-blk@.service",
                                "iovirt-blk-standby@.target",
                                "iovirt-blk-standby-a@.service",
                                "iovirt-blk-standby-b@.service")),
                units.toString());
        for (Path unit : units) {
            Path installed = Path.of("/lib/systemd/system").resolve(unit.getFileName());
            assertTrue(Files.isRegularFile(installed), installed + " is not installed");
            assertEquals(Files.readString(unit), Files.readString(installed), installed.toString());
            for (String line : Files.readAllLines(installed)) {
                if (line.startsWith("Documentation=file://")) {
                    Path doc = Path.of(line.substring("Documentation=file://".length()));
                    assertTrue(Files.isRegularFile(doc), installed + " names " + doc + ", which is not installed");
                }
            }
        }
        Result dpkg = run(List.of("dpkg", "-L", "iovirt"), 60);
        assertTrue(dpkg.out.contains("/lib/systemd/system/iovirt-blk-standby@.target"), dpkg.out);
    }

    /**
     * A fresh install has what iovirt.service needs to start (it used to fail and be restarted in a loop): the user it
     * runs as, the --config file its ExecStart names and /etc/default/iovirt, both conffiles; and the installed daemon,
     * run as that user and group with that file, gets ready.
     */
    @Test
    void theDaemonUnitStartsOnAFreshInstall() throws Exception {
        Result conffiles = run(List.of("dpkg-query", "--showformat=${Conffiles}\n", "--show", "iovirt"), 60);
        assertTrue(
                conffiles.out.contains(" /etc/iovirt/daemon.json ") && conffiles.out.contains(" /etc/default/iovirt "),
                "conffiles: " + conffiles.out);
        SystemdStandbyPairTest.Unit unit = SystemdStandbyPairTest.Unit.load("iovirt.service", "x");
        String user = unit.one("User");
        assertEquals(0, run(List.of("getent", "passwd", user), 30).exit, "the package creates the user " + user);
        List<String> exec = List.of(unit.one("ExecStart").split("\\s+"));
        String config = exec.get(exec.indexOf("--config") + 1);
        assertTrue(Files.isRegularFile(Path.of(config)), config + " (--config of iovirt.service) is not installed");
        Path dir = Files.createTempDirectory("iovirt-package-");
        try {
            run(List.of("chown", user, dir.toString()), 30);
            Path control = dir.resolve("control");
            List<String> cmd = List.of(
                    "setpriv",
                    "--reuid=" + user,
                    "--regid=" + unit.one("Group"),
                    "--init-groups",
                    "/usr/bin/iovirt",
                    "daemon",
                    "--config",
                    config,
                    // the unit's --state, in a directory of the user's own as StateDirectory= gives it: the service
                    // user takes the state file's lock (FILE.lock, created here) before anything starts
                    "--state",
                    dir.resolve(Path.of(exec.get(exec.indexOf("--state") + 1)).getFileName())
                            .toString(),
                    "--control",
                    control.toString());
            try (ChildProcess daemon = ChildProcess.builder(cmd)
                    .name("iovirt daemon")
                    .log(dir.resolve("daemon.log"))
                    .start()) {
                Await.until(
                        Duration.ofSeconds(240),
                        "the daemon ready",
                        daemon,
                        () -> daemon.log().contains("iovirt daemon: ready"));
                assertTrue(Files.exists(dir.resolve("daemon-state.json.lock")), daemon.log());
            }
        } finally {
            run(List.of("rm", "-rf", dir.toString()), 30);
        }
    }

    private record Result(int exit, String out) {}

    private static String jarIdentity(Path jar) throws IOException {
        var attrs = Files.readAttributes(jar, java.nio.file.attribute.BasicFileAttributes.class);
        return attrs.fileKey() + " " + attrs.size() + " " + attrs.lastModifiedTime();
    }

    /**
     * Runs {@code cmd}, its output read on another thread so that the bound holds even when the command hangs with
     * its output open (reading to the end first, the bound started only after the command had ended).
     */
    private static Result run(List<String> cmd, int seconds) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        var out = new java.io.ByteArrayOutputStream();
        Thread reader = Thread.ofPlatform().daemon().start(() -> {
            try (var in = p.getInputStream()) {
                in.transferTo(out);
            } catch (IOException ignored) {
                // the process was destroyed: what was read is kept
            }
        });
        if (!p.waitFor(seconds, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            reader.join(10_000);
            throw new AssertionError("timed out after " + seconds + " s: " + cmd + "\n" + out);
        }
        // Not destroyed once it has exited: destroy closes the output stream, which cut off what the reader had
        // not read yet (an empty `git rev-parse` on CI). A grandchild still holding the pipe does not hold the test.
        reader.join(10_000);
        return new Result(p.exitValue(), out.toString());
    }
}
