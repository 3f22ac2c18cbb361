// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.sriov;

import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.host.HostUsage;
import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.host.binding.DriverBinding;
import io.iovirt.host.binding.VfioHolders;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciInventory;
import io.iovirt.pci.SysfsTree;
import io.iovirt.util.ActionableException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Creates and removes SR-IOV virtual functions through the kernel's sriov_numvfs, with control over whether host
 * drivers probe new VFs (sriov_drivers_autoprobe), and provisions per-VF resources where the device needs it before
 * a VF works: an NVMe PF must give each secondary controller queues and interrupts and bring it online.
 *
 * <p>Changing the number of VFs destroys every existing VF (the kernel goes through zero), so it is refused while a
 * VF belongs to a VM or the host uses one, unless forced.
 */
public final class SriovManager {
    /**
     * One VF as it stands after the change.
     *
     * @param resources what the device gave it: for NVMe the secondary controller's queues, interrupts and state;
     *     for other devices what sysfs shows (MSI-X vectors, network queues), or a note that the PF driver knows
     */
    public record VfInfo(int index, Bdf bdf, String driver, int iommuGroup, Map<String, Object> resources) {}

    /** @param notes what the operator should know (e.g. that VFs have few queues) */
    public record Outcome(
            Bdf pf,
            int before,
            int after,
            int totalVfs,
            Boolean autoprobe,
            List<VfInfo> vfs,
            List<String> writes,
            List<String> notes) {}

    /**
     * Per-VF NVMe resources.
     *
     * @param queues flexible queue resources per secondary controller (admin queue included), 0 = share evenly
     * @param interrupts flexible interrupt resources per secondary controller, 0 = share evenly
     */
    public record NvmeRequest(int queues, int interrupts, boolean provision) {
        public static final NvmeRequest DEFAULT = new NvmeRequest(0, 0, true);
    }

    /** Talks to an NVMe PF's admin queue; the real one is {@link NvmeVirtualization}. */
    public interface NvmeProvisioner {
        /** Gives VFs 1..count their resources and brings them online; returns per-VF state keyed by VF number. */
        Map<Integer, Map<String, Object>> provision(PciDevice pf, int count, NvmeRequest request, List<String> notes);

        /** Per-VF state keyed by VF number, without changing anything. */
        Map<Integer, Map<String, Object>> describe(PciDevice pf);
    }

    private final HostPaths paths;
    private final SysfsTree sys;
    private final AssignmentRegistry registry;
    private final NvmeProvisioner nvme;
    private final boolean dryRun;

    public SriovManager(HostPaths paths) {
        this(paths, false);
    }

    /** @param dryRun check and list the sysfs writes {@link #setVfs} would make, but change nothing */
    public SriovManager(HostPaths paths, boolean dryRun) {
        this(paths, new NvmeVirtualization(paths), dryRun);
    }

    SriovManager(HostPaths paths, NvmeProvisioner nvme) {
        this(paths, nvme, false);
    }

    SriovManager(HostPaths paths, NvmeProvisioner nvme, boolean dryRun) {
        this.dryRun = dryRun;
        this.paths = paths;
        this.sys = paths.sys();
        this.registry = new AssignmentRegistry(paths.stateDir());
        this.nvme = nvme;
    }

    /**
     * Sets the number of VFs of {@code pfBdf}.
     *
     * @param autoprobe whether host drivers probe new VFs; null leaves the setting as it is
     */
    public Outcome setVfs(Bdf pfBdf, int count, Boolean autoprobe, NvmeRequest nvmeRequest, boolean force) {
        if (count < 0) {
            throw new HostConfigException("--count must be 0 or more, not " + count, "");
        }
        return registry.store().locked(() -> {
            PciInventory inv = PciInventory.scan(sys);
            PciDevice pf = inv.require(pfBdf);
            PciDevice.SriovInfo sriov = requireSriov(pf);
            if (count > sriov.totalVfs()) {
                throw new HostConfigException(
                        pfBdf + " supports at most " + sriov.totalVfs() + " VFs, not " + count,
                        "ask for " + sriov.totalVfs() + " or fewer");
            }
            if (pf.driver() == null) {
                throw new HostConfigException(
                        pfBdf + " has no driver, and only its driver can enable VFs",
                        "bind its host driver first (e.g. iovirt host unbind " + pfBdf + ", or modprobe the driver)");
            }
            List<String> writes = new ArrayList<>();
            List<String> notes = new ArrayList<>();
            String dir = PciDevice.dir(pfBdf) + "/";
            boolean provisionNvme = pf.isNvme() && count > 0 && nvmeRequest.provision();
            if (sriov.numVfs() != count) {
                if (!force) {
                    List<String> problems = removalProblems(inv, sriov.vfs());
                    if (!problems.isEmpty()) {
                        throw new HostConfigException(
                                "refusing to change the VFs of " + pfBdf + " (the kernel recreates all of them): "
                                        + String.join("; ", problems),
                                "release them first, or pass --force");
                    }
                }
                Boolean probeAfter = autoprobe != null ? autoprobe : sriov.autoprobe();
                // The autoprobe setting to put back when the count cannot be changed, once it was written.
                String probeBefore = null;
                try {
                    if (provisionNvme && sriov.autoprobe() != null) {
                        // An NVMe VF fails its probe until it has resources: keep host drivers away until it is online.
                        probeBefore = sriov.autoprobe() ? "1" : "0";
                        write(writes, dir + "sriov_drivers_autoprobe", "0");
                    } else if (autoprobe != null && sriov.autoprobe() != null && autoprobe != sriov.autoprobe()) {
                        probeBefore = sriov.autoprobe() ? "1" : "0";
                        write(writes, dir + "sriov_drivers_autoprobe", autoprobe ? "1" : "0");
                    }
                    if (sriov.numVfs() > 0) {
                        write(writes, dir + "sriov_numvfs", "0");
                        if (!dryRun) {
                            // The VFs are gone, whatever happens next: so is what iovirt recorded about them.
                            forgetDestroyed(sriov.vfs(), notes);
                        }
                    }
                    if (count > 0) {
                        write(writes, dir + "sriov_numvfs", Integer.toString(count));
                    }
                    long now = dryRun ? count : sys.readDecimal(dir + "sriov_numvfs");
                    if (now != count) {
                        throw new HostConfigException(
                                "the kernel kept " + now + " VFs on " + pfBdf + " instead of " + count,
                                "dmesg says why (a PF driver may cap VFs, or need resources such as a bigger BAR "
                                        + "window)");
                    }
                } catch (ActionableException e) {
                    if (probeBefore != null && !dryRun) {
                        restoreAutoprobe(dir, probeBefore, e);
                    }
                    throw e;
                }
                if (dryRun) {
                    if (provisionNvme) {
                        notes.add("would give each NVMe VF flexible queue and interrupt resources and bring it online");
                    }
                    notes.add(DriverBinding.DRY_RUN_NOTE);
                    return new Outcome(
                            pfBdf,
                            sriov.numVfs(),
                            count,
                            sriov.totalVfs(),
                            sriov.autoprobe(),
                            List.of(),
                            writes,
                            notes);
                }
                PciDevice after = PciInventory.scan(sys).require(pfBdf);
                forgetStale(inv, after.sriov().vfs(), notes);
                if (provisionNvme) {
                    Map<Integer, Map<String, Object>> state;
                    try {
                        state = nvme.provision(after, count, nvmeRequest, notes);
                    } catch (ActionableException e) {
                        if (sriov.autoprobe() != null) {
                            write(writes, dir + "sriov_drivers_autoprobe", Boolean.TRUE.equals(probeAfter) ? "1" : "0");
                        }
                        throw new HostConfigException(
                                count + " VFs of " + pfBdf + " exist but have no queues: " + e.problem(),
                                e.remedy() + "; remove them with iovirt host vfs " + pfBdf + " --count 0, or retry",
                                e);
                    }
                    if (sriov.autoprobe() != null) {
                        // First: with autoprobe off the kernel refuses to probe a VF that has no driver_override.
                        write(writes, dir + "sriov_drivers_autoprobe", Boolean.TRUE.equals(probeAfter) ? "1" : "0");
                        if (Boolean.TRUE.equals(probeAfter)) {
                            for (Bdf vf : after.sriov().vfs()) {
                                write(writes, "bus/pci/drivers_probe", vf.toString());
                            }
                        }
                    }
                    return outcome(pfBdf, sriov.numVfs(), writes, notes, state);
                }
            } else {
                if (autoprobe != null && sriov.autoprobe() != null && autoprobe != sriov.autoprobe()) {
                    // Asked for and shown in the outcome: not writing it left "autoprobe: on" after --no-autoprobe.
                    write(writes, dir + "sriov_drivers_autoprobe", autoprobe ? "1" : "0");
                    notes.add("drivers autoprobe " + (autoprobe ? "on" : "off") + " applies to VFs created later; the "
                            + count + " that exist keep the drivers they have");
                }
                if (provisionNvme && nvmeRequest.queues() + nvmeRequest.interrupts() > 0) {
                    notes.add("the VFs exist already; to change their resources, remove them first (--count 0)");
                }
            }
            if (autoprobe != null && sriov.autoprobe() == null) {
                notes.add("this kernel has no sriov_drivers_autoprobe for " + pfBdf + ": --" + (autoprobe ? "" : "no-")
                        + "autoprobe had no effect");
            }
            Map<Integer, Map<String, Object>> state = pf.isNvme() && count > 0 ? describeNvme(pf, notes) : Map.of();
            return outcome(pfBdf, sriov.numVfs(), writes, notes, state);
        });
    }

    /** The PF's VFs and their resources, changing nothing. */
    public Outcome status(Bdf pfBdf) {
        PciInventory inv = PciInventory.scan(sys);
        PciDevice pf = inv.require(pfBdf);
        PciDevice.SriovInfo sriov = requireSriov(pf);
        List<String> notes = new ArrayList<>();
        Map<Integer, Map<String, Object>> state =
                pf.isNvme() && sriov.numVfs() > 0 ? describeNvme(pf, notes) : Map.of();
        return outcome(pfBdf, sriov.numVfs(), List.of(), notes, state);
    }

    private Map<Integer, Map<String, Object>> describeNvme(PciDevice pf, List<String> notes) {
        try {
            return nvme.describe(pf);
        } catch (ActionableException e) {
            notes.add("cannot read the secondary controller list: " + e.getMessage());
            return Map.of();
        }
    }

    private Outcome outcome(
            Bdf pfBdf,
            int before,
            List<String> writes,
            List<String> notes,
            Map<Integer, Map<String, Object>> nvmeState) {
        PciInventory inv = PciInventory.scan(sys);
        PciDevice pf = inv.require(pfBdf);
        HostUsage usage = HostUsage.scan(sys, paths.proc(), paths.dev());
        List<VfInfo> vfs = new ArrayList<>();
        int index = 0;
        for (Bdf vfBdf : pf.sriov().vfs()) {
            index++;
            PciDevice vf = inv.device(vfBdf);
            Map<String, Object> res = new LinkedHashMap<>();
            if (nvmeState.containsKey(index)) {
                res.putAll(nvmeState.get(index));
            } else if (vf != null) {
                res.putAll(sysfsResources(vf, usage));
            }
            vfs.add(new VfInfo(index, vfBdf, vf == null ? null : vf.driver(), vf == null ? -1 : vf.iommuGroup(), res));
        }
        if (!vfs.isEmpty() && !pf.isNvme()) {
            notes.add(
                    "a VF's queues are fixed by the PF driver and usually far fewer than the PF's; they show once a driver binds the VF");
            long totalMsix = sys.readDecimalOptional(PciDevice.dir(pfBdf) + "/sriov_vf_total_msix");
            if (totalMsix > 0) {
                notes.add("the PF shares " + totalMsix + " MSI-X vectors among all its VFs (sriov_vf_total_msix)");
            }
        }
        return new Outcome(
                pfBdf,
                before,
                pf.sriov().numVfs(),
                pf.sriov().totalVfs(),
                pf.sriov().autoprobe(),
                vfs,
                writes,
                notes);
    }

    /** What sysfs tells about a VF's resources: MSI-X vectors and, with a network driver bound, its queues. */
    private Map<String, Object> sysfsResources(PciDevice vf, HostUsage usage) {
        Map<String, Object> res = new LinkedHashMap<>();
        String dir = PciDevice.dir(vf.bdf()) + "/";
        // (A VF's sriov_vf_msix_count is write-only: the kernel offers no way to read a VF's vector count back.)
        List<String> irqs = sys.list(dir + "msi_irqs");
        if (!irqs.isEmpty()) {
            res.put("interrupts_in_use", irqs.size());
        }
        for (String iface : usage.netInterfaces(vf.bdf())) {
            List<String> queues = sys.list("class/net/" + iface + "/queues");
            long rx = queues.stream().filter(q -> q.startsWith("rx-")).count();
            long tx = queues.stream().filter(q -> q.startsWith("tx-")).count();
            res.put("interface", iface);
            res.put("rx_queues", rx);
            res.put("tx_queues", tx);
        }
        return res;
    }

    /**
     * Puts sriov_drivers_autoprobe back after the count could not be changed; when that fails too, the error says
     * both and what to write by hand.
     */
    private void restoreAutoprobe(String dir, String value, ActionableException failure) {
        try {
            sys.write(dir + "sriov_drivers_autoprobe", value);
        } catch (ActionableException e) {
            throw new HostConfigException(
                    failure.problem() + "; putting sriov_drivers_autoprobe back to " + value + " failed too: "
                            + e.problem(),
                    failure.remedy() + (failure.remedy().isEmpty() ? "" : "; ") + "then write " + value + " to "
                            + sys.path(dir + "sriov_drivers_autoprobe"),
                    failure);
        }
    }

    private List<String> removalProblems(PciInventory inv, List<Bdf> vfs) {
        List<String> problems = new ArrayList<>();
        HostUsage usage = HostUsage.scan(sys, paths.proc(), paths.dev());
        VfioHolders vfio = new VfioHolders(paths); // /proc read once for all the VFs, not once per VF
        for (Bdf vf : vfs) {
            AssignmentRegistry.Assignment owner = registry.owner(vf);
            if (owner != null) {
                problems.add("VF " + vf + " is assigned to VM " + owner.vm());
            }
            for (String use : usage.uses(vf)) {
                problems.add("the host uses VF " + vf + ": it " + use);
            }
            PciDevice dev = inv.device(vf);
            if (dev != null) {
                for (String user : vfio.users(dev)) {
                    // vfio-pci lets a VF go only once its user closes it: the write to sriov_numvfs would wait for
                    // that (with the state lock held), and the VM would lose the device under it
                    problems.add("VF " + vf + " is in use through VFIO: " + user + " (a VM uses it; removing the VFs"
                            + " would wait until it lets go)");
                }
            }
        }
        return problems;
    }

    /**
     * Forgets destroyed VFs: the drivers they had before iovirt bound them, and the VMs they were assigned to (only
     * --force destroys an assigned VF). A VF made later at the same address is a new device that nobody owns.
     */
    private void forgetDestroyed(List<Bdf> vfs, List<String> notes) {
        forget(vfs, notes, "is destroyed", "a VF made at that address later");
    }

    /**
     * Forgets what iovirt recorded about addresses where the kernel has just created VFs but where no device was
     * before the change: the VF recorded there was destroyed outside iovirt (someone lowered sriov_numvfs, or the
     * PF's driver let go of it), so the VF now at that address is new and nobody's — not the VM the old one was
     * assigned to, which would otherwise be handed a device it was never given.
     */
    private void forgetStale(PciInventory before, List<Bdf> vfsNow, List<String> notes) {
        List<Bdf> reborn = new ArrayList<>();
        for (Bdf vf : vfsNow) {
            if (before.device(vf) == null) {
                reborn.add(vf);
            }
        }
        forget(
                reborn,
                notes,
                "had been destroyed outside iovirt (its PF's sriov_numvfs was lowered, or the PF's driver let go)",
                "the VF just made at that address");
    }

    private void forget(List<Bdf> vfs, List<String> notes, String fate, String successor) {
        DriverBinding.forgetVfs(registry, vfs, notes, fate, successor);
    }

    private static PciDevice.SriovInfo requireSriov(PciDevice pf) {
        if (pf.isVirtualFunction()) {
            throw new HostConfigException(
                    pf.bdf() + " is a virtual function of " + pf.physfn(),
                    "manage VFs on the physical function: iovirt host vfs " + pf.physfn() + " --count N");
        }
        if (pf.sriov() == null || pf.sriov().totalVfs() == 0) {
            throw new HostConfigException(
                    pf.bdf() + " is not SR-IOV capable (no sriov_totalvfs, or 0)",
                    "see which devices are: iovirt host devices (SR-IOV column), or iovirt host check");
        }
        return pf.sriov();
    }

    private void write(List<String> log, String relative, String value) {
        if (!dryRun) {
            sys.write(relative, value);
        }
        log.add(sys.path(relative) + " <- " + value + (dryRun ? " (would write)" : ""));
    }
}
