// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nvme;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.Ioctl;
import io.iovirt.linux.LinuxException;
import io.iovirt.util.ActionableException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;

/** An open NVMe controller character device that takes NVME_IOCTL_ADMIN_CMD (the syscalls live in io.iovirt.linux). */
final class NvmeIoctl implements NvmeAdmin.Channel {
    private final Path device;
    private final Fd fd;

    private NvmeIoctl(Path device, Fd fd) {
        this.device = device;
        this.fd = fd;
    }

    static NvmeAdmin.Channel open(Path device) {
        try {
            // Admin passthrough needs CAP_SYS_ADMIN, not write access: nvme-cli opens read-only too.
            return new NvmeIoctl(device, FileIo.open(device, FileIo.O_RDONLY | FileIo.O_CLOEXEC));
        } catch (LinuxException e) {
            throw new ActionableException(
                    "cannot open " + device + ": " + e.getMessage(),
                    e.errno() == Errno.EACCES || e.errno() == Errno.EPERM
                            ? "run as root"
                            : "is the PF bound to the nvme driver?",
                    e);
        }
    }

    @Override
    public int submit(MemorySegment cmd) {
        try {
            return Ioctl.call(fd, NvmeAdmin.NVME_IOCTL_ADMIN_CMD, cmd);
        } catch (LinuxException e) {
            String remedy = switch (e.errnoName()) {
                case "ENOTTY" -> device + " is not an NVMe controller character device";
                case "EACCES", "EPERM" -> "NVMe admin passthrough needs CAP_SYS_ADMIN: run as root";
                default -> "dmesg says why";
            };
            throw new ActionableException("NVME_IOCTL_ADMIN_CMD on " + device + ": " + e.getMessage(), remedy, e);
        }
    }

    @Override
    public void close() {
        fd.close();
    }
}
