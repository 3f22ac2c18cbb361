// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import io.iovirt.pci.SysfsTree;
import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Where the host's kernel interfaces and iovirt's state live. On a real host /sys, /proc, /dev and
 * /var/lib/iovirt-host; in tests, fixture trees under a temporary directory.
 *
 * @param pciIds the pci.ids database, or null when none is installed (names are then omitted)
 * @param binPath directories searched for QEMU (the PATH)
 */
public record HostPaths(Path sysRoot, Path procRoot, Path devRoot, Path stateDir, Path pciIds, List<Path> binPath) {
    /**
     * The default state directory of the root host commands (assignments, remembered drivers): their own, not the
     * services' /var/lib/iovirt, which systemd gives to the units' User=iovirt (StateDirectory=iovirt) at each start
     * and {@link StateStore} would then refuse to root. A constant, for the options' help texts.
     */
    public static final String DEFAULT_STATE_DIR_NAME = "/var/lib/iovirt-host";

    public static final Path DEFAULT_STATE_DIR = Path.of(DEFAULT_STATE_DIR_NAME);
    static final List<Path> PCI_IDS_LOCATIONS = List.of(
            Path.of("/usr/share/misc/pci.ids"), Path.of("/usr/share/hwdata/pci.ids"), Path.of("/usr/share/pci.ids"));

    public HostPaths {
        binPath = List.copyOf(binPath);
    }

    /** The running host. */
    public static HostPaths system() {
        return new HostPaths(
                Path.of("/sys"), Path.of("/proc"), Path.of("/dev"), DEFAULT_STATE_DIR, findPciIds(), pathFromEnv());
    }

    public SysfsTree sys() {
        return new SysfsTree(sysRoot, "--sysfs-root");
    }

    public SysfsTree proc() {
        return new SysfsTree(procRoot, "--proc-root");
    }

    public SysfsTree dev() {
        return new SysfsTree(devRoot, "--dev-root");
    }

    public HostPaths withStateDir(Path dir) {
        return new HostPaths(sysRoot, procRoot, devRoot, dir, pciIds, binPath);
    }

    /** The first pci.ids the system has, or null. */
    public static Path findPciIds() {
        for (Path p : PCI_IDS_LOCATIONS) {
            if (Files.isReadable(p)) {
                return p;
            }
        }
        return null;
    }

    public static List<Path> pathFromEnv() {
        String path = System.getenv("PATH");
        List<Path> dirs = new ArrayList<>();
        if (path != null) {
            for (String d : path.split(File.pathSeparator)) {
                if (!d.isEmpty()) {
                    dirs.add(Path.of(d));
                }
            }
        }
        return dirs;
    }

    /** The first executable called {@code name} on {@link #binPath}, or null. */
    public Path findExecutable(String name) {
        for (Path d : binPath) {
            Path p = d.resolve(name);
            if (Files.isRegularFile(p) && Files.isExecutable(p)) {
                return p;
            }
        }
        return null;
    }
}
