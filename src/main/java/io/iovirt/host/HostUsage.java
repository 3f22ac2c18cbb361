// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import io.iovirt.pci.Bdf;
import io.iovirt.pci.SysfsTree;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * What the host itself uses each PCI function for: block devices and network interfaces behind it, mounted
 * filesystems and active swap on those block devices (through partitions, device-mapper and md), block devices that
 * something is built on (a holder: an LVM physical volume of an active volume group, an md array member, a disk
 * under dm-crypt or multipath), and the interface carrying the default route (through bridges, bonds and VLANs). A
 * device in use must not be taken from the host.
 *
 * <p>A mount source that names no block device (/dev/root, the kernel's name for root= without an initramfs) is
 * found by its device number (major:minor in mountinfo, then dev/block/MAJ:MIN in sysfs). An NVMe namespace under
 * native multipath lives below its NVM subsystem, not below a PCI function: it belongs to the PCI functions of the
 * subsystem's controllers that have a path to it.
 */
public final class HostUsage {
    private static final int MAX_STACK_DEPTH = 16;
    private static final Pattern DEVICE_NUMBER = Pattern.compile("[0-9]{1,10}:[0-9]{1,10}");
    private static final Pattern NVME_HEAD = Pattern.compile("nvme([0-9]+)n([0-9]+)");
    private static final Pattern NVME_CONTROLLER = Pattern.compile("nvme([0-9]+)");

    private final Map<Bdf, Set<String>> blockDevices = new TreeMap<>();
    private final Map<Bdf, Set<String>> netInterfaces = new TreeMap<>();
    private final Map<Bdf, List<String>> uses = new TreeMap<>();

    private final SysfsTree sys;

    private HostUsage(SysfsTree sys) {
        this.sys = sys;
    }

    /**
     * @param dev the /dev tree, used only to resolve symlinked mount sources (/dev/disk/by-uuid/...)
     */
    public static HostUsage scan(SysfsTree sys, SysfsTree proc, SysfsTree dev) {
        HostUsage u = new HostUsage(sys);
        for (String name : sys.list("class/block")) {
            for (Bdf bdf : u.blockOwners(name)) {
                u.blockDevices.computeIfAbsent(bdf, k -> new LinkedHashSet<>()).add(name);
            }
        }
        for (String name : sys.list("class/net")) {
            Bdf bdf = u.pciOf("class/net/" + name);
            if (bdf != null) {
                u.netInterfaces.computeIfAbsent(bdf, k -> new LinkedHashSet<>()).add(name);
            }
        }
        Map<String, String> deviceNumbers = mountDeviceNumbers(proc);
        proc.readTextOptional("mounts").ifPresent(text -> {
            for (String line : text.split("\n")) {
                String[] f = line.split(" ");
                if (f.length >= 2 && f[0].startsWith("/dev/")) {
                    String what = "holds the mounted filesystem " + unescape(f[1]) + " (" + unescape(f[0]) + ")";
                    String name = u.blockName(unescape(f[0]), dev);
                    if (name == null) {
                        name = u.blockNameOfNumber(deviceNumbers.get(f[0] + " " + f[1]));
                    }
                    u.blockUse(name, what);
                }
            }
        });
        proc.readTextOptional("swaps").ifPresent(text -> {
            String[] lines = text.split("\n");
            for (int i = 1; i < lines.length; i++) {
                String[] f = lines[i].trim().split("\\s+");
                if (f.length >= 2 && f[0].startsWith("/dev/")) {
                    u.blockUse(u.blockName(unescape(f[0]), dev), "holds active swap " + unescape(f[0]));
                }
            }
        });
        for (String name : sys.list("class/block")) {
            List<String> holders = sys.list("class/block/" + name + "/holders");
            if (!holders.isEmpty()) {
                List<String> described = new ArrayList<>();
                for (String h : holders) {
                    described.add(u.describeHolder(h));
                }
                String what = "holds " + name + ", which " + String.join(" and ", described)
                        + (holders.size() == 1 ? " is" : " are") + " built on";
                for (Bdf bdf : u.blockOwners(name)) {
                    u.addUse(bdf, what);
                }
            }
        }
        for (String iface : defaultRouteInterfaces(proc)) {
            for (Map.Entry<Bdf, String> e : u.netPci(iface, 0).entrySet()) {
                String via = e.getValue().equals(iface) ? iface : iface + " via " + e.getValue();
                u.addUse(e.getKey(), "carries the default route (" + via + ")");
            }
        }
        return u;
    }

    /** Why the host needs this device, empty when it does not. */
    public List<String> uses(Bdf bdf) {
        return uses.getOrDefault(bdf, List.of());
    }

    public Set<String> blockDevices(Bdf bdf) {
        return blockDevices.getOrDefault(bdf, Set.of());
    }

    public Set<String> netInterfaces(Bdf bdf) {
        return netInterfaces.getOrDefault(bdf, Set.of());
    }

    private void addUse(Bdf bdf, String what) {
        List<String> l = uses.computeIfAbsent(bdf, k -> new ArrayList<>());
        if (!l.contains(what)) {
            l.add(what);
        }
    }

    private void blockUse(String name, String what) {
        if (name == null) {
            return;
        }
        for (Bdf bdf : blockPci(name, 0, new HashSet<>())) {
            addUse(bdf, what);
        }
    }

    /** The kernel block device name behind a /dev path (vda1, dm-0, nvme0n1p2), or null. */
    private String blockName(String source, SysfsTree dev) {
        String rel = source.substring("/dev/".length());
        if (rel.startsWith("mapper/")) {
            String dmName = rel.substring("mapper/".length());
            for (String b : sys.list("class/block")) {
                if (b.startsWith("dm-")
                        && sys.readOptional("class/block/" + b + "/dm/name")
                                .orElse("")
                                .equals(dmName)) {
                    return b;
                }
            }
        }
        if (!rel.contains("/") && sys.exists("class/block/" + rel)) {
            return rel;
        }
        // /dev/disk/by-uuid/..., /dev/vg/lv: symlinks into /dev.
        try {
            Path resolved = dev.resolveLink(rel).orElse(null);
            for (int i = 0; resolved != null && i < MAX_STACK_DEPTH; i++) {
                String n = resolved.getFileName().toString();
                if (sys.exists("class/block/" + n)) {
                    return n;
                }
                String inDev = dev.root().relativize(resolved).toString();
                resolved = dev.resolveLink(inDev).orElse(null);
            }
        } catch (RuntimeException e) {
            // An unresolvable source is not ours to judge; skip it.
        }
        return null;
    }

    /**
     * The device number of each mount in /proc/self/mountinfo, keyed by its source and mount point as /proc/mounts
     * writes them (both escape the same way): "/dev/root /" → "8:2".
     */
    static Map<String, String> mountDeviceNumbers(SysfsTree proc) {
        Map<String, String> out = new LinkedHashMap<>();
        proc.readTextOptional("self/mountinfo").ifPresent(text -> {
            for (String line : text.split("\n")) {
                String[] f = line.split(" ");
                // id parent maj:min root mountpoint options [optional fields...] - fstype source superoptions
                int dash = -1;
                for (int i = 6; i < f.length; i++) {
                    if (f[i].equals("-")) {
                        dash = i;
                        break;
                    }
                }
                if (f.length >= 6
                        && dash > 0
                        && dash + 2 < f.length
                        && DEVICE_NUMBER.matcher(f[2]).matches()) {
                    out.putIfAbsent(f[dash + 2] + " " + f[4], f[2]);
                }
            }
        });
        return out;
    }

    /** The block device with device number {@code majMin} (dev/block/MAJ:MIN), or null; 0:N is no block device. */
    private String blockNameOfNumber(String majMin) {
        if (majMin == null || !DEVICE_NUMBER.matcher(majMin).matches() || majMin.startsWith("0:")) {
            return null;
        }
        try {
            Path target = sys.resolveLink("dev/block/" + majMin).orElse(null);
            if (target != null && target.getFileName() != null) {
                String n = target.getFileName().toString();
                if (sys.exists("class/block/" + n)) {
                    return n;
                }
            }
        } catch (RuntimeException e) {
            // A device number sysfs cannot resolve is not ours to judge; skip it.
        }
        return null;
    }

    /** A holder as the message names it: "LVM volume vg0-root (dm-0)", "md array md0". */
    private String describeHolder(String holder) {
        String dmName = sys.readOptional("class/block/" + holder + "/dm/name").orElse(null);
        if (dmName != null) {
            String uuid = sys.readOptional("class/block/" + holder + "/dm/uuid").orElse("");
            String kind = uuid.startsWith("LVM-")
                    ? "LVM volume"
                    : uuid.startsWith("CRYPT-")
                            ? "dm-crypt volume"
                            : uuid.startsWith("mpath-") ? "multipath device" : "device-mapper device";
            return kind + " " + dmName + " (" + holder + ")";
        }
        if (holder.startsWith("md")) {
            return "md array " + holder;
        }
        return holder;
    }

    /**
     * The PCI functions a block device sits on: the nearest PCI function above it, or for a native-multipath NVMe
     * namespace (and its partitions) the functions of the controllers of its NVM subsystem.
     */
    private Set<Bdf> blockOwners(String name) {
        Bdf direct = pciOf("class/block/" + name);
        if (direct != null) {
            return Set.of(direct);
        }
        return nvmeMultipathPci(name);
    }

    /**
     * A multipath namespace lives at devices/virtual/nvme-subsystem/nvme-subsysS/nvmeSnN; the subsystem directory
     * links each of its controllers (nvmeC → the controller below its PCI function), and a controller with a path to
     * the namespace has the path's hidden disk nvmeScCnN. The controllers with a path count; when none shows one,
     * every controller of the subsystem does (a namespace is never left without an owner).
     */
    private Set<Bdf> nvmeMultipathPci(String name) {
        Path target = sys.resolveLink("class/block/" + name).orElse(null);
        Path root = sys.root().normalize();
        if (target == null || !target.startsWith(root)) {
            return Set.of();
        }
        Path rel = root.relativize(target);
        int at = -1;
        for (int i = 0; i + 2 < rel.getNameCount(); i++) {
            if (rel.getName(i).toString().equals("nvme-subsystem")) {
                at = i;
                break;
            }
        }
        if (at < 0) {
            return Set.of();
        }
        String subsystem = rel.subpath(0, at + 2).toString();
        Matcher head = NVME_HEAD.matcher(rel.getName(at + 2).toString());
        Set<Bdf> all = new LinkedHashSet<>();
        Set<Bdf> withPath = new LinkedHashSet<>();
        for (String c : sys.list(subsystem)) {
            Matcher ctrl = NVME_CONTROLLER.matcher(c);
            if (!ctrl.matches()) {
                continue;
            }
            Bdf bdf = pciOf(subsystem + "/" + c);
            if (bdf == null) {
                continue; // a fabrics controller: no PCI function to protect
            }
            all.add(bdf);
            if (head.matches()
                    && sys.exists(subsystem + "/" + c + "/nvme" + head.group(1) + "c" + ctrl.group(1) + "n"
                            + head.group(2))) {
                withPath.add(bdf);
            }
        }
        return withPath.isEmpty() ? all : withPath;
    }

    /** PCI functions under a block device, following device-mapper and md slaves. */
    private Set<Bdf> blockPci(String name, int depth, Set<String> seen) {
        Set<Bdf> out = new LinkedHashSet<>();
        if (depth > MAX_STACK_DEPTH || !seen.add(name)) {
            return out;
        }
        out.addAll(blockOwners(name));
        String base = "class/block/" + name + "/slaves";
        for (String slave : sys.list(base)) {
            out.addAll(blockPci(slave, depth + 1, seen));
        }
        // A partition's own directory has no slaves; its parent (the whole disk) may.
        sys.resolveLink("class/block/" + name).ifPresent(p -> {
            if (sys.exists("class/block/" + name + "/partition") && p.getParent() != null) {
                String parent = p.getParent().getFileName().toString();
                if (!parent.equals(name) && sys.exists("class/block/" + parent)) {
                    out.addAll(blockPci(parent, depth + 1, seen));
                }
            }
        });
        return out;
    }

    /** PCI functions carrying a network interface: itself, or the lower devices of a bridge, bond or VLAN. */
    private Map<Bdf, String> netPci(String iface, int depth) {
        Map<Bdf, String> out = new LinkedHashMap<>();
        if (depth > MAX_STACK_DEPTH || iface.contains("/") || iface.equals("..")) {
            return out;
        }
        Bdf direct = pciOf("class/net/" + iface);
        if (direct != null) {
            out.put(direct, iface);
        }
        Set<String> lower = new LinkedHashSet<>();
        for (String e : sys.list("class/net/" + iface)) {
            if (e.startsWith("lower_")) {
                lower.add(e.substring("lower_".length()));
            }
        }
        lower.addAll(sys.list("class/net/" + iface + "/brif"));
        for (String l : lower) {
            out.putAll(netPci(l, depth + 1));
        }
        return out;
    }

    /** The nearest PCI function above a class device: the last path component of its link that is a PCI address. */
    private Bdf pciOf(String classLink) {
        Path target = sys.resolveLink(classLink).orElse(null);
        if (target == null) {
            return null;
        }
        Bdf found = null;
        for (Path part : target) {
            Bdf b = Bdf.tryParse(part.toString());
            if (b != null && b.toString().equals(part.toString())) {
                found = b;
            }
        }
        return found;
    }

    /** Interfaces with an IPv4 or IPv6 default route that is up (not the kernel's unreachable default on lo). */
    static Set<String> defaultRouteInterfaces(SysfsTree proc) {
        Set<String> out = new LinkedHashSet<>();
        proc.readTextOptional("net/route").ifPresent(text -> {
            String[] lines = text.split("\n");
            for (int i = 1; i < lines.length; i++) {
                String[] f = lines[i].trim().split("\\s+");
                if (f.length >= 8 && f[1].equals("00000000") && f[7].equals("00000000") && (parseHex(f[3]) & 1) != 0) {
                    out.add(f[0]);
                }
            }
        });
        proc.readTextOptional("net/ipv6_route").ifPresent(text -> {
            for (String line : text.split("\n")) {
                String[] f = line.trim().split("\\s+");
                if (f.length >= 10 && f[0].equals("0".repeat(32)) && f[1].equals("00")) {
                    long flags = parseHex(f[8]);
                    boolean up = (flags & 0x1) != 0;
                    boolean reject = (flags & 0x200) != 0;
                    if (up && !reject && !f[9].equals("lo")) {
                        out.add(f[9]);
                    }
                }
            }
        });
        return out;
    }

    private static long parseHex(String s) {
        try {
            return Long.parseLong(s, 16);
        } catch (NumberFormatException e) {
            return 0;
        }
    }

    /** /proc/mounts escapes space, tab, newline and backslash as octal. */
    static String unescape(String s) {
        if (s.indexOf('\\') < 0) {
            return s;
        }
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '\\' && i + 4 <= s.length() && s.substring(i + 1, i + 4).matches("[0-7]{3}")) {
                b.append((char) Integer.parseInt(s.substring(i + 1, i + 4), 8));
                i += 3;
            } else {
                b.append(c);
            }
        }
        return b.toString();
    }
}
