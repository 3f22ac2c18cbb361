// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import java.util.ArrayList;
import java.util.List;

/** VFIO_DEVICE_GET_IRQ_INFO for one interrupt index (for vfio-pci: INTx, MSI, MSI-X, ERR, REQ). */
public record IrqInfo(int index, String name, int flags, int count) {
    public boolean eventfd() {
        return (flags & VfioAbi.IRQ_INFO_EVENTFD) != 0;
    }

    public boolean maskable() {
        return (flags & VfioAbi.IRQ_INFO_MASKABLE) != 0;
    }

    /** Level-triggered: after each signal VFIO masks the line until it is unmasked. */
    public boolean automasked() {
        return (flags & VfioAbi.IRQ_INFO_AUTOMASKED) != 0;
    }

    /** Vectors are enabled as one set: changing the count needs disabling the index first. */
    public boolean noResize() {
        return (flags & VfioAbi.IRQ_INFO_NORESIZE) != 0;
    }

    public String flagsText() {
        List<String> f = new ArrayList<>();
        if (eventfd()) {
            f.add("eventfd");
        }
        if (maskable()) {
            f.add("maskable");
        }
        if (automasked()) {
            f.add("automasked");
        }
        if (noResize()) {
            f.add("noresize");
        }
        return f.isEmpty() ? "-" : String.join(" ", f);
    }

    static String pciName(int index) {
        return switch (index) {
            case VfioAbi.PCI_INTX_IRQ_INDEX -> "INTx";
            case VfioAbi.PCI_MSI_IRQ_INDEX -> "MSI";
            case VfioAbi.PCI_MSIX_IRQ_INDEX -> "MSI-X";
            case VfioAbi.PCI_ERR_IRQ_INDEX -> "ERR";
            case VfioAbi.PCI_REQ_IRQ_INDEX -> "REQ";
            default -> "irq " + index;
        };
    }
}
