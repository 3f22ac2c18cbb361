// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static java.lang.foreign.ValueLayout.JAVA_INT;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.Ioctl;
import io.iovirt.linux.LinuxException;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciSysfs;
import io.iovirt.util.ActionableException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;

/**
 * A VFIO group ({@code /dev/vfio/N}): the unit of isolation the IOMMU gives, so the unit of ownership too. A group is
 * usable ("viable") only when every device in it has no driver or one that does no DMA of its own (vfio-pci,
 * pci-stub, pcieport: {@link PciDevice#keepsGroupViable}); then it is attached to a container and hands out device
 * descriptors.
 */
public final class VfioGroup implements AutoCloseable {
    public static final Path DEFAULT_DIR = Path.of("/dev/vfio");

    /** VFIO_GROUP_GET_STATUS. */
    public record Status(boolean viable, boolean containerSet) {}

    private final Fd fd;
    private final int number;
    private volatile VfioContainer container;

    private VfioGroup(Fd fd, int number) {
        this.fd = fd;
        this.number = number;
    }

    public static VfioGroup open(int number) throws VfioException {
        return open(number, DEFAULT_DIR);
    }

    /** Opens {@code dir/number}; the errors say how to make the group available. */
    public static VfioGroup open(int number, Path dir) throws VfioException {
        Path path = dir.resolve(Integer.toString(number));
        try {
            return new VfioGroup(FileIo.open(path, FileIo.O_RDWR), number);
        } catch (LinuxException e) {
            throw new VfioException(
                    switch (e.errno()) {
                        case Errno.ENOENT ->
                            "no " + path + ": no device of IOMMU group " + number + " is bound to vfio-pci — "
                                    + bindRemedy();
                        case Errno.EBUSY ->
                            path + " is busy: IOMMU group " + number + " is already in use by another process "
                                    + "(a VM, or another iovirt); a group has one user at a time — stop that user first";
                        case Errno.EACCES, Errno.EPERM ->
                            "cannot open " + path + ": " + e.errnoName()
                                    + " — run as root, or give this user access to it (chown/udev rule)";
                        default -> "cannot open " + path + ": " + e.getMessage();
                    },
                    e);
        }
    }

    static String bindRemedy() {
        return "bind every device of the group to vfio-pci: 'iovirt host bind BDF' for each, or by hand: "
                + "echo vfio-pci > /sys/bus/pci/devices/BDF/driver_override; "
                + "echo BDF > /sys/bus/pci/devices/BDF/driver/unbind; echo BDF > /sys/bus/pci/drivers_probe";
    }

    public int number() {
        return number;
    }

    public Status status() throws VfioException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment s = a.allocate(VfioAbi.GROUP_STATUS);
            s.set(JAVA_INT, VfioAbi.ARGSZ, (int) VfioAbi.GROUP_STATUS.byteSize());
            Ioctl.call(fd, VfioAbi.GROUP_GET_STATUS, s);
            int flags = s.get(JAVA_INT, VfioAbi.FLAGS);
            return new Status(
                    (flags & VfioAbi.GROUP_FLAGS_VIABLE) != 0, (flags & VfioAbi.GROUP_FLAGS_CONTAINER_SET) != 0);
        } catch (LinuxException e) {
            throw new VfioException("VFIO_GROUP_GET_STATUS on group " + number + " failed: " + e.getMessage(), e);
        }
    }

    /** Throws, naming the devices that hold the group back, unless the group is viable. */
    public void requireViable(PciSysfs sysfs) throws VfioException {
        if (!status().viable()) {
            throw new VfioException(notViableMessage(number, sysfs));
        }
    }

    /** Why a group is not viable: the members bound to a driver other than vfio-pci, and the remedy. */
    static String notViableMessage(int group, PciSysfs sysfs) {
        List<String> blockers = new ArrayList<>();
        try {
            for (Bdf m : sysfs.groupMembers(group)) {
                Optional<String> drv = sysfs.driver(m);
                if (drv.isPresent() && !PciDevice.keepsGroupViable(drv.get())) {
                    blockers.add(m + " (bound to " + drv.get() + ")");
                }
            }
        } catch (ActionableException e) {
            blockers.add("(members unknown: " + e.getMessage() + ")");
        }
        return "IOMMU group " + group + " is not viable: every device in it must have no driver or be bound to "
                + "vfio-pci (or a vendor variant of it), pci-stub, or (a bridge) pcieport"
                + (blockers.isEmpty()
                        ? ""
                        : ", but " + String.join(", ", blockers) + (blockers.size() == 1 ? " is not" : " are not"))
                + " — " + bindRemedy();
    }

    /** VFIO_GROUP_SET_CONTAINER: puts this group under {@code c}'s IOMMU context. */
    public void attach(VfioContainer c) throws VfioException {
        if (container != null) {
            throw new VfioException("IOMMU group " + number + " is already attached to a container");
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment cfd = a.allocate(JAVA_INT);
            cfd.set(JAVA_INT, 0, c.fd().get());
            Ioctl.call(fd, VfioAbi.GROUP_SET_CONTAINER, cfd);
        } catch (LinuxException e) {
            throw new VfioException(
                    "VFIO_GROUP_SET_CONTAINER for group " + number + " failed: " + e.getMessage()
                            + (e.errno() == Errno.EPERM ? " — the group is not viable: " + bindRemedy() : ""),
                    e);
        }
        container = c;
    }

    /** VFIO_GROUP_UNSET_CONTAINER; every device descriptor of the group must be closed first. */
    public void detach() throws VfioException {
        if (container == null) {
            return;
        }
        try {
            Ioctl.call(fd, VfioAbi.GROUP_UNSET_CONTAINER);
            container = null;
        } catch (LinuxException e) {
            throw new VfioException(
                    "VFIO_GROUP_UNSET_CONTAINER for group " + number + " failed: " + e.getMessage()
                            + (e.errno() == Errno.EBUSY ? " — close the group's devices first" : ""),
                    e);
        }
    }

    /** VFIO_GROUP_GET_DEVICE_FD: the device {@code address}, which must be a member of this group. */
    public VfioDevice openDevice(Bdf address) throws VfioException {
        if (container == null) {
            throw new VfioException("attach IOMMU group " + number + " to a container (with its IOMMU set) before "
                    + "opening its devices");
        }
        int raw;
        try (Arena a = Arena.ofConfined()) {
            raw = Ioctl.call(fd, VfioAbi.GROUP_GET_DEVICE_FD, a.allocateFrom(address.toString()));
        } catch (LinuxException e) {
            throw new VfioException(
                    "VFIO_GROUP_GET_DEVICE_FD(" + address + ") on group " + number + " failed: "
                            + e.errnoName()
                            + switch (e.errno()) {
                                case Errno.ENODEV, Errno.EINVAL ->
                                    " — " + address + " is not a vfio-pci device of IOMMU group " + number;
                                case Errno.EBUSY -> " — the device is already open (by this or another process)";
                                default -> " (" + e.getMessage() + ")";
                            },
                    e);
        }
        Fd dfd = Fd.adopt(raw);
        try {
            return VfioDevice.open(dfd, address.toString());
        } catch (VfioException | RuntimeException e) {
            dfd.close();
            throw e;
        }
    }

    /** Detaches from the container when attached (best effort), then closes. Close the group's devices first. */
    @Override
    public void close() {
        if (container != null && fd.isOpen()) {
            try {
                detach();
            } catch (VfioException e) {
                // closing the descriptor detaches too; nothing else to do
            }
        }
        fd.close();
    }

    @Override
    public String toString() {
        return "VFIO group " + number;
    }
}
