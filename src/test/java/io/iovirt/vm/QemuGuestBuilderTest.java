// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The guest builder's checks and the command line it makes, without booting anything. */
class QemuGuestBuilderTest {
    /** Never read: nothing here boots. */
    private static final GuestImage IMAGE = new GuestImage(
            "test", "6.1.0-test", Path.of("/nonexistent/vmlinux"), Path.of("/nonexistent/base.cpio"), null);

    /**
     * Kernel arguments the builder sets itself are refused, naming what sets them: a caller's console= or panic=
     * silently overrode ours (the kernel takes the last), a modules= met the builder's, and init= was ignored (the
     * initramfs's /init runs the payload) while rdinit= replaced it. Words that only start like them are still the
     * caller's.
     */
    @Test
    void kernelArgsTheBuilderSetsItselfAreRefusedNamingWhatSetsThem() {
        String[][] refused = {
            {"console=ttyS1", "console=ttyS0"},
            {"console=hvc0", "console=ttyS0"},
            {"init=/bin/sh", "payload()"},
            {"rdinit=/bin/sh", "payload()"},
            {"modules=nvme", "modules()"},
            {"panic=0", "panic=-1"},
        };
        for (String[] r : refused) {
            QemuGuest.Builder b = QemuGuest.builder(IMAGE);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> b.kernelArgs(r[0]), r[0]);
            assertTrue(e.getMessage().contains(r[0]) && e.getMessage().contains(r[1]), e.getMessage());
        }
        // Words that only start like them are the caller's, after the builder's own.
        QemuGuest g = QemuGuest.builder(IMAGE)
                .modules("virtio_pci", "nvme")
                .kernelArgs("consoleblank=0", "initcall_debug", "jobs=4")
                .payload("true")
                .build();
        assertEquals(
                "console=ttyS0 panic=-1 quiet no_timer_check modules=virtio_pci,nvme consoleblank=0 initcall_debug"
                        + " jobs=4",
                g.kernelCommandLine());
    }

    /**
     * A migration destination runs under the accelerator its source ended up with: KVM, TCG, or TCG after the source
     * fell back from a KVM that failed early. It took this host's default instead, and never falls back itself (it
     * runs nothing before the migration), so a source that fell back to TCG met a KVM destination (-cpu host) and the
     * migration failed. {@code -incoming} through args() is refused: it would skip this.
     */
    @Test
    void aMigrationDestinationRunsUnderItsSourcesAccelerator() {
        Accelerator.KvmStatus usable = new Accelerator.KvmStatus(true, "test: KVM usable", "");
        Accelerator.Decision kvm = Accelerator.decide(Accelerator.Mode.AUTO, usable);
        Accelerator.Decision fellBack = kvm.fallBack("test: no init line under KVM");
        Accelerator.Decision tcg = Accelerator.decide(Accelerator.Mode.TCG, usable);
        for (Accelerator.Decision source : List.of(kvm, fellBack, tcg)) {
            QemuGuest dst = QemuGuest.builder(IMAGE)
                    .incoming("unix:/run/test/mig.sock", source)
                    .payload("true")
                    .build();
            assertEquals(source, dst.accelerator(), source.describe());
            List<String> cmd = dst.command(dst.accelerator(), Path.of("/run/test/initrd"), Path.of("/run/test/log"));
            List<String> accel = source.qemuArgs();
            assertEquals(accel, cmd.subList(1, 1 + accel.size()), String.join(" ", cmd));
            assertEquals(List.of("-incoming", "unix:/run/test/mig.sock"), cmd.subList(cmd.size() - 2, cmd.size()));
        }
        QemuGuest.Builder raw = QemuGuest.builder(IMAGE)
                .args("-incoming", "unix:/run/test/mig.sock")
                .payload("true");
        IllegalStateException e = assertThrows(IllegalStateException.class, raw::build);
        assertTrue(e.getMessage().contains("incoming(uri, source)"), e.getMessage());
    }
}
