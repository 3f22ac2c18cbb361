// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.binding;

import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.host.HostUsage;
import io.iovirt.host.StateStore;
import io.iovirt.host.assign.Assignability;
import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciInventory;
import io.iovirt.pci.SysfsTree;
import io.iovirt.util.ActionableException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Pattern;

/**
 * Moves PCI functions between host drivers and vfio-pci the way the kernel intends: {@code driver_override} names
 * the driver, the current driver lets go ({@code driver/unbind}), and {@code drivers_probe} asks the kernel to bind
 * again — so only the named driver can take the device, and no new_id side effects hit other devices with the same
 * IDs. The previous driver is remembered in the state directory so {@link #unbind} gives the device back.
 *
 * <p>Refuses (unless forced) when the host uses the device or its IOMMU group would not be viable. The kernel
 * decides whether the probe succeeds; the outcome is read back from the driver link, never assumed.
 */
public final class DriverBinding {
    public static final String TABLE = "drivers";
    private static final Pattern DRIVER_NAME = Pattern.compile("[A-Za-z0-9_.:+-]{1,64}");
    private static final String NONE = "-";
    /** The note of every outcome of a dry run. */
    public static final String DRY_RUN_NOTE = "dry run: nothing was changed";

    /**
     * What a bind, unbind or reset did.
     *
     * @param before the driver before the operation (null: unbound)
     * @param after the driver after it (null: unbound)
     * @param writes each sysfs write, in order ("path ← value"), for the log and for tests
     * @param vfioDevice the /dev/vfio/N node of the device's group when it is bound to vfio-pci, else null
     */
    public record Outcome(Bdf bdf, String before, String after, List<String> writes, String vfioDevice, String note) {}

    private final HostPaths paths;
    private final SysfsTree sys;
    private final StateStore store;
    private final AssignmentRegistry registry;
    private final Duration probeWait;
    private final boolean dryRun;

    public DriverBinding(HostPaths paths) {
        this(paths, Duration.ofSeconds(2), false);
    }

    /**
     * @param probeWait how long to wait for an asynchronous probe to show in the driver link
     * @param dryRun check and list the sysfs writes an operation would make, but write nothing (sysfs or state)
     */
    public DriverBinding(HostPaths paths, Duration probeWait, boolean dryRun) {
        this.dryRun = dryRun;
        this.paths = paths;
        this.sys = paths.sys();
        this.registry = new AssignmentRegistry(paths.stateDir());
        this.store = registry.store();
        this.probeWait = probeWait;
    }

    /** Binds {@code bdf} to {@code driver} (normally vfio-pci). */
    public Outcome bind(Bdf bdf, String driver, boolean force) {
        checkDriverName(driver);
        return store.locked(() -> {
            PciInventory inv = PciInventory.scan(sys);
            PciDevice dev = inv.require(bdf);
            if (driver.equals(dev.driver())) {
                return new Outcome(bdf, driver, driver, List.of(), vfioNode(dev, driver), "already bound to " + driver);
            }
            if (!sys.isDirectory("bus/pci/drivers/" + driver)) {
                throw new HostConfigException(
                        "driver " + driver + " is not loaded (no " + sys.path("bus/pci/drivers/" + driver) + ")",
                        driver.equals("vfio-pci") ? "load it: modprobe vfio-pci" : "load its module with modprobe");
            }
            if (!force) {
                List<String> problems = new ArrayList<>(bindProblems(inv, dev, driver));
                problems.addAll(vfioUsers(dev));
                if (!problems.isEmpty()) {
                    throw new HostConfigException(
                            "refusing to bind " + bdf + " to " + driver + ": " + String.join("; ", problems),
                            "resolve that first, or pass --force if you are sure");
                }
            }
            // whether this call wrote the row: only such a row is its to forget when the bind fails
            boolean remembered = !dryRun && rememberPrevious(bdf, dev.driver());
            List<String> writes = new ArrayList<>();
            String dir = PciDevice.dir(bdf);
            try {
                write(writes, dir + "/driver_override", driver);
                if (dev.driver() != null) {
                    write(writes, "bus/pci/drivers/" + dev.driver() + "/unbind", bdf.toString());
                }
                write(writes, "bus/pci/drivers_probe", bdf.toString());
            } catch (ActionableException e) {
                // A write the kernel refused part way (an unbind the driver refuses because another bound the device
                // meanwhile, a probe request it fails): without this, the override stays set, the device may be
                // left without its driver, and the drivers table names a previous driver for a device iovirt never
                // moved — which a later unbind would then act on.
                String now = sys.linkName(dir + "/driver").orElse(null);
                // Bound to a driver other than the one asked for — its own (the unbind was refused) or one another
                // actor bound it to meanwhile (the unbind then fails with ENODEV): it is not taken from that driver.
                String rollback = now != null && !now.equals(driver)
                        ? clearOverride(writes, dev, now)
                        : rollBack(writes, dev, now);
                settleRow(dev.bdf(), driver, remembered);
                throw new HostConfigException(
                        "binding " + bdf + " to " + driver + " failed: " + e.problem() + " (driver now: "
                                + (now == null ? "none" : now) + "; " + rollback + ")",
                        e.remedy(),
                        e);
            }
            if (dryRun) {
                return new Outcome(bdf, dev.driver(), driver, writes, vfioNode(dev, driver), DRY_RUN_NOTE);
            }
            String now = awaitDriver(bdf, driver);
            if (!driver.equals(now)) {
                String rollback = rollBack(writes, dev, now);
                settleRow(dev.bdf(), driver, remembered);
                throw new HostConfigException(
                        "the kernel did not bind " + bdf + " to " + driver + " (driver now: "
                                + (now == null ? "none" : now) + "; " + rollback + ")",
                        "dmesg says why; for vfio-pci the usual cause is a missing IOMMU group (error -22: see iovirt host check)");
            }
            return new Outcome(bdf, dev.driver(), driver, writes, vfioNode(dev, driver), null);
        });
    }

    /** Detaches {@code bdf} from its driver and gives it back to the driver it had before {@link #bind}. */
    public Outcome unbind(Bdf bdf, boolean force) {
        return store.locked(() -> {
            PciInventory inv = PciInventory.scan(sys);
            PciDevice dev = inv.require(bdf);
            if (!force) {
                List<String> problems = new ArrayList<>();
                AssignmentRegistry.Assignment owner = registry.owner(bdf);
                if (owner != null) {
                    problems.add("it is assigned to VM " + owner.vm());
                }
                for (String use : HostUsage.scan(sys, paths.proc(), paths.dev()).uses(bdf)) {
                    problems.add("the host uses it: it " + use);
                }
                problems.addAll(vfioUsers(dev));
                List<String> vfs = vanishingVfs(dev);
                problems.addAll(vfs);
                if (!problems.isEmpty()) {
                    throw new HostConfigException(
                            "refusing to unbind " + bdf + ": " + String.join("; ", problems),
                            (owner != null
                                            ? "release it first (iovirt host release " + bdf + "), "
                                            : !vfs.isEmpty()
                                                    ? "release its VFs and remove them first (iovirt host vfs " + bdf
                                                            + " --count 0), "
                                                    : "stop using it first, ")
                                    + "or pass --force if you are sure");
                }
            }
            String previous = previousDriver(bdf);
            List<String> warnings = new ArrayList<>();
            if (dev.driver() != null && !boundByIovirt(bdf)) {
                warnings.add("iovirt did not bind it: " + dev.driver() + " is the host's own driver, and nothing will "
                        + "take the device afterwards (bind it again with: echo " + bdf + " > /sys/bus/pci/drivers/"
                        + dev.driver() + "/bind)");
            }
            List<String> writes = new ArrayList<>();
            String dir = PciDevice.dir(bdf);
            if (dev.driverOverride() != null) {
                write(writes, dir + "/driver_override", "\n");
            }
            if (dev.driver() != null) {
                write(writes, "bus/pci/drivers/" + dev.driver() + "/unbind", bdf.toString());
            }
            if (dryRun) {
                if (previous != null && !previous.equals(dev.driver())) {
                    writes.add(sys.path("bus/pci/drivers/" + previous + "/bind") + " <- " + bdf + " (would write)");
                }
                warnings.add(DRY_RUN_NOTE);
                return new Outcome(bdf, dev.driver(), previous, writes, null, String.join("; ", warnings));
            }
            if (dev.driver() != null && dev.sriov() != null) {
                // A PF's driver destroys its VFs as it lets go (only --force gets here with VFs enabled): forget the
                // ones that are gone now, not at the next 'host vfs', which would show their assignments as gone
                // until then. Not the ones still there: a driver without a remove callback (pci-pf-stub) leaves SR-IOV
                // enabled, and their VMs still use them.
                List<Bdf> gone = new ArrayList<>();
                List<Bdf> left = new ArrayList<>();
                for (Bdf vf : dev.sriov().vfs()) {
                    (sys.isDirectory("bus/pci/devices/" + vf) ? left : gone).add(vf);
                }
                forgetVfs(
                        registry,
                        gone,
                        warnings,
                        "was destroyed when " + dev.driver() + " let go of its PF " + bdf,
                        "a VF made at that address later");
                if (!left.isEmpty()) {
                    warnings.add(dev.driver() + " left SR-IOV enabled on " + bdf + ": VFs " + left + " still exist and"
                            + " keep their assignments (disable them with 'iovirt host vfs " + bdf + " --count 0')");
                }
            }
            String note = null;
            String after = null;
            if (previous != null && !previous.equals(dev.driver())) {
                if (sys.isDirectory("bus/pci/drivers/" + previous)) {
                    write(writes, "bus/pci/drivers/" + previous + "/bind", bdf.toString());
                    after = awaitDriver(bdf, previous);
                    note = previous.equals(after)
                            ? "restored to " + previous
                            : "the kernel did not give it back to " + previous + " (see dmesg); it is unbound";
                } else {
                    note = "its previous driver " + previous + " is not loaded; it stays unbound (modprobe " + previous
                            + ", then: echo " + bdf + " > /sys/bus/pci/drivers_probe)";
                }
            } else if (dev.driver() == null && previous == null) {
                note = "it was not bound to any driver";
            }
            forgetPrevious(bdf);
            if (note != null) {
                warnings.add(note);
            }
            return new Outcome(
                    bdf, dev.driver(), after, writes, null, warnings.isEmpty() ? null : String.join("; ", warnings));
        });
    }

    /** Function-level reset through the kernel ({@code reset}): refused while the host or a VM uses the device. */
    public Outcome reset(Bdf bdf, boolean force) {
        return store.locked(() -> {
            PciInventory inv = PciInventory.scan(sys);
            PciDevice dev = inv.require(bdf);
            if (!dev.resettable()) {
                throw new HostConfigException(
                        bdf + " offers no reset method (no " + sys.path(PciDevice.dir(bdf) + "/reset") + ")",
                        "the device supports neither FLR nor another reset the kernel knows; a VM gets it un-reset");
            }
            if (!force) {
                List<String> problems = new ArrayList<>();
                AssignmentRegistry.Assignment owner = registry.owner(bdf);
                if (owner != null) {
                    problems.add("it is assigned to VM " + owner.vm() + ", which would lose the device's state");
                }
                HostUsage usage = HostUsage.scan(sys, paths.proc(), paths.dev());
                for (String use : usage.uses(bdf)) {
                    problems.add("the host uses it: it " + use);
                }
                if (dev.driver() != null
                        && !PciDevice.isVfioDriver(dev.driver())
                        && !dev.driver().equals("pci-stub")) {
                    problems.add("its host driver " + dev.driver() + " would lose the device's state");
                }
                for (String user : new VfioHolders(paths).users(dev)) {
                    problems.add(user + " (a VM uses it, and would lose the device's state)");
                }
                if (!problems.isEmpty()) {
                    throw new HostConfigException(
                            "refusing to reset " + bdf + ": " + String.join("; ", problems),
                            "release or unbind it first, or pass --force");
                }
            }
            List<String> writes = new ArrayList<>();
            write(writes, PciDevice.dir(bdf) + "/reset", "1");
            String method =
                    sys.readOptional(PciDevice.dir(bdf) + "/reset_method").orElse(null);
            String note = method == null ? null : "reset methods: " + method;
            if (dryRun) {
                note = note == null ? DRY_RUN_NOTE : note + "; " + DRY_RUN_NOTE;
            }
            return new Outcome(bdf, dev.driver(), dev.driver(), writes, null, note);
        });
    }

    /** Why binding {@code dev} to {@code driver} would hurt the host or fail; empty when it is safe. */
    public List<String> bindProblems(PciInventory inv, PciDevice dev, String driver) {
        List<String> problems = new ArrayList<>();
        HostUsage usage = HostUsage.scan(sys, paths.proc(), paths.dev());
        for (String use : usage.uses(dev.bdf())) {
            problems.add("the host uses it: it " + use);
        }
        boolean toVfio = PciDevice.isVfioDriver(driver);
        if (toVfio || driver.equals("pci-stub")) {
            // Both take the device from the host: the rules of host assign apply.
            problems.addAll(Assignability.platformBlockers(dev));
            problems.addAll(Assignability.bootDisplayBlockers(inv, dev));
        }
        if (toVfio) {
            if (dev.iommuGroup() < 0) {
                problems.add("it has no IOMMU group: the IOMMU is off, vfio-pci would fail (see iovirt host check)");
            } else {
                problems.addAll(Assignability.groupBlockers(inv, dev));
            }
        } else {
            AssignmentRegistry.Assignment owner = registry.owner(dev.bdf());
            if (owner != null) {
                problems.add("it is assigned to VM " + owner.vm() + "; a host driver must not take it");
            }
        }
        problems.addAll(vanishingVfs(dev));
        return problems;
    }

    /**
     * Why {@code dev}'s driver must not let go of it: it is a PF whose VFs the kernel destroys with the driver — as
     * a change of sriov_numvfs does, which {@code host vfs} refuses while a VM owns a VF — naming each VM that
     * would lose its VF.
     */
    private List<String> vanishingVfs(PciDevice dev) {
        if (dev.sriov() == null || dev.sriov().numVfs() == 0 || dev.driver() == null) {
            return List.of();
        }
        List<String> problems = new ArrayList<>();
        problems.add("it has " + dev.sriov().numVfs() + " VFs enabled, which vanish when " + dev.driver()
                + " lets go (iovirt host vfs " + dev.bdf() + " --count 0 first)");
        List<AssignmentRegistry.Assignment> owners = registry.list();
        for (Bdf vf : dev.sriov().vfs()) {
            for (AssignmentRegistry.Assignment a : owners) {
                if (a.bdf().equals(vf)) {
                    problems.add("its VF " + vf + " is assigned to VM " + a.vm());
                }
            }
        }
        return problems;
    }

    /**
     * One row of the drivers table: {@code bdf} had {@code driver} (null: none) before iovirt first bound it.
     * {@code driver} ends up in a sysfs path ({@code bus/pci/drivers/<driver>/bind}), so every row is checked when
     * read: a tampered name never reaches sysfs.
     */
    public record Remembered(Bdf bdf, String driver) {}

    /** The drivers table, every row checked (a bad row fails with the file and line). */
    public static List<Remembered> remembered(StateStore store) {
        List<String[]> rows = store.read(TABLE);
        List<Remembered> out = new ArrayList<>(rows.size());
        for (int i = 0; i < rows.size(); i++) {
            String[] row = rows.get(i);
            if (row.length != 2) {
                throw store.damaged(TABLE, i, "expected 'BDF DRIVER'");
            }
            Bdf bdf = StateStore.bdf(row[0]);
            if (bdf == null) {
                throw store.damaged(
                        TABLE, i, "'" + SysfsTree.printable(row[0]) + "' is not a PCI address (DDDD:BB:DD.F)");
            }
            if (!row[1].equals(NONE) && !isDriverName(row[1])) {
                throw store.damaged(TABLE, i, "'" + SysfsTree.printable(row[1]) + "' is not a driver name");
            }
            out.add(new Remembered(bdf, row[1].equals(NONE) ? null : row[1]));
        }
        return out;
    }

    /**
     * Forgets destroyed VFs: the drivers they had before iovirt bound them, and the VMs they were assigned to — a VF
     * made later at the same address is a new device that nobody owns. Each dropped assignment adds a note naming the
     * VM. Call with the state lock held.
     *
     * @param fate      what happened to them, after "VF X was assigned to VM Y and"
     * @param successor what is at the address now or later, before "belongs to no VM"
     */
    public static void forgetVfs(
            AssignmentRegistry registry, List<Bdf> vfs, List<String> notes, String fate, String successor) {
        if (vfs.isEmpty()) {
            return;
        }
        StateStore store = registry.store();
        List<Remembered> rows = new ArrayList<>(remembered(store));
        if (rows.removeIf(r -> vfs.contains(r.bdf()))) {
            saveRemembered(store, rows);
        }
        for (AssignmentRegistry.Assignment a : registry.dropGone(vfs)) {
            notes.add("VF " + a.bdf() + " was assigned to VM " + a.vm() + " and " + fate + ": the assignment is "
                    + "dropped (" + successor + " belongs to no VM; assign it again if " + a.vm()
                    + " should have it)");
        }
    }

    /** Replaces the drivers table. Call with the state lock held. */
    public static void saveRemembered(StateStore store, List<Remembered> rows) {
        List<String[]> out = new ArrayList<>(rows.size());
        for (Remembered r : rows) {
            out.add(new String[] {r.bdf().toString(), r.driver() == null ? NONE : checkDriverName(r.driver())});
        }
        store.write(TABLE, out);
    }

    private Remembered rememberedFor(Bdf bdf) {
        for (Remembered r : remembered(store)) {
            if (r.bdf().equals(bdf)) {
                return r;
            }
        }
        return null;
    }

    /** Whether iovirt moved {@code bdf} to its current driver (it remembered the driver the device had before). */
    public boolean boundByIovirt(Bdf bdf) {
        return rememberedFor(bdf) != null;
    }

    /** The driver remembered for {@code bdf} before iovirt first bound it, or null. */
    public String previousDriver(Bdf bdf) {
        Remembered r = rememberedFor(bdf);
        return r == null ? null : r.driver();
    }

    /** Remembers {@code driver} as the one {@code bdf} had before iovirt bound it; true when this wrote the row. */
    private boolean rememberPrevious(Bdf bdf, String driver) {
        List<Remembered> rows = new ArrayList<>(remembered(store));
        for (Remembered r : rows) {
            if (r.bdf().equals(bdf)) {
                return false; // keep the original host driver across vfio-pci ↔ pci-stub moves
            }
        }
        rows.add(new Remembered(bdf, driver));
        saveRemembered(store, rows);
        return true;
    }

    /**
     * After a failed bind and its rollback: the row this bind wrote is forgotten unless the device ended up on the
     * driver asked for after all (then a later unbind needs it) — whether or not the rollback's sysfs writes worked
     * (a read-only /sys refuses the first write and every later one). A row an earlier bind wrote stays: it names
     * the device's original host driver.
     */
    private void settleRow(Bdf bdf, String driver, boolean remembered) {
        if (remembered
                && !driver.equals(sys.linkName(PciDevice.dir(bdf) + "/driver").orElse(null))) {
            forgetPrevious(bdf);
        }
    }

    /** What to write to driver_override to put back the value it had before this bind ("\n" clears it). */
    private static String previousOverride(PciDevice dev) {
        return dev.driverOverride() == null ? "\n" : dev.driverOverride();
    }

    private void forgetPrevious(Bdf bdf) {
        List<Remembered> rows = new ArrayList<>(remembered(store));
        if (rows.removeIf(r -> r.bdf().equals(bdf))) {
            saveRemembered(store, rows);
        }
    }

    /** Undoes a failed bind: the override as it was before, the device given back to its driver. */
    private String rollBack(List<String> writes, PciDevice dev, String now) {
        try {
            write(writes, PciDevice.dir(dev.bdf()) + "/driver_override", previousOverride(dev));
            if (now != null) {
                write(writes, "bus/pci/drivers/" + now + "/unbind", dev.bdf().toString());
            }
            if (dev.driver() != null) {
                write(
                        writes,
                        "bus/pci/drivers/" + dev.driver() + "/bind",
                        dev.bdf().toString());
            }
            return dev.driver() == null ? "override cleared" : "override cleared, gave it back to " + dev.driver();
        } catch (ActionableException e) {
            return "rolling back failed too: " + e.problem();
        }
    }

    /** Undoes a bind that failed with the device on another driver, {@code now}: only the override is put back. */
    private String clearOverride(List<String> writes, PciDevice dev, String now) {
        try {
            write(writes, PciDevice.dir(dev.bdf()) + "/driver_override", previousOverride(dev));
            return "override cleared, left bound to " + now;
        } catch (ActionableException e) {
            return "clearing the override failed too: " + e.problem();
        }
    }

    private String awaitDriver(Bdf bdf, String expected) {
        long deadline = System.nanoTime() + probeWait.toNanos();
        while (true) {
            String now = sys.linkName(PciDevice.dir(bdf) + "/driver").orElse(null);
            if (expected.equals(now) || System.nanoTime() - deadline >= 0) {
                return now;
            }
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return now;
            }
        }
    }

    /**
     * The processes that have the VFIO group of {@code dev} open while a VFIO driver holds it: the kernel's vfio-pci
     * does not let go of a device in use — its unbind waits until the user closes it, and the command (holding the
     * state lock every other host command waits for) would hang. Read from /proc/PID/fd links only.
     */
    private List<String> vfioUsers(PciDevice dev) {
        List<String> users = new ArrayList<>();
        for (String user : new VfioHolders(paths).users(dev)) {
            users.add(user + " (a VM uses it: the kernel would wait for it to let go, and the unbind would hang)");
        }
        return users;
    }

    private String vfioNode(PciDevice dev, String driver) {
        if (!PciDevice.isVfioDriver(driver)) {
            return null;
        }
        int group = dev.iommuGroup();
        if (group < 0) {
            group = sys.linkName(PciDevice.dir(dev.bdf()) + "/iommu_group")
                    .map(Integer::parseInt)
                    .orElse(-1);
        }
        return group < 0
                ? null
                : paths.devRoot()
                        .resolve("vfio")
                        .resolve(Integer.toString(group))
                        .toString();
    }

    private void write(List<String> log, String relative, String value) {
        if (!dryRun) {
            sys.write(relative, value);
        }
        log.add(sys.path(relative) + " <- " + (value.equals("\n") ? "(clear)" : value)
                + (dryRun ? " (would write)" : ""));
    }

    private static boolean isDriverName(String driver) {
        return driver != null && DRIVER_NAME.matcher(driver).matches() && !driver.equals(".") && !driver.equals("..");
    }

    static String checkDriverName(String driver) {
        if (!isDriverName(driver)) {
            throw new HostConfigException(
                    "'" + SysfsTree.printable(String.valueOf(driver)) + "' is not a driver name",
                    "name a PCI driver as in /sys/bus/pci/drivers, e.g. vfio-pci");
        }
        return driver;
    }
}
