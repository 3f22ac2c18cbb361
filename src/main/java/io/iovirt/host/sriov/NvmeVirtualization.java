// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.sriov;

import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.nvme.IdentifyController;
import io.iovirt.nvme.NvmeAdmin;
import io.iovirt.pci.PciDevice;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * NVMe SR-IOV provisioning (NVMe 1.4 §8.5, Virtualization Enhancements): each VF is a secondary controller that
 * owns no queues or interrupts until the primary controller assigns it flexible resources, and works only once it
 * is online. Through the PF's admin queue: take the secondary offline, assign VQ (rt=0) and VI (rt=1) resources
 * (act=8), bring it online (act=9); then read the Secondary Controller List back to report what each VF got.
 */
public final class NvmeVirtualization implements SriovManager.NvmeProvisioner {
    private final HostPaths paths;

    public NvmeVirtualization(HostPaths paths) {
        this.paths = paths;
    }

    @Override
    public Map<Integer, Map<String, Object>> provision(
            PciDevice pf, int count, SriovManager.NvmeRequest request, List<String> notes) {
        try (NvmeAdmin admin = NvmeAdmin.open(controllerDevice(pf))) {
            IdentifyController id = IdentifyController.parse(admin.identify(NvmeAdmin.CNS_CONTROLLER, 0));
            if (!id.virtualizationManagement()) {
                // QEMU before 8.0 implements the command without advertising it: try, and let the status decide.
                notes.add(pf.bdf() + " does not advertise Virtualization Management (OACS bit 7); tried it anyway");
            }
            List<NvmeAdmin.SecondaryController> targets = targets(admin, pf, count);
            for (NvmeAdmin.SecondaryController sc : targets) {
                if (sc.online()) {
                    admin.virtualizationManagement(NvmeAdmin.ACT_SECONDARY_OFFLINE, NvmeAdmin.RT_VQ, sc.scid(), 0);
                }
            }
            // Re-read after offlining: resources still held by the targets count as available to them.
            targets = targets(admin, pf, count);
            NvmeAdmin.PrimaryCaps caps =
                    NvmeAdmin.PrimaryCaps.parse(admin.identify(NvmeAdmin.CNS_PRIMARY_CTRL_CAPS, id.controllerId()));
            long heldVq = targets.stream()
                    .mapToLong(NvmeAdmin.SecondaryController::nvq)
                    .sum();
            long heldVi = targets.stream()
                    .mapToLong(NvmeAdmin.SecondaryController::nvi)
                    .sum();
            long freeVq = caps.vqfrt() - caps.vqrfap() - caps.vqrfa() + heldVq;
            long freeVi = caps.vifrt() - caps.virfap() - caps.virfa() + heldVi;
            int vq = perVf("queue", request.queues(), freeVq, count, caps.vqfrsm(), 2, pf);
            int vi = perVf("interrupt", request.interrupts(), freeVi, count, caps.vifrsm(), 1, pf);
            for (Step step : plan(targets, vq, vi)) {
                admin.virtualizationManagement(step.act(), step.rt(), step.scid(), step.nr());
            }
            notes.add("each VF got " + vq + " queue resources (1 admin + " + (vq - 1) + " I/O queue pairs) and " + vi
                    + " interrupt(s), out of " + caps.vqfrt() + " flexible queues and " + caps.vifrt()
                    + " flexible interrupts the PF shares among all its VFs; the PF keeps " + caps.vqprt()
                    + " private queues");
            return describe(admin, pf);
        }
    }

    @Override
    public Map<Integer, Map<String, Object>> describe(PciDevice pf) {
        try (NvmeAdmin admin = NvmeAdmin.open(controllerDevice(pf))) {
            return describe(admin, pf);
        }
    }

    private Map<Integer, Map<String, Object>> describe(NvmeAdmin admin, PciDevice pf) {
        Map<Integer, Map<String, Object>> out = new LinkedHashMap<>();
        for (NvmeAdmin.SecondaryController sc : secondaries(admin)) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("secondary_controller", sc.scid());
            m.put("state", sc.online() ? "online" : "offline");
            m.put("queues", sc.nvq());
            m.put("io_queue_pairs", Math.max(0, sc.nvq() - 1));
            m.put("interrupts", sc.nvi());
            out.put(sc.vfn(), m);
        }
        return out;
    }

    /** The secondary controllers of VFs 1..count, in VF order; all must exist. */
    private List<NvmeAdmin.SecondaryController> targets(NvmeAdmin admin, PciDevice pf, int count) {
        Map<Integer, NvmeAdmin.SecondaryController> byVf = new LinkedHashMap<>();
        for (NvmeAdmin.SecondaryController sc : secondaries(admin)) {
            byVf.put(sc.vfn(), sc);
        }
        List<NvmeAdmin.SecondaryController> out = new ArrayList<>();
        for (int vfn = 1; vfn <= count; vfn++) {
            NvmeAdmin.SecondaryController sc = byVf.get(vfn);
            if (sc == null) {
                throw new HostConfigException(
                        pf.bdf() + " lists no secondary controller for VF " + vfn,
                        "the controller's Secondary Controller List does not match its SR-IOV VFs; check its firmware");
            }
            out.add(sc);
        }
        return out;
    }

    /** One Virtualization Management command: action, resource type, secondary controller, number of resources. */
    record Step(int act, int rt, int scid, int nr) {}

    /**
     * The commands that give every (offline) target {@code vq} queue and {@code vi} interrupt resources, then bring
     * each online. The controller checks each assignment against what is free at that moment (NR is the new total,
     * so it needs NR minus what the secondary holds): targets that give resources back go first, then those that
     * take more — in VF order alone, a VF taking its share before a later one gave its surplus back was refused,
     * though the whole fitted.
     */
    static List<Step> plan(List<NvmeAdmin.SecondaryController> targets, int vq, int vi) {
        List<Step> steps = new ArrayList<>();
        for (boolean giving : new boolean[] {true, false}) {
            for (NvmeAdmin.SecondaryController sc : targets) {
                if (sc.nvq() > vq == giving) {
                    steps.add(new Step(NvmeAdmin.ACT_SECONDARY_ASSIGN, NvmeAdmin.RT_VQ, sc.scid(), vq));
                }
                if (sc.nvi() > vi == giving) {
                    steps.add(new Step(NvmeAdmin.ACT_SECONDARY_ASSIGN, NvmeAdmin.RT_VI, sc.scid(), vi));
                }
            }
        }
        for (NvmeAdmin.SecondaryController sc : targets) {
            steps.add(new Step(NvmeAdmin.ACT_SECONDARY_ONLINE, NvmeAdmin.RT_VQ, sc.scid(), 0));
        }
        return steps;
    }

    private static List<NvmeAdmin.SecondaryController> secondaries(NvmeAdmin admin) {
        return NvmeAdmin.SecondaryController.parseList(admin.identify(NvmeAdmin.CNS_SECONDARY_CTRL_LIST, 0));
    }

    /**
     * Resources per VF: as asked, or an even share of what is free, within the per-secondary maximum — and within
     * the 16 bits of NR (CDW11) and of a secondary's NVQ/NVI when the controller states no maximum (VQFRSM 0).
     */
    static int perVf(String kind, int asked, long free, int count, int maxPerSecondary, int minimum, PciDevice pf) {
        String limit = "the controller's limit of " + maxPerSecondary;
        if (maxPerSecondary <= 0) {
            maxPerSecondary = 0xffff;
            limit = "the 16-bit field of the command (the controller states no maximum)";
        }
        int n;
        if (asked > 0) {
            if (asked < minimum) {
                throw new HostConfigException(
                        asked + " " + kind + " resource(s) per VF are too few: a VF needs at least " + minimum
                                + (minimum == 2 ? " (its admin queue and one I/O queue)" : ""),
                        "ask for " + minimum + " or more, or leave it out for an even share");
            }
            n = asked;
            if ((long) n * count > free) {
                throw new HostConfigException(
                        count + " VFs x " + n + " " + kind + " resources exceed the " + free + " free on " + pf.bdf(),
                        "ask for at most " + (free / count) + " per VF, or create fewer VFs");
            }
        } else {
            n = (int) Math.min(maxPerSecondary, free / count);
        }
        if (n > maxPerSecondary) {
            throw new HostConfigException(
                    n + " " + kind + " resources per VF exceed " + limit, "ask for at most " + maxPerSecondary);
        }
        if (n < minimum) {
            throw new HostConfigException(
                    "only " + free + " flexible " + kind + " resources are free on " + pf.bdf() + " for " + count
                            + " VFs; each needs at least " + minimum,
                    "create fewer VFs");
        }
        return n;
    }

    private Path controllerDevice(PciDevice pf) {
        if (pf.nvmeControllers().isEmpty()) {
            throw new HostConfigException(
                    pf.bdf() + " has no NVMe controller device (no nvme/nvmeN in sysfs)",
                    "the PF must be bound to the nvme driver to provision its VFs");
        }
        return paths.devRoot().resolve(pf.nvmeControllers().getFirst());
    }
}
