// SPDX-License-Identifier: Apache-2.0
package io.iovirt.packaging;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.daemon.RpcClient;
import io.iovirt.linux.SdNotify;
import io.iovirt.linux.UnixSocket;
import io.iovirt.testing.QemuAsUser;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The shipped units let Debian's libvirt in, unchanged: QEMU as qemu:///system starts it (user libvirt-qemu, group
 * libvirt-qemu, and through the user's primary group kvm — as libvirt-daemon-system 9.0 creates them) realizes a
 * vhost-user-blk device on the socket each unit's ExecStart makes, run as systemd runs it (Environment=, the shipped
 * /etc/default/iovirt, the unit's directories mapped into a temp dir, the runtime directory mode 0750 group kvm as
 * RuntimeDirectory= and Group= make it). QEMU 7.2 reads the disk's configuration from the backend while it realizes
 * the device, so its answer to a QMP query means the whole chain held: the socket file's group let it connect and the backend
 * served its uid. The backend runs as root here (the test's class path is not readable by a service user); its own
 * uid is on the allow-list either way, so what decides is what the unit passes for QEMU's.
 */
@Tag("peer") // qemu-system-x86_64 as another user, a real backend process
@Timeout(600)
class SystemdUnitsLibvirtQemuTest {
    static final String QEMU_USER = QemuAsUser.LIBVIRT_QEMU;
    private static final Duration START = Duration.ofSeconds(240);

    @org.junit.jupiter.api.io.TempDir
    Path dir;

    @BeforeAll
    static void libvirtQemuUser() throws Exception {
        QemuAsUser.debianLibvirtQemuUser();
    }

    /** The directories systemd gives a unit's processes, under the temp dir: state, runtime, /etc/iovirt, /etc/default. */
    record Dirs(Path state, Path run, Path etc, Path etcDefault) {
        Map<String, Path> map(SystemdStandbyPairTest.Unit unit) {
            return Map.of(
                    "/var/lib/" + unit.one("StateDirectory") + "/",
                    state,
                    "/run/" + unit.one("RuntimeDirectory") + "/",
                    run,
                    "/etc/iovirt/",
                    etc,
                    "/etc/default/",
                    etcDefault);
        }
    }

    /** Creates them as systemd would for {@code unit} (the runtime directory's mode and group), /etc/default/iovirt
     * as the package installs it, and a 16 MiB image vm1.raw in the state directory. */
    Dirs dirs(SystemdStandbyPairTest.Unit unit) throws Exception {
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxr-xr-x"));
        Dirs d = new Dirs(
                Files.createDirectories(dir.resolve("state")),
                Files.createDirectories(dir.resolve("run")),
                Files.createDirectories(dir.resolve("etc")),
                Files.createDirectories(dir.resolve("etc-default")));
        // RuntimeDirectoryMode= and Group=: the directory QEMU must traverse to reach the socket
        QemuAsUser.run("chgrp " + unit.one("Group") + " " + d.run());
        Files.setPosixFilePermissions(d.run(), permissions(unit.one("RuntimeDirectoryMode")));
        Files.copy(
                Path.of("packaging/etc/default/iovirt"),
                d.etcDefault().resolve("iovirt"),
                StandardCopyOption.REPLACE_EXISTING);
        try (RandomAccessFile f =
                new RandomAccessFile(d.state().resolve("vm1.raw").toFile(), "rw")) {
            f.setLength(16L << 20);
        }
        return d;
    }

    /** An octal mode such as 0750 as file permissions. */
    static java.util.Set<java.nio.file.attribute.PosixFilePermission> permissions(String octal) {
        int mode = Integer.parseInt(octal, 8);
        StringBuilder b = new StringBuilder();
        for (int shift = 6; shift >= 0; shift -= 3) {
            b.append((mode >> shift & 4) != 0 ? 'r' : '-')
                    .append((mode >> shift & 2) != 0 ? 'w' : '-')
                    .append((mode >> shift & 1) != 0 ? 'x' : '-');
        }
        return PosixFilePermissions.fromString(b.toString());
    }

    /** Starts the unit's ExecStart as systemd would, with $NOTIFY_SOCKET at {@code notify}. */
    ChildProcess start(SystemdStandbyPairTest.Unit unit, Dirs d, Path notify, String log) throws Exception {
        assertEquals(
                "notify", unit.one("Type"), unit.name() + ": a service others are ordered after says when it is ready");
        assertEquals("main", unit.one("NotifyAccess"), unit.name());
        List<String> args = new ArrayList<>();
        for (String a : SystemdStandbyPairTest.arguments(unit, d.map(unit))) {
            args.add(a.equals("127.0.0.1:9400") ? "127.0.0.1:0" : a); // any free port for the metrics
        }
        return ChildProcess.builder(IovirtCli.command(args))
                .name(unit.name())
                .log(dir.resolve(log))
                .env("NOTIFY_SOCKET", notify.toString())
                .start();
    }

    /** The notifications up to the first with {@code line} (a whole line, e.g. READY=1); fails if none comes. */
    static List<String> until(SdNotify.Listener l, String line, ChildProcess p) throws Exception {
        List<String> seen = new ArrayList<>();
        while (true) {
            String m = l.receive();
            assertTrue(m != null, p + ": no notification with " + line + "; saw " + seen + "\n" + p.logTail(20));
            seen.add(m);
            if (m.lines().anyMatch(line::equals)) {
                return seen;
            }
        }
    }

    /** The shipped service templates. */
    static List<String> services() {
        return List.of(
                "iovirt-blk@.service",
                "iovirt-blk-standby-a@.service",
                "iovirt-blk-standby-b@.service",
                "iovirt.service");
    }

    @ParameterizedTest
    @MethodSource("services")
    void readyMeansTheSocketListensAndQemuAsLibvirtQemuIsServed(String template) throws Exception {
        SystemdStandbyPairTest.Unit unit = SystemdStandbyPairTest.Unit.load(template, "vm1");
        Dirs d = dirs(unit);
        Path socket = d.run().resolve("vm1.sock");
        if (template.equals("iovirt.service")) {
            Files.writeString(
                    d.etc().resolve("daemon.json"),
                    "{\"blk\": [{\"id\": \"vm1\", \"image\": \"" + d.state().resolve("vm1.raw") + "\", \"socket\": \""
                            + socket + "\"}]}\n");
        }
        Path notify = dir.resolve("notify.sock");
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, START.toMillis());
                ChildProcess backend = start(unit, d, notify, "backend.log")) {
            until(systemd, "READY=1", backend);
            // what a unit ordered After= this one (libvirtd, and the guests it autostarts) may now count on
            assertTrue(UnixSocket.listenedOn(socket), unit.name() + " said READY=1 before " + socket + " listened");
            String qemu = QemuAsUser.realizeVhostUserBlk(QEMU_USER, socket);
            assertTrue(
                    QemuAsUser.realized(qemu),
                    unit.name() + ": QEMU as " + QEMU_USER + " did not realize its vhost-user-blk device:\n" + qemu
                            + "\n--- backend ---\n" + backend.logTail(20));
        }
    }

    /**
     * A standby member is ready once it stands by behind the serving one (the pair's target, and libvirt after it,
     * must not wait for a takeover that may never come), and says so; both tell STOPPING=1 at SIGTERM.
     */
    @org.junit.jupiter.api.Test
    void aStandbyMemberIsReadyWhileItStandsBy() throws Exception {
        SystemdStandbyPairTest.Unit a = SystemdStandbyPairTest.Unit.load("iovirt-blk-standby-a@.service", "vm1");
        SystemdStandbyPairTest.Unit b = SystemdStandbyPairTest.Unit.load("iovirt-blk-standby-b@.service", "vm1");
        Dirs d = dirs(a);
        try (SdNotify.Listener systemdA = new SdNotify.Listener(dir.resolve("a.notify"), START.toMillis());
                SdNotify.Listener systemdB = new SdNotify.Listener(dir.resolve("b.notify"), START.toMillis());
                ChildProcess pa = start(a, d, dir.resolve("a.notify"), "a.log")) {
            assertTrue(String.join("\n", until(systemdA, "READY=1", pa)).contains("STATUS=serving "));
            try (ChildProcess pb = start(b, d, dir.resolve("b.notify"), "b.log")) {
                List<String> seen = until(systemdB, "READY=1", pb);
                assertTrue(String.join("\n", seen).contains("STATUS=standing by for "), seen.toString());
                for (ChildProcess p : List.of(pa, pb)) {
                    QemuAsUser.run("kill -TERM " + p.pid());
                }
                until(systemdA, "STOPPING=1", pa);
                assertTrue(pa.waitFor(START) && pa.exitValue() == 0, pa.logTail(20));
                assertTrue(pb.waitFor(START) && pb.exitValue() == 0, pb.logTail(20));
            }
        }
    }

    /**
     * Every service is ordered before libvirt and libvirt-guests: started first (libvirt autostarts guests as soon as
     * it runs), stopped after libvirt-guests shut the guests down. libvirt-guests.service (libvirt 9.0) is ordered
     * after libvirt's sockets only, so without its own entry a backend stopped while the guests still shut down.
     */
    @ParameterizedTest
    @MethodSource("services")
    void servicesAreOrderedBeforeLibvirtAndLibvirtGuests(String template) throws Exception {
        SystemdStandbyPairTest.Unit unit = SystemdStandbyPairTest.Unit.load(template, "vm1");
        assertTrue(
                unit.deps("Before")
                        .containsAll(List.of("libvirtd.service", "virtqemud.service", "libvirt-guests.service")),
                unit.name() + ": Before=" + unit.deps("Before"));
    }

    /**
     * iovirt.service's ExecReload, run as systemd runs it: when it returns the file is applied (systemd 252 ends the
     * reload job when this process exits), and a file the daemon refuses makes it fail with the reason, the running
     * devices unchanged.
     */
    @org.junit.jupiter.api.Test
    void reloadReturnsOnceTheConfigurationIsAppliedAndFailsWhenItIsRefused() throws Exception {
        SystemdStandbyPairTest.Unit unit = SystemdStandbyPairTest.Unit.load("iovirt.service", "x");
        Dirs d = dirs(unit);
        Path config = d.etc().resolve("daemon.json");
        Files.copy(Path.of("packaging/etc/iovirt/daemon.json"), config);
        Path notify = dir.resolve("notify.sock");
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, START.toMillis());
                ChildProcess daemon = start(unit, d, notify, "daemon.log")) {
            until(systemd, "READY=1", daemon);
            Path control = d.run().resolve("control");
            Files.writeString(
                    config,
                    "{\"blk\": [{\"id\": \"vm1\", \"image\": \"" + d.state().resolve("vm1.raw") + "\", \"socket\": \""
                            + d.run().resolve("vm1.sock") + "\"}]}\n");
            ChildProcess.Builder reload = execReload(unit, d, daemon);
            try (ChildProcess r = reload.log(dir.resolve("reload-1.log")).start()) {
                assertTrue(r.waitFor(START), "ExecReload hung");
                assertEquals(0, r.exitValue(), r.log());
            }
            assertEquals(List.of("vm1"), blkIds(control), "applied when ExecReload returned\n" + daemon.logTail(10));

            Files.writeString(config, "{\"blk\": [");
            try (ChildProcess r = reload.log(dir.resolve("reload-2.log")).start()) {
                assertTrue(r.waitFor(START), "ExecReload hung");
                assertTrue(r.exitValue() != 0, "a refused file must fail the reload:\n" + r.log());
                assertTrue(r.log().contains("is not valid JSON"), r.log());
                assertTrue(r.log().contains("the running configuration is unchanged"), r.log());
            }
            assertEquals(List.of("vm1"), blkIds(control));
        }
    }

    /**
     * iovirt.service keeps what the API adds: run as systemd runs it, a disk added through the control socket is in
     * the unit's state directory (mode 0600) and, after a SIGKILL (a crash before Restart=on-failure), the same
     * ExecStart brings it back as a device of the API, its socket served to QEMU as libvirt-qemu.
     */
    @org.junit.jupiter.api.Test
    void apiDevicesSurviveARestartOfTheUnit() throws Exception {
        SystemdStandbyPairTest.Unit unit = SystemdStandbyPairTest.Unit.load("iovirt.service", "x");
        Dirs d = dirs(unit);
        Files.copy(Path.of("packaging/etc/iovirt/daemon.json"), d.etc().resolve("daemon.json"));
        Path control = d.run().resolve("control");
        Path socket = d.run().resolve("vm1.sock");
        Path notify = dir.resolve("notify.sock");
        try (SdNotify.Listener systemd = new SdNotify.Listener(notify, START.toMillis())) {
            try (ChildProcess daemon = start(unit, d, notify, "daemon-1.log")) {
                until(systemd, "READY=1", daemon);
                try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                    c.call(
                            "blk.add",
                            Map.of(
                                    "id",
                                    "vm1",
                                    "image",
                                    d.state().resolve("vm1.raw").toString(),
                                    "socket",
                                    socket.toString()));
                }
                Path state = d.state().resolve("daemon-state.json");
                assertTrue(Files.readString(state).contains("\"vm1\""), Files.readString(state));
                assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(state)));
                daemon.kill();
            }
            try (ChildProcess daemon = start(unit, d, notify, "daemon-2.log")) {
                until(systemd, "READY=1", daemon);
                assertEquals(List.of("vm1"), blkIds(control), daemon.logTail(20));
                try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
                    assertEquals("api", ((Map<?, ?>) c.call("blk.info", Map.of("id", "vm1"))).get("origin"));
                }
                String qemu = QemuAsUser.realizeVhostUserBlk(QEMU_USER, socket);
                assertTrue(QemuAsUser.realized(qemu), qemu + "\n--- backend ---\n" + daemon.logTail(20));
            }
        }
    }

    /** The unit's ExecReload as systemd runs it ($MAINPID, the directories mapped), not yet started. */
    private ChildProcess.Builder execReload(SystemdStandbyPairTest.Unit unit, Dirs d, ChildProcess main) {
        List<String> argv = new ArrayList<>();
        for (String a : SystemdStandbyPairTest.execStart(
                unit.one("ExecReload"), Map.of("MAINPID", Long.toString(main.pid())))) {
            argv.add(SystemdStandbyPairTest.mapped(a, d.map(unit)));
        }
        List<String> cmd =
                argv.getFirst().equals("/usr/bin/iovirt") ? IovirtCli.command(argv.subList(1, argv.size())) : argv;
        return ChildProcess.builder(cmd).name(unit.name() + " ExecReload");
    }

    private static List<String> blkIds(Path control) throws Exception {
        try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(30))) {
            List<String> ids = new ArrayList<>();
            for (Object e : (List<?>) c.call("blk.list", Map.of())) {
                ids.add((String) ((Map<?, ?>) e).get("id"));
            }
            return ids;
        }
    }
}
