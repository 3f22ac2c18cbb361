// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.regex.Pattern;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Boots the real guest image under QEMU. A boot takes ~3 s under TCG on this kind of machine (fio layer +0.7 s). */
@Tag("guest")
class QemuGuestTest {

    /** A boot took 3-4 s idle and up to 15 s with the 2-core machine's load average at 10; ~4x that. */
    static final Duration TIMEOUT = Duration.ofSeconds(60);

    static GuestImage image;

    @TempDir
    Path dir;

    @BeforeAll
    static void buildImage() {
        image = GuestImage.ensure();
    }

    @Test
    void bootsRunsThePayloadAndReportsItsExitStatus() {
        GuestResult r = QemuGuest.builder(image)
                .workDir(dir)
                .name("smoke")
                .kernelArgs("greeting=hello-from-cmdline")
                .file("/root/data.txt", "file-content\n".getBytes(StandardCharsets.UTF_8), 0644)
                .file("/opt/tool.sh", "echo tool-ran\n".getBytes(StandardCharsets.UTF_8), 0755)
                .payload("""
                        echo greeting=$greeting
                        echo data=$(cat /root/data.txt)
                        echo tool=$(/opt/tool.sh)
                        echo kernel=$(uname -r)
                        echo pid1=$(cat /proc/1/comm)
                        exit 7
                        """)
                .build()
                .run(TIMEOUT);
        assertEquals(7, r.exitCode(), r.consoleTail(30));
        assertEquals(1, r.boots());
        assertEquals("hello-from-cmdline", r.field("greeting"));
        assertEquals("file-content", r.field("data"));
        assertEquals("tool-ran", r.field("tool"));
        assertEquals(image.kernelRelease(), r.field("kernel"));
        assertEquals("init", r.field("pid1"));
    }

    @Test
    void fioLayerAndExtraModules() {
        GuestResult r = QemuGuest.builder(image)
                .workDir(dir)
                .name("fio-layer")
                .fio()
                .modules("virtio_pci", "nvme", "vfio_pci")
                .payload("""
                        echo fio=$(fio --version)
                        echo nvme=$(test -d /sys/module/nvme && echo loaded)
                        echo vfio_pci=$(test -d /sys/module/vfio_pci && echo loaded)
                        """)
                .build()
                .run(TIMEOUT);
        assertEquals(0, r.exitCode(), r.consoleTail(30));
        assertTrue(r.field("fio").startsWith("fio-3."), r.output());
        assertEquals("loaded", r.field("nvme"));
        assertEquals("loaded", r.field("vfio_pci"));
    }

    @Test
    void aModuleMissingFromTheImageFailsTheRunBeforeThePayload() {
        GuestResult r = QemuGuest.builder(image)
                .workDir(dir)
                .name("bad-module")
                .modules("no_such_module")
                .payload("echo ran=yes")
                .build()
                .run(TIMEOUT);
        assertEquals(125, r.exitCode());
        assertTrue(r.console().contains("module no_such_module is not in the image"), r.consoleTail(20));
        assertFalse(r.console().contains("ran=yes"));
    }

    @Test
    void aGuestThatOverrunsItsTimeoutIsKilled() {
        QemuGuest guest = QemuGuest.builder(image)
                .workDir(dir)
                .name("sleeper")
                .payload("echo sleeping; sleep 600")
                .build();
        long pid;
        try (RunningGuest running = guest.start(TIMEOUT.multipliedBy(2))) {
            pid = running.pid();
            running.awaitConsole(Pattern.compile("sleeping"), TIMEOUT);
            GuestException e = assertThrows(GuestException.class, () -> running.awaitExit(Duration.ofMillis(500)));
            assertTrue(
                    e.getMessage().contains("did not finish") && e.getMessage().contains("sleeping"), e.getMessage());
            assertFalse(running.isAlive());
        }
        assertTrue(ProcessHandle.of(pid).map(h -> !h.isAlive()).orElse(true), "QEMU " + pid + " survived");
    }
}
