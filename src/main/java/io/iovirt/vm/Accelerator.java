// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.Ioctl;
import io.iovirt.linux.LinuxException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Objects;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * The one decision which accelerator QEMU guests run under, shared by {@code demo}, {@code vm run}, {@code host check}
 * and the tests' guest harness.
 *
 * <p>KVM is used only when it can run a stock guest: /dev/kvm opens read-write as this user, {@code KVM_GET_API_VERSION}
 * is 12, {@code KVM_CREATE_VM} succeeds, and the CPU has hardware virtualization (vmx or svm in /proc/cpuinfo). The
 * last condition is what a bare "does /dev/kvm open" misses: a PVM (software-nested) KVM in a cloud VM opens, creates
 * VMs, and then stops stock guests with "KVM internal error" (host dmesg: {@code kvm-pvm: INTERNAL_ERROR in batch
 * emul}, measured here on a {@code lock cmpxchg16b} during boot). Otherwise TCG.
 *
 * <p>{@link Mode#AUTO} may still meet a KVM that passes every probe and fails a real guest; {@link QemuGuest} then
 * boots the guest again under TCG (see {@link #earlyKvmFailure}). {@link Mode#KVM} on an unusable KVM is an error.
 */
public final class Accelerator {
    /** Environment variable that selects the mode for the tests and anything else that does not take --accel. */
    public static final String ENV = "IOVIRT_ACCEL";
    /**
     * {@code single} runs TCG with one thread for all vCPUs ({@code -accel tcg,thread=single}) instead of QEMU's
     * default multi-threaded TCG: the lever for a suspected MTTCG bug (issue 8: QEMU 7.2 segfaults seen only on an
     * Intel host under MTTCG), at the cost of vCPU parallelism.
     */
    public static final String TCG_THREAD_ENV = "IOVIRT_TCG_THREAD";

    public static final int KVM_API_VERSION = 12;

    private static final int KVMIO = 0xAE;
    private static final long KVM_GET_API_VERSION = Ioctl.io(KVMIO, 0x00);
    private static final long KVM_CREATE_VM = Ioctl.io(KVMIO, 0x01);

    /**
     * What QEMU prints when a KVM guest cannot run: an internal error or emulation failure (the vCPU stops, QEMU keeps
     * running), KVM failing to initialize at all, or QEMU aborting while it sets up a vCPU. Seen on this project's PVM
     * host: with {@code -cpu host} QEMU 7.2 prints "error: failed to set MSR 0x10a to 0x69" and aborts on the assertion
     * in kvm_buf_set_msrs (target/i386/kvm/kvm.c) from kvm_arch_init_vcpu; with other CPU models the guest starts and
     * stops with "KVM internal error" at a lock cmpxchg16b.
     */
    private static final Pattern KVM_FAILURE = Pattern.compile(
            "KVM internal error|emulation failure|failed to initialize kvm|Could not access KVM kernel module"
                    + "|kvm run failed|KVM_CREATE_VM|failed to set MSR|target/i386/kvm/",
            Pattern.CASE_INSENSITIVE);

    /** What the user asked for. */
    public enum Mode {
        AUTO,
        KVM,
        TCG;

        /** Parses auto, kvm, tcg (case-insensitive). */
        public static Mode parse(String s) {
            for (Mode m : values()) {
                if (m.name().equalsIgnoreCase(s.trim())) {
                    return m;
                }
            }
            throw new IllegalArgumentException("accelerator '" + s + "' is not one of auto, kvm, tcg");
        }

        /** {@code IOVIRT_ACCEL} if set and not empty, else AUTO. */
        public static Mode fromEnvironment() {
            String v = System.getenv(ENV);
            if (v == null || v.isBlank()) {
                return AUTO;
            }
            try {
                return parse(v);
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException(ENV + "=" + v + ": " + e.getMessage());
            }
        }

        @Override
        public String toString() {
            return name().toLowerCase(Locale.ROOT);
        }
    }

    /** The accelerator QEMU is given. */
    public enum Kind {
        KVM,
        TCG
    }

    /**
     * What the probe found out about KVM on this host.
     *
     * @param usable true when a stock guest can run under KVM
     * @param reason one line: why KVM is (not) usable
     * @param remedy what a person can do to make it usable ("" when usable)
     */
    public record KvmStatus(boolean usable, String reason, String remedy) {
        public KvmStatus {
            Objects.requireNonNull(reason);
            Objects.requireNonNull(remedy);
        }
    }

    /**
     * The facts a decision rests on, gathered by {@link #probe(Path, String)}; separate so the decision can be tested on
     * any host.
     *
     * @param device      the device path probed
     * @param exists      the device node exists
     * @param openError   errno of open(O_RDWR) as this user, 0 when it opened
     * @param apiVersion  KVM_GET_API_VERSION's result, or -errno
     * @param createVm    0 when KVM_CREATE_VM worked, else -errno
     * @param cpuFlags    the flags line of /proc/cpuinfo
     */
    public record KvmFacts(
            Path device, boolean exists, int openError, int apiVersion, int createVm, Set<String> cpuFlags) {
        public boolean hardwareVirtualization() {
            return cpuFlags.contains("vmx") || cpuFlags.contains("svm");
        }
    }

    /**
     * The decision: which accelerator, asked for how, and why.
     *
     * @param kvm what the KVM probe found (also for a TCG decision: it says why not KVM)
     */
    public record Decision(Kind kind, Mode mode, String reason, KvmStatus kvm) {
        public Decision {
            Objects.requireNonNull(kind);
            Objects.requireNonNull(mode);
            Objects.requireNonNull(reason);
            Objects.requireNonNull(kvm);
        }

        /** QEMU's arguments for this accelerator ({@code IOVIRT_TCG_THREAD=single|multi} picks TCG's threading). */
        public List<String> qemuArgs() {
            return kind == Kind.KVM
                    ? List.of("-accel", "kvm", "-cpu", "host")
                    : List.of("-accel", tcgOption(System.getenv(TCG_THREAD_ENV)));
        }

        /** True when a KVM guest that fails early may be booted again under TCG (only in AUTO mode). */
        public boolean mayFallBack() {
            return kind == Kind.KVM && mode == Mode.AUTO;
        }

        /** The TCG decision taken after a KVM guest failed early. */
        public Decision fallBack(String why) {
            return new Decision(
                    Kind.TCG,
                    mode,
                    "KVM looked usable but " + why + "; booted again under TCG",
                    new KvmStatus(false, why, kvm.remedy().isEmpty() ? KVM_NOT_STOCK_REMEDY : kvm.remedy()));
        }

        /** One line for a person: "TCG (KVM unusable: ...)". */
        public String describe() {
            return kind + " (" + reason + ")";
        }
    }

    /** A KVM was asked for (--accel kvm) and this host's cannot run a guest. */
    public static final class UnusableException extends RuntimeException {
        public UnusableException(String message) {
            super(message);
        }
    }

    private static final String KVM_NOT_STOCK_REMEDY = "run on a host whose CPU exposes VT-x/AMD-V (on a cloud VM: an "
            + "instance type with nested virtualization), or use --accel tcg";

    private static volatile KvmStatus probed;

    private Accelerator() {}

    /** The decision for this host and {@code IOVIRT_ACCEL}, probed once per JVM. */
    public static Decision system() {
        return decide(Mode.fromEnvironment(), probeSystem());
    }

    /** The decision for this host in {@code mode} (the --accel option). */
    public static Decision forMode(Mode mode) {
        return decide(mode, probeSystem());
    }

    /** The KVM probe of this host (/dev/kvm and /proc/cpuinfo), done once per JVM. */
    public static KvmStatus probeSystem() {
        KvmStatus s = probed;
        if (s == null) {
            s = status(probe(Path.of("/dev/kvm"), readCpuinfo(Path.of("/proc/cpuinfo"))));
            probed = s;
        }
        return s;
    }

    static String readCpuinfo(Path file) {
        try {
            return Files.readString(file);
        } catch (IOException e) {
            return "";
        }
    }

    /**
     * Probes the KVM device at {@code device} as this process's user: open read-write, KVM_GET_API_VERSION,
     * KVM_CREATE_VM (the VM is closed at once).
     */
    public static KvmFacts probe(Path device, String cpuinfo) {
        Set<String> flags = cpuFlags(cpuinfo);
        if (!Files.exists(device)) {
            return new KvmFacts(device, false, Errno.ENOENT, 0, 0, flags);
        }
        Fd kvm;
        try {
            kvm = FileIo.open(device, FileIo.O_RDWR);
        } catch (LinuxException e) {
            return new KvmFacts(device, true, e.errno(), 0, 0, flags);
        }
        try (kvm) {
            int api;
            try {
                api = Ioctl.call(kvm, KVM_GET_API_VERSION);
            } catch (LinuxException e) {
                return new KvmFacts(device, true, 0, -e.errno(), 0, flags);
            }
            if (api != KVM_API_VERSION) {
                return new KvmFacts(device, true, 0, api, 0, flags);
            }
            try {
                Fd.adopt(Ioctl.call(kvm, KVM_CREATE_VM, 0L)).close();
                return new KvmFacts(device, true, 0, api, 0, flags);
            } catch (LinuxException e) {
                return new KvmFacts(device, true, 0, api, -e.errno(), flags);
            }
        }
    }

    /** What the facts mean for a stock guest. */
    public static KvmStatus status(KvmFacts f) {
        String dev = f.device().toString();
        String cpuRemedy = f.cpuFlags().contains("hypervisor")
                ? "this host is a virtual machine: enable nested virtualization in its hypervisor so the CPU shows vmx/svm"
                : "enable VT-x/AMD-V in the firmware setup";
        if (!f.exists()) {
            return new KvmStatus(
                    false,
                    dev + " does not exist",
                    f.hardwareVirtualization()
                            ? "load KVM: modprobe kvm_intel (Intel) or kvm_amd (AMD)"
                            : cpuRemedy + ", then load KVM");
        }
        if (f.openError() != 0) {
            String remedy = f.openError() == Errno.EACCES || f.openError() == Errno.EPERM
                    ? "add the user to the kvm group (usermod -aG kvm $USER, then log in again)"
                    : "check that " + dev + " is the KVM device (char 10:232)";
            return new KvmStatus(
                    false,
                    "cannot open " + dev + " read-write as this user: " + Errno.name(f.openError()) + " ("
                            + Errno.describe(f.openError()) + ")",
                    remedy);
        }
        if (f.apiVersion() < 0) {
            return new KvmStatus(
                    false,
                    dev + " is not a KVM device: KVM_GET_API_VERSION failed with " + Errno.name(-f.apiVersion()),
                    "check that " + dev + " is the KVM device (char 10:232)");
        }
        if (f.apiVersion() != KVM_API_VERSION) {
            return new KvmStatus(
                    false,
                    "KVM API version is " + f.apiVersion() + ", QEMU needs " + KVM_API_VERSION,
                    "use a kernel with a standard KVM");
        }
        if (f.createVm() != 0) {
            return new KvmStatus(
                    false,
                    "KVM_CREATE_VM failed: " + Errno.name(-f.createVm()) + " (" + Errno.describe(-f.createVm()) + ")",
                    "check dmesg for KVM errors; another hypervisor may own VT-x/AMD-V");
        }
        if (!f.hardwareVirtualization()) {
            return new KvmStatus(
                    false,
                    dev + " works but the CPU has no hardware virtualization (no vmx/svm in "
                            + "/proc/cpuinfo): a PVM or software-nested KVM, on which stock guests may not run",
                    KVM_NOT_STOCK_REMEDY);
        }
        return new KvmStatus(
                true,
                dev + " opens, API " + KVM_API_VERSION + ", KVM_CREATE_VM works, CPU has "
                        + (f.cpuFlags().contains("vmx") ? "VT-x (vmx)" : "AMD-V (svm)"),
                "");
    }

    /**
     * The decision for {@code mode} given the probe.
     *
     * @throws UnusableException mode is KVM and KVM cannot run a guest here (the message has the reason and the remedy)
     */
    public static Decision decide(Mode mode, KvmStatus kvm) {
        return switch (mode) {
            case TCG -> new Decision(Kind.TCG, mode, "asked for with --accel tcg / " + ENV + "=tcg", kvm);
            case KVM -> {
                if (!kvm.usable()) {
                    throw new UnusableException("--accel kvm: KVM cannot run a guest here: " + kvm.reason() + "; "
                            + kvm.remedy() + (kvm.remedy().contains("--accel tcg") ? "" : ", or use --accel tcg"));
                }
                yield new Decision(Kind.KVM, mode, "asked for; " + kvm.reason(), kvm);
            }
            case AUTO ->
                kvm.usable()
                        ? new Decision(Kind.KVM, mode, kvm.reason(), kvm)
                        : new Decision(
                                Kind.TCG,
                                mode,
                                "KVM unusable: " + kvm.reason() + "; every guest instruction is emulated",
                                kvm);
        };
    }

    /**
     * The line of a KVM guest's QEMU output that shows KVM cannot run it, or null. QEMU keeps running after a KVM
     * internal error (the vCPU is stopped), so a caller must look for this rather than wait for QEMU to exit.
     */
    public static String earlyKvmFailure(String qemuOutput) {
        for (String line : qemuOutput.split("\n")) {
            if (KVM_FAILURE.matcher(line).find()) {
                return line.strip();
            }
        }
        return null;
    }

    /** QEMU's -accel value for TCG given {@code IOVIRT_TCG_THREAD} (null or empty: QEMU's default). */
    static String tcgOption(String thread) {
        if (thread == null || thread.isBlank()) {
            return "tcg";
        }
        String t = thread.trim().toLowerCase(Locale.ROOT);
        if (!t.equals("single") && !t.equals("multi")) {
            throw new IllegalArgumentException(TCG_THREAD_ENV + "=" + thread + ": want single or multi");
        }
        return "tcg,thread=" + t;
    }

    static Set<String> cpuFlags(String cpuinfo) {
        for (String line : cpuinfo.split("\n")) {
            if (line.startsWith("flags")) {
                int colon = line.indexOf(':');
                if (colon > 0) {
                    return Set.copyOf(
                            Arrays.asList(line.substring(colon + 1).trim().split("\\s+")));
                }
            }
        }
        return Set.of();
    }
}
