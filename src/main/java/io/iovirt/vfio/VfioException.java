// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import java.io.IOException;

/**
 * A VFIO operation failed. The message says what failed, why, and what to do about it (bind the group's devices to
 * vfio-pci, raise the locked-memory limit, enable the IOMMU...); the cause, when there is one, is the failed system
 * call's {@link io.iovirt.linux.LinuxException}.
 */
public class VfioException extends IOException {
    public VfioException(String message) {
        super(message);
    }

    public VfioException(String message, Throwable cause) {
        super(message, cause);
    }
}
