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
 * {@code <disk type='vhostuser'>} for an export, {@code <interface type='vhostuser'>} for a vhost-user switch port,
 * an emulated e1000 on {@code -netdev stream} (QEMU command-line passthrough: libvirt 9.0 has no element for it) for
 * a stream port, and {@code <hostdev>} for a VFIO PCI function given by its address. vhost-user needs guest RAM that
 * the backend can map: {@code <memoryBacking>} with a memfd source and shared access, plus a NUMA cell with
 * {@code memAccess='shared'}.
 */
final class LibvirtXml {
    private static final Pattern BDF = Pattern.compile("(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\\.([0-7])");

    private LibvirtXml() {
    }

    /** {@code id}: comma-separated disks, ports ({@code net/port} or a port id unique across switches) or PCI addresses. */
    static Map<String, Object> forDevice(Daemon d, Params p) throws RpcException {
        String ids = p.string("id");
        String name = p.string("name", "iovirt-guest");
        if (!name.matches("[A-Za-z0-9_.-]{1,64}")) {
            throw RpcException.params("libvirt-xml: name must be 1-64 letters, digits, '_', '.' or '-'");
        }
        long memory = p.integer("memory", 512, 64, 1 << 20);
        StringBuilder devices = new StringBuilder();
        List<String> qemuArgs = new ArrayList<>();
        int disk = 0;
        int nic = 0;
        for (String raw : ids.split(",")) {
            String id = raw.trim();
            Matcher bdf = BDF.matcher(id);
            if (bdf.matches()) {
                devices.append("    <hostdev mode='subsystem' type='pci' managed='yes'>\n")
                        .append("      <driver name='vfio'/>\n")
                        .append("      <source>\n")
                        .append(String.format("        <address domain='0x%s' bus='0x%s' slot='0x%s' function='0x%s'/>%n",
                                bdf.group(1) == null ? "0000" : bdf.group(1).toLowerCase(), bdf.group(2).toLowerCase(),
                                bdf.group(3).toLowerCase(), bdf.group(4)))
                        .append("      </source>\n")
                        .append("    </hostdev>\n");
                continue;
            }
            BlkExport b = d.locked(() -> d.blksLocked().get(id));
            if (b != null) {
                devices.append("    <disk type='vhostuser' device='disk'>\n")
                        .append("      <driver name='qemu' type='raw' queues='").append(b.spec.queues()).append("'/>\n")
                        .append("      <source type='unix' path='").append(esc(b.spec.socket().toString())).append("'>\n")
                        .append("        <reconnect enabled='yes' timeout='10'/>\n")
                        .append("      </source>\n")
                        .append("      <target dev='vd").append((char) ('a' + disk++)).append("' bus='virtio'/>\n")
                        .append(b.image.readOnly() ? "      <readonly/>\n" : "")
                        .append("      <serial>").append(esc(b.spec.serial())).append("</serial>\n")
                        .append("    </disk>\n");
                continue;
            }
            NetSwitch.PortEntry port = findPort(d, id);
            switch (port.spec().kind()) {
                case "vhost-user" -> {
                    devices.append("    <interface type='vhostuser'>\n");
                    if (port.spec().mac() != -1) {
                        devices.append("      <mac address='").append(Mac.toString(port.spec().mac())).append("'/>\n");
                    }
                    devices.append("      <source type='unix' path='").append(esc(port.spec().path())).append("' mode='client'>\n")
                            .append("        <reconnect enabled='yes' timeout='10'/>\n")
                            .append("      </source>\n")
                            .append("      <model type='virtio'/>\n")
                            .append("      <driver queues='").append(port.spec().queues()).append("'/>\n")
                            .append("    </interface>\n");
                }
                case "stream" -> {
                    String nid = "iovirtnet" + nic++;
                    qemuArgs.add("-netdev");
                    qemuArgs.add("stream,id=" + nid + ",server=off,addr.type=unix,addr.path=" + port.spec().path());
                    qemuArgs.add("-device");
                    qemuArgs.add("e1000,netdev=" + nid);
                }
                case "tap" -> devices.append("    <interface type='ethernet'>\n")
                        .append("      <target dev='").append(esc(port.spec().path())).append("' managed='no'/>\n")
                        .append("      <model type='virtio'/>\n")
                        .append("    </interface>\n");
                default -> throw new IllegalStateException(port.spec().kind());
            }
        }
        StringBuilder x = new StringBuilder();
        x.append(qemuArgs.isEmpty() ? "<domain type='qemu'>\n"
                : "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n");
        x.append("  <name>").append(esc(name)).append("</name>\n");
        x.append("  <memory unit='MiB'>").append(memory).append("</memory>\n");
        x.append("  <memoryBacking>\n    <source type='memfd'/>\n    <access mode='shared'/>\n  </memoryBacking>\n");
        x.append("  <vcpu>1</vcpu>\n");
        x.append("  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n");
        if (p.has("kernel")) {
            x.append("    <kernel>").append(esc(p.string("kernel"))).append("</kernel>\n");
        }
        if (p.has("initrd")) {
            x.append("    <initrd>").append(esc(p.string("initrd"))).append("</initrd>\n");
        }
        if (p.has("cmdline")) {
            x.append("    <cmdline>").append(esc(p.string("cmdline"))).append("</cmdline>\n");
        }
        x.append("  </os>\n");
        x.append("  <cpu>\n    <numa>\n      <cell id='0' cpus='0' memory='").append(memory)
                .append("' unit='MiB' memAccess='shared'/>\n    </numa>\n  </cpu>\n");
        x.append("  <on_reboot>destroy</on_reboot>\n");
        x.append("  <devices>\n");
        x.append(devices);
        x.append("    <serial type='pty'/>\n    <console type='pty'/>\n");
        x.append("    <memballoon model='none'/>\n");
        x.append("  </devices>\n");
        if (!qemuArgs.isEmpty()) {
            x.append("  <qemu:commandline>\n");
            for (String a : qemuArgs) {
                x.append("    <qemu:arg value='").append(esc(a)).append("'/>\n");
            }
            x.append("  </qemu:commandline>\n");
        }
        x.append("</domain>\n");
        return Map.of("xml", x.toString());
    }

    private static NetSwitch.PortEntry findPort(Daemon d, String id) throws RpcException {
        return d.locked(() -> {
            int slash = id.indexOf('/');
            List<NetSwitch.PortEntry> found = new ArrayList<>();
            for (NetSwitch n : d.netsLocked().values()) {
                if (slash >= 0) {
                    if (n.spec.id().equals(id.substring(0, slash)) && n.ports.containsKey(id.substring(slash + 1))) {
                        found.add(n.ports.get(id.substring(slash + 1)));
                    }
                } else if (n.ports.containsKey(id)) {
                    found.add(n.ports.get(id));
                }
            }
            return found.size() == 1 ? found.get(0) : null;
        }) instanceof NetSwitch.PortEntry e ? e : throwNotFound(id);
    }

    private static NetSwitch.PortEntry throwNotFound(String id) throws RpcException {
        throw new RpcException(RpcException.NOT_FOUND, "libvirt-xml: '" + Params.printable(id) + "' is neither a disk, a"
                + " switch port (NET/PORT, or a port id that only one switch has) nor a PCI address (0000:01:00.1)");
    }

    static String esc(String s) {
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;").replace("\"", "&quot;");
    }
}
