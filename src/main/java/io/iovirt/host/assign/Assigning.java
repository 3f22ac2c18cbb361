// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.host.HostUsage;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciInventory;
import io.iovirt.pci.PciSysfs;
import java.util.ArrayList;
import java.util.List;

/** {@code host assign}: the readiness checks in front of {@link AssignmentRegistry#assign}. */
public final class Assigning {
    /** Why an assigned device is not there: what removes devices from under the registry. */
    public static final String GONE =
            "a VF whose PF's VFs were removed or whose PF's driver let go, or an unplugged device";

    private Assigning() {}

    /**
     * Refuses a device assigned to {@code vm} that is not on this host (any more): QEMU would only fail later,
     * without the reason — the device behind the address is not there.
     */
    public static void requirePresent(PciSysfs pci, Bdf bdf, String vm) {
        if (!pci.exists(bdf)) {
            throw new HostConfigException(
                    bdf + " is assigned to VM " + vm + " but does not exist on this host (" + pci.deviceDir(bdf)
                            + " is missing): " + GONE,
                    "release it (iovirt host release " + bdf + "), then assign a device that exists");
        }
    }

    /**
     * Assigns {@code bdf} to {@code vm} after checking that it can be handed over now (bound to vfio-pci, group
     * viable, not used by the host) — unless {@code force}. Exclusivity is enforced by the registry either way.
     */
    public static AssignmentRegistry.Result assign(HostPaths paths, Bdf bdf, String vm, boolean force) {
        return assign(paths, bdf, vm, force, false);
    }

    /**
     * @param dryRun check everything, but record nothing
     *     <p>The check and the record happen under the state lock, which {@code host unbind} and {@code host vfs} take
     *     too: a concurrent unbind or VF removal comes wholly before the check (and is seen by it) or after the
     *     record (and is refused, the device being assigned), never in between.
     */
    public static AssignmentRegistry.Result assign(HostPaths paths, Bdf bdf, String vm, boolean force, boolean dryRun) {
        AssignmentRegistry.checkVmName(vm);
        AssignmentRegistry registry = new AssignmentRegistry(paths.stateDir());
        return registry.store().locked(() -> {
            PciInventory inv = PciInventory.scan(paths.sys());
            PciDevice dev = inv.require(bdf);
            if (!force) {
                HostUsage usage = HostUsage.scan(paths.sys(), paths.proc(), paths.dev());
                Assignability a = Assignability.of(inv, usage, null, dev);
                if (a.status() == Assignability.Status.NO) {
                    throw new HostConfigException(
                            "cannot assign " + bdf + ": " + String.join("; ", a.reasons()),
                            "resolve that first, or pass --force if you are sure");
                }
                if (a.status() == Assignability.Status.AFTER_BIND) {
                    throw new HostConfigException(
                            "cannot assign " + bdf + ": it is "
                                    + (dev.driver() == null ? "not bound to any driver" : "bound to " + dev.driver())
                                    + ", not vfio-pci",
                            "bind it first: iovirt host bind " + bdf);
                }
            }
            List<Bdf> peers = new ArrayList<>();
            if (dev.iommuGroup() >= 0) {
                for (String p : inv.groups().peers(dev.iommuGroup(), bdf)) {
                    Bdf b = Bdf.tryParse(p);
                    if (b != null) {
                        peers.add(b);
                    }
                }
            }
            return registry.assign(bdf, vm, peers, dryRun);
        });
    }
}
