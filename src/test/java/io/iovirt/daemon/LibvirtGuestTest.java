// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.QemuAsUser;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.QemuGuest;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A real libvirt (Debian's libvirtd 9.0, QEMU driver, session mode — started by this test, no systemd) boots a TCG
 * domain whose disk and NIC are served by {@code iovirt daemon}, from the XML {@code libvirt-xml} produced — and
 * nothing runs as root: the daemon runs as the service user {@value #SVC}, libvirtd and QEMU as {@value #VM}, and
 * the only link between them is the group {@value #GROUP} that owns the device sockets (--socket-group, mode 0660).
 * The guest reads what the host wrote on the disk, writes data the host then finds in the image, and announces
 * itself on the NIC so the switch learns its MAC on the port.
 */
@Tag("guest")
@Timeout(900)
class LibvirtGuestTest {
    static final String SVC = "iovirt-svc";
    static final String VM = "iovirt-vm";
    static final String GROUP = "iovirt-sock";
    static final String MAC = "52:54:00:00:0c:99";

    @TempDir
    Path dir;

    static GuestImage image;

    @BeforeAll
    static void requirements() throws Exception {
        assertTrue("root".equals(System.getProperty("user.name")), "creates users and switches to them: run as root");
        for (String p :
                new String[] {"/usr/sbin/libvirtd", "/usr/bin/virsh", "/usr/bin/setpriv", "/usr/sbin/useradd"}) {
            assertTrue(Files.isExecutable(Path.of(p)), p + " is missing: run scripts/install-deps.sh");
        }
        run(List.of("sh", "-c", "getent group " + GROUP + " >/dev/null || groupadd --system " + GROUP));
        for (String u : new String[] {SVC, VM}) {
            run(List.of(
                    "sh",
                    "-c",
                    "id " + u + " >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "
                            + "--groups " + GROUP + " " + u));
            run(List.of("usermod", "-aG", GROUP, u));
        }
        image = GuestImage.ensure();
    }

    static String run(List<String> cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), String.join(" ", cmd) + " hung");
        assertEquals(0, p.exitValue(), String.join(" ", cmd) + ":\n" + out);
        return out;
    }

    /** {@code cmd} as {@code user} (its groups from /etc/group), with a fixed environment. */
    List<String> as(String user, Map<String, String> env, String... cmd) {
        List<String> c = new ArrayList<>(QemuAsUser.asUser(user));
        c.addAll(List.of("env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"));
        env.forEach((k, v) -> c.add(k + "=" + v));
        c.addAll(List.of(cmd));
        return c;
    }

    static void chown(Path p, String owner, String perms) throws Exception {
        run(List.of("chown", owner, p.toString()));
        Files.setPosixFilePermissions(p, PosixFilePermissions.fromString(perms));
    }

    @Test
    void libvirtBootsAGuestOnIovirtDevicesWithNothingRunningAsRoot() throws Exception {
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxr-xr-x"));
        // the daemon's code, readable by the service user (the test's class path lives under /root)
        Path cp = Files.createDirectories(dir.resolve("cp"));
        List<String> cpEntries = new ArrayList<>();
        for (String e : System.getProperty("java.class.path").split(":")) {
            Path src = Path.of(e);
            if (e.endsWith("target/classes")) {
                Path dst = cp.resolve("classes");
                try (Stream<Path> s = Files.walk(src)) {
                    for (Path f : (Iterable<Path>) s::iterator) {
                        Path t = dst.resolve(src.relativize(f).toString());
                        if (Files.isDirectory(f)) {
                            Files.createDirectories(t);
                        } else {
                            Files.copy(f, t, StandardCopyOption.REPLACE_EXISTING);
                        }
                    }
                }
                cpEntries.add(dst.toString());
            } else if (src.getFileName().toString().startsWith("picocli-")
                    || src.getFileName().toString().equals("iovirt.jar")) {
                // under Failsafe the project is on the class path as its packaged jar
                cpEntries.add(Files.copy(src, cp.resolve(src.getFileName())).toString());
            }
        }
        run(List.of("chmod", "-R", "a+rX", cp.toString()));
        // the service user's state: images and the socket directory (group-traversable for QEMU)
        Path images = Files.createDirectories(dir.resolve("images"));
        Path disk = images.resolve("disk.raw");
        byte[] hostPattern = pattern("iovirt-host-for-libvirt", 1 << 20);
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(64L << 20);
            f.seek(8L << 20);
            f.write(hostPattern);
        }
        chown(disk, SVC + ":" + SVC, "rw-------");
        chown(images, SVC + ":" + SVC, "rwx------");
        Path run = Files.createDirectories(dir.resolve("run"));
        chown(run, SVC + ":" + GROUP, "rwxr-x---");
        Path control = run.resolve("control.sock");

        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        try (ChildProcess daemon = ChildProcess.builder(as(
                        SVC,
                        Map.of(),
                        java,
                        "--enable-native-access=ALL-UNNAMED",
                        "-XX:+UseSerialGC",
                        "-cp",
                        String.join(":", cpEntries),
                        "io.iovirt.cli.Main",
                        "daemon",
                        "--control",
                        control.toString(),
                        "--socket-group",
                        GROUP,
                        "--allow-uid",
                        Integer.toString(uid(VM))))
                .name("iovirt daemon as " + SVC)
                .log(dir.resolve("daemon.log"))
                .startListening(control, Duration.ofSeconds(60))) {
            // a connection per request: the daemon drops control clients idle for 60 s, and the guest boot takes longer
            Rpc ctl = (method, params) -> {
                try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(60))) {
                    return c.call(method, params);
                }
            };
            assertEquals(uid(SVC), statusUid(daemon.pid()), "the daemon is not running as " + SVC);
            ctl.call(
                    "blk.add",
                    Map.of(
                            "id",
                            "disk",
                            "image",
                            disk.toString(),
                            "socket",
                            run.resolve("disk.sock").toString()));
            ctl.call("net.add", Map.of("id", "sw"));
            ctl.call(
                    "net.port.add",
                    Map.of(
                            "net",
                            "sw",
                            "id",
                            "vm",
                            "kind",
                            "vhost-user",
                            "path",
                            run.resolve("nic.sock").toString(),
                            "mac",
                            MAC));
            for (String s : new String[] {"disk.sock", "nic.sock"}) {
                Path sock = run.resolve(s);
                assertEquals("rw-rw----", PosixFilePermissions.toString(Files.getPosixFilePermissions(sock)), s);
                assertEquals(GROUP, Files.getAttribute(sock, "posix:group").toString(), s);
                assertEquals(SVC, Files.getOwner(sock).getName(), s);
            }

            // libvirt's side, all owned by the VM user
            Path lv = Files.createDirectories(dir.resolve("lv"));
            Path kernel = Files.copy(image.kernel(), lv.resolve("vmlinux"));
            QemuGuest guest = QemuGuest.builder(image)
                    .name("libvirt")
                    .modules("virtio_pci", "virtio_blk", "virtio_net")
                    .payload("""
                            for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
                            echo "iovirt-test: sha=$(dd if=/dev/vda bs=1M skip=8 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
                            yes iovirt-libvirt-guest-wrote-this | head -c 1048576 > /tmp/p
                            dd if=/tmp/p of=/dev/vda bs=1M seek=16 oflag=direct conv=fsync 2>/dev/null
                            for i in $(seq 200); do IF=$(ls /sys/class/net | grep -v '^lo$' | head -1); [ -n "$IF" ] && break; sleep 0.1; done
                            echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
                            ip addr add 10.0.99.2/24 dev $IF
                            ip link set $IF up
                            for i in $(seq 200); do [ "$(cat /sys/class/net/$IF/operstate)" = up ] && break; sleep 0.1; done
                            echo "iovirt-test: mac=$(cat /sys/class/net/$IF/address)"
                            arping -U -c 3 -I $IF 10.0.99.2 >/dev/null 2>&1 || true
                            echo "iovirt-test: done"
                            sleep 600
                            """)
                    .build();
            Path initrd = lv.resolve("initrd.cpio");
            String cmdline = guest.exportBoot(initrd);
            Path console = lv.resolve("console.log");
            Map<?, ?> xmlReply = (Map<?, ?>) ctl.call(
                    "libvirt-xml",
                    Map.of(
                            "id",
                            "disk,sw/vm",
                            "name",
                            "iovirt-lv",
                            "memory",
                            256L,
                            "kernel",
                            kernel.toString(),
                            "initrd",
                            initrd.toString(),
                            "cmdline",
                            cmdline,
                            "console",
                            console.toString()));
            Path xml = lv.resolve("domain.xml");
            Files.writeString(xml, (String) xmlReply.get("xml"));
            LibvirtXmlTest.validate(dir, (String) xmlReply.get("xml"));
            Path cfg = Files.createDirectories(lv.resolve("config/libvirt"));
            Files.writeString(cfg.resolve("qemu.conf"), "stdio_handler = \"file\"\n"); // no virtlogd needed
            Map<String, String> env = Map.of(
                    "HOME",
                    lv.resolve("home").toString(),
                    "XDG_RUNTIME_DIR",
                    lv.resolve("xdg-run").toString(),
                    "XDG_CONFIG_HOME",
                    lv.resolve("config").toString(),
                    "XDG_CACHE_HOME",
                    lv.resolve("cache").toString(),
                    "XDG_DATA_HOME",
                    lv.resolve("data").toString());
            for (String d : new String[] {"home", "xdg-run", "cache", "data"}) {
                Files.createDirectories(lv.resolve(d));
            }
            run(List.of("chown", "-R", VM + ":" + VM, lv.toString()));
            run(List.of("chmod", "-R", "go-rwx", lv.resolve("xdg-run").toString()));
            Path sock = lv.resolve("xdg-run/libvirt/libvirt-sock");
            try (ChildProcess libvirtd = ChildProcess.builder(as(VM, env, "libvirtd"))
                    .name("libvirtd as " + VM)
                    .log(dir.resolve("libvirtd.log"))
                    .startListening(sock, Duration.ofSeconds(120))) {
                String virsh = "virsh";
                run(as(VM, env, virsh, "-c", "qemu:///session", "define", xml.toString()));
                try {
                    run(as(VM, env, virsh, "-c", "qemu:///session", "start", "iovirt-lv"));
                    assertEquals(
                            "running",
                            run(as(VM, env, virsh, "-c", "qemu:///session", "domstate", "iovirt-lv"))
                                    .trim());
                    String out = awaitFile(console, "iovirt-test: done", Duration.ofSeconds(400));
                    assertEquals(sha256(hostPattern), field(out, "sha"), "the guest read the host's data:\n" + out);
                    assertEquals(MAC, field(out, "mac"));
                    assertEquals(
                            "running",
                            run(as(VM, env, virsh, "-c", "qemu:///session", "domstate", "iovirt-lv"))
                                    .trim());
                    Map<?, ?> info = (Map<?, ?>) ctl.call("blk.info", Map.of("id", "disk"));
                    assertEquals(true, info.get("connected"));
                    long qemuPid = (Long) info.get("frontend_pid");
                    assertEquals(uid(VM), statusUid(qemuPid), "QEMU is not running as " + VM);
                    // the guest's announcement reached the switch through the vhost-user NIC
                    boolean learned = false;
                    for (int i = 0; i < 100 && !learned; i++) {
                        for (Object o : (List<?>) ctl.call("net.macs", Map.of("net", "sw"))) {
                            learned |=
                                    MAC.equals(((Map<?, ?>) o).get("mac")) && "vm".equals(((Map<?, ?>) o).get("port"));
                        }
                        Thread.sleep(100);
                    }
                    assertTrue(
                            learned,
                            "the switch never learned the guest's MAC: " + ctl.call("net.macs", Map.of("net", "sw")));
                } finally {
                    new ProcessBuilder(as(VM, env, virsh, "-c", "qemu:///session", "destroy", "iovirt-lv"))
                            .start()
                            .waitFor();
                    new ProcessBuilder(as(VM, env, virsh, "-c", "qemu:///session", "undefine", "iovirt-lv"))
                            .start()
                            .waitFor();
                }
            }
            byte[] written = new byte[1 << 20];
            try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "r")) {
                f.seek(16L << 20);
                f.readFully(written);
            }
            assertEquals(
                    sha256(pattern("iovirt-libvirt-guest-wrote-this", 1 << 20)),
                    sha256(written),
                    "the guest's write on the host");
            assertTrue(daemon.isAlive(), daemon.logTail(30));
        }
    }

    static String awaitFile(Path file, String marker, Duration timeout) throws Exception {
        long end = System.nanoTime() + timeout.toNanos();
        String text = "";
        while (System.nanoTime() < end) {
            if (Files.exists(file)) {
                text = Files.readString(file, StandardCharsets.ISO_8859_1);
                if (text.contains(marker)) {
                    return text;
                }
            }
            Thread.sleep(200);
        }
        throw new AssertionError("'" + marker + "' did not appear in " + file + " within " + timeout + ":\n" + text);
    }

    static String field(String console, String key) {
        Matcher m = Pattern.compile("iovirt-test: " + key + "=(\\S+)").matcher(console);
        assertTrue(m.find(), key + " missing:\n" + console);
        return m.group(1);
    }

    static int uid(String user) throws Exception {
        return Integer.parseInt(run(List.of("id", "-u", user)).trim());
    }

    static int statusUid(long pid) throws Exception {
        for (String l : Files.readAllLines(Path.of("/proc/" + pid + "/status"))) {
            if (l.startsWith("Uid:")) {
                return Integer.parseInt(l.split("\\s+")[1]);
            }
        }
        throw new AssertionError("no Uid in /proc/" + pid + "/status");
    }

    static byte[] pattern(String line, int size) {
        byte[] l = (line + "\n").getBytes(StandardCharsets.US_ASCII);
        byte[] b = new byte[size];
        for (int i = 0; i < size; i++) {
            b[i] = l[i % l.length];
        }
        return b;
    }

    static String sha256(byte[] d) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(d));
    }

    @FunctionalInterface
    interface Rpc {
        Object call(String method, Map<String, Object> params) throws Exception;
    }
}
