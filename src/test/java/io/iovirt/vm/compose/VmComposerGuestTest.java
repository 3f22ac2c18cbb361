// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.compose;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.HostPaths;
import io.iovirt.net.PortStats;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.QemuGuest;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** One real guest with a PV and an FV disk and a PV and an FV NIC, all wired by the composer. */
@Tag("guest")
class VmComposerGuestTest {
    @TempDir
    Path dir;

    @Test
    void everyDeviceShowsUpInTheGuestAndWorks() throws Exception {
        Path pv = dir.resolve("pv.raw");
        Path fv = dir.resolve("fv.raw");
        for (Path p : List.of(pv, fv)) {
            try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
                f.setLength(16 << 20);
            }
        }
        VmSpec spec = new VmSpec(
                "vm-compose-test",
                VmSpec.Profile.PVHVM,
                384,
                1,
                List.of(new VmSpec.Disk(VmSpec.Kind.PV, pv, false), new VmSpec.Disk(VmSpec.Kind.FV, fv, false)),
                List.of(new VmSpec.Nic(VmSpec.Kind.PV, -1), new VmSpec.Nic(VmSpec.Kind.FV, -1)),
                List.of(),
                List.of());
        try (VmComposer c = VmComposer.compose(spec, dir, HostPaths.system().withStateDir(dir.resolve("state")))) {
            assertEquals(4, c.devices().size());
            String script = """
                    echo "blocks=$(ls /sys/block | tr '\\n' ,)"
                    echo composed-pv | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null
                    echo composed-fv | dd of=/dev/sda bs=512 conv=sync,fsync 2>/dev/null
                    drivers=""
                    for i in /sys/class/net/*; do
                      [ -e $i/device/driver ] || continue
                      drivers="$drivers$(basename $(readlink $i/device/driver)),"
                      n=$(basename $i)
                      ip link set $n up
                      for t in $(seq 100); do [ "$(cat $i/operstate)" = up ] && break; sleep 0.1; done
                      sleep 0.5
                      arping -U -c 3 -I $n 10.99.0.$((${#drivers} % 200 + 1)) >/dev/null 2>&1
                    done
                    echo "nics=$drivers"
                    """;
            GuestResult r = QemuGuest.builder(GuestImage.ensure())
                    .name("composed")
                    .workDir(dir)
                    .memoryMiB(384)
                    .modules(c.modules().toArray(String[]::new))
                    .args(c.qemuArgs())
                    .payload(script)
                    .build()
                    .run(Duration.ofSeconds(120));
            assertEquals(0, r.exitCode(), r.consoleTail(30));
            assertTrue(r.field("blocks").contains("vda") && r.field("blocks").contains("sda"), r.field("blocks"));
            assertTrue(r.field("nics").contains("virtio_net") && r.field("nics").contains("e1000"), r.field("nics"));
            assertEquals("composed-pv", new String(java.nio.file.Files.readAllBytes(pv), 0, 11));
            assertEquals("composed-fv", new String(java.nio.file.Files.readAllBytes(fv), 0, 11));
            // the FV disk's blocks went through iovirt's NBD export, not QEMU's file driver
            assertTrue(
                    c.nbdServer().exports().iterator().next().stats().writes.sum() >= 1,
                    c.nbdServer().exports().iterator().next().stats().toString());
            // each NIC's gratuitous ARP entered the switch and was flooded to the other NIC
            for (PortStats s : c.netSwitch().stats()) {
                assertTrue(s.rxPackets() >= 1 && s.txPackets() >= 1, s.toString());
            }
        }
    }
}
