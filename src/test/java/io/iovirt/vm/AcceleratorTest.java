// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Errno;
import io.iovirt.vm.Accelerator.Decision;
import io.iovirt.vm.Accelerator.Kind;
import io.iovirt.vm.Accelerator.KvmFacts;
import io.iovirt.vm.Accelerator.KvmStatus;
import io.iovirt.vm.Accelerator.Mode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The accelerator decision on every kind of host, from facts; and the real probe on device fixtures. */
class AcceleratorTest {
    private static final Path DEV = Path.of("/dev/kvm");
    private static final Set<String> VMX = Set.of("fpu", "vmx", "sse2");
    private static final Set<String> NONE = Set.of("fpu", "sse2", "hypervisor");

    @TempDir
    Path tmp;

    private static KvmStatus status(boolean exists, int openError, int api, int createVm, Set<String> flags) {
        return Accelerator.status(new KvmFacts(DEV, exists, openError, api, createVm, flags));
    }

    @Test
    void hardwareKvmIsChosenInAuto() {
        KvmStatus s = status(true, 0, 12, 0, VMX);
        assertTrue(s.usable(), s.reason());
        Decision d = Accelerator.decide(Mode.AUTO, s);
        assertEquals(Kind.KVM, d.kind());
        assertEquals(List.of("-accel", "kvm", "-cpu", "host"), d.qemuArgs());
        assertTrue(d.mayFallBack(), "auto may fall back to TCG if a KVM guest still fails");
        assertTrue(d.reason().contains("VT-x"), d.reason());
    }

    /** This machine's case: a PVM /dev/kvm that opens and creates VMs, on a CPU without vmx/svm. */
    @Test
    void kvmWithoutHardwareVirtualizationIsUnusable() {
        KvmStatus s = status(true, 0, 12, 0, NONE);
        assertFalse(s.usable());
        assertTrue(
                s.reason().contains("no hardware virtualization") && s.reason().contains("PVM"), s.reason());
        Decision d = Accelerator.decide(Mode.AUTO, s);
        assertEquals(Kind.TCG, d.kind());
        assertEquals(List.of("-accel", Accelerator.tcgOption(System.getenv(Accelerator.TCG_THREAD_ENV))), d.qemuArgs());
        assertFalse(d.mayFallBack());
        assertTrue(
                d.describe().startsWith("TCG (KVM unusable: /dev/kvm works but the CPU has no hardware"), d.describe());
    }

    @Test
    void kvmModeOnAnUnusableKvmIsOneLineWithReasonAndRemedy() {
        Accelerator.UnusableException e = assertThrows(
                Accelerator.UnusableException.class, () -> Accelerator.decide(Mode.KVM, status(true, 0, 12, 0, NONE)));
        assertFalse(e.getMessage().contains("\n"), e.getMessage());
        assertTrue(e.getMessage().contains("no hardware virtualization"), e.getMessage());
        assertTrue(e.getMessage().contains("--accel tcg"), e.getMessage());
        Accelerator.UnusableException absent = assertThrows(
                Accelerator.UnusableException.class,
                () -> Accelerator.decide(Mode.KVM, status(false, Errno.ENOENT, 0, 0, VMX)));
        assertTrue(
                absent.getMessage().contains("/dev/kvm does not exist")
                        && absent.getMessage().contains("modprobe kvm_intel"),
                absent.getMessage());
    }

    @Test
    void eachProbeStepHasItsReasonAndRemedy() {
        KvmStatus denied = status(true, Errno.EACCES, 0, 0, VMX);
        assertFalse(denied.usable());
        assertTrue(denied.reason().contains("EACCES"), denied.reason());
        assertTrue(denied.remedy().contains("kvm group"), denied.remedy());
        assertTrue(status(true, 0, -Errno.ENOTTY, 0, VMX).reason().contains("not a KVM device"));
        assertTrue(status(true, 0, 11, 0, VMX).reason().contains("API version is 11"));
        KvmStatus noVm = status(true, 0, 12, -Errno.EBUSY, VMX);
        assertFalse(noVm.usable());
        assertTrue(noVm.reason().contains("KVM_CREATE_VM failed: EBUSY"), noVm.reason());
        assertTrue(
                status(false, Errno.ENOENT, 0, 0, NONE).remedy().contains("nested virtualization"),
                "a VM without vmx needs nested virtualization, not modprobe");
    }

    @Test
    void tcgModeNeverTouchesKvm() {
        Decision d = Accelerator.decide(Mode.TCG, status(true, 0, 12, 0, VMX));
        assertEquals(Kind.TCG, d.kind());
        assertTrue(d.reason().contains("asked for"), d.reason());
    }

    @Test
    void fallbackKeepsTheReason() {
        Decision d = Accelerator.decide(Mode.AUTO, status(true, 0, 12, 0, VMX))
                .fallBack("QEMU: KVM internal error. Suberror: 1");
        assertEquals(Kind.TCG, d.kind());
        assertFalse(d.mayFallBack());
        assertTrue(d.describe().contains("KVM internal error") && d.describe().contains("under TCG"), d.describe());
    }

    @Test
    void tcgThreading() {
        assertEquals("tcg", Accelerator.tcgOption(null));
        assertEquals("tcg", Accelerator.tcgOption(""));
        assertEquals("tcg,thread=single", Accelerator.tcgOption("single"));
        assertEquals("tcg,thread=multi", Accelerator.tcgOption("MULTI"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Accelerator.tcgOption("two"));
        assertTrue(e.getMessage().contains("IOVIRT_TCG_THREAD=two"), e.getMessage());
    }

    @Test
    void modeParsing() {
        assertEquals(Mode.AUTO, Mode.parse("auto"));
        assertEquals(Mode.KVM, Mode.parse(" KVM "));
        assertEquals(Mode.TCG, Mode.parse("tcg"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Mode.parse("hvf"));
        assertTrue(e.getMessage().contains("auto, kvm, tcg"), e.getMessage());
    }

    @Test
    void qemuKvmFailuresAreRecognized() {
        assertEquals(
                "KVM internal error. Suberror: 1",
                Accelerator.earlyKvmFailure(
                        "qemu-system-x86_64: warning: x\nKVM internal error. Suberror: 1\nextra data[0]: 0x0000000000000000\n"));
        assertEquals("emulation failure", Accelerator.earlyKvmFailure("emulation failure\nRAX=0000"));
        assertTrue(Accelerator.earlyKvmFailure("Could not access KVM kernel module: No such file or directory\n"
                        + "qemu-system-x86_64: failed to initialize kvm: No such file or directory")
                .startsWith("Could not access"));
        assertNull(
                Accelerator.earlyKvmFailure("qemu-system-x86_64: -device foo: 'foo' is not a valid device model name"));
        // QEMU 7.2 with -cpu host on this project's PVM host: aborts while setting up the vCPU
        assertEquals(
                "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69",
                Accelerator.earlyKvmFailure(
                        "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\nqemu-system-x86_64: "
                                + "../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n"));
    }

    /** The "no /dev/kvm" path, probed for real on a device-root fixture. */
    @Test
    void probeOfAMissingDevice() {
        KvmFacts f = Accelerator.probe(tmp.resolve("kvm"), "flags\t\t: fpu vmx\n");
        assertFalse(f.exists());
        assertTrue(f.hardwareVirtualization());
        KvmStatus s = Accelerator.status(f);
        assertFalse(s.usable());
        assertTrue(s.reason().endsWith("kvm does not exist"), s.reason());
        assertEquals(Kind.TCG, Accelerator.decide(Mode.AUTO, s).kind());
    }

    /** A node that opens but is not KVM (a file, /dev/null bind-mounted over /dev/kvm): the ioctl step says so. */
    @Test
    void probeOfSomethingThatIsNotKvm() throws Exception {
        Path fake = Files.writeString(tmp.resolve("kvm"), "");
        KvmStatus s = Accelerator.status(Accelerator.probe(fake, "flags\t\t: fpu svm\n"));
        assertFalse(s.usable());
        assertTrue(s.reason().contains("not a KVM device: KVM_GET_API_VERSION failed with ENOTTY"), s.reason());
        KvmStatus devNull = Accelerator.status(Accelerator.probe(Path.of("/dev/null"), "flags\t\t: fpu svm\n"));
        assertFalse(devNull.usable());
        assertTrue(devNull.reason().contains("not a KVM device"), devNull.reason());
    }

    /**
     * The real /dev/kvm of this host, whatever it is: if present, the probe gets past open and the API version (a
     * PVM KVM does too) and then the CPU flags decide; the decision agrees with the flags.
     */
    @Test
    void probeOfThisHost() throws Exception {
        String cpuinfo = Files.readString(Path.of("/proc/cpuinfo"));
        KvmFacts f = Accelerator.probe(DEV, cpuinfo);
        KvmStatus s = Accelerator.status(f);
        if (!Files.exists(DEV)) {
            assertFalse(s.usable(), s.reason());
            return;
        }
        assertEquals(0, f.openError(), "root opens /dev/kvm");
        assertEquals(12, f.apiVersion(), s.reason());
        assertEquals(s.usable(), f.createVm() == 0 && f.hardwareVirtualization(), s.reason());
        boolean hw = cpuinfo.contains(" vmx") || cpuinfo.contains(" svm");
        assertEquals(hw, f.hardwareVirtualization());
    }
}
