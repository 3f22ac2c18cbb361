// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.DaemonCalls;
import io.iovirt.testing.Require;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The domain XML for each device kind passes libvirt's own schema check (virt-xml-validate, libvirt 9.0). */
class LibvirtXmlTest {
    @TempDir
    Path dir;

    static void validate(Path dir, String xml) throws Exception {
        assertTrue(
                Files.isExecutable(Path.of("/usr/bin/virt-xml-validate"))
                        && Files.isExecutable(Path.of("/usr/bin/xmllint")),
                "virt-xml-validate is not installed: run scripts/install-deps.sh (libvirt-clients, libxml2-utils)");
        Path f = Files.createTempFile(dir, "domain", ".xml");
        Files.writeString(f, xml);
        Process p = new ProcessBuilder("virt-xml-validate", f.toString(), "domain")
                .redirectErrorStream(true)
                .start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), out + "\n" + xml);
        assertTrue(out.contains("validates"), out);
    }

    /** A 1 MiB raw image {@code name} in {@link #dir}. */
    private Path image(String name) throws IOException {
        Path img = dir.resolve(name);
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        return img;
    }

    /** The parameters of blk.add or nbd.add for {@code id}: a new {@link #image} served read-only on {@code socket}. */
    private Map<String, Object> readOnly(String id, String image, String socket) throws IOException {
        return Map.of(
                "id",
                id,
                "image",
                image(image).toString(),
                "socket",
                dir.resolve(socket).toString(),
                "readonly",
                true);
    }

    @Test
    void eachDeviceKindValidates() throws Exception {
        try (Daemon d = new Daemon(null)) {
            d.call("blk.add", readOnly("disk", "d.raw", "d.sock"));
            d.call("net.add", Map.of("id", "sw"));
            d.call(
                    "net.port.add",
                    Map.of(
                            "net",
                            "sw",
                            "id",
                            "pv",
                            "kind",
                            "vhost-user",
                            "path",
                            dir.resolve("pv.sock").toString(),
                            "queues",
                            2L,
                            "mac",
                            "52:54:00:aa:bb:cc"));
            DaemonCalls.portAdd(d, "sw", "fv", "stream", dir.resolve("fv.sock"));
            Path nbdImg = image("e.raw");
            Path nbdSock = dir.resolve("e.sock");
            d.call("nbd.add", Map.of("id", "exp", "image", nbdImg.toString(), "socket", nbdSock.toString()));
            for (String id : new String[] {"disk", "exp", "pv", "sw/fv", "01:00.1", "disk,exp,pv,fv,0000:3b:02.7"}) {
                String xml = (String) ((Map<?, ?>) d.call(
                                "libvirt-xml",
                                Map.of(
                                        "id",
                                        id,
                                        "kernel",
                                        "/boot/vmlinuz",
                                        "initrd",
                                        "/boot/initrd",
                                        "cmdline",
                                        "console=ttyS0 <&>")))
                        .get("xml");
                validate(dir, xml);
                assertTrue(xml.contains("memAccess='shared'"), xml);
                assertTrue(xml.contains("console=ttyS0 &lt;&amp;&gt;"), xml);
                if (id.contains("exp")) {
                    assertTrue(
                            xml.contains("<source protocol='nbd' name='exp'>\n        <host transport='unix' socket='"
                                    + nbdSock + "'/>"),
                            xml);
                }
            }
        }
    }

    /**
     * An NBD export QEMU's emulated SATA disk cannot use is refused, saying why: a read-only one (QEMU refuses a
     * read-only ide-hd at start).
     */
    @Test
    void aReadOnlyNbdExportIsRefused() throws Exception {
        try (Daemon d = new Daemon(null)) {
            d.call("nbd.add", readOnly("exp", "e.raw", "e.sock"));
            RpcException e = assertThrows(RpcException.class, () -> d.call("libvirt-xml", Map.of("id", "exp")));
            assertEquals(RpcException.INVALID_PARAMS, e.code(), e.getMessage());
            assertTrue(e.getMessage().contains("is read-only") && e.getMessage().contains("blk.add"), e.getMessage());
        }
    }

    /**
     * A TAP port is the switch's uplink to the host's network, held by the daemon: refused, naming what to use
     * instead. It was written as {@code <interface type='ethernet'>} on that TAP, which libvirt cannot open (the
     * daemon holds its one queue: EBUSY) and which would connect a guest to the host, not to the switch. A real TAP.
     */
    @Test
    void aTapPortIsRefusedAsTheSwitchsUplink() throws Exception {
        Require.that(Files.exists(Path.of("/dev/net/tun")), "/dev/net/tun is missing (modprobe tun)");
        String ifname = "iovx" + (ProcessHandle.current().pid() % 100000);
        try (Daemon d = new Daemon(null)) {
            d.call("net.add", Map.of("id", "sw"));
            try {
                d.call("net.port.add", Map.of("net", "sw", "id", "up", "kind", "tap", "ifname", ifname));
            } catch (RpcException e) {
                Require.that(false, "cannot create a TAP interface here (needs CAP_NET_ADMIN): " + e.getMessage());
            }
            for (String id : List.of("up", "sw/up")) {
                RpcException e = assertThrows(RpcException.class, () -> d.call("libvirt-xml", Map.of("id", id)));
                assertEquals(RpcException.INVALID_PARAMS, e.code(), e.getMessage());
                assertTrue(
                        e.getMessage().contains("'sw/up' is a TAP port, the switch's uplink")
                                && e.getMessage().contains("vhost-user port"),
                        e.getMessage());
            }
        }
    }

    /** A port id two switches have is ambiguous, not missing: the answer says to name it as NET/PORT. */
    @Test
    void aPortIdTwoSwitchesHaveIsAmbiguous() throws Exception {
        try (Daemon d = new Daemon(null)) {
            for (String net : List.of("a", "b")) {
                d.call("net.add", Map.of("id", net));
                DaemonCalls.portAdd(d, net, "p", "stream", dir.resolve(net + ".sock"));
            }
            RpcException e = assertThrows(RpcException.class, () -> d.call("libvirt-xml", Map.of("id", "p")));
            assertEquals(RpcException.INVALID_PARAMS, e.code(), e.getMessage());
            assertTrue(
                    e.getMessage().contains("'p' is ambiguous: switches a, b")
                            && e.getMessage().contains("NET/PORT"),
                    e.getMessage());
            validate(dir, (String) ((Map<?, ?>) d.call("libvirt-xml", Map.of("id", "b/p"))).get("xml"));
            e = assertThrows(RpcException.class, () -> d.call("libvirt-xml", Map.of("id", "q")));
            assertEquals(RpcException.NOT_FOUND, e.code(), e.getMessage());
        }
    }

    /**
     * A socket path with a tab, newline or carriage return reaches libvirt as it is: written raw in an attribute, an
     * XML parser normalizes each to a space, and QEMU would be pointed at another path.
     */
    @Test
    void whitespaceInAPathSurvivesAnXmlParser() throws Exception {
        try (Daemon d = new Daemon(null)) {
            Path img = image("d.raw");
            Path sock = dir.resolve("d\tx\ny\r.sock");
            d.call("blk.add", Map.of("id", "disk", "image", img.toString(), "socket", sock.toString()));
            String xml = (String) ((Map<?, ?>) d.call("libvirt-xml", Map.of("id", "disk"))).get("xml");
            org.w3c.dom.Document doc = javax.xml.parsers.DocumentBuilderFactory.newInstance()
                    .newDocumentBuilder()
                    .parse(new java.io.ByteArrayInputStream(xml.getBytes(StandardCharsets.UTF_8)));
            org.w3c.dom.Element source = (org.w3c.dom.Element)
                    ((org.w3c.dom.Element) doc.getElementsByTagName("disk").item(0))
                            .getElementsByTagName("source")
                            .item(0);
            assertEquals(sock.toString(), source.getAttribute("path"), xml);
        }
    }

    /** {@code vm run --libvirt-xml}: the composer's devices (PV and FV disks and NICs) as a domain libvirt accepts. */
    @Test
    void composedVmBecomesAValidDomain() throws Exception {
        Path a = image("a.raw");
        Path b = image("b.raw");
        io.iovirt.vm.compose.VmSpec spec = new io.iovirt.vm.compose.VmSpec(
                "vm1",
                io.iovirt.vm.compose.VmSpec.Profile.PVHVM,
                256,
                1,
                List.of(
                        new io.iovirt.vm.compose.VmSpec.Disk(io.iovirt.vm.compose.VmSpec.Kind.PV, a, false),
                        new io.iovirt.vm.compose.VmSpec.Disk(io.iovirt.vm.compose.VmSpec.Kind.FV, b, false)),
                List.of(
                        new io.iovirt.vm.compose.VmSpec.Nic(io.iovirt.vm.compose.VmSpec.Kind.PV, -1),
                        new io.iovirt.vm.compose.VmSpec.Nic(io.iovirt.vm.compose.VmSpec.Kind.FV, -1)),
                List.of(),
                List.of());
        Path run = Files.createDirectories(dir.resolve("run"));
        try (io.iovirt.vm.compose.VmComposer c = io.iovirt.vm.compose.VmComposer.compose(
                spec, run, io.iovirt.host.HostPaths.system().withStateDir(dir.resolve("state")))) {
            List<LibvirtXml.Device> devices = LibvirtXml.fromQemuArgs(c.qemuArgs());
            assertEquals(4, devices.size(), devices + " from " + c.qemuArgs());
            String xml = LibvirtXml.domain(new LibvirtXml.Domain("vm1", 256, 1, null, null, null, null), devices);
            assertTrue(xml.contains("<disk type='vhostuser'"), xml);
            assertTrue(xml.contains("<source protocol='nbd'") && xml.contains("bus='sata'"), xml);
            assertTrue(xml.contains("<interface type='vhostuser'>") && xml.contains("e1000,netdev="), xml);
            assertTrue(xml.contains("name='vectors' type='unsigned' value='0'"), xml);
            validate(dir, xml);
        }
    }
}
