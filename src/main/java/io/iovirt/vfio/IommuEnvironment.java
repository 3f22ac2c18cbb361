// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciSysfs;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Optional;
import java.util.stream.Stream;

/**
 * Which user-space IOMMU interfaces this kernel offers. Linux 6.1 has the VFIO group/container interface
 * ({@code /dev/vfio/vfio} and {@code /dev/vfio/N}), which iovirt uses. Linux 6.2+ adds iommufd ({@code /dev/iommu})
 * and 6.6+ per-device VFIO character devices ({@code /dev/vfio/devices/vfioX}, bound to an iommufd instead of a
 * container); they are detected and reported so a second {@link IommuBackend} can take over where they exist.
 */
public record IommuEnvironment(boolean vfioContainer, boolean iommufd, List<String> vfioDeviceCdevs, int iommuGroups) {
    public IommuEnvironment {
        vfioDeviceCdevs = List.copyOf(vfioDeviceCdevs);
    }

    public static IommuEnvironment detect() {
        return detect(Path.of("/dev"), PciSysfs.SYSTEM);
    }

    public static IommuEnvironment detect(Path dev, PciSysfs sysfs) {
        List<String> cdevs;
        try (Stream<Path> s = Files.list(dev.resolve("vfio/devices"))) {
            cdevs = s.map(p -> p.getFileName().toString()).sorted().toList();
        } catch (IOException e) {
            cdevs = List.of();
        }
        return new IommuEnvironment(
                Files.exists(dev.resolve("vfio/vfio")),
                Files.exists(dev.resolve("iommu")),
                cdevs,
                sysfs.iommuGroupCount());
    }

    /**
     * The device's VFIO character device, {@code /dev/vfio/devices/vfioX}, if the kernel offers one (6.6+). Linux 6.1
     * already lists {@code vfio-dev/vfioX} in the device's sysfs directory, but creates no device node for it.
     */
    public static Optional<Path> deviceCdev(PciSysfs sysfs, Path dev, Bdf a) {
        try (Stream<Path> s = Files.list(sysfs.deviceDir(a).resolve("vfio-dev"))) {
            return s.map(p ->
                            dev.resolve("vfio/devices").resolve(p.getFileName().toString()))
                    .filter(Files::exists)
                    .findFirst();
        } catch (IOException e) {
            return Optional.empty();
        }
    }

    public String summary() {
        return "VFIO container interface: " + (vfioContainer ? "yes (/dev/vfio/vfio)" : "no (modprobe vfio-pci)")
                + "; iommufd: " + (iommufd ? "yes (/dev/iommu)" : "no (kernel before 6.2 or IOMMUFD off)")
                + "; VFIO device cdevs: " + (vfioDeviceCdevs.isEmpty() ? "none" : String.join(" ", vfioDeviceCdevs))
                + "; IOMMU groups: " + iommuGroups;
    }
}
