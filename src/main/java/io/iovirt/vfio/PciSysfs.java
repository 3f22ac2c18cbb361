package io.iovirt.vfio;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.stream.Stream;

/**
 * The few sysfs facts VFIO needs about a PCI device: its IOMMU group, the group's other members, and which driver
 * each is bound to. The root is a parameter so tests can use fixture trees.
 */
public final class PciSysfs {
    public static final PciSysfs SYSTEM = new PciSysfs(Path.of("/sys"));

    private final Path root;

    public PciSysfs(Path root) {
        this.root = root;
    }

    Path deviceDir(PciAddress a) {
        return root.resolve("bus/pci/devices").resolve(a.toString());
    }

    public boolean exists(PciAddress a) {
        return Files.isDirectory(deviceDir(a));
    }

    /** The device's IOMMU group number; explains what is missing when there is none. */
    public int iommuGroup(PciAddress a) throws VfioException {
        Path dev = deviceDir(a);
        if (!Files.isDirectory(dev)) {
            throw new VfioException("no PCI device " + a + " (" + dev + " does not exist) — 'lspci -D' lists the "
                    + "addresses this machine has");
        }
        Path link = dev.resolve("iommu_group");
        try {
            return Integer.parseInt(Files.readSymbolicLink(link).getFileName().toString());
        } catch (NoSuchFileException e) {
            throw new VfioException("PCI device " + a + " has no IOMMU group, so VFIO cannot protect DMA from it: "
                    + "the IOMMU is off or absent — boot with intel_iommu=on (Intel) or amd_iommu=on (AMD) and "
                    + "enable VT-d/AMD-Vi in the firmware (a QEMU guest needs -device intel-iommu)");
        } catch (IOException | NumberFormatException e) {
            throw new VfioException("cannot read " + link + ": " + e.getMessage(), e);
        }
    }

    /** Every device in IOMMU group {@code group}, in address order. */
    public List<PciAddress> groupMembers(int group) throws VfioException {
        Path dir = root.resolve("kernel/iommu_groups").resolve(Integer.toString(group)).resolve("devices");
        try (Stream<Path> s = Files.list(dir)) {
            List<PciAddress> out = new ArrayList<>();
            for (Path p : s.toList()) {
                try {
                    out.add(PciAddress.parse(p.getFileName().toString()));
                } catch (IllegalArgumentException notPci) {
                    // a non-PCI member (platform device): VFIO-PCI does not manage it; it is listed by name elsewhere
                }
            }
            out.sort((x, y) -> x.toString().compareTo(y.toString()));
            return out;
        } catch (IOException e) {
            throw new VfioException("cannot list IOMMU group " + group + " (" + dir + "): " + e.getMessage(), e);
        }
    }

    /** The name of the driver bound to {@code a}, if any. */
    public Optional<String> driver(PciAddress a) {
        try {
            return Optional.of(Files.readSymbolicLink(deviceDir(a).resolve("driver")).getFileName().toString());
        } catch (IOException e) {
            return Optional.empty();
        }
    }

    /** "vvvv:dddd" from the vendor and device files, or "?" when unreadable. */
    public String ids(PciAddress a) {
        return hex(a, "vendor") + ":" + hex(a, "device");
    }

    private String hex(PciAddress a, String file) {
        try {
            String v = Files.readString(deviceDir(a).resolve(file)).trim();
            return v.startsWith("0x") ? v.substring(2) : v;
        } catch (IOException e) {
            return "?";
        }
    }

    /** Number of IOMMU groups the kernel created (0 when the IOMMU is off). */
    public int iommuGroupCount() {
        try (Stream<Path> s = Files.list(root.resolve("kernel/iommu_groups"))) {
            return (int) s.count();
        } catch (IOException e) {
            return 0;
        }
    }
}
