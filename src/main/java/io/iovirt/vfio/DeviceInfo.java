// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import java.util.ArrayList;
import java.util.List;

/** VFIO_DEVICE_GET_INFO: the device's kind and how many regions and interrupt indexes it has. */
public record DeviceInfo(int flags, int numRegions, int numIrqs) {
    public boolean resettable() {
        return (flags & VfioAbi.DEVICE_FLAGS_RESET) != 0;
    }

    public boolean pci() {
        return (flags & VfioAbi.DEVICE_FLAGS_PCI) != 0;
    }

    public String flagsText() {
        List<String> f = new ArrayList<>();
        if (pci()) {
            f.add("pci");
        }
        if ((flags & VfioAbi.DEVICE_FLAGS_PLATFORM) != 0) {
            f.add("platform");
        }
        if (resettable()) {
            f.add("reset");
        }
        if ((flags & VfioAbi.DEVICE_FLAGS_CAPS) != 0) {
            f.add("caps");
        }
        return String.join(" ", f);
    }
}
