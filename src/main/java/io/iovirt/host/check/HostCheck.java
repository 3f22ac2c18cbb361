// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.check;

import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.linux.Errno;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.pci.IommuGroups;
import io.iovirt.pci.SysfsTree;
import io.iovirt.util.ByteSizes;
import io.iovirt.vm.Accelerator;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.EnumMap;
import java.util.EnumSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.function.BiFunction;

/**
 * The host's readiness for each of iovirt's five I/O virtualization techniques: one result per requirement (PASS,
 * WARN, FAIL, with a remedy a person can act on), and which techniques follow from them. Reads only; changes nothing.
 */
public final class HostCheck {
    public enum Status {
        PASS,
        WARN,
        FAIL
    }

    public enum Technique {
        FV("full virtualization (QEMU-emulated devices)"),
        PV("paravirtualization (virtio over vhost-user)"),
        PVHVM("PVHVM (hardware-virtualized guest with PV devices)"),
        VFIO("VFIO device assignment"),
        SRIOV("SR-IOV virtual functions");

        private final String description;

        Technique(String description) {
            this.description = description;
        }

        public String description() {
            return description;
        }

        /** Parses fv, pv, pvhvm, vfio, sriov / sr-iov (case-insensitive). */
        public static Technique parse(String s) {
            String k = s.trim().toUpperCase(Locale.ROOT).replace("-", "").replace("_", "");
            for (Technique t : values()) {
                if (t.name().equals(k)) {
                    return t;
                }
            }
            throw new HostConfigException(
                    "unknown technique '" + SysfsTree.printable(s) + "'", "use fv, pv, pvhvm, vfio or sriov");
        }
    }

    /**
     * One requirement.
     *
     * @param gates the techniques that are impossible while this result is FAIL
     */
    public record Result(String id, Status status, String detail, String remedy, Set<Technique> gates) {}

    /** @param missing ids of the failed requirements that rule it out */
    public record TechniqueStatus(boolean possible, String how, List<String> missing) {}

    /** @param accelerator what iovirt would run guests under on this host ({@code --accel auto}), and why */
    public record Report(
            List<Result> results, Map<Technique, TechniqueStatus> techniques, Accelerator.Decision accelerator) {
        /** True when every requested technique is possible. */
        public boolean allPossible(Set<Technique> requested) {
            return requested.stream().allMatch(t -> techniques.get(t).possible());
        }

        public Result result(String id) {
            return results.stream().filter(r -> r.id().equals(id)).findFirst().orElseThrow();
        }
    }

    private static final Set<Technique> NONE = EnumSet.noneOf(Technique.class);
    private static final Set<Technique> VFIO_ALL = EnumSet.of(Technique.VFIO, Technique.SRIOV);
    private static final long CAP_IPC_LOCK = 14;

    private final HostPaths paths;
    private final SysfsTree sys;
    private final SysfsTree proc;
    private final SysfsTree dev;
    private final long memlockNeeded;
    private final BiFunction<Path, String, Accelerator.KvmFacts> kvmProbe;
    private final List<Result> results = new ArrayList<>();
    private Accelerator.KvmStatus kvmStatus;

    private HostCheck(HostPaths paths, long memlockNeeded, BiFunction<Path, String, Accelerator.KvmFacts> kvmProbe) {
        this.kvmProbe = kvmProbe;
        this.paths = paths;
        this.sys = paths.sys();
        this.proc = paths.proc();
        this.dev = paths.dev();
        this.memlockNeeded = memlockNeeded;
    }

    /**
     * Runs every check.
     *
     * @param memlockNeeded bytes a VFIO user must be able to pin (the guest's RAM)
     */
    public static Report run(HostPaths paths, long memlockNeeded) {
        return run(paths, memlockNeeded, Accelerator::probe);
    }

    /**
     * As {@link #run(HostPaths, long)} with another KVM probe ({@code (device, cpuinfo) -> facts}): fixture trees have
     * no real KVM device to issue ioctls to.
     */
    public static Report run(
            HostPaths paths, long memlockNeeded, BiFunction<Path, String, Accelerator.KvmFacts> kvmProbe) {
        return new HostCheck(paths, memlockNeeded, kvmProbe).run();
    }

    private enum Vendor {
        INTEL,
        AMD,
        OTHER
    }

    private Report run() {
        String cpuinfo = proc.readTextOptional("cpuinfo").orElse("");
        Set<String> flags = cpuFlags(cpuinfo);
        Vendor vendor = cpuinfo.contains("GenuineIntel")
                ? Vendor.INTEL
                : cpuinfo.contains("AuthenticAMD") ? Vendor.AMD : Vendor.OTHER;
        boolean nestedGuest = flags.contains("hypervisor");
        Map<String, String> cmdline = cmdline(proc.readOptional("cmdline").orElse(""));

        checkCpu(flags, vendor, nestedGuest);
        checkKvm(cpuinfo);
        checkQemu();
        checkDevice(
                "tun",
                "net/tun",
                "tap ports: the iovirt switch's uplink to the host network, QEMU -netdev tap",
                "modprobe tun; the device must be read-write for the user running iovirt");
        checkDevice(
                "vhost-net",
                "vhost-net",
                "QEMU's in-kernel virtio-net datapath (vhost=on), the PV baseline "
                        + "iovirt's vhost-user NIC is compared with",
                "modprobe vhost_net");
        checkHugepages();
        boolean dmar = sys.exists("firmware/acpi/tables/DMAR");
        boolean ivrs = sys.exists("firmware/acpi/tables/IVRS");
        List<String> iommus = sys.list("class/iommu");
        checkIommuFirmware(dmar, ivrs, iommus, vendor, nestedGuest);
        // Which IOMMU there is — and so which kernel switch turns it on — is what the firmware describes, not the
        // CPU's vendor: a QEMU guest with -device intel-iommu on an AMD host (or under TCG, whose default CPU says
        // AuthenticAMD) has a VT-d IOMMU that needs intel_iommu=on. The CPU decides only when no table says.
        Vendor iommuKind = dmar ? Vendor.INTEL : ivrs ? Vendor.AMD : vendor;
        checkIommuEnabled(iommus, dmar, ivrs, iommuKind, cmdline);
        checkCmdline(iommuKind, cmdline, iommus);
        checkInterruptRemapping(nestedGuest);
        checkVfio();
        checkMemlock();
        checkGroups(iommus);
        checkSriov();

        Map<Technique, TechniqueStatus> techniques = new EnumMap<>(Technique.class);
        Accelerator.Decision accel = Accelerator.decide(Accelerator.Mode.AUTO, kvmStatus);
        boolean kvm = accel.kind() == Accelerator.Kind.KVM;
        for (Technique t : Technique.values()) {
            List<String> missing = new ArrayList<>();
            for (Result r : results) {
                if (r.status() == Status.FAIL && r.gates().contains(t)) {
                    missing.add(r.id());
                }
            }
            String how = switch (t) {
                case FV ->
                    kvm
                            ? "QEMU device emulation, KVM-accelerated CPU"
                            : "QEMU device emulation under TCG (KVM unusable: slow)";
                case PV ->
                    kvm
                            ? "virtio devices served by iovirt over vhost-user, KVM guest"
                            : "virtio devices served by iovirt over vhost-user, TCG guest (KVM unusable: slow CPU)";
                case PVHVM -> "hardware-virtualized (KVM) guest with PV devices and PV clock/interrupts";
                case VFIO -> "whole PCI functions handed to a guest or user-space driver through the IOMMU";
                case SRIOV -> "virtual functions of an SR-IOV device, each assigned through VFIO";
            };
            techniques.put(t, new TechniqueStatus(missing.isEmpty(), how, missing));
        }
        return new Report(List.copyOf(results), techniques, accel);
    }

    private Result result(String id) {
        return results.stream().filter(r -> r.id().equals(id)).findFirst().orElseThrow();
    }

    private void add(String id, Status s, String detail, String remedy, Set<Technique> gates) {
        results.add(new Result(id, s, detail, s == Status.PASS ? "" : remedy, gates));
    }

    private void checkCpu(Set<String> flags, Vendor vendor, boolean nestedGuest) {
        if (flags.contains("vmx")) {
            add("cpu-virt", Status.PASS, "CPU has Intel VT-x (vmx)", "", NONE);
        } else if (flags.contains("svm")) {
            add("cpu-virt", Status.PASS, "CPU has AMD-V (svm)", "", NONE);
        } else {
            String remedy = nestedGuest
                    ? "this host is itself a virtual machine whose hypervisor hides VT-x/AMD-V: enable nested virtualization there (kvm_intel nested=1 or kvm_amd nested=1, and -cpu host)"
                    : "enable " + (vendor == Vendor.AMD ? "AMD-V (SVM)" : "Intel VT-x") + " in the firmware setup";
            add(
                    "cpu-virt",
                    Status.FAIL,
                    "CPU has no virtualization extensions (no vmx or svm flag in /proc/cpuinfo)",
                    remedy,
                    EnumSet.of(Technique.PVHVM));
        }
    }

    /**
     * /dev/kvm probed as the user running the check (open read-write, KVM_GET_API_VERSION, KVM_CREATE_VM) together
     * with the CPU flags: the same facts {@link Accelerator} decides on, so the summary cannot disagree with it.
     */
    private void checkKvm(String cpuinfo) {
        Accelerator.KvmFacts f = kvmProbe.apply(dev.path("kvm"), cpuinfo);
        kvmStatus = Accelerator.status(f);
        String user = System.getProperty("user.name");
        if (kvmStatus.usable()) {
            add("kvm", Status.PASS, kvmStatus.reason() + " (as user " + user + ")", "", NONE);
        } else if (f.exists()
                && f.openError() == 0
                && f.apiVersion() == Accelerator.KVM_API_VERSION
                && f.createVm() == 0) {
            // Works, but without VT-x/AMD-V: PVM or another software-nested KVM. Seen here: stock guests stop with
            // "KVM internal error" (kvm-pvm: INTERNAL_ERROR in batch emul). Not a FAIL: guests run, under TCG.
            add(
                    "kvm",
                    Status.WARN,
                    dev.path("kvm") + " works but the CPU has no hardware virtualization (no vmx/svm): "
                            + "a PVM / software-nested KVM; stock guests may not run on it, so iovirt uses TCG",
                    kvmStatus.remedy(),
                    NONE);
        } else {
            add(
                    "kvm",
                    Status.FAIL,
                    kvmStatus.reason() + (f.exists() ? " (as user " + user + ")" : "")
                            + ": no hardware-accelerated guests",
                    kvmStatus.remedy(),
                    EnumSet.of(Technique.PVHVM));
        }
    }

    /** A device node opened read-write as the user running the check; missing or denied is a WARN naming its use. */
    private void checkDevice(String id, String relative, String mattersFor, String remedy) {
        java.nio.file.Path node = dev.path(relative);
        String user = System.getProperty("user.name");
        if (!java.nio.file.Files.exists(node)) {
            add(id, Status.WARN, node + " does not exist; needed for " + mattersFor, remedy, NONE);
            return;
        }
        try {
            FileIo.open(node, FileIo.O_RDWR).close();
            add(id, Status.PASS, node + " opens read-write as user " + user + " (for " + mattersFor + ")", "", NONE);
        } catch (LinuxException e) {
            boolean denied = e.errno() == Errno.EACCES || e.errno() == Errno.EPERM;
            add(
                    id,
                    Status.WARN,
                    "cannot open " + node + " read-write as user " + user + ": " + e.errnoName() + "; needed for "
                            + mattersFor,
                    denied ? "give the user access to " + node + " (a udev rule or group membership)" : remedy,
                    NONE);
        }
    }

    /**
     * Reserved huge pages: guest RAM is a shared memfd that vhost-user backends map too; on huge pages QEMU, the
     * backends and VFIO's IOMMU mappings need 512 times fewer page-table entries.
     */
    private void checkHugepages() {
        String meminfo = proc.readTextOptional("meminfo").orElse("");
        long total = -1;
        long free = -1;
        long sizeKib = -1;
        for (String line : meminfo.split("\n")) {
            String[] f = line.split(":\\s*");
            if (f.length < 2) {
                continue;
            }
            String v = f[1].trim().split("\\s+")[0];
            try {
                switch (f[0]) {
                    case "HugePages_Total" -> total = Long.parseLong(v);
                    case "HugePages_Free" -> free = Long.parseLong(v);
                    case "Hugepagesize" -> sizeKib = Long.parseLong(v);
                    default -> {}
                }
            } catch (NumberFormatException e) {
                // leave it unknown
            }
        }
        String use = "guest RAM shared with vhost-user backends (PV, PVHVM) and pinned for VFIO";
        String remedy =
                "reserve some: echo 512 > /proc/sys/vm/nr_hugepages (1 GiB of 2 MiB pages), or hugepages=N on the kernel command line";
        if (total < 0) {
            add("hugepages", Status.WARN, "cannot read HugePages_Total from " + proc.path("meminfo"), remedy, NONE);
        } else if (total == 0) {
            add("hugepages", Status.WARN, "no huge pages reserved: " + use + " is backed by 4 KiB pages", remedy, NONE);
        } else {
            add(
                    "hugepages",
                    Status.PASS,
                    total + " huge pages of " + ByteSizes.human(sizeKib * 1024) + " reserved, " + free + " free: for "
                            + use,
                    "",
                    NONE);
        }
    }

    private void checkQemu() {
        java.nio.file.Path qemu = paths.findExecutable("qemu-system-x86_64");
        if (qemu != null) {
            add("qemu", Status.PASS, "QEMU found: " + qemu, "", NONE);
        } else {
            add(
                    "qemu",
                    Status.FAIL,
                    "qemu-system-x86_64 is not on the PATH",
                    "install it: apt-get install qemu-system-x86",
                    EnumSet.of(Technique.FV, Technique.PV, Technique.PVHVM));
        }
    }

    private void checkIommuFirmware(
            boolean dmar, boolean ivrs, List<String> iommus, Vendor vendor, boolean nestedGuest) {
        if (dmar || ivrs) {
            add(
                    "iommu-firmware",
                    Status.PASS,
                    "firmware describes an IOMMU (ACPI " + (dmar ? "DMAR: Intel VT-d" : "IVRS: AMD-Vi") + ")",
                    "",
                    NONE);
        } else if (!iommus.isEmpty()) {
            add(
                    "iommu-firmware",
                    Status.WARN,
                    "no ACPI DMAR or IVRS table, but the kernel has IOMMUs " + iommus
                            + " (virtio-iommu or a non-ACPI platform)",
                    "none needed if VFIO works; VT-d/AMD-Vi are the tested setups",
                    NONE);
        } else {
            String remedy = firmwareRemedy(vendor);
            if (nestedGuest) {
                remedy +=
                        "; this host is a virtual machine: give it a virtual IOMMU (QEMU: -machine q35,kernel-irqchip=split -device intel-iommu,intremap=on,caching-mode=on)";
            }
            add(
                    "iommu-firmware",
                    Status.FAIL,
                    "the firmware describes no IOMMU (no ACPI DMAR or IVRS table in " + sys.path("firmware/acpi/tables")
                            + ")",
                    remedy,
                    VFIO_ALL);
        }
    }

    private static String firmwareRemedy(Vendor vendor) {
        return switch (vendor) {
            case INTEL -> "enable VT-d (Intel Virtualization Technology for Directed I/O) in the firmware setup";
            case AMD -> "enable AMD-Vi (often called IOMMU) in the firmware setup";
            case OTHER -> "enable VT-d/AMD-Vi (the IOMMU) in the firmware setup";
        };
    }

    private void checkIommuEnabled(
            List<String> iommus, boolean dmar, boolean ivrs, Vendor vendor, Map<String, String> cmdline) {
        if (!iommus.isEmpty()) {
            add("iommu-enabled", Status.PASS, "kernel IOMMU active: " + String.join(", ", iommus), "", NONE);
            return;
        }
        List<String> steps = new ArrayList<>();
        if (!dmar && !ivrs) {
            steps.add(firmwareRemedy(vendor));
        }
        if (vendor == Vendor.AMD) {
            steps.add("remove amd_iommu=off / iommu=off from the kernel command line if present");
        } else {
            steps.add(
                    "add intel_iommu=on to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub, reboot)");
        }
        add(
                "iommu-enabled",
                Status.FAIL,
                "no IOMMU is active (" + sys.path("class/iommu") + " is empty or missing)",
                String.join("; then ", steps),
                VFIO_ALL);
    }

    private void checkCmdline(Vendor vendor, Map<String, String> cmdline, List<String> iommus) {
        String intel = cmdline.get("intel_iommu");
        String amd = cmdline.get("amd_iommu");
        String generic = cmdline.get("iommu");
        if ("off".equals(generic)) {
            add(
                    "cmdline-iommu",
                    Status.FAIL,
                    "kernel command line has iommu=off",
                    "remove iommu=off from the kernel command line",
                    VFIO_ALL);
        } else if (intel != null && Arrays.asList(intel.split(",")).contains("off")) {
            add(
                    "cmdline-iommu",
                    Status.FAIL,
                    "kernel command line has intel_iommu=" + intel,
                    "replace it with intel_iommu=on",
                    VFIO_ALL);
        } else if (amd != null && Arrays.asList(amd.split(",")).contains("off")) {
            add(
                    "cmdline-iommu",
                    Status.FAIL,
                    "kernel command line has amd_iommu=" + amd,
                    "remove amd_iommu=off",
                    VFIO_ALL);
        } else if (intel != null && Arrays.asList(intel.split(",")).contains("on")) {
            add("cmdline-iommu", Status.PASS, "kernel command line has intel_iommu=" + intel, "", NONE);
        } else if (vendor == Vendor.AMD) {
            add(
                    "cmdline-iommu",
                    Status.PASS,
                    "AMD-Vi needs no command-line switch (on unless amd_iommu=off)",
                    "",
                    NONE);
        } else if (!iommus.isEmpty()) {
            add(
                    "cmdline-iommu",
                    Status.PASS,
                    "no intel_iommu= given; this kernel enables its IOMMU by default",
                    "",
                    NONE);
        } else {
            add(
                    "cmdline-iommu",
                    Status.FAIL,
                    "kernel command line lacks intel_iommu=on",
                    "add intel_iommu=on to the kernel command line",
                    VFIO_ALL);
        }
        if ("pt".equals(generic)) {
            add("iommu-passthrough", Status.PASS, "iommu=pt: host-owned devices skip IOMMU translation", "", NONE);
        } else {
            add(
                    "iommu-passthrough",
                    Status.WARN,
                    "iommu=pt is not set: the host's own devices pay for IOMMU translation",
                    "add iommu=pt to the kernel command line for host I/O speed (VFIO isolation is unaffected)",
                    NONE);
        }
    }

    private void checkInterruptRemapping(boolean nestedGuest) {
        String interrupts = proc.readTextOptional("interrupts").orElse("");
        if (interrupts.contains("IR-")) {
            add(
                    "interrupt-remapping",
                    Status.PASS,
                    "interrupt remapping is active (IR- interrupt chips in /proc/interrupts)",
                    "",
                    NONE);
            return;
        }
        String unsafe = sys.readOptional("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts")
                .orElse("N");
        String remedy = "enable interrupt remapping in the firmware setup (with x2APIC)"
                + (nestedGuest
                        ? "; in a QEMU VM: -machine q35,kernel-irqchip=split -device intel-iommu,intremap=on"
                        : "")
                + "; last resort: vfio_iommu_type1.allow_unsafe_interrupts=1 (lets a guest forge interrupts)";
        if (unsafe.equals("Y") || unsafe.equals("1")) {
            add(
                    "interrupt-remapping",
                    Status.WARN,
                    "no interrupt remapping; vfio_iommu_type1 allows unsafe interrupts",
                    remedy,
                    NONE);
        } else {
            add(
                    "interrupt-remapping",
                    Status.FAIL,
                    "no interrupt remapping: vfio_iommu_type1 refuses to attach devices",
                    remedy,
                    VFIO_ALL);
        }
    }

    private void checkVfio() {
        List<String> missing = new ArrayList<>();
        if (!sys.exists("module/vfio")) {
            missing.add("vfio");
        }
        if (!sys.exists("module/vfio_iommu_type1")) {
            missing.add("vfio_iommu_type1");
        }
        if (!sys.exists("module/vfio_pci") && !sys.isDirectory("bus/pci/drivers/vfio-pci")) {
            missing.add("vfio_pci");
        }
        if (missing.isEmpty()) {
            add("vfio-modules", Status.PASS, "vfio, vfio_iommu_type1 and vfio-pci are loaded", "", NONE);
        } else {
            add(
                    "vfio-modules",
                    Status.FAIL,
                    "not loaded: " + String.join(", ", missing),
                    "modprobe vfio-pci (pulls in vfio and vfio_iommu_type1); at boot: echo vfio-pci > /etc/modules-load.d/vfio.conf",
                    VFIO_ALL);
        }
        if (dev.exists("vfio/vfio")) {
            add("vfio-device", Status.PASS, dev.path("vfio/vfio") + " exists", "", NONE);
        } else {
            add(
                    "vfio-device",
                    Status.FAIL,
                    dev.path("vfio/vfio") + " does not exist",
                    "modprobe vfio-pci; if it still is missing, mount devtmpfs on /dev",
                    VFIO_ALL);
        }
    }

    private void checkMemlock() {
        String status = proc.readTextOptional("self/status").orElse("");
        for (String line : status.split("\n")) {
            if (line.startsWith("CapEff:")) {
                try {
                    long caps = Long.parseUnsignedLong(line.substring(7).trim(), 16);
                    if ((caps >>> CAP_IPC_LOCK & 1) != 0) {
                        add(
                                "memlock",
                                Status.PASS,
                                "CAP_IPC_LOCK is held: VFIO may pin any amount of memory",
                                "",
                                NONE);
                        return;
                    }
                } catch (NumberFormatException e) {
                    // fall through to the limit
                }
            }
        }
        String limits = proc.readTextOptional("self/limits").orElse("");
        for (String line : limits.split("\n")) {
            if (line.startsWith("Max locked memory")) {
                String[] f = line.substring("Max locked memory".length()).trim().split("\\s+");
                if (f.length >= 1 && f[0].equals("unlimited")) {
                    add("memlock", Status.PASS, "locked-memory limit is unlimited", "", NONE);
                    return;
                }
                try {
                    long soft = Long.parseLong(f[0]);
                    Status s = soft >= memlockNeeded ? Status.PASS : Status.WARN;
                    add(
                            "memlock",
                            s,
                            "locked-memory limit is " + ByteSizes.human(soft) + " (VFIO pins all guest RAM; "
                                    + ByteSizes.human(memlockNeeded) + " wanted)",
                            "raise it for the VM's process: ulimit -l unlimited, LimitMEMLOCK=infinity (systemd) or memlock in /etc/security/limits.conf; libvirt does this itself",
                            NONE);
                    return;
                } catch (NumberFormatException e) {
                    break;
                }
            }
        }
        add(
                "memlock",
                Status.WARN,
                "cannot read the locked-memory limit from " + proc.path("self/limits"),
                "make sure the VM's process may lock its RAM (ulimit -l)",
                NONE);
    }

    private void checkGroups(List<String> iommus) {
        IommuGroups groups = IommuGroups.read(sys);
        if (groups.count() > 0) {
            add("iommu-groups", Status.PASS, groups.count() + " IOMMU groups", "", NONE);
        } else {
            add(
                    "iommu-groups",
                    Status.FAIL,
                    "no IOMMU groups in " + sys.path("kernel/iommu_groups"),
                    iommus.isEmpty() ? "turn the IOMMU on (see iommu-enabled)" : "check dmesg for IOMMU errors",
                    VFIO_ALL);
        }
    }

    private void checkSriov() {
        List<String> pfs = new ArrayList<>();
        for (String name : sys.list("bus/pci/devices")) {
            long total = sys.readDecimalOptional("bus/pci/devices/" + name + "/sriov_totalvfs");
            if (total > 0) {
                long num = sys.readDecimalOptional("bus/pci/devices/" + name + "/sriov_numvfs");
                pfs.add(name + " (" + Math.max(num, 0) + "/" + total + " VFs)");
            }
        }
        if (!pfs.isEmpty()) {
            add("sriov-devices", Status.PASS, "SR-IOV capable: " + String.join(", ", pfs), "", NONE);
        } else {
            add(
                    "sriov-devices",
                    Status.FAIL,
                    "no SR-IOV capable PCI device (no sriov_totalvfs > 0)",
                    "install an SR-IOV capable NIC or NVMe drive and enable SR-IOV in its firmware and the system firmware",
                    EnumSet.of(Technique.SRIOV));
        }
    }

    static Set<String> cpuFlags(String cpuinfo) {
        for (String line : cpuinfo.split("\n")) {
            if (line.startsWith("flags")) {
                int colon = line.indexOf(':');
                if (colon > 0) {
                    return Set.of(Arrays.stream(line.substring(colon + 1).trim().split("\\s+"))
                            .distinct()
                            .toArray(String[]::new));
                }
            }
        }
        return Set.of();
    }

    static Map<String, String> cmdline(String text) {
        Map<String, String> out = new LinkedHashMap<>();
        for (String word : text.trim().split("\\s+")) {
            if (word.equals("--")) {
                break; // the rest belongs to init
            }
            int eq = word.indexOf('=');
            if (eq > 0) {
                out.put(word.substring(0, eq), word.substring(eq + 1));
            } else if (!word.isEmpty()) {
                out.put(word, "");
            }
        }
        return out;
    }
}
