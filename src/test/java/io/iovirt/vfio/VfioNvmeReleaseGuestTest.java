// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The host takes the controller back while the Java driver is busy with it: an unbind from vfio-pci makes the kernel
 * send VFIO's device request and wait until the device is closed. The driver hears it, shuts the controller down,
 * releases the device (and its group and container, so the kernel's nvme driver can take it) and fails its reads
 * with the reason; the unbind completes instead of waiting for the process to exit. QEMU's emulated NVMe behind VT-d,
 * Linux 6.1 in the guest.
 */
@Tag("guest")
class VfioNvmeReleaseGuestTest {
    static final String SERIAL = "iovirt-vfio-req";

    @TempDir
    Path dir;

    @Test
    void anUnbindWhileTheDriverHoldsTheControllerReleasesItAndFailsTheReads() throws Exception {
        Path disk = dir.resolve("nvme-req.raw");
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(64L << 20);
        }
        GuestResult r = VfioGuest.builder(GuestImage.ensure(), dir, "vfio-nvme-req", disk, SERIAL)
                .payload(VfioGuest.preamble() + """
                        bind vfio-pci || exit 93
                        sh /root/iovirt vfio nvme $BDF bench --qd 4 --seconds 600 --irq msix >/root/bench.out 2>&1 &
                        pid=$!
                        for i in $(seq 3000); do grep -q "^bench:" /root/bench.out && break; sleep 0.1; done
                        sleep 1
                        echo $BDF > /sys/bus/pci/drivers/vfio-pci/unbind &
                        upid=$!
                        # the kernel waits for the device's user; a driver that never lets go is ended after a minute
                        # (its shutdown hook releases the device), so that a hang fails the test instead of stalling it
                        for i in $(seq 600); do kill -0 $upid 2>/dev/null || break; sleep 0.1; done
                        if kill -0 $upid 2>/dev/null; then echo unbind_done=no; kill -TERM $pid; else echo unbind_done=yes; fi
                        wait $upid; echo unbind_rc=$?
                        wait $pid; echo bench_rc=$?
                        echo "=== bench"; cat /root/bench.out
                        echo "=== dmesg"; dmesg | grep "device request"
                        echo "=== end"
                        [ -e $D/driver ] && echo unbound_driver=$(basename "$(readlink $D/driver)") || echo unbound_driver=none
                        bind nvme || exit 94
                        for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
                        echo kernel_serial=$(cat /sys/class/nvme/nvme0/serial)
                        """)
                .build()
                .run(VfioNvmeGuestTest.TIMEOUT);
        String out = r.output();
        System.out.println(out); // kept in the surefire report
        assertEquals(0, r.exitCode(), out);
        assertEquals("yes", r.field("unbind_done"), "the unbind waited for the driver: " + out);
        assertEquals("0", r.field("unbind_rc"), out);

        // the benchmark failed with the reason, after two log lines (the request, then the release)
        assertEquals("1", r.field("bench_rc"), out);
        String bench = VfioNvmeGuestTest.section(out, "bench");
        assertTrue(bench.startsWith("bench: " + VfioGuest.BDF + ", namespace 1 (64M), randread 4k qd 4"), bench);
        assertTrue(
                bench.contains(" WARNING " + VfioGuest.BDF + ": the host asked for the device back (VFIO device "
                        + "request: an unbind from vfio-pci or a removal): shutting the NVMe controller down and "
                        + "releasing the device; its commands fail from now on\n"),
                bench);
        assertTrue(
                bench.matches("(?s).* WARNING " + VfioGuest.BDF.replace(".", "\\.") + ": released at the host's "
                        + "request \\((\\d+ I/O commands in flight completed first|no I/O in flight)\\); device, DMA "
                        + "mappings, group and container closed\n.*"),
                bench);
        assertTrue(
                bench.contains("iovirt vfio nvme bench: benchmark did not complete: the controller was closed and the "
                        + "device released at the host's request (VFIO device request: the device is being unbound "
                        + "from vfio-pci or removed); what was in flight may or may not have taken effect "),
                bench);
        // the kernel relayed its request instead of finding no listener ("No device request channel registered")
        String dmesg = VfioNvmeGuestTest.section(out, "dmesg");
        assertTrue(dmesg.contains("vfio-pci " + VfioGuest.BDF + ": Relaying device request to user (#0)"), dmesg);

        // the group and container went too: the kernel's driver takes the controller
        assertEquals("none", r.field("unbound_driver"), out);
        assertEquals(SERIAL, r.field("kernel_serial"), out);
    }
}
