// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.binding;

import io.iovirt.host.HostPaths;
import io.iovirt.pci.PciDevice;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Which processes have a device's VFIO node open while a VFIO driver holds it: the kernel's vfio-pci does not let go
 * of a device in use — an unbind, or its PF's sriov_numvfs going down, waits in the kernel until the user closes it
 * (with the state lock every other host command waits for held). Read from /proc/PID/fd links only.
 *
 * <p>/proc is scanned once, the first time a device on a VFIO driver asks, and every later question is answered from
 * that scan: one instance per command, so that a command asking about many devices (each VF of a PF) reads every
 * process's descriptors once, not once per device. Not thread-safe.
 */
public final class VfioHolders {
    private static final String VFIO_DIR = "/dev/vfio/";

    /**
     * A process with VFIO nodes open.
     *
     * @param command " (its command line)", or "" when it has none or it cannot be read
     * @param nodes the VFIO nodes its descriptors link to, in the order /proc lists the descriptors
     */
    private record Holder(String pid, String command, List<String> nodes) {}

    private final HostPaths paths;
    /** Null until a device on a VFIO driver asks. */
    private List<Holder> holders;

    public VfioHolders(HostPaths paths) {
        this.paths = paths;
    }

    /**
     * "pid N (command) has /dev/vfio/G open" for each process that has the VFIO group of {@code dev} open while a
     * VFIO driver holds {@code dev}; empty when none does (or /proc cannot be read).
     */
    public List<String> users(PciDevice dev) {
        if (!PciDevice.isVfioDriver(dev.driver())) {
            return List.of();
        }
        List<String> nodes = nodes(dev);
        if (nodes.isEmpty()) {
            return List.of();
        }
        if (holders == null) {
            holders = scan(paths.procRoot());
        }
        List<String> users = new ArrayList<>();
        for (Holder h : holders) {
            for (String node : h.nodes()) {
                if (nodes.contains(node)) {
                    users.add("pid " + h.pid() + h.command() + " has " + node + " open");
                    break;
                }
            }
        }
        return users;
    }

    /**
     * The group node (/dev/vfio/G, the container interface) and, on kernels with VFIO device cdevs (6.6+), the
     * device's own node (/dev/vfio/devices/vfioX, named in its sysfs vfio-dev directory), which a user on iommufd
     * (QEMU's iommufd= backend) holds instead of the group.
     */
    private List<String> nodes(PciDevice dev) {
        List<String> nodes = new ArrayList<>();
        if (dev.iommuGroup() >= 0) {
            nodes.add(VFIO_DIR + dev.iommuGroup());
            nodes.add(VFIO_DIR + "noiommu-" + dev.iommuGroup()); // vfio's no-IOMMU mode (a DPDK host without one)
        }
        for (String cdev : paths.sys().list(PciDevice.dir(dev.bdf()) + "/vfio-dev")) {
            if (cdev.matches("(noiommu-)?vfio[0-9]{1,9}")) {
                nodes.add(VFIO_DIR + "devices/" + cdev);
            }
        }
        return nodes;
    }

    /** Each process under {@code proc} with a VFIO node open, in the order /proc lists them. */
    private static List<Holder> scan(Path proc) {
        List<Holder> found = new ArrayList<>();
        try (var pids = Files.list(proc)) {
            for (Path pid : (Iterable<Path>) pids::iterator) {
                String name = pid.getFileName().toString();
                if (!name.chars().allMatch(Character::isDigit)) {
                    continue;
                }
                List<String> nodes = vfioNodesOpen(pid.resolve("fd"));
                if (!nodes.isEmpty()) {
                    found.add(new Holder(name, commandOf(pid), nodes));
                }
            }
        } catch (IOException | UncheckedIOException e) {
            // no /proc to read: the kernel's own wait is what remains
        }
        return found;
    }

    /** The VFIO nodes the descriptors in {@code fdDir} link to, in the order it lists them. */
    private static List<String> vfioNodesOpen(Path fdDir) {
        List<String> nodes = new ArrayList<>();
        try (var fds = Files.list(fdDir)) {
            for (Path fd : (Iterable<Path>) fds::iterator) {
                try {
                    String target = Files.readSymbolicLink(fd).toString();
                    if (target.startsWith(VFIO_DIR)) {
                        nodes.add(target);
                    }
                } catch (IOException | UnsupportedOperationException e) {
                    // closed meanwhile, or not a link
                }
            }
        } catch (IOException | UncheckedIOException e) {
            // the process ended, or its descriptors are not ours to see
        }
        return nodes;
    }

    private static String commandOf(Path pidDir) {
        try {
            String cmd = new String(Files.readAllBytes(pidDir.resolve("cmdline")), StandardCharsets.UTF_8)
                    .replace('\0', ' ')
                    .strip();
            if (cmd.length() > 120) {
                cmd = cmd.substring(0, 120) + " ...";
            }
            return cmd.isEmpty() ? "" : " (" + cmd + ")";
        } catch (IOException e) {
            return "";
        }
    }
}
