// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.net.Mac;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * libvirt domain XML for devices the daemon serves, so a libvirt-managed guest can use them:
 * {@code <disk type='vhostuser'>} for a disk, a SATA {@code <disk type='network'>} (protocol nbd over its UNIX
 * socket) for an NBD export, {@code <interface type='vhostuser'>} for a vhost-user switch port, an emulated e1000 on
 * {@code -netdev stream} (QEMU command-line passthrough: libvirt 9.0 has no element for it) for a stream port, and
 * {@code <hostdev>} for a VFIO PCI function given by its address. A TAP port is refused: it is the switch's uplink
 * to the host, which the daemon holds. vhost-user needs guest RAM that the backend can map: {@code <memoryBacking>}
 * with a memfd source and shared access, plus a NUMA cell with {@code memAccess='shared'}.
 */
public final class LibvirtXml {
    private static final Pattern BDF =
            Pattern.compile("(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\\.([0-7])");

    private LibvirtXml() {}

    /** A device of the domain. */
    public sealed interface Device {}

    /** {@code <disk type='vhostuser'>}. */
    public record VhostUserDisk(String socket, int queues, boolean readOnly, String serial) implements Device {}

    /** {@code <interface type='vhostuser'>}; {@code mac} -1: libvirt picks one. */
    public record VhostUserNic(String socket, int queues, long mac) implements Device {}

    /** An emulated e1000 on {@code -netdev stream} (QEMU passthrough: libvirt 9.0 has no element for it). */
    public record StreamNic(String socket, long mac) implements Device {}

    /** A raw image on QEMU's emulated AHCI ({@code <disk type='file'>}, SATA bus). */
    public record EmulatedDisk(String image, boolean readOnly) implements Device {}

    /** An emulated AHCI disk on an NBD export ({@code <disk type='network'>}, protocol nbd over a UNIX socket). */
    public record NbdDisk(String socket, String export, boolean readOnly) implements Device {}

    /** A VFIO PCI function ({@code <hostdev>}), e.g. {@code 0000:3b:02.1}. */
    public record Hostdev(String bdf) implements Device {}

    /** The domain around the devices: name, RAM in MiB, direct kernel boot (all optional but the name). */
    public record Domain(
            String name, long memoryMiB, int cpus, String kernel, String initrd, String cmdline, String console) {}

    /**
     * {@code id}: comma-separated disks, NBD exports, ports ({@code net/port} or a port id unique across switches) or
     * PCI addresses.
     */
    static Map<String, Object> forDevice(Daemon d, Params p) throws RpcException {
        String ids = p.string("id");
        String name = p.string("name", "iovirt-guest");
        if (!name.matches("[A-Za-z0-9_.-]{1,64}")) {
            throw RpcException.params("libvirt-xml: name must be 1-64 letters, digits, '_', '.' or '-'");
        }
        long memory = p.integer("memory", 512, 64, 1 << 20);
        List<Device> devices = new ArrayList<>();
        for (String raw : ids.split(",")) {
            String id = raw.trim();
            if (BDF.matcher(id).matches()) {
                devices.add(new Hostdev(id));
                continue;
            }
            BlkExport b = d.locked(() -> d.blksLocked().get(id));
            if (b != null) {
                devices.add(new VhostUserDisk(
                        b.spec.socket().toString(), b.spec.queues(), b.image.readOnly(), b.spec.serial()));
                continue;
            }
            NbdExportEntry nbd = d.locked(() -> d.nbdsLocked().get(id));
            if (nbd != null) {
                if (nbd.spec.readOnly()) { // QEMU 7.2 refuses it at start, as VmSpec.Disk says
                    throw RpcException.params("libvirt-xml: NBD export '" + id + "' is read-only, and QEMU's"
                            + " emulated SATA disk (ide-hd) cannot be: export the image writable, or serve it"
                            + " read-only as a vhost-user disk (blk.add readonly=true)");
                }
                devices.add(new NbdDisk(nbd.spec.socket().toString(), nbd.spec.id(), false));
                continue;
            }
            FoundPort port = findPort(d, id);
            NetSwitch.PortSpec ps = port.entry().spec();
            devices.add(
                    switch (ps.kind()) {
                        case "vhost-user" -> new VhostUserNic(ps.path(), ps.queues(), ps.mac());
                        case "stream" -> new StreamNic(ps.path(), -1);
                        // The daemon holds the TAP itself (single-queue: libvirt's open of it fails with EBUSY),
                        // and a guest on it would reach the host's network stack, not the switch.
                        default ->
                            throw RpcException.params("libvirt-xml: port '" + port.net() + "/" + ps.id()
                                    + "' is a TAP port, the switch's uplink to the host's network (interface "
                                    + ps.path() + "), not a guest's NIC: give the guest a vhost-user port of the"
                                    + " switch (net.port.add net=" + port.net() + " kind=vhost-user path=SOCKET)"
                                    + " and pass that port's id");
                    });
        }
        String console = p.has("console") ? p.path("console").toString() : null;
        return Map.of(
                "xml",
                domain(
                        new Domain(
                                name,
                                memory,
                                1,
                                p.string("kernel", null),
                                p.string("initrd", null),
                                p.string("cmdline", null),
                                console),
                        devices));
    }

    /**
     * The devices of a QEMU command line as iovirt's composer writes it ({@code -chardev socket} +
     * {@code vhost-user-blk-pci}, {@code -netdev vhost-user} + {@code virtio-net-pci}, {@code -netdev stream} +
     * {@code e1000}, {@code -drive} + {@code ide-hd}, {@code vfio-pci,host=}); other arguments are ignored.
     */
    public static List<Device> fromQemuArgs(List<String> args) {
        Map<String, String> chardevPath = new java.util.HashMap<>();
        Map<String, String> netdevChardev = new java.util.HashMap<>();
        Map<String, String> streamPath = new java.util.HashMap<>();
        Map<String, String> drives = new java.util.HashMap<>();
        Map<String, Boolean> driveRo = new java.util.HashMap<>();
        Map<String, NbdDisk> nbd = new java.util.HashMap<>();
        List<Device> out = new ArrayList<>();
        for (int i = 0; i + 1 < args.size(); i++) {
            String opt = args.get(i);
            Map<String, String> kv = options(args.get(i + 1));
            switch (opt) {
                case "-chardev" -> {
                    if (kv.containsKey("socket") && kv.containsKey("path")) {
                        chardevPath.put(kv.get("id"), kv.get("path"));
                    }
                }
                case "-netdev" -> {
                    if (kv.containsKey("vhost-user")) {
                        netdevChardev.put(kv.get("id"), kv.get("chardev"));
                    } else if (kv.containsKey("stream")) {
                        streamPath.put(kv.get("id"), kv.get("addr.path"));
                    }
                }
                case "-drive" -> {
                    drives.put(kv.get("id"), kv.get("file"));
                    driveRo.put(kv.get("id"), "on".equals(kv.get("readonly")));
                    if ("nbd".equals(kv.get("driver"))) {
                        nbd.put(
                                kv.get("id"),
                                new NbdDisk(kv.get("server.path"), kv.get("export"), "on".equals(kv.get("readonly"))));
                    }
                }
                case "-device" -> {
                    long mac = kv.containsKey("mac") ? io.iovirt.net.Mac.parse(kv.get("mac")) : -1;
                    if (kv.containsKey("vhost-user-blk-pci")) {
                        out.add(new VhostUserDisk(
                                chardevPath.get(kv.get("chardev")),
                                Integer.parseInt(kv.getOrDefault("num-queues", "1")),
                                false,
                                null));
                    } else if (kv.containsKey("virtio-net-pci") && netdevChardev.containsKey(kv.get("netdev"))) {
                        out.add(new VhostUserNic(chardevPath.get(netdevChardev.get(kv.get("netdev"))), 1, mac));
                    } else if (kv.containsKey("e1000") && streamPath.containsKey(kv.get("netdev"))) {
                        out.add(new StreamNic(streamPath.get(kv.get("netdev")), mac));
                    } else if (kv.containsKey("ide-hd") && nbd.containsKey(kv.get("drive"))) {
                        out.add(nbd.get(kv.get("drive")));
                    } else if (kv.containsKey("ide-hd") && drives.get(kv.get("drive")) != null) {
                        out.add(new EmulatedDisk(drives.get(kv.get("drive")), driveRo.get(kv.get("drive"))));
                    } else if (kv.containsKey("nvme")) {
                        throw new IllegalArgumentException("libvirt 9.0 has no emulated NVMe disk model for domain XML:"
                                + " use an fv disk on AHCI (fv:IMAGE) or a pv disk for a libvirt domain");
                    } else if (kv.containsKey("vfio-pci") && kv.containsKey("host")) {
                        out.add(new Hostdev(kv.get("host")));
                    }
                }
                default -> {}
            }
        }
        return out;
    }

    /** QEMU option syntax: {@code name,key=value,...} with ",," for a comma inside a value; a bare word maps to "". */
    private static Map<String, String> options(String text) {
        Map<String, String> m = new java.util.HashMap<>();
        StringBuilder cur = new StringBuilder();
        List<String> parts = new ArrayList<>();
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c == ',' && i + 1 < text.length() && text.charAt(i + 1) == ',') {
                cur.append(',');
                i++;
            } else if (c == ',') {
                parts.add(cur.toString());
                cur.setLength(0);
            } else {
                cur.append(c);
            }
        }
        parts.add(cur.toString());
        for (String part : parts) {
            int eq = part.indexOf('=');
            m.put(eq < 0 ? part : part.substring(0, eq), eq < 0 ? "" : part.substring(eq + 1));
        }
        return m;
    }

    /** A complete {@code <domain type='qemu'>} with shared memfd memory for vhost-user and the devices. */
    public static String domain(Domain dom, List<Device> devices) {
        StringBuilder dev = new StringBuilder();
        List<String> qemuArgs = new ArrayList<>();
        List<String> overrides = new ArrayList<>(); // vhost-user NICs whose MSI-X is turned off (see below)
        int disk = 0;
        int sata = 0;
        int nic = 0;
        for (Device device : devices) {
            switch (device) {
                case Hostdev h -> {
                    Matcher bdf = BDF.matcher(h.bdf());
                    if (!bdf.matches()) {
                        throw new IllegalArgumentException("not a PCI address: " + h.bdf());
                    }
                    dev.append("    <hostdev mode='subsystem' type='pci' managed='yes'>\n")
                            .append("      <driver name='vfio'/>\n")
                            .append("      <source>\n")
                            .append(String.format(
                                    "        <address domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/>%n",
                                    bdf.group(1) == null ? "0000" : bdf.group(1).toLowerCase(),
                                    bdf.group(2).toLowerCase(),
                                    bdf.group(3).toLowerCase(),
                                    bdf.group(4)))
                            .append("      </source>\n")
                            .append("    </hostdev>\n");
                }
                case VhostUserDisk b -> {
                    dev.append("    <disk type='vhostuser' device='disk' snapshot='no'>\n")
                            .append("      <driver name='qemu' type='raw' queues='")
                            .append(b.queues())
                            .append("'/>\n")
                            .append("      <source type='unix' path='")
                            .append(esc(b.socket()))
                            .append("'>\n")
                            .append("        <reconnect enabled='yes' timeout='10'/>\n")
                            .append("      </source>\n")
                            .append("      <target dev='vd")
                            .append((char) ('a' + disk++))
                            .append("' bus='virtio'/>\n")
                            // libvirt 9.0 refuses <readonly/> and <serial> on a vhostuser disk: the backend
                            // offers VIRTIO_BLK_F_RO itself and answers GET_ID with its serial
                            .append("    </disk>\n");
                }
                case EmulatedDisk e ->
                    dev.append("    <disk type='file' device='disk'>\n")
                            .append("      <driver name='qemu' type='raw'/>\n")
                            .append("      <source file='")
                            .append(esc(e.image()))
                            .append("'/>\n")
                            .append("      <target dev='sd")
                            .append((char) ('a' + sata++))
                            .append("' bus='sata'/>\n")
                            .append(e.readOnly() ? "      <readonly/>\n" : "")
                            .append("    </disk>\n");
                case NbdDisk n ->
                    dev.append("    <disk type='network' device='disk'>\n")
                            .append("      <driver name='qemu' type='raw'/>\n")
                            .append("      <source protocol='nbd'")
                            .append(n.export() != null ? " name='" + esc(n.export()) + "'" : "")
                            .append(">\n        <host transport='unix' socket='")
                            .append(esc(n.socket()))
                            .append("'/>\n      </source>\n")
                            .append("      <target dev='sd")
                            .append((char) ('a' + sata++))
                            .append("' bus='sata'/>\n")
                            .append(n.readOnly() ? "      <readonly/>\n" : "")
                            .append("    </disk>\n");
                case VhostUserNic v -> {
                    dev.append("    <interface type='vhostuser'>\n");
                    if (v.mac() != -1) {
                        dev.append("      <mac address='")
                                .append(Mac.toString(v.mac()))
                                .append("'/>\n");
                    }
                    dev.append("      <source type='unix' path='")
                            .append(esc(v.socket()))
                            .append("' mode='client'>\n")
                            .append("        <reconnect enabled='yes' timeout='10'/>\n")
                            .append("      </source>\n")
                            .append("      <model type='virtio'/>\n")
                            .append("      <driver queues='")
                            .append(v.queues())
                            .append("'/>\n")
                            .append("      <alias name='ua-iovirt-nic")
                            .append(overrides.size())
                            .append("'/>\n")
                            .append("    </interface>\n");
                    overrides.add("ua-iovirt-nic" + overrides.size());
                }
                case StreamNic s -> {
                    String nid = "iovirtnet" + nic++;
                    qemuArgs.add("-netdev");
                    qemuArgs.add("stream,id=" + nid + ",server=off,addr.type=unix,addr.path="
                            + s.socket().replace(",", ",,"));
                    qemuArgs.add("-device");
                    qemuArgs.add("e1000,netdev=" + nid + (s.mac() != -1 ? ",mac=" + Mac.toString(s.mac()) : ""));
                }
            }
        }
        StringBuilder x = new StringBuilder();
        boolean qemuNs = !qemuArgs.isEmpty() || !overrides.isEmpty();
        x.append(
                !qemuNs
                        ? "<domain type='qemu'>\n"
                        : "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n");
        x.append("  <name>").append(esc(dom.name())).append("</name>\n");
        x.append("  <memory unit='MiB'>").append(dom.memoryMiB()).append("</memory>\n");
        x.append("  <memoryBacking>\n    <source type='memfd'/>\n    <access mode='shared'/>\n  </memoryBacking>\n");
        x.append("  <vcpu>").append(dom.cpus()).append("</vcpu>\n");
        x.append("  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n");
        if (dom.kernel() != null) {
            x.append("    <kernel>").append(esc(dom.kernel())).append("</kernel>\n");
        }
        if (dom.initrd() != null) {
            x.append("    <initrd>").append(esc(dom.initrd())).append("</initrd>\n");
        }
        if (dom.cmdline() != null) {
            x.append("    <cmdline>").append(esc(dom.cmdline())).append("</cmdline>\n");
        }
        x.append("  </os>\n");
        x.append("  <cpu>\n    <numa>\n      <cell id='0' cpus='0")
                .append(dom.cpus() > 1 ? "-" + (dom.cpus() - 1) : "")
                .append("' memory='")
                .append(dom.memoryMiB())
                .append("' unit='MiB' memAccess='shared'/>\n    </numa>\n  </cpu>\n");
        x.append("  <on_reboot>destroy</on_reboot>\n");
        x.append("  <devices>\n");
        x.append(dev);
        if (dom.console() != null) {
            String c = esc(dom.console());
            x.append("    <serial type='file'>\n      <source path='")
                    .append(c)
                    .append("'/>\n      <target port='0'/>\n    </serial>\n");
            x.append("    <console type='file'>\n      <source path='")
                    .append(c)
                    .append("'/>\n      <target type='serial' port='0'/>\n    </console>\n");
        } else {
            x.append("    <serial type='pty'/>\n    <console type='pty'/>\n");
        }
        x.append("    <memballoon model='none'/>\n");
        x.append("  </devices>\n");
        if (!qemuArgs.isEmpty()) {
            x.append("  <qemu:commandline>\n");
            for (String a : qemuArgs) {
                x.append("    <qemu:arg value='").append(esc(a)).append("'/>\n");
            }
            x.append("  </qemu:commandline>\n");
        }
        if (!overrides.isEmpty()) {
            // QEMU 7.2 under TCG (type='qemu') crashes in vhost_net_start when a vhost-user virtio-net device has
            // MSI-X vectors (seen here: "shutting down, reason=crashed" as the guest driver starts the device);
            // vectors=0 (INTx) avoids it. libvirt has no attribute for it, hence the override (libvirt >= 8.2).
            x.append("  <qemu:override>\n");
            for (String alias : overrides) {
                x.append("    <qemu:device alias='")
                        .append(alias)
                        .append("'>\n      <qemu:frontend>\n")
                        .append("        <qemu:property name='vectors' type='unsigned' value='0'/>\n")
                        .append("      </qemu:frontend>\n    </qemu:device>\n");
            }
            x.append("  </qemu:override>\n");
        }
        x.append("</domain>\n");
        return x.toString();
    }

    /** A switch port and the id of its switch. */
    private record FoundPort(String net, NetSwitch.PortEntry entry) {}

    /** {@code id}: NET/PORT, or a port id that only one switch has. */
    private static FoundPort findPort(Daemon d, String id) throws RpcException {
        int slash = id.indexOf('/');
        String portId = id.substring(slash + 1);
        List<FoundPort> found = d.locked(() -> {
            List<FoundPort> f = new ArrayList<>();
            for (NetSwitch n : d.netsLocked().values()) {
                if ((slash < 0 || n.spec.id().equals(id.substring(0, slash))) && n.ports.containsKey(portId)) {
                    f.add(new FoundPort(n.spec.id(), n.ports.get(portId)));
                }
            }
            return f;
        });
        if (found.size() == 1) {
            return found.getFirst();
        }
        if (found.size() > 1) {
            throw RpcException.params("libvirt-xml: port '" + Params.printable(id) + "' is ambiguous: switches "
                    + String.join(", ", found.stream().map(FoundPort::net).toList())
                    + " each have one; name it as NET/PORT, e.g. "
                    + found.getFirst().net() + "/" + portId);
        }
        throw new RpcException(
                RpcException.NOT_FOUND,
                "libvirt-xml: '" + Params.printable(id) + "' is neither a disk, an NBD export, a switch port"
                        + " (NET/PORT, or a port id that only one switch has) nor a PCI address (0000:01:00.1)");
    }

    /**
     * Text for an attribute value or element content. Tab, newline and carriage return go as character references:
     * an XML parser turns them, written as they are in an attribute, into spaces (attribute-value normalization), so
     * libvirt would have connected QEMU to another socket path than the one served.
     */
    static String esc(String s) {
        return s.replace("&", "&amp;")
                .replace("\t", "&#9;")
                .replace("\n", "&#10;")
                .replace("\r", "&#13;")
                .replace("<", "&lt;")
                .replace(">", "&gt;")
                .replace("'", "&apos;")
                .replace("\"", "&quot;");
    }
}
