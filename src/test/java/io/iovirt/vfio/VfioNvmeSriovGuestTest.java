// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.QemuGuest;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Java NVMe driver on an SR-IOV virtual function: QEMU 7.2's NVMe PF with two VFs in a subsystem, VT-d in front.
 * {@code iovirt host vfs} creates a VF and gives it queue and interrupt resources (NVMe Virtualization Management
 * through the PF), {@code iovirt host bind} hands it to vfio-pci, and the Java driver identifies the secondary
 * controller and writes through it; the PF, still driven by the kernel's nvme driver, reads the same namespace and
 * sees the data.
 */
@Tag("guest")
class VfioNvmeSriovGuestTest {
    static final Duration TIMEOUT = Duration.ofMinutes(12);
    static final String PF = "0000:01:00.0";
    static final String VF = "0000:01:00.1";
    static final String SERIAL = "iovirt-sriov-pf";
    static final long LBA = 6144;
    static final int BYTES = 4096;

    @TempDir
    Path dir;

    @Test
    void javaDriverWritesThroughAVirtualFunctionAndThePfReadsIt() throws Exception {
        Path disk = dir.resolve("ns.raw");
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(64L << 20);
        }
        byte[] data = VfioGuest.pattern(7, BYTES);
        String state = "--state-dir /tmp/iovirt";
        GuestResult r = QemuGuest.builder(GuestImage.ensure())
                .name("vfio-sriov")
                .workDir(dir)
                .memoryMiB(1536)
                .cpus(2)
                .machineOptions("kernel-irqchip=split")
                .kernelArgs("intel_iommu=on")
                .modules("virtio_pci", "9pnet_virtio", "9p", "nvme", "vfio_pci", "vfio_iommu_type1")
                .args(
                        "-cpu",
                        "max",
                        "-device",
                        "intel-iommu,intremap=on,caching-mode=on",
                        "-device",
                        "pcie-root-port,id=rp1,chassis=1,slot=1",
                        "-device",
                        "nvme-subsys,id=subsys0,nqn=subsys0",
                        "-device",
                        "nvme,id=nvme0,serial=" + SERIAL + ",bus=rp1,subsys=subsys0,sriov_max_vfs=2,"
                                + "sriov_vq_flexible=4,sriov_vi_flexible=2,max_ioqpairs=6,msix_qsize=4",
                        "-drive",
                        "file=" + QemuGuest.escape(disk.toString()) + ",if=none,id=nvm0,format=raw,cache=none",
                        "-device",
                        "nvme-ns,drive=nvm0,bus=nvme0,nsid=1",
                        "-virtfs",
                        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
                .file("/root/pattern.bin", data, 0644)
                .payload(VfioGuest.preamble() + """
                        cp /root/pattern.bin /host/tmp/pattern.bin
                        step() { name=$1; shift; echo "=== $name"; "$@" >/root/$name.out 2>&1; rc=$?; cat /root/$name.out; echo "${name}_rc=$rc"; }
                        step vfs iovirt host vfs %1$s --count 1 --no-autoprobe %3$s
                        step bind iovirt host bind %2$s %3$s
                        step identify iovirt vfio nvme %2$s identify
                        step write iovirt vfio nvme %2$s write --lba %4$d --in /tmp/pattern.bin --irq msix
                        step read iovirt vfio nvme %2$s read --lba %4$d --count 8 --out /tmp/back.bin --irq poll
                        echo vf_sha=$(sha256sum /host/tmp/back.bin | cut -d' ' -f1)
                        for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
                        echo pf_driver=$(basename "$(readlink /sys/bus/pci/devices/%1$s/driver)")
                        echo pf_sha=$(dd if=/dev/nvme0n1 bs=512 skip=%4$d count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                        step unbind iovirt host unbind %2$s %3$s
                        """.formatted(PF, VF, state, LBA))
                .build()
                .run(TIMEOUT);
        String out = r.output();
        System.out.println(out); // kept in the surefire report
        assertEquals(0, r.exitCode(), out);
        assertEquals("0", r.field("vfs_rc"), out);
        assertTrue(VfioNvmeGuestTest.section(out, "vfs").contains(VF + "  driver: none"), out);
        assertTrue(VfioNvmeGuestTest.section(out, "vfs").contains("state=online"), out);
        assertEquals("0", r.field("bind_rc"), out);

        assertEquals("0", r.field("identify_rc"), out);
        String id = VfioNvmeGuestTest.section(out, "identify");
        assertTrue(id.contains("device:      " + VF + "\n"), id);
        assertTrue(id.contains("serial:      " + SERIAL + "\n"), id);
        assertTrue(id.matches("(?s).*controller id [1-9].*"), "a secondary controller: " + id);
        assertTrue(id.contains("completions by MSIX"), id);

        assertEquals("0", r.field("write_rc"), out);
        assertEquals("0", r.field("read_rc"), out);
        String sha = VfioNvmeGuestTest.sha256(data);
        assertEquals(sha, r.field("vf_sha"), "the VF read back what it wrote");
        assertEquals("nvme", r.field("pf_driver"));
        assertEquals(sha, r.field("pf_sha"), "the PF, under the kernel's driver, reads what the VF wrote");
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "r")) {
            byte[] onDisk = new byte[BYTES];
            f.seek(LBA * 512);
            f.readFully(onDisk);
            assertArrayEquals(data, onDisk, "the namespace's image holds the data");
        }
        assertEquals("0", r.field("unbind_rc"), out);
    }
}
