// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.host.HostConfigException;
import io.iovirt.host.StateStore;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.SysfsTree;
import java.nio.file.Path;
import java.time.Instant;
import java.time.format.DateTimeParseException;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * Which VM owns which PCI function: a device or virtual function belongs to at most one VM, and the functions of
 * one IOMMU group belong to one VM (the group is the unit the IOMMU isolates). Changes from several processes are
 * serialized by the state directory's lock and survive a crash mid-write (see {@link StateStore}).
 */
public final class AssignmentRegistry {
    public static final String TABLE = "assignments";
    private static final Pattern VM_NAME = Pattern.compile("[A-Za-z0-9][A-Za-z0-9_.+:@-]{0,63}");

    /** One entry: {@code bdf} belongs to {@code vm} since {@code since}. */
    public record Assignment(Bdf bdf, String vm, Instant since) {}

    /** The outcome of {@link #assign}: the entry, and whether this call created it. */
    public record Result(Assignment assignment, boolean created) {}

    private final StateStore store;

    public AssignmentRegistry(Path stateDir) {
        this.store = new StateStore(stateDir);
    }

    public StateStore store() {
        return store;
    }

    /**
     * Checks a VM name: letters, digits and _.+:@- (no blanks), the first a letter or digit, at most 64 characters.
     */
    public static String checkVmName(String vm) {
        if (vm == null || !VM_NAME.matcher(vm).matches()) {
            throw new HostConfigException(
                    "'" + SysfsTree.printable(String.valueOf(vm)) + "' is not a usable VM name",
                    "use 1-64 letters, digits or _.+:@- starting with a letter or digit");
        }
        return vm;
    }

    public List<Assignment> list() {
        List<Assignment> out = new ArrayList<>();
        Map<Bdf, Integer> rowOf = new HashMap<>();
        List<String[]> rows = store.read(TABLE);
        for (int i = 0; i < rows.size(); i++) {
            String[] row = rows.get(i);
            if (row.length != 3) {
                throw store.damaged(TABLE, i, "expected 'BDF VM TIME'");
            }
            Bdf bdf = StateStore.bdf(row[0]);
            if (bdf == null) {
                throw store.damaged(
                        TABLE, i, "'" + SysfsTree.printable(row[0]) + "' is not a PCI address (DDDD:BB:DD.F)");
            }
            if (!VM_NAME.matcher(row[1]).matches()) {
                throw store.damaged(TABLE, i, "'" + SysfsTree.printable(row[1]) + "' is not a VM name");
            }
            Instant since;
            try {
                since = Instant.parse(row[2]);
            } catch (DateTimeParseException e) {
                throw store.damaged(TABLE, i, "bad time '" + SysfsTree.printable(row[2]) + "'");
            }
            Integer earlier = rowOf.putIfAbsent(bdf, i);
            if (earlier != null) {
                // One device, one VM: iovirt never writes a device twice, so a second row is an edit, and no owner
                // can be chosen between the two (taking the first made the second the owner once it was released).
                throw store.damaged(
                        TABLE,
                        i,
                        bdf + " is assigned to VM " + row[1] + " here and to VM "
                                + out.get(earlier).vm() + " on line " + (earlier + 2));
            }
            out.add(new Assignment(bdf, row[1], since));
        }
        return out;
    }

    /** The VM that owns {@code bdf}, or null. */
    public Assignment owner(Bdf bdf) {
        for (Assignment a : list()) {
            if (a.bdf().equals(bdf)) {
                return a;
            }
        }
        return null;
    }

    /**
     * Gives {@code bdf} to {@code vm}, atomically with respect to every other iovirt process.
     *
     * @param groupPeers the other functions of its IOMMU group: none of them may belong to another VM
     * @throws HostConfigException when the device or a group peer belongs to another VM
     */
    public Result assign(Bdf bdf, String vm, Collection<Bdf> groupPeers) {
        return assign(bdf, vm, groupPeers, false);
    }

    /** @param dryRun check everything, but record nothing */
    public Result assign(Bdf bdf, String vm, Collection<Bdf> groupPeers, boolean dryRun) {
        checkVmName(vm);
        return store.locked(() -> {
            List<Assignment> all = list();
            for (Assignment a : all) {
                if (a.bdf().equals(bdf)) {
                    if (a.vm().equals(vm)) {
                        return new Result(a, false);
                    }
                    throw new HostConfigException(
                            bdf + " is already assigned to VM " + a.vm() + " (since " + a.since() + ")",
                            "a device belongs to one VM at a time: release it first (iovirt host release " + bdf + ")");
                }
            }
            for (Assignment a : all) {
                if (groupPeers.contains(a.bdf()) && !a.vm().equals(vm)) {
                    throw new HostConfigException(
                            bdf + " shares its IOMMU group with " + a.bdf() + ", assigned to VM " + a.vm(),
                            "the functions of one IOMMU group can only go to one VM; release " + a.bdf()
                                    + " or pick another device");
                }
            }
            Assignment created = new Assignment(bdf, vm, Instant.now().truncatedTo(ChronoUnit.SECONDS));
            List<Assignment> next = new ArrayList<>(all);
            next.add(created);
            if (!dryRun) {
                save(next);
            }
            return new Result(created, true);
        });
    }

    /**
     * Takes {@code bdf} back from its VM.
     *
     * @param vm when not null, the release is refused unless that VM owns the device
     * @return the removed entry
     */
    public Assignment release(Bdf bdf, String vm) {
        return release(bdf, vm, false);
    }

    /** @param dryRun check everything, but change nothing */
    public Assignment release(Bdf bdf, String vm, boolean dryRun) {
        return store.locked(() -> {
            List<Assignment> all = new ArrayList<>(list());
            for (Assignment a : all) {
                if (a.bdf().equals(bdf)) {
                    if (vm != null && !a.vm().equals(vm)) {
                        throw new HostConfigException(
                                bdf + " belongs to VM " + a.vm() + ", not " + vm,
                                "release it as its owner (--vm " + a.vm() + ") or leave it");
                    }
                    all.remove(a);
                    if (!dryRun) {
                        save(all);
                    }
                    return a;
                }
            }
            throw new HostConfigException(bdf + " is not assigned to any VM", "see iovirt host assignments");
        });
    }

    /**
     * Drops the entries of devices that are gone (VFs destroyed when their PF's VF count changed): a new device at
     * the same address is not the one a VM was given.
     *
     * @return the dropped entries
     */
    public List<Assignment> dropGone(Collection<Bdf> gone) {
        return store.locked(() -> {
            List<Assignment> all = new ArrayList<>(list());
            List<Assignment> dropped = new ArrayList<>();
            for (Assignment a : all) {
                if (gone.contains(a.bdf())) {
                    dropped.add(a);
                }
            }
            if (!dropped.isEmpty()) {
                all.removeAll(dropped);
                save(all);
            }
            return dropped;
        });
    }

    private void save(List<Assignment> all) {
        List<String[]> rows = new ArrayList<>();
        for (Assignment a : all) {
            rows.add(new String[] {a.bdf().toString(), a.vm(), a.since().toString()});
        }
        store.write(TABLE, rows);
    }
}
