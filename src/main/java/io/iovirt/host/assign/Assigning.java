// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.host.HostUsage;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciInventory;
import java.util.ArrayList;
import java.util.List;

/** {@code host assign}: the readiness checks in front of {@link AssignmentRegistry#assign}. */
public final class Assigning {
    private Assigning() {}

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
