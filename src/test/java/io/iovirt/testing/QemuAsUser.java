// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * QEMU as another user, the way Debian's libvirt runs it (qemu:///system: user libvirt-qemu, group libvirt-qemu,
 * supplementary groups from the user database, kvm among them): whether it can use an iovirt socket. Needs root.
 */
public final class QemuAsUser {
    public static final String LIBVIRT_QEMU = "libvirt-qemu";

    private QemuAsUser() {}

    /**
     * Creates what libvirt-daemon-system's postinst creates (Debian 12), if missing: group kvm, user libvirt-qemu in
     * it, and a group libvirt-qemu (qemu.conf's default group) with the user as member.
     */
    public static void debianLibvirtQemuUser() throws Exception {
        assertTrue("root".equals(System.getProperty("user.name")), "creates a user and switches to it: run as root");
        run("getent group kvm >/dev/null || groupadd --system kvm");
        run("id " + LIBVIRT_QEMU + " >/dev/null 2>&1 || useradd --system --gid kvm --home-dir /var/lib/libvirt"
                + " --no-create-home --shell /usr/sbin/nologin " + LIBVIRT_QEMU);
        run("getent group " + LIBVIRT_QEMU + " >/dev/null || groupadd --system " + LIBVIRT_QEMU);
        run("usermod -aG " + LIBVIRT_QEMU + " " + LIBVIRT_QEMU);
    }

    /**
     * The start of a command run as {@code user} the way libvirt runs QEMU: its own uid and group, supplementary
     * groups from the user database, no capabilities inherited.
     */
    public static List<String> asUser(String user) {
        return List.of("setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups", "--inh-caps=-all", "--");
    }

    /** Whether {@link #realizeVhostUserBlk}'s answer says the device was realized. */
    public static boolean realized(String answer) {
        return answer.startsWith("{\"return\": [") && answer.contains("\"qdev_id\": \"blk0\"");
    }

    /**
     * Starts QEMU as {@code user} the way libvirt does (its own group, supplementary groups from the user database)
     * with a vhost-user-blk device on {@code socket} and QMP on stdio; returns its query-pci answer once QEMU has
     * realized its devices, or everything QEMU printed before it exited.
     */
    public static String realizeVhostUserBlk(String user, Path socket) throws Exception {
        List<String> cmd = new ArrayList<>(asUser(user));
        cmd.addAll(List.of(
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
                "stdio"));
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

    /** Runs {@code script} with sh -c; fails the test if it does not exit 0 within a minute. */
    public static void run(String script) throws Exception {
        Process p =
                new ProcessBuilder("sh", "-c", script).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), script + " hung");
        assertEquals(0, p.exitValue(), script + ":\n" + out);
    }
}
