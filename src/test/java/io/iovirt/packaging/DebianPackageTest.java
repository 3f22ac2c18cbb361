// SPDX-License-Identifier: Apache-2.0
package io.iovirt.packaging;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.testing.SystemdNamespace;
import io.iovirt.vm.ChildProcess;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Debian package as an administrator gets it: scripts/package.sh builds it with dpkg-deb, dpkg installs it on
 * this machine, and the installed command, man page and completion work; its maintainer scripts keep a real systemd
 * (booted in namespaces of its own) in step with it; it is removed again afterwards. Needs root and dpkg; tagged
 * "peer" (Failsafe, with the real third-party tools it drives: dpkg, apt-get, systemd, man, bash).
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

    private static List<String> aptGet(String... actionAndWhat) {
        List<String> cmd = new ArrayList<>(
                List.of("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-o", "DPkg::Lock::Timeout=600"));
        cmd.addAll(List.of(actionAndWhat));
        return cmd;
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
     * lintian, Debian's package checker, finds no error or warning in the package as package.sh builds it. A tag that
     * is wrong for iovirt is overridden in the package itself (/usr/share/lintian/overrides/iovirt, each with why), so
     * lintian runs with its defaults here; info and pedantic tags are advice and not checked.
     */
    @Test
    void lintianFindsNoErrorOrWarning() throws Exception {
        Path lintian = Require.program("lintian", "scripts/install-deps.sh installs it, or: apt-get install lintian");
        // Not --show-overrides: lintian 2.116 then fails on the overridden tags too.
        Result r = run(List.of(lintian.toString(), "--fail-on", "error,warning", deb.toString()), 600);
        List<String> tags = r.out.lines()
                .filter(l -> l.startsWith("E: ") || l.startsWith("W: "))
                .toList();
        assertTrue(
                r.exit == 0 && tags.isEmpty(),
                "lintian " + deb.getFileName() + " exited " + r.exit + " with " + tags.size() + " E/W tags:\n" + r.out);
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

    /**
     * The maintainer scripts under a real systemd ({@link SystemdNamespace}: PID 1 here is not systemd), as an
     * administrator lives with them: the daemon, an export (a template's instance) and an export served by a warm
     * standby pair (a templated target and its two members) started, then an upgrade to a version whose unit files
     * changed, and the same package installed again, each restarting every running service on the new files
     * (postinst: daemon-reload, try-restart); all enabled, then {@code apt-get remove} stops them (prerm: nothing of
     * the package left running the program dpkg deleted) and keeps the enablement, as Debian does;
     * {@code apt-get purge} removes the daemon's state and the enablement links (postrm), and keeps the images.
     */
    @Test
    void maintainerScriptsManageTheRunningServices(@TempDir Path tmp) throws Exception {
        String export = "iovirt-pkgtest";
        String pair = "iovirt-pkgpair";
        Path wants = AdminChanges.WANTS;
        // What an administrator starts and enables, and the services that then run.
        List<String> started = List.of(
                "iovirt.service", "iovirt-blk@" + export + ".service", "iovirt-blk-standby@" + pair + ".target");
        List<String> units = List.of(
                "iovirt.service",
                "iovirt-blk@" + export + ".service",
                "iovirt-blk-standby-a@" + pair + ".service",
                "iovirt-blk-standby-b@" + pair + ".service");
        Path upgrade = upgradeOf(deb, tmp);
        try (AdminChanges admin = new AdminChanges(started);
                SystemdNamespace systemd = SystemdNamespace.boot(tmp)) {
            // An administrator's policy-rc.d that allows every action: this machine's own may forbid starts.
            policyRcD(systemd, tmp, ALLOW_ALL);
            // The exports' images, as an administrator puts them where the units look; the purge must keep them.
            List<Path> images = List.of(admin.image(export), admin.image(pair));
            List<String> start = new ArrayList<>(List.of("systemctl", "start"));
            start.addAll(started);
            inside(systemd, start, 300);
            Map<String, String> before = show(systemd, units);

            inside(systemd, aptGet("install", upgrade.toString()), 900);
            Map<String, String> upgraded = show(systemd, units);
            for (String unit : units) {
                assertEquals(
                        "active",
                        upgraded.get(unit + " ActiveState"),
                        () -> unit + " after the upgrade: " + upgraded + "\n" + systemd.journal(unit));
                assertEquals(
                        "no",
                        upgraded.get(unit + " NeedDaemonReload"),
                        unit + ": systemd re-read the unit file the upgrade changed: " + upgraded);
                assertNotEquals(
                        before.get(unit + " InvocationID"),
                        upgraded.get(unit + " InvocationID"),
                        unit + " was running and is restarted by the upgrade: " + upgraded);
            }
            inside(systemd, aptGet("install", "--reinstall", upgrade.toString()), 900);
            Map<String, String> reinstalled = show(systemd, units);
            for (String unit : units) {
                assertEquals(
                        "active",
                        reinstalled.get(unit + " ActiveState"),
                        () -> unit + " after the reinstall: " + reinstalled + "\n" + systemd.journal(unit));
                assertNotEquals(
                        upgraded.get(unit + " InvocationID"),
                        reinstalled.get(unit + " InvocationID"),
                        unit + " was running and is restarted by a reinstall: " + reinstalled);
            }

            List<String> enable = new ArrayList<>(List.of("systemctl", "enable"));
            enable.addAll(started);
            inside(systemd, enable, 60);
            Path lock = Path.of("/var/lib/iovirt/daemon-state.json.lock");
            assertTrue(Files.exists(lock), "the daemon (--state /var/lib/iovirt/daemon-state.json) took its lock");

            inside(systemd, aptGet("remove", "iovirt"), 900);
            SystemdNamespace.Result running = systemd.run(
                    List.of(
                            "systemctl",
                            "list-units",
                            "--plain",
                            "--no-legend",
                            "--state=activating,active,deactivating,reloading",
                            "iovirt*"),
                    60);
            assertEquals(
                    "",
                    running.out().strip(),
                    () -> "units of the removed package still running\n" + systemd.journal("iovirt*"));
            SystemdNamespace.Result processes =
                    systemd.run(List.of("pgrep", "-af", "/usr/share/iovirt/|/usr/bin/iovirt"), 60);
            assertEquals("", processes.out().strip(), "processes of the removed package still running");
            for (String unit : started) {
                assertTrue(Files.isSymbolicLink(wants.resolve(unit)), unit + ": a removal keeps the enablement");
            }

            inside(systemd, aptGet("purge", "iovirt"), 900);
            assertFalse(Files.exists(lock), lock + " is left after the purge");
            for (String unit : started) {
                assertFalse(Files.isSymbolicLink(wants.resolve(unit)), wants.resolve(unit) + " left after the purge");
            }
            assertFalse(Files.exists(Path.of("/etc/iovirt")), "/etc/iovirt is left after the purge");
            for (Path image : images) {
                assertTrue(Files.isRegularFile(image), "the purge removed the administrator's image " + image);
            }
        }
    }

    /**
     * A removal that fails once prerm has stopped the services leaves them running again, as they were: dpkg answers a
     * failed {@code prerm remove} with {@code postinst abort-remove} (Debian Policy 6.6), and postinst starts the units
     * prerm stopped, template instances included (a stopped instance is unloaded, no glob finds it again), and nothing
     * that was not running (an enabled export that was stopped stays stopped); an instance name with a backslash, as
     * systemd-escape writes one, goes through the list as it is; of a warm standby pair whose member B an administrator
     * stopped, the target and member A run again and member B stays stopped (the target's Wants= would start it). The
     * package under test is this build
     * with one line added at the end of its prerm, after the stop: it fails while {@code fail-prerm} exists, as a prerm
     * interrupted (Ctrl-C) while the stop completes does. Then, without it, {@code apt-get purge} removes the package.
     */
    @Test
    void anAbortedRemovalStartsAgainTheServicesPrermStopped(@TempDir Path tmp) throws Exception {
        String export = "pkg\\x2dabort"; // an escaped instance name (systemd-escape pkg-abort): its backslash kept
        String idle = "iovirt-pkgidle";
        String pair = "iovirt-pkgabpair";
        List<String> units = List.of(
                "iovirt.service",
                "iovirt-blk@" + export + ".service",
                "iovirt-blk-standby@" + pair + ".target",
                "iovirt-blk-standby-a@" + pair + ".service");
        String memberB = "iovirt-blk-standby-b@" + pair + ".service";
        String idleUnit = "iovirt-blk@" + idle + ".service";
        List<String> enabled = List.of("iovirt.service", "iovirt-blk@" + export + ".service", idleUnit);
        Path fail = tmp.resolve("fail-prerm");
        Path failing = withFailingPrerm(deb, tmp, fail);
        try (AdminChanges admin = new AdminChanges(enabled);
                SystemdNamespace systemd = SystemdNamespace.boot(tmp)) {
            admin.deleteFirst(fail);
            policyRcD(systemd, tmp, ALLOW_ALL);
            inside(systemd, aptGet("install", failing.toString()), 900);
            admin.image(export);
            admin.image(pair);
            List<String> enable = new ArrayList<>(List.of("systemctl", "enable"));
            enable.addAll(enabled);
            inside(systemd, enable, 60);
            List<String> start = new ArrayList<>(List.of("systemctl", "start"));
            start.addAll(units);
            inside(systemd, start, 300);
            inside(systemd, List.of("systemctl", "stop", memberB), 120); // the pair's target still runs
            Map<String, String> before = show(systemd, units);

            Files.createFile(fail);
            SystemdNamespace.Result removal = abortedRemoval(systemd);
            assertTrue(removal.out().contains("prerm fails (test)"), removal.out());
            Map<String, String> after = show(systemd, units);
            for (String unit : units) {
                assertEquals(
                        "active",
                        after.get(unit + " ActiveState"),
                        () -> unit + " was running before the aborted removal: " + after + "\n" + removal.out() + "\n"
                                + systemd.journal("iovirt*"));
                assertNotEquals(
                        before.get(unit + " InvocationID"),
                        after.get(unit + " InvocationID"),
                        unit + " was stopped by prerm and started again: " + after);
            }
            Map<String, String> idleAfter = show(systemd, List.of(idleUnit, memberB));
            assertEquals(
                    "inactive",
                    idleAfter.get(idleUnit + " ActiveState"),
                    idleUnit + " is enabled but was not running, and is not started: " + idleAfter);
            assertEquals(
                    "inactive",
                    idleAfter.get(memberB + " ActiveState"),
                    memberB + " was stopped while its pair's target ran, and is not started: " + idleAfter);

            Files.delete(fail);
            inside(systemd, aptGet("purge", "iovirt"), 900);
            SystemdNamespace.Result running = systemd.run(
                    List.of("systemctl", "list-units", "--plain", "--no-legend", "--state=active", "iovirt*"), 60);
            assertEquals("", running.out().strip(), "units of the purged package still running");
        }
    }

    /**
     * A removal goes on when prerm cannot write down the units it stops (a full or read-only /run): the write failed
     * under {@code set -e}, prerm ended there, before the stop, and no removal could succeed until /run had room again.
     * Here the write fails as it does on a full /run: {@code /run/iovirt.dpkg-stopped.new} is a directory (in the /run
     * of the systemd namespaces). The removal succeeds, stops the running export, and its warning names the unit to
     * start by hand, with the backslash of an escaped instance name ({@code systemd-escape}: "-" is "\x2d") kept.
     */
    @Test
    void aRemovalGoesOnWhenPrermCannotWriteDownTheUnitsItStops(@TempDir Path tmp) throws Exception {
        String export = "pkg\\x2dnorun";
        String unit = "iovirt-blk@" + export + ".service";
        try (AdminChanges admin = new AdminChanges(List.of());
                SystemdNamespace systemd = SystemdNamespace.boot(tmp)) {
            policyRcD(systemd, tmp, ALLOW_ALL);
            admin.image(export);
            inside(systemd, List.of("systemctl", "start", unit), 300);
            inside(systemd, List.of("mkdir", "/run/iovirt.dpkg-stopped.new"), 30);

            SystemdNamespace.Result removal = systemd.run(aptGet("remove", "iovirt"), 900);
            assertEquals(0, removal.exit(), () -> "the removal goes on without the list:\n" + removal.out());
            assertTrue(
                    removal.out().contains("cannot write the units it stops")
                            && removal.out().contains("systemctl start " + unit),
                    removal.out());
            SystemdNamespace.Result running = systemd.run(
                    List.of("systemctl", "list-units", "--plain", "--no-legend", "--state=active", "iovirt*"), 60);
            assertEquals("", running.out().strip(), "units of the removed package still running");
        }
    }

    /**
     * A local policy-rc.d that forbids starting units (exit 101, as in containers and build chroots: invoke-rc.d(8)) is
     * obeyed: the maintainer scripts ran systemctl themselves, and started and restarted what it forbade. With one that
     * lets units stop and forbids every other action, a reinstall (postinst configure of the version installed: the
     * running units' restart) succeeds and leaves the running export as it was, and a removal that fails once prerm
     * has stopped it (postinst abort-remove: the start of what prerm stopped) leaves it stopped and the package
     * installed; policy-rc.d was asked each time. So does one that answers 106 (not allowed, do this instead): the
     * start it forbids is not made, and its fallback is named, not run.
     */
    @Test
    void aPolicyRcDThatForbidsStartsIsObeyed(@TempDir Path tmp) throws Exception {
        String export = "iovirt-pkgpolicy";
        String unit = "iovirt-blk@" + export + ".service";
        Path fail = tmp.resolve("fail-prerm");
        Path failing = withFailingPrerm(deb, tmp, fail);
        try (AdminChanges admin = new AdminChanges(List.of());
                SystemdNamespace systemd = SystemdNamespace.boot(tmp)) {
            admin.deleteFirst(fail);
            policyRcD(systemd, tmp, ALLOW_ALL);
            inside(systemd, aptGet("install", failing.toString()), 900);
            admin.image(export);
            inside(systemd, List.of("systemctl", "start", unit), 300);
            Map<String, String> before = show(systemd, List.of(unit));
            policyRcD(systemd, tmp, FORBID_ALL_BUT_STOP);

            SystemdNamespace.Result reinstall = systemd.run(aptGet("install", "--reinstall", failing.toString()), 900);
            assertEquals(0, reinstall.exit(), () -> "the reinstall succeeds:\n" + reinstall.out());
            Map<String, String> reinstalled = show(systemd, List.of(unit));
            assertEquals("active", reinstalled.get(unit + " ActiveState"), () -> reinstalled + "\n" + reinstall.out());
            assertEquals(
                    before.get(unit + " InvocationID"),
                    reinstalled.get(unit + " InvocationID"),
                    () -> unit + " was restarted, which policy-rc.d forbids:\n" + reinstall.out());
            String asked = policyLog(systemd);
            assertTrue(asked.contains(unit + " try-restart"), "policy-rc.d asked about the restart:\n" + asked);

            Files.createFile(fail);
            abortedRemovalLeavesStopped(systemd, unit, "policy-rc.d");
            String askedAgain = policyLog(systemd);
            assertTrue(askedAgain.contains(unit + " start"), "policy-rc.d asked about the start:\n" + askedAgain);

            // 106: the start is not allowed either, and policy-rc.d names what to do instead (README.policy-rc.d).
            // The scripts took every answer but 101 as "run" and started what it forbade.
            inside(systemd, List.of("systemctl", "start", unit), 300);
            policyRcD(systemd, tmp, STOP_INSTEAD_OF_ALL_BUT_STOP);
            SystemdNamespace.Result again = abortedRemovalLeavesStopped(systemd, unit, "policy-rc.d (106)");
            assertTrue(
                    again.out().contains("fallback \"stop\""),
                    () -> "postinst names the fallback it did not run:\n" + again.out());
        }
    }

    /**
     * A chrootless install into another root ({@code dpkg --root} with {@code --force-script-chrootless}, as an image
     * is built: the maintainer scripts run here, with DPKG_ROOT naming that root) changes that root, not this machine.
     * The scripts looked at this machine: postinst found its user iovirt with getent and gave the image none, and a
     * purge removed this machine's daemon state and enablement links and left the image's. The root's name has a
     * blank, which the purge must keep inside the path.
     */
    @Test
    void aChrootlessInstallChangesItsRootOnly(@TempDir Path tmp) throws Exception {
        // A blank in its name: postrm's purge split DPKG_ROOT there and left the image's instance links.
        Path root = tmp.resolve("image root");
        for (String dir : List.of("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/log")) {
            Files.createDirectories(root.resolve(dir));
        }
        Files.writeString(root.resolve("var/lib/dpkg/status"), "");
        Files.createDirectories(root.resolve("etc"));
        Files.writeString(root.resolve("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
        Files.writeString(root.resolve("etc/group"), "root:x:0:\n");
        Files.writeString(root.resolve("etc/shadow"), "root:*:20000:0:99999:7:::\n");
        Files.writeString(root.resolve("etc/gshadow"), "root:*::\n");
        List<String> dpkg = List.of("env", "-u", "DPKG_ROOT", "dpkg", "--root=" + root, "--force-script-chrootless");
        // What a purge removes, in the image, and on this machine, where it must stay (created there if absent).
        String link = "etc/systemd/system/multi-user.target.wants/iovirt-blk@pkgroot.service";
        String state = "var/lib/iovirt/daemon-state.json";
        List<Path> created = new ArrayList<>();
        try {
            Path hostLink = createIfAbsent(Path.of("/").resolve(link), created);
            Path hostState = createIfAbsent(Path.of("/").resolve(state), created);
            List<String> install = new ArrayList<>(dpkg);
            // adduser: this machine's, which postinst must not use here (Depends are the image's, which has none)
            install.addAll(List.of("--force-depends", "--install", deb.toString()));
            Result installed = run(install, 300);
            assertEquals(0, installed.exit, installed.out);
            assertTrue(
                    Files.readString(root.resolve("etc/passwd")).contains("\niovirt:"),
                    "the image's user iovirt:\n" + Files.readString(root.resolve("etc/passwd")) + installed.out);
            String groups = Files.readString(root.resolve("etc/group"));
            assertTrue(groups.contains("\nkvm:") && groups.contains("\niovirt:"), "the image's groups:\n" + groups);
            assertTrue(
                    Files.isRegularFile(
                            root.resolve("var/lib/systemd/deb-systemd-helper-enabled/iovirt.service.dsh-also")),
                    "deb-systemd-helper recorded the image's iovirt.service links");

            Files.createDirectories(root.resolve(link).getParent());
            Files.createSymbolicLink(root.resolve(link), Path.of("/lib/systemd/system/iovirt-blk@.service"));
            Files.createDirectories(root.resolve(state).getParent());
            Files.writeString(root.resolve(state), "{}");
            List<String> purge = new ArrayList<>(dpkg);
            purge.addAll(List.of("--purge", "iovirt"));
            Result purged = run(purge, 300);
            assertEquals(0, purged.exit, purged.out);
            assertFalse(Files.exists(root.resolve(link), LinkOption.NOFOLLOW_LINKS), "the image's link: " + purged.out);
            assertFalse(Files.exists(root.resolve(state)), "the image's daemon state: " + purged.out);
            assertTrue(Files.isSymbolicLink(hostLink), hostLink + " on this machine, removed by the image's purge");
            assertTrue(Files.exists(hostState), hostState + " on this machine, removed by the image's purge");
        } finally {
            for (Path path : created.reversed()) {
                Files.deleteIfExists(path);
            }
        }
    }

    /**
     * {@code path} on this machine, a link to the unit file or an empty file like the daemon's state, if it is not
     * there; what was created, its directories first, goes into {@code created}.
     */
    private static Path createIfAbsent(Path path, List<Path> created) throws IOException {
        if (Files.exists(path, LinkOption.NOFOLLOW_LINKS)) {
            return path;
        }
        List<Path> dirs = new ArrayList<>();
        for (Path dir = path.getParent(); !Files.isDirectory(dir); dir = dir.getParent()) {
            dirs.addFirst(dir);
        }
        for (Path dir : dirs) {
            Files.createDirectory(dir);
            created.add(dir);
        }
        if (path.toString().endsWith(".service")) {
            Files.createSymbolicLink(path, Path.of("/lib/systemd/system/iovirt-blk@.service"));
        } else {
            Files.writeString(path, "{}");
        }
        created.add(path);
        return path;
    }

    /** policy-rc.d: logs what it is asked, allows everything. */
    private static final String ALLOW_ALL = "#!/bin/sh\necho \"$*\" >>/run/policy-rc.d.log\nexit 0\n";

    /** policy-rc.d: logs what it is asked, allows stop and forbids every other action (101). */
    private static final String FORBID_ALL_BUT_STOP =
            "#!/bin/sh\necho \"$*\" >>/run/policy-rc.d.log\ncase \"$2\" in stop) exit 0 ;; *) exit 101 ;; esac\n";

    /**
     * policy-rc.d: logs what it is asked, allows stop; every other action is not allowed and "stop" is its fallback
     * (106).
     */
    private static final String STOP_INSTEAD_OF_ALL_BUT_STOP = "#!/bin/sh\necho \"$*\" >>/run/policy-rc.d.log\n"
            + "case \"$2\" in stop) exit 0 ;; *) echo stop; exit 106 ;; esac\n";

    /**
     * {@code script} as /usr/sbin/policy-rc.d in the namespaces of {@code systemd} only: an overlay on /usr/sbin there
     * (its upper layer in {@code tmp}), so this machine's own policy-rc.d (a container's forbids every start) decides
     * nothing in the test, and is left as it is.
     */
    private static void policyRcD(SystemdNamespace systemd, Path tmp, String script) throws Exception {
        Path upper = tmp.resolve("usr-sbin-upper");
        Path work = tmp.resolve("usr-sbin-work");
        Files.createDirectories(upper);
        Files.createDirectories(work);
        // Whether the overlay is mounted is asked in the namespaces, not of tmp: it was mounted only when its upper
        // layer was new, and a second systemd booted on the same tmp then wrote this machine's policy-rc.d. The file
        // is written only once /usr/sbin there is this overlay.
        String ours = "findmnt -n -o OPTIONS --mountpoint /usr/sbin | grep -qF \"upperdir=$2,\"";
        String mount = "mount -t overlay overlay -o \"lowerdir=/usr/sbin,upperdir=$2,workdir=$3\" /usr/sbin";
        String write = "printf '%s' \"$1\" >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d";
        inside(
                systemd,
                List.of(
                        "sh",
                        "-c",
                        ours + " || " + mount + "; " + ours + " && " + write,
                        "sh",
                        script,
                        upper.toString(),
                        work.toString()),
                60);
    }

    /**
     * {@code apt-get remove} in the namespaces of {@code systemd} while prerm fails (its {@code fail-prerm} exists):
     * the removal fails, dpkg answers with {@code postinst abort-remove}, which succeeds, and the package stays
     * installed.
     */
    private static SystemdNamespace.Result abortedRemoval(SystemdNamespace systemd) throws Exception {
        SystemdNamespace.Result removal = systemd.run(aptGet("remove", "iovirt"), 900);
        assertNotEquals(0, removal.exit(), "the removal fails in prerm:\n" + removal.out());
        Result status = run(List.of("dpkg-query", "--showformat=${db:Status-Status}", "--show", "iovirt"), 60);
        assertEquals("installed", status.out.strip(), "postinst abort-remove succeeded: " + removal.out());
        return removal;
    }

    /**
     * {@link #abortedRemoval} under a policy-rc.d that forbids starts ({@code policy}, as the failure names it):
     * {@code unit}, which prerm stopped, is not started again by postinst abort-remove.
     */
    private static SystemdNamespace.Result abortedRemovalLeavesStopped(
            SystemdNamespace systemd, String unit, String policy) throws Exception {
        SystemdNamespace.Result removal = abortedRemoval(systemd);
        Map<String, String> after = show(systemd, List.of(unit));
        assertEquals(
                "inactive",
                after.get(unit + " ActiveState"),
                () -> unit + " was started again, which " + policy + " forbids:\n" + removal.out());
        return removal;
    }

    /** What policy-rc.d was asked in the namespaces of {@code systemd} ("UNIT ACTION" lines). */
    private static String policyLog(SystemdNamespace systemd) throws Exception {
        return systemd.run(List.of("cat", "/run/policy-rc.d.log"), 30).out();
    }

    /**
     * What a test under systemd changes on this machine as an administrator would, undone by {@link #close}: export
     * images in /var/lib/iovirt (the directory too, when it was not there), the enablement links of the units it
     * names that were not there before, other files; then this build is installed again, as the other tests expect
     * it (without systemd here, as {@link #buildAndInstall} did).
     */
    private static final class AdminChanges implements AutoCloseable {
        static final Path WANTS = Path.of("/etc/systemd/system/multi-user.target.wants");
        private static final Path STATE_DIR = Path.of("/var/lib/iovirt");
        private final boolean stateDirWasThere = Files.isDirectory(STATE_DIR);
        private final List<String> newLinks;
        private final List<Path> files = new ArrayList<>();

        /** {@code enabled}: the units the test enables. */
        AdminChanges(List<String> enabled) {
            newLinks = enabled.stream()
                    .filter(u -> !Files.isSymbolicLink(WANTS.resolve(u)))
                    .toList();
        }

        /** The image of export {@code name} where its unit looks: 64 MiB, the service user's. */
        Path image(String name) throws Exception {
            Path image = STATE_DIR.resolve(name + ".raw");
            files.add(image);
            Files.createDirectories(STATE_DIR);
            assertEquals(0, run(List.of("truncate", "-s", "64M", image.toString()), 30).exit);
            assertEquals(0, run(List.of("chown", "iovirt:kvm", image.toString()), 30).exit);
            assertEquals(0, run(List.of("chmod", "0660", image.toString()), 30).exit);
            return image;
        }

        /** {@code file} is deleted before the package is purged (a file the package's scripts look for). */
        void deleteFirst(Path file) {
            files.add(file);
        }

        @Override
        public void close() throws Exception {
            for (Path file : files) {
                Files.deleteIfExists(file);
            }
            for (String unit : newLinks) {
                Files.deleteIfExists(WANTS.resolve(unit));
            }
            if (!stateDirWasThere) {
                run(List.of("rm", "-rf", "--", STATE_DIR.toString()), 60);
            }
            run(aptGet("purge", "iovirt"), 900);
            Result back = run(aptGet("install", deb.toAbsolutePath().toString()), 900);
            assertEquals(0, back.exit, back.out);
        }
    }

    /**
     * This build as the version "+pkgtest2", with one line added at the end of its prerm, after the stop: it fails
     * while {@code fail} exists, as a prerm interrupted (Ctrl-C) while the stop completes does.
     */
    private static Path withFailingPrerm(Path deb, Path dir, Path fail) throws Exception {
        return repack(deb, dir, "+pkgtest2", tree -> {
            Path prerm = tree.resolve("DEBIAN/prerm");
            String text = Files.readString(prerm);
            int end = text.lastIndexOf("exit 0");
            assertTrue(end > 0, "prerm ends with exit 0:\n" + text);
            Files.writeString(
                    prerm,
                    text.substring(0, end) + "[ ! -e '" + fail + "' ] || { echo 'prerm fails (test)' >&2; exit 1; }\n"
                            + text.substring(end));
        });
    }

    /** A change to the unpacked package {@code tree} (its DEBIAN/ included). */
    private interface TreeEdit {
        void apply(Path tree) throws IOException;
    }

    /** The package as a next version: its version plus "+pkgtest1", and comment lines added to two unit files. */
    private static Path upgradeOf(Path deb, Path dir) throws Exception {
        return repack(deb, dir, "+pkgtest1", tree -> {
            for (String unit : List.of("iovirt.service", "iovirt-blk@.service")) {
                Path file = tree.resolve("lib/systemd/system").resolve(unit);
                Files.writeString(file, Files.readString(file) + "# changed by the upgrade\n");
            }
        });
    }

    /** {@code deb} unpacked in {@code dir}, changed by {@code edit}, its version plus {@code suffix}, built again. */
    private static Path repack(Path deb, Path dir, String suffix, TreeEdit edit) throws Exception {
        Path tree = dir.resolve("package" + suffix);
        Result unpacked = run(List.of("dpkg-deb", "--raw-extract", deb.toString(), tree.toString()), 120);
        assertEquals(0, unpacked.exit, unpacked.out);
        Path control = tree.resolve("DEBIAN/control");
        Files.writeString(control, Files.readString(control).replaceFirst("(?m)^(Version: .*)$", "$1" + suffix));
        edit.apply(tree);
        Path out = dir.resolve("iovirt" + suffix + ".deb");
        Result built = run(List.of("dpkg-deb", "--root-owner-group", "--build", tree.toString(), out.toString()), 300);
        assertEquals(0, built.exit, built.out);
        return out;
    }

    /** Runs {@code cmd} in the namespaces of {@code systemd}; it must succeed. */
    private static void inside(SystemdNamespace systemd, List<String> cmd, int seconds) throws Exception {
        SystemdNamespace.Result r = systemd.run(cmd, seconds);
        assertEquals(0, r.exit(), cmd + ":\n" + r.out() + "\n" + systemd.journal("iovirt*"));
    }

    /** ActiveState, NeedDaemonReload and InvocationID of each unit, as "UNIT PROPERTY" -> value. */
    private static Map<String, String> show(SystemdNamespace systemd, List<String> units) throws Exception {
        Map<String, String> props = new LinkedHashMap<>();
        for (String unit : units) {
            SystemdNamespace.Result r = systemd.run(
                    List.of("systemctl", "show", "--property=ActiveState,NeedDaemonReload,InvocationID", unit), 60);
            assertEquals(0, r.exit(), r.out());
            for (String line : r.out().strip().split("\n")) {
                int eq = line.indexOf('=');
                if (eq > 0) {
                    props.put(unit + " " + line.substring(0, eq), line.substring(eq + 1));
                }
            }
        }
        return props;
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
