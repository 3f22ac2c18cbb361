package io.iovirt.host;

import java.lang.foreign.MemorySegment;
import java.nio.file.Path;

/** Opens an NVMe controller device and issues NVME_IOCTL_ADMIN_CMD through io.iovirt.linux. */
final class NvmeIoctl implements NvmeAdmin.Channel {
    private NvmeIoctl() {
    }

    static NvmeAdmin.Channel open(Path device) {
        throw new HostConfigException("NVMe admin passthrough on " + device + " is not available in this build",
                "it arrives with the io.iovirt.linux ioctl support");
    }

    @Override
    public int submit(MemorySegment cmd) {
        throw new IllegalStateException();
    }

    @Override
    public void close() {
    }
}
