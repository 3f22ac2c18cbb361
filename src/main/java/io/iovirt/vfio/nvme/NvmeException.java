// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import io.iovirt.vfio.VfioException;

/**
 * An NVMe command failed or the controller misbehaved. {@link #status()} is the 15-bit completion status, or -1
 * when there was none (a timeout, a fatal controller status).
 */
public class NvmeException extends VfioException {
    private final int status;

    public NvmeException(String message) {
        super(message);
        this.status = -1;
    }

    public NvmeException(String message, int status) {
        super(message);
        this.status = status;
    }

    public int status() {
        return status;
    }

    /** "Read LBA 8+8 failed: LBA Out of Range (SCT 0x0, SC 0x80, DNR) — the LBA range lies beyond ...". */
    static NvmeException failed(String what, int status) {
        return new NvmeException(what + " failed: " + NvmeStatus.describe(status) + NvmeStatus.hint(status), status);
    }
}
