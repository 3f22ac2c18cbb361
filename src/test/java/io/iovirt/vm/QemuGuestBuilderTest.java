// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
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
}
