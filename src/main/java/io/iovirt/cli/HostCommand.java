// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.host.assign.Assigning;
import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.host.assign.DeviceReport;
import io.iovirt.host.assign.LegacyAssignmentMigrator;
import io.iovirt.host.assign.VfioConfig;
import io.iovirt.host.binding.DriverBinding;
import io.iovirt.host.check.HostCheck;
import io.iovirt.host.sriov.SriovManager;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciSysfs;
import io.iovirt.pci.SysfsTree;
import io.iovirt.util.ActionableException;
import io.iovirt.util.ByteSizes;
import io.iovirt.util.Json;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFileAttributeView;
import java.nio.file.attribute.PosixFileAttributes;
import java.time.Duration;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code iovirt host ...}: host checks, PCI devices and IOMMU groups, VFIO binding, SR-IOV and assignment. */
@Command(
        name = "host",
        mixinStandardHelpOptions = true,
        description = "Host set-up for VFIO and SR-IOV: checks, devices, binding, virtual functions, assignment.",
        subcommands = {
            HostCommand.Check.class,
            HostCommand.Devices.class,
            HostCommand.Bind.class,
            HostCommand.Unbind.class,
            HostCommand.Reset.class,
            HostCommand.Vfs.class,
            HostCommand.Assign.class,
            HostCommand.Release.class,
            HostCommand.Assignments.class,
            HostCommand.Config.class,
            HostCommand.MigrateConfig.class
        })
public final class HostCommand implements Runnable {
    @Spec
    CommandLine.Model.CommandSpec spec;

    /** How long bind and unbind wait for the kernel's asynchronous probe to show in the driver link. */
    static final Duration PROBE_WAIT = Duration.ofSeconds(2);

    @Override
    public void run() {
        throw Contract.subcommandRequired(spec);
    }

    /** Options every host command shares: where the kernel interfaces and the state live, and the output format. */
    public static final class Options {
        @Option(names = "--sysfs-root", paramLabel = "DIR", description = "sysfs to use (default: /sys)")
        Path sysfsRoot = Path.of("/sys");

        @Option(names = "--proc-root", paramLabel = "DIR", description = "procfs to use (default: /proc)")
        Path procRoot = Path.of("/proc");

        @Option(names = "--dev-root", paramLabel = "DIR", description = "device directory to use (default: /dev)")
        Path devRoot = Path.of("/dev");

        @Option(
                names = "--state-dir",
                paramLabel = "DIR",
                description = "where assignments and remembered drivers are kept (default: "
                        + HostPaths.DEFAULT_STATE_DIR_NAME + ")")
        Path stateDir = HostPaths.DEFAULT_STATE_DIR;

        @Option(
                names = "--pci-ids",
                paramLabel = "FILE",
                description = "pci.ids database for names (default: the system's)")
        Path pciIds;

        @Option(names = "--json", description = "machine-readable output")
        boolean json;

        HostPaths paths() {
            return new HostPaths(
                    sysfsRoot,
                    procRoot,
                    devRoot,
                    stateDir,
                    pciIds != null ? pciIds : HostPaths.findPciIds(),
                    HostPaths.pathFromEnv());
        }
    }

    static final class TechniqueConverter implements CommandLine.ITypeConverter<HostCheck.Technique> {
        @Override
        public HostCheck.Technique convert(String value) {
            try {
                return HostCheck.Technique.parse(value);
            } catch (ActionableException e) {
                throw new CommandLine.TypeConversionException(e.getMessage());
            }
        }
    }

    abstract static class Base implements Callable<Integer> {
        @Mixin
        Options opts;

        @Spec
        CommandLine.Model.CommandSpec spec;

        PrintWriter out() {
            return spec.commandLine().getOut();
        }

        PrintWriter err() {
            return spec.commandLine().getErr();
        }

        void json(Object o) {
            out().println(Json.write(o));
            out().flush();
        }

        /** Each sysfs write, with --verbose; always for a dry run (that is what it is for). */
        void writes(List<String> writes) {
            if (Main.verbose(spec) || writes.stream().anyMatch(w -> w.endsWith("(would write)"))) {
                for (String w : writes) {
                    out().println("  wrote " + w);
                }
            }
        }
    }

    /** A command on one PCI function, named by its address. */
    abstract static class OnDevice extends Base {
        @Parameters(
                paramLabel = "BDF",
                converter = BdfConverter.class,
                description = "The device's PCI address, e.g. 0000:01:00.0 (see iovirt host devices).")
        Bdf bdf;
    }

    /** bind, unbind, reset: a driver change on one function, which --dry-run only checks and lists. */
    abstract static class DriverChange extends OnDevice {
        @Option(
                names = "--dry-run",
                description = "Check and print what would change (each sysfs write), change nothing.")
        boolean dryRun;

        DriverBinding binding() {
            return new DriverBinding(opts.paths(), PROBE_WAIT, dryRun);
        }
    }

    // ------------------------------------------------------------------ check

    @Command(
            name = "check",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host check", "  iovirt host check --require vfio,sriov --json"},
            mixinStandardHelpOptions = true,
            description = {
                "Check the host's requirements for each technique (PASS/WARN/FAIL with remedies).",
                "Exit status 0 when every requested technique is possible, 1 otherwise."
            })
    static final class Check extends Base {
        @Option(
                names = "--require",
                split = ",",
                paramLabel = "TECHNIQUE",
                converter = TechniqueConverter.class,
                description = "techniques that must be possible: fv, pv, pvhvm, vfio, sriov (default: all five)")
        List<HostCheck.Technique> require;

        @Option(
                names = "--guest-memory",
                paramLabel = "SIZE",
                defaultValue = "1G",
                description =
                        "guest RAM that VFIO must be able to pin, for the memlock check (default: ${DEFAULT-VALUE})")
        String guestMemory;

        @Override
        public Integer call() {
            Set<HostCheck.Technique> requested = EnumSet.allOf(HostCheck.Technique.class);
            if (require != null && !require.isEmpty()) {
                requested.clear();
                requested.addAll(require);
            }
            HostCheck.Report report = HostCheck.run(opts.paths(), ByteSizes.parse(guestMemory));
            boolean ok = report.allPossible(requested);
            if (opts.json) {
                List<Object> checks = new ArrayList<>();
                for (HostCheck.Result r : report.results()) {
                    Map<String, Object> m = new LinkedHashMap<>();
                    m.put("id", r.id());
                    m.put("status", r.status().name());
                    m.put("detail", r.detail());
                    m.put("remedy", r.remedy().isEmpty() ? null : r.remedy());
                    checks.add(m);
                }
                Map<String, Object> techniques = new LinkedHashMap<>();
                report.techniques().forEach((t, s) -> {
                    Map<String, Object> m = new LinkedHashMap<>();
                    m.put("possible", s.possible());
                    m.put("how", s.how());
                    m.put("missing", s.missing());
                    techniques.put(t.name().toLowerCase(), m);
                });
                Map<String, Object> accel = new LinkedHashMap<>();
                accel.put("kind", report.accelerator().kind().name().toLowerCase());
                accel.put("reason", report.accelerator().reason());
                accel.put("kvm_usable", report.accelerator().kvm().usable());
                accel.put(
                        "kvm_remedy",
                        report.accelerator().kvm().remedy().isEmpty()
                                ? null
                                : report.accelerator().kvm().remedy());
                Map<String, Object> doc = new LinkedHashMap<>();
                doc.put("checks", checks);
                doc.put("accelerator", accel);
                doc.put("techniques", techniques);
                doc.put(
                        "requested",
                        requested.stream().map(t -> t.name().toLowerCase()).toList());
                doc.put("ok", ok);
                json(doc);
                return ok ? Contract.OK : Contract.CHECK_FAILED;
            }
            PrintWriter o = out();
            for (HostCheck.Result r : report.results()) {
                o.printf("%-4s  %-20s %s%n", r.status(), r.id(), r.detail());
                if (!r.remedy().isEmpty()) {
                    o.printf("      %-20s remedy: %s%n", "", r.remedy());
                }
            }
            o.println();
            o.println("Guests run under " + report.accelerator().describe());
            o.println();
            o.println("Techniques this host can offer:");
            report.techniques().forEach((t, s) -> {
                String mark = requested.contains(t) ? "*" : " ";
                o.printf(
                        "%s %-6s %-4s  %s%n",
                        mark,
                        t == HostCheck.Technique.SRIOV ? "SR-IOV" : t.name(),
                        s.possible() ? "yes" : "no",
                        s.possible() ? s.how() : "needs: " + String.join(", ", s.missing()));
            });
            o.println(
                    ok
                            ? "All requested techniques (*) are possible."
                            : "Not every requested technique (*) is possible.");
            o.flush();
            return ok ? Contract.OK : Contract.CHECK_FAILED;
        }
    }

    // ------------------------------------------------------------------ devices

    @Command(
            name = "devices",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host devices", "  iovirt host devices 0000:01:00.0 --json"},
            mixinStandardHelpOptions = true,
            description =
                    "List PCI devices: IDs and names, class, driver, IOMMU group and its members, SR-IOV, and whether each can be assigned now.")
    static final class Devices extends Base {
        // Strings converted in call(): a converter on a variable-arity positional makes picocli report a bad address as
        // an "unmatched argument" instead of saying what is wrong with it.
        @Parameters(paramLabel = "BDF", arity = "0..*", description = "Only these devices (PCI addresses).")
        List<String> onlyArgs;

        List<Bdf> only;

        @Override
        public Integer call() {
            only = onlyArgs == null
                    ? null
                    : onlyArgs.stream()
                            .map(a -> {
                                try {
                                    return new BdfConverter().convert(a);
                                } catch (CommandLine.TypeConversionException e) {
                                    throw Contract.usage(spec, e.getMessage());
                                }
                            })
                            .toList();
            HostPaths paths = opts.paths();
            DeviceReport report = DeviceReport.collect(paths);
            List<DeviceReport.Entry> entries = report.entries();
            if (only != null && !only.isEmpty()) {
                List<DeviceReport.Entry> filtered = new ArrayList<>();
                for (Bdf b : only) {
                    report.inventory().require(b);
                    entries.stream().filter(e -> e.device().bdf().equals(b)).forEach(filtered::add);
                }
                entries = filtered;
            }
            if (opts.json) {
                json(entries.stream().map(DeviceReport.Entry::toMap).toList());
            } else {
                for (DeviceReport.Entry e : entries) {
                    e.print(out());
                }
                if (report.inventory().groups().count() == 0) {
                    out().println(
                                    "No IOMMU groups: the IOMMU is off, so no device can be assigned (see iovirt host check).");
                }
                out().flush();
            }
            return 0;
        }
    }

    // ------------------------------------------------------------------ bind / unbind / reset

    @Command(
            name = "bind",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host bind 0000:01:00.0 --dry-run", "  iovirt host bind 0000:01:00.0"},
            mixinStandardHelpOptions = true,
            description =
                    "Bind a device to vfio-pci (or --driver) via driver_override and drivers_probe; the previous driver is remembered.")
    static final class Bind extends DriverChange {
        @Option(
                names = "--driver",
                defaultValue = "vfio-pci",
                description = "driver to bind (default: ${DEFAULT-VALUE})")
        String driver;

        @Option(
                names = "--force",
                description = "Bind even if the host uses the device or its IOMMU group is not viable.")
        boolean force;

        @Override
        public Integer call() {
            DriverBinding.Outcome o = binding().bind(bdf, driver, force);
            return printOutcome(this, o, "bound to " + o.after());
        }
    }

    @Command(
            name = "unbind",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host unbind 0000:01:00.0 --dry-run", "  iovirt host unbind 0000:01:00.0"},
            mixinStandardHelpOptions = true,
            description = "Take a device from its driver and give it back to the driver it had before iovirt bound it.")
    static final class Unbind extends DriverChange {
        @Option(names = "--force", description = "Unbind even if the host uses the device or a VM owns it.")
        boolean force;

        @Override
        public Integer call() {
            DriverBinding.Outcome o = binding().unbind(bdf, force);
            return printOutcome(this, o, o.before() == null ? "was unbound" : "unbound from " + o.before());
        }
    }

    @Command(
            name = "reset",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host reset 0000:01:00.0"},
            mixinStandardHelpOptions = true,
            description = "Reset a device (function-level reset through the kernel).")
    static final class Reset extends DriverChange {
        @Option(names = "--force", description = "Reset even if the host or a VM uses the device.")
        boolean force;

        @Override
        public Integer call() {
            DriverBinding.Outcome o = binding().reset(bdf, force);
            return printOutcome(this, o, "reset");
        }
    }

    static int printOutcome(Base cmd, DriverBinding.Outcome o, String what) {
        if (cmd.opts.json) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("bdf", o.bdf().toString());
            m.put("driver_before", o.before());
            m.put("driver_after", o.after());
            m.put("vfio_device", o.vfioDevice());
            m.put("vfio_device_present", o.vfioDevice() != null && Files.exists(Path.of(o.vfioDevice())));
            m.put("note", o.note());
            m.put("writes", o.writes());
            cmd.json(m);
            return 0;
        }
        PrintWriter out = cmd.out();
        out.println(o.bdf() + ": "
                + (o.note() != null && o.writes().isEmpty()
                        ? o.note()
                        : what + (o.note() != null ? "; " + o.note() : "")));
        cmd.writes(o.writes());
        if (o.vfioDevice() != null) {
            out.println("  VFIO group device: " + o.vfioDevice()
                    + (Files.exists(Path.of(o.vfioDevice())) ? "" : " (not present yet)"));
        }
        out.flush();
        return 0;
    }

    // ------------------------------------------------------------------ vfs

    @Command(
            name = "vfs",
            footerHeading = "%nExamples:%n",
            footer = {
                "  iovirt host vfs 0000:03:00.0",
                "  iovirt host vfs 0000:03:00.0 --count 4 --no-autoprobe --dry-run",
                "  iovirt host vfs 0000:03:00.0 --count 0"
            },
            mixinStandardHelpOptions = true,
            description = {
                "Create or remove SR-IOV virtual functions of a PF, and show each VF's resources.",
                "NVMe PFs: each VF gets flexible queue and interrupt resources and is brought online."
            })
    static final class Vfs extends Base {
        @Parameters(
                paramLabel = "PF",
                converter = BdfConverter.class,
                description = "The physical function's PCI address, e.g. 0000:03:00.0.")
        Bdf pf;

        @Option(
                names = "--count",
                paramLabel = "N",
                description = "number of VFs wanted (0 removes them); without it, show the VFs")
        Integer count;

        @Option(
                names = "--autoprobe",
                negatable = true,
                description = "let host drivers probe new VFs (default: unchanged)")
        Boolean autoprobe;

        @Option(
                names = "--vf-queues",
                paramLabel = "N",
                defaultValue = "0",
                description = "NVMe: queue resources per VF, admin queue included (default: an even share)")
        int vfQueues;

        @Option(
                names = "--vf-interrupts",
                paramLabel = "N",
                defaultValue = "0",
                description = "NVMe: interrupt resources per VF (default: an even share)")
        int vfInterrupts;

        @Option(names = "--no-provision", description = "NVMe: do not assign resources or bring VFs online")
        boolean noProvision;

        @Option(names = "--force", description = "Change VFs even if one is assigned to a VM or used by the host.")
        boolean force;

        @Option(
                names = "--dry-run",
                description = "Check and print what would change (each sysfs write), change nothing.")
        boolean dryRun;

        @Override
        public Integer call() {
            if (vfQueues < 0 || vfInterrupts < 0) {
                throw Contract.usage(spec, "--vf-queues and --vf-interrupts must not be negative");
            }
            if (count != null && count < 0) {
                throw Contract.usage(spec, "--count must be 0 or more (0 removes the VFs), not " + count);
            }
            SriovManager m = new SriovManager(opts.paths(), dryRun);
            Bdf pfBdf = pf;
            SriovManager.Outcome o = count == null
                    ? m.status(pfBdf)
                    : m.setVfs(
                            pfBdf,
                            count,
                            autoprobe,
                            new SriovManager.NvmeRequest(vfQueues, vfInterrupts, !noProvision),
                            force);
            if (opts.json) {
                Map<String, Object> doc = new LinkedHashMap<>();
                doc.put("pf", o.pf().toString());
                doc.put("vfs_before", o.before());
                doc.put("vfs", o.after());
                doc.put("total_vfs", o.totalVfs());
                doc.put("autoprobe", o.autoprobe());
                List<Object> vfs = new ArrayList<>();
                for (SriovManager.VfInfo v : o.vfs()) {
                    Map<String, Object> e = new LinkedHashMap<>();
                    e.put("index", v.index());
                    e.put("bdf", v.bdf().toString());
                    e.put("driver", v.driver());
                    e.put("iommu_group", v.iommuGroup() < 0 ? null : v.iommuGroup());
                    e.put("resources", v.resources());
                    vfs.add(e);
                }
                doc.put("virtual_functions", vfs);
                doc.put("notes", o.notes());
                doc.put("writes", o.writes());
                json(doc);
                return 0;
            }
            PrintWriter out = out();
            out.printf(
                    "%s: %d of %d VFs%s (drivers autoprobe: %s)%n",
                    o.pf(),
                    o.after(),
                    o.totalVfs(),
                    count == null || o.before() == o.after() ? "" : " (was " + o.before() + ")",
                    o.autoprobe() == null ? "n/a" : o.autoprobe() ? "on" : "off");
            writes(o.writes());
            for (SriovManager.VfInfo v : o.vfs()) {
                StringBuilder res = new StringBuilder();
                v.resources()
                        .forEach((k, val) -> res.append(res.isEmpty() ? "" : ", ")
                                .append(k)
                                .append('=')
                                .append(val));
                out.printf(
                        "  VF %-3d %s  driver: %-10s group: %-5s %s%n",
                        v.index(),
                        v.bdf(),
                        v.driver() == null ? "none" : v.driver(),
                        v.iommuGroup() < 0 ? "none" : Integer.toString(v.iommuGroup()),
                        res.isEmpty() ? "resources: not visible" : res);
            }
            for (String n : o.notes()) {
                out.println("  note: " + n);
            }
            out.flush();
            return 0;
        }
    }

    // ------------------------------------------------------------------ assignment

    @Command(
            name = "assign",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host assign 0000:03:10.0 --vm web1"},
            mixinStandardHelpOptions = true,
            description = "Give a device (bound to vfio-pci) to one VM exclusively.")
    static final class Assign extends OnDevice {
        @Option(names = "--vm", required = true, paramLabel = "NAME", description = "The VM that gets the device.")
        String vm;

        @Option(
                names = "--force",
                description =
                        "Record the assignment even if the device is not ready (not bound to vfio-pci, group not viable).")
        boolean force;

        @Option(names = "--dry-run", description = "Check and print the assignment, record nothing.")
        boolean dryRun;

        @Override
        public Integer call() {
            AssignmentRegistry.Result r = Assigning.assign(opts.paths(), bdf, vm, force, dryRun);
            Bdf b = r.assignment().bdf();
            if (opts.json) {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("bdf", b.toString());
                m.put("vm", r.assignment().vm());
                m.put("since", r.assignment().since().toString());
                m.put("created", r.created() && !dryRun);
                m.put("dry_run", dryRun);
                m.put("qemu", VfioConfig.qemuArgs(List.of(b)));
                json(m);
                return 0;
            }
            out().println(b + " "
                    + (!r.created()
                            ? "was already assigned to VM "
                            : dryRun ? "would be assigned to VM " : "assigned to VM ")
                    + r.assignment().vm() + (dryRun ? " (" + DriverBinding.DRY_RUN_NOTE + ")" : ""));
            out().println("  QEMU: " + String.join(" ", VfioConfig.qemuArgs(List.of(b))));
            out().println("  libvirt: iovirt host config --vm " + r.assignment().vm() + " --format libvirt");
            out().flush();
            return 0;
        }
    }

    @Command(
            name = "release",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host release 0000:03:10.0 --vm web1"},
            mixinStandardHelpOptions = true,
            description = "Take a device back from its VM.")
    static final class Release extends OnDevice {
        @Option(names = "--vm", paramLabel = "NAME", description = "Refuse unless this VM owns it.")
        String vm;

        @Option(names = "--dry-run", description = "Check and print what would be released, change nothing.")
        boolean dryRun;

        @Override
        public Integer call() {
            AssignmentRegistry.Assignment a = new AssignmentRegistry(opts.stateDir).release(bdf, vm, dryRun);
            if (opts.json) {
                json(Json.object("bdf", a.bdf().toString(), "vm", a.vm(), "released", !dryRun, "dry_run", dryRun));
            } else {
                out().println(a.bdf()
                        + (dryRun ? " would be released from VM " : " released from VM ")
                        + a.vm()
                        + (dryRun ? " (" + DriverBinding.DRY_RUN_NOTE + ")" : ""));
                out().flush();
            }
            return 0;
        }
    }

    @Command(
            name = "assignments",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host assignments", "  iovirt host assignments --vm web1 --json"},
            mixinStandardHelpOptions = true,
            description = "List which VM owns which device.")
    static final class Assignments extends Base {
        @Option(names = "--vm", paramLabel = "NAME", description = "only this VM's devices")
        String vm;

        @Override
        public Integer call() {
            List<AssignmentRegistry.Assignment> all = new AssignmentRegistry(opts.stateDir)
                    .list().stream()
                            .filter(a -> vm == null || a.vm().equals(vm))
                            .toList();
            PciSysfs pci = new PciSysfs(opts.paths().sys());
            if (opts.json) {
                json(all.stream()
                        .map(a -> Json.object(
                                "bdf",
                                a.bdf().toString(),
                                "vm",
                                a.vm(),
                                "since",
                                a.since().toString(),
                                "present",
                                pci.exists(a.bdf())))
                        .toList());
                return 0;
            }
            if (all.isEmpty()) {
                out().println("No devices are assigned" + (vm == null ? "." : " to VM " + vm + "."));
            }
            for (AssignmentRegistry.Assignment a : all) {
                out().printf(
                                "%s  %-20s since %s%s%n",
                                a.bdf(),
                                a.vm(),
                                a.since(),
                                pci.exists(a.bdf())
                                        ? ""
                                        : "  (gone: " + Assigning.GONE + "; iovirt host release " + a.bdf() + ")");
            }
            out().flush();
            return 0;
        }
    }

    @Command(
            name = "config",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host config --vm web1", "  iovirt host config --vm web1 --format libvirt"},
            mixinStandardHelpOptions = true,
            description = "Print QEMU arguments or libvirt <hostdev> XML for assigned devices.")
    static final class Config extends Base {
        @Parameters(
                paramLabel = "BDF",
                arity = "0..*",
                description = "assigned devices (default: all of --vm's)",
                converter = BdfConverter.class)
        List<Bdf> devices;

        @Option(names = "--vm", paramLabel = "NAME", description = "the VM whose devices to print")
        String vm;

        @Option(names = "--format", defaultValue = "qemu", description = "qemu or libvirt (default: ${DEFAULT-VALUE})")
        String format;

        @Override
        public Integer call() {
            if (!format.equals("qemu") && !format.equals("libvirt")) {
                throw new HostConfigException("unknown --format " + SysfsTree.printable(format), "use qemu or libvirt");
            }
            List<AssignmentRegistry.Assignment> all = new AssignmentRegistry(opts.stateDir).list();
            List<Bdf> chosen = new ArrayList<>();
            if (devices != null && !devices.isEmpty()) {
                for (Bdf b : devices) {
                    AssignmentRegistry.Assignment a = all.stream()
                            .filter(x -> x.bdf().equals(b))
                            .findFirst()
                            .orElse(null);
                    if (a == null || (vm != null && !a.vm().equals(vm))) {
                        throw new HostConfigException(
                                b + " is not assigned" + (vm == null ? "" : " to VM " + vm),
                                "assign it first: iovirt host assign " + b + " --vm NAME");
                    }
                    chosen.add(b);
                }
            } else if (vm != null) {
                all.stream().filter(a -> a.vm().equals(vm)).forEach(a -> chosen.add(a.bdf()));
                if (chosen.isEmpty()) {
                    throw new HostConfigException(
                            "VM " + vm + " has no assigned devices", "assign one: iovirt host assign BDF --vm " + vm);
                }
            } else {
                throw new HostConfigException(
                        "name the devices or the VM", "iovirt host config --vm NAME, or iovirt host config BDF...");
            }
            PciSysfs pci = new PciSysfs(opts.paths().sys());
            for (Bdf b : chosen) {
                Assigning.requirePresent(pci, b, owner(all, b));
            }
            if (opts.json) {
                List<Object> list = new ArrayList<>();
                for (int i = 0; i < chosen.size(); i++) {
                    list.add(Json.object(
                            "bdf",
                            chosen.get(i).toString(),
                            "qemu",
                            VfioConfig.qemuArgs(chosen.get(i), i),
                            "libvirt",
                            VfioConfig.libvirtHostdev(chosen.get(i))));
                }
                json(list);
                return 0;
            }
            if (format.equals("qemu")) {
                out().println(String.join(" ", VfioConfig.qemuArgs(chosen)));
            } else {
                chosen.forEach(b -> out().print(VfioConfig.libvirtHostdev(b)));
            }
            out().flush();
            return 0;
        }
    }

    private static String owner(List<AssignmentRegistry.Assignment> all, Bdf b) {
        return all.stream()
                .filter(a -> a.bdf().equals(b))
                .map(AssignmentRegistry.Assignment::vm)
                .findFirst()
                .orElse("?");
    }

    @Command(
            name = "migrate-config",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt host migrate-config vm1.xml", "  iovirt host migrate-config vm1.xml --in-place"},
            mixinStandardHelpOptions = true,
            description = {
                "Rewrite legacy KVM device assignment (QEMU pci-assign, libvirt <driver name='kvm'/>) to VFIO.",
                "Prints the result (or writes --output / --in-place); the changes go to stderr."
            })
    static final class MigrateConfig extends Base {
        @Parameters(paramLabel = "FILE", description = "a QEMU command line or script, or a libvirt domain XML")
        Path file;

        @Option(
                names = {"-o", "--output"},
                paramLabel = "FILE",
                description = "write the result here")
        Path output;

        @Option(names = "--in-place", description = "replace FILE atomically (the original is kept as FILE.bak)")
        boolean inPlace;

        @Override
        public Integer call() throws IOException {
            if (inPlace && output != null) {
                throw Contract.usage(spec, "--in-place and --output exclude each other: choose one");
            }
            String text;
            try {
                text = Files.readString(file, StandardCharsets.UTF_8);
            } catch (IOException e) {
                throw new HostConfigException("cannot read " + file + ": " + SysfsTree.reason(e), "check the path");
            }
            LegacyAssignmentMigrator.Migration m = LegacyAssignmentMigrator.migrate(text);
            Path target = inPlace ? file : output;
            if (target != null && m.changed()) {
                if (inPlace) {
                    replace(
                            file.resolveSibling(file.getFileName() + ".bak"),
                            Files.readAllBytes(file),
                            file.toRealPath());
                }
                replace(target, m.text().getBytes(StandardCharsets.UTF_8), null);
            }
            if (opts.json) {
                Map<String, Object> doc = new LinkedHashMap<>();
                doc.put("format", m.format());
                doc.put("changes", m.changes());
                doc.put("written", target != null && m.changed() ? target.toString() : null);
                doc.put("text", target == null ? m.text() : null);
                json(doc);
                return 0;
            }
            if (target == null) {
                out().print(m.text());
                out().flush();
            }
            if (m.changes().isEmpty()) {
                err().println("iovirt host migrate-config: no legacy KVM assignment found in " + file
                        + "; nothing changed");
            }
            for (String c : m.changes()) {
                err().println("migrated: " + c);
            }
            if (target != null && m.changed()) {
                err().println("wrote " + target);
            }
            err().flush();
            return 0;
        }

        /**
         * Replaces {@code target} (through a symbolic link: the file it points to) with {@code data} as a whole: a
         * new file beside it, written and fsynced, renamed over it, the directory fsynced — so a crash leaves the old
         * file or the new one. The new file gets the mode, owner and group of the file it replaces (or of
         * {@code like}): a domain XML kept 0600 for the secrets in it must not come back 0644 under the umask.
         */
        private static void replace(Path target, byte[] data, Path like) throws IOException {
            Path real = Files.exists(target) ? target.toRealPath() : target.toAbsolutePath();
            Path model = like != null ? like : Files.exists(real) ? real : null;
            io.iovirt.util.AtomicFile.replace(real, data, tmp -> {
                if (model == null) {
                    return;
                }
                PosixFileAttributes a = Files.readAttributes(model, PosixFileAttributes.class);
                Files.setPosixFilePermissions(tmp, a.permissions());
                PosixFileAttributeView view = Files.getFileAttributeView(tmp, PosixFileAttributeView.class);
                try {
                    if (!view.readAttributes().owner().equals(a.owner())) {
                        view.setOwner(a.owner());
                    }
                    if (!view.readAttributes().group().equals(a.group())) {
                        view.setGroup(a.group());
                    }
                } catch (IOException e) {
                    throw new HostConfigException(
                            "cannot give the new " + real + " the owner and group of the old (" + a.owner() + ":"
                                    + a.group() + "): " + SysfsTree.reason(e),
                            "run as its owner or as root, or write the result elsewhere with --output");
                }
            });
        }
    }
}
