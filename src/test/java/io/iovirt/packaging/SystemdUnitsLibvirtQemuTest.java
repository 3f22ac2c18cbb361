// SPDX-License-Identifier: Apache-2.0
package io.iovirt.packaging;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import io.iovirt.vm.UnixSockets;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

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
    static final String QEMU_USER = "libvirt-qemu";
    private static final Duration START = Duration.ofSeconds(240);
    /** The device in query-pci's answer. */
    static final String VIRTIO_BLK = "\"qdev_id\": \"blk0\"";

    @org.junit.jupiter.api.io.TempDir
    Path dir;

    @BeforeAll
    static void libvirtQemuUser() throws Exception {
        assertTrue("root".equals(System.getProperty("user.name")), "creates a user and switches to it: run as root");
        // What libvirt-daemon-system's postinst does (Debian 12): group kvm, user libvirt-qemu in it, and a group
        // libvirt-qemu (qemu.conf's default group) with the user as member.
        run("getent group kvm >/dev/null || groupadd --system kvm");
        run("id " + QEMU_USER + " >/dev/null 2>&1 || useradd --system --gid kvm --home-dir /var/lib/libvirt"
                + " --no-create-home --shell /usr/sbin/nologin " + QEMU_USER);
        run("getent group " + QEMU_USER + " >/dev/null || groupadd --system " + QEMU_USER);
        run("usermod -aG " + QEMU_USER + " " + QEMU_USER);
    }

    @ParameterizedTest
    @ValueSource(
            strings = {
                "iovirt-blk@.service",
                "iovirt-blk-standby-a@.service",
                "iovirt-blk-standby-b@.service",
                "iovirt.service"
            })
    void qemuAsLibvirtQemuIsServed(String template) throws Exception {
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxr-xr-x"));
        SystemdStandbyPairTest.Unit unit = SystemdStandbyPairTest.Unit.load(template, "vm1");
        String runtime = unit.one("RuntimeDirectory");
        Path state = Files.createDirectories(dir.resolve("state"));
        Path run = Files.createDirectories(dir.resolve("run"));
        Path etc = Files.createDirectories(dir.resolve("etc"));
        Path etcDefault = Files.createDirectories(dir.resolve("etc-default"));
        // RuntimeDirectoryMode= and Group=: the directory QEMU must traverse to reach the socket
        run("chgrp " + unit.one("Group") + " " + run);
        Files.setPosixFilePermissions(run, PosixFilePermissions.fromString("rwxr-x---"));
        Files.copy(
                Path.of("packaging/etc/default/iovirt"),
                etcDefault.resolve("iovirt"),
                StandardCopyOption.REPLACE_EXISTING);
        try (RandomAccessFile f = new RandomAccessFile(state.resolve("vm1.raw").toFile(), "rw")) {
            f.setLength(16L << 20);
        }
        Path socket = run.resolve("vm1.sock");
        if (template.equals("iovirt.service")) {
            Files.writeString(
                    etc.resolve("daemon.json"),
                    "{\"blk\": [{\"id\": \"vm1\", \"image\": \"" + state.resolve("vm1.raw") + "\", \"socket\": \""
                            + socket + "\"}]}\n");
        }
        List<String> args = new ArrayList<>();
        for (String a : SystemdStandbyPairTest.arguments(
                unit,
                Map.of(
                        "/var/lib/" + unit.one("StateDirectory") + "/",
                        state,
                        "/run/" + runtime + "/",
                        run,
                        "/etc/iovirt/",
                        etc,
                        "/etc/default/",
                        etcDefault))) {
            args.add(a.equals("127.0.0.1:9400") ? "127.0.0.1:0" : a); // any free port for the metrics
        }
        try (ChildProcess backend = ChildProcess.builder(IovirtCli.command(args))
                .name(unit.name())
                .log(dir.resolve("backend.log"))
                .start()) {
            UnixSockets.awaitListening(socket, backend, START);
            String qemu = qemuAs(QEMU_USER, socket);
            assertTrue(
                    qemu.startsWith("{\"return\": [") && qemu.contains(VIRTIO_BLK),
                    unit.name() + ": QEMU as " + QEMU_USER + " did not realize its vhost-user-blk device:\n" + qemu
                            + "\n--- backend ---\n" + backend.logTail(20));
        }
    }

    /**
     * Starts QEMU as {@code user} the way libvirt does (its own group, supplementary groups from the user database)
     * with a vhost-user-blk device on {@code socket} and QMP on stdio; returns its query-pci answer once QEMU has
     * realized its devices, or everything QEMU printed before it exited.
     */
    static String qemuAs(String user, Path socket) throws Exception {
        List<String> cmd = List.of(
                "setpriv",
                "--reuid=" + user,
                "--regid=" + user,
                "--init-groups",
                "--inh-caps=-all",
                "--",
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-machine",
                "q35",
                "-m",
                "128",
                "-object",
                "memory-backend-memfd,id=mem,size=128M,share=on",
                "-numa",
                "node,memdev=mem",
                "-nodefaults",
                "-display",
                "none",
                "-S",
                "-chardev",
                "socket,id=c0,path=" + socket,
                "-device",
                "vhost-user-blk-pci,id=blk0,chardev=c0,num-queues=1",
                "-qmp",
                "stdio");
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try (BufferedReader out =
                new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
            // QEMU greets on stdio before it realizes the devices; commands are answered from the main loop, which
            // runs only once every device is realized (a failed one makes QEMU exit instead).
            p.getOutputStream()
                    .write(("{\"execute\": \"qmp_capabilities\"}\n{\"execute\": \"query-pci\"}\n")
                            .getBytes(StandardCharsets.UTF_8));
            p.getOutputStream().flush();
            StringBuilder seen = new StringBuilder();
            for (String line = out.readLine(); line != null; line = out.readLine()) {
                if (line.startsWith("{\"return\": [")) {
                    return line;
                }
                seen.append(line).append('\n');
            }
            return seen.toString();
        } finally {
            p.destroyForcibly();
            p.waitFor(30, TimeUnit.SECONDS);
        }
    }

    static void run(String script) throws Exception {
        Process p =
                new ProcessBuilder("sh", "-c", script).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), script + " hung");
        assertEquals(0, p.exitValue(), script + ":\n" + out);
    }
}
