// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciSysfs;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * One PCI device owned through VFIO, with everything that ownership needs: a container with the type1v2 IOMMU, the
 * device's group attached to it, the device itself, and the DMA arenas made for it. Opening runs the steps in the
 * kernel's order and undoes the ones done when a later one fails; {@link #close()} releases in the safe order:
 * device (vfio-pci resets it, so it stops DMA) → DMA arenas (unmapped, then freed) → group → container.
 */
public final class VfioSession implements AutoCloseable {
    private final Bdf address;
    private final VfioContainer container;
    private final VfioGroup group;
    private final VfioDevice device;
    private final List<DmaArena> arenas = new ArrayList<>();
    private boolean closed;

    private VfioSession(Bdf address, VfioContainer container, VfioGroup group, VfioDevice device) {
        this.address = address;
        this.container = container;
        this.group = group;
        this.device = device;
    }

    public static VfioSession open(Bdf address) throws VfioException {
        return open(address, PciSysfs.SYSTEM, VfioGroup.DEFAULT_DIR, VfioContainer.DEFAULT_PATH);
    }

    public static VfioSession open(Bdf address, PciSysfs sysfs, Path vfioDir, Path containerPath) throws VfioException {
        int groupNumber = sysfs.iommuGroup(address);
        VfioContainer container = null;
        VfioGroup group = null;
        try {
            container = VfioContainer.open(containerPath);
            group = VfioGroup.open(groupNumber, vfioDir);
            group.requireViable(sysfs);
            group.attach(container);
            List<VfioContainer.IommuType> types = container.supportedIommuTypes();
            container.setIommu(
                    types.contains(VfioContainer.IommuType.TYPE1V2)
                            ? VfioContainer.IommuType.TYPE1V2
                            : VfioContainer.IommuType.TYPE1);
            VfioDevice device = group.openDevice(address);
            return new VfioSession(address, container, group, device);
        } catch (VfioException | RuntimeException e) {
            if (group != null) {
                group.close();
            }
            if (container != null) {
                container.close();
            }
            throw e;
        }
    }

    public Bdf address() {
        return address;
    }

    public VfioContainer container() {
        return container;
    }

    public IommuBackend iommu() {
        return container;
    }

    public VfioGroup group() {
        return group;
    }

    public VfioDevice device() {
        return device;
    }

    /** A DMA arena mapped at {@code iova}, released by {@link #close()} (or earlier by closing it). */
    public synchronized DmaArena createDmaArena(long iova, long size) throws VfioException {
        if (closed) {
            throw new IllegalStateException("VFIO session for " + address + " is closed");
        }
        DmaArena a = DmaArena.create(container, iova, size);
        arenas.add(a);
        return a;
    }

    public synchronized boolean isClosed() {
        return closed;
    }

    /** Releases everything, in order, once; safe to call from a shutdown hook while another thread still works. */
    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        closed = true;
        RuntimeException first = null;
        try {
            device.close();
        } catch (RuntimeException e) {
            first = e;
        }
        for (int i = arenas.size() - 1; i >= 0; i--) {
            try {
                arenas.get(i).close();
            } catch (RuntimeException e) {
                first = first == null ? e : first;
            }
        }
        group.close();
        container.close();
        if (first != null) {
            throw first;
        }
    }
}
