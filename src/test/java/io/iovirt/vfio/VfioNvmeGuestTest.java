// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.bench.StrictJson;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The VFIO framework and the Java NVMe driver on a real (emulated) device behind a real (emulated) IOMMU: QEMU 7.2
 * with VT-d and an NVMe controller, Linux 6.1 in the guest, and this build of iovirt running inside that guest.
 *
 * <p>One guest boot runs the whole story, because every JVM start in a TCG guest costs seconds: the controller is
 * bound to vfio-pci; {@code vfio info} reports it; {@code identify} returns QEMU's serial; data the host put on the
 * disk is read by the Java driver; data the Java driver writes is read back by the Java driver (over a different
 * interrupt mode), then by the kernel's nvme driver after rebinding, and found in the host's image file; a SIGTERM
 * in the middle of a benchmark releases the device; and a command pointing at an unmapped IOVA is stopped by the
 * IOMMU (DMAR fault in the guest's kernel log) without touching memory outside the mappings.
 */
/*
 * QEMU's SIGSEGV in this test (issue 8: QEMU 7.2 TCG on an Intel host with a PVM /dev/kvm, during the bench + SIGTERM
 * step): not reproduced on this project's AMD EPYC machine in 4 runs under multi-threaded TCG (-smp 2) and 1 with
 * IOVIRT_TCG_THREAD=single (-accel tcg,thread=single, the workaround to try if it recurs under MTTCG). The driver's
 * shutdown now quiesces before it disables the controller (see NvmeController.close() and the assertion on the
 * terminating line below), and a QEMU that dies from a signal puts gdb's backtrace of its core into the failure
 * message (io.iovirt.vm.CoreDump), so the next crash names QEMU's function in the CI log.
 */
@Tag("guest")
class VfioNvmeGuestTest {
    /** One run took 3.8 minutes with the 2-core machine's load average at 7-13 (JVM starts dominate); ~3x that. */
    static final Duration TIMEOUT = Duration.ofMinutes(12);
    static final String SERIAL = "iovirt-vfio-7";
    static final long DISK = 64L << 20;
    static final long LBA_HOST = 4096;     // pre-filled by the host, read by the Java driver
    static final long LBA_JAVA = 10240;    // written by the Java driver
    /** 32 blocks of 512 bytes (QEMU's default LBA format): four pages, so PRP1 and a PRP list of three entries. */
    static final int BYTES = 16384;

    static GuestImage image;

    @TempDir
    Path dir;

    @BeforeAll
    static void buildImage() {
        image = GuestImage.ensure();
    }

    @Test
    void javaDriverOwnsTheControllerBehindTheIommu() throws Exception {
        Path disk = dir.resolve("nvme.raw");
        byte[] hostData = VfioGuest.pattern(1, BYTES);
        byte[] javaData = VfioGuest.pattern(2, BYTES);
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(DISK);
            f.seek(LBA_HOST * 512);
            f.write(hostData);
        }

        GuestResult r = VfioGuest.builder(image, dir, "vfio-nvme", disk, SERIAL)
                .file("/root/pattern.bin", javaData, 0644)
                .payload(VfioGuest.preamble() + """
                        cp /root/pattern.bin /host/tmp/pattern.bin
                        step() { name=$1; shift; echo "=== $name"; "$@" >/root/$name.out 2>&1; rc=$?; cat /root/$name.out; echo "${name}_rc=$rc"; }
                        echo initial_driver=$(basename "$(readlink $D/driver)")
                        bind vfio-pci || exit 93
                        echo group=$(basename "$(readlink $D/iommu_group)")
                        step info iovirt vfio info $BDF
                        step identify iovirt vfio nvme $BDF identify --irq poll
                        step infojson iovirt vfio info $BDF --json
                        step identifyjson iovirt vfio nvme $BDF identify --json --irq poll
                        step readhost iovirt vfio nvme $BDF read --lba %1$d --count 32 --out /tmp/host.bin --irq msix --json
                        echo readhost_sha=$(sha256sum /host/tmp/host.bin | cut -d' ' -f1)
                        step readinline iovirt vfio nvme $BDF read --lba %1$d --count 2 --irq poll --json
                        step write iovirt vfio nvme $BDF write --lba %2$d --in /tmp/pattern.bin --irq msix --json
                        step readback iovirt vfio nvme $BDF read --lba %2$d --count 32 --out /tmp/back.bin --irq intx
                        echo readback_sha=$(sha256sum /host/tmp/back.bin | cut -d' ' -f1)

                        # SIGTERM while the driver is busy: the shutdown hook releases everything
                        sh /root/iovirt vfio nvme $BDF bench --qd 4 --seconds 600 --irq poll >/root/bench.out 2>&1 &
                        pid=$!
                        for i in $(seq 3000); do grep -q "^bench:" /root/bench.out && break; sleep 0.1; done
                        sleep 1
                        kill -TERM $pid; wait $pid; echo sigterm_rc=$?
                        echo "=== bench"; cat /root/bench.out

                        # without CAP_IPC_LOCK, pinning DMA memory is charged to RLIMIT_MEMLOCK: 64 KiB is too little
                        step memlock sh -c 'ulimit -l 64; IOVIRT_PREFIX="/usr/bin/setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock" sh /root/iovirt vfio nvme $0 identify' $BDF
                        step iommu iovirt vfio nvme $BDF iommu-check
                        step iommujson iovirt vfio nvme $BDF iommu-check --json
                        echo "=== dmesg"; dmesg | grep -i dmar

                        bind nvme || exit 94
                        for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
                        echo kernel_serial=$(cat /sys/class/nvme/nvme0/serial)
                        echo kernel_sha=$(dd if=/dev/nvme0n1 bs=512 skip=%2$d count=32 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                        """.formatted(LBA_HOST, LBA_JAVA))
                .build().run(TIMEOUT);

        String out = r.output();
        System.out.println(out); // kept in the surefire report: what iovirt printed inside the guest
        assertEquals(0, r.exitCode(), out);
        assertEquals("nvme", r.field("initial_driver"), out);

        // vfio info: the group is viable, BAR0 is mappable, the IRQ indexes are there
        assertEquals("0", r.field("info_rc"), out);
        String info = section(out, "info");
        assertTrue(info.contains("group:       " + r.field("group") + ", viable; members: " + VfioGuest.BDF + " (vfio-pci)"), info);
        assertTrue(info.matches("(?s).*\\n  0 +BAR0 +16K +0x0 +rw mmap.*"), info);
        assertTrue(info.matches("(?s).*\\n  7 +config +4K .*"), info);
        assertTrue(info.matches("(?s).*\\n  2 +MSI-X +\\d+ +eventfd noresize.*"), info);
        assertTrue(info.matches("(?s).*\\n  0 +INTx +1 +eventfd maskable automasked.*"), info);
        assertTrue(info.contains("Type1v2"), info);

        // identify: the serial QEMU was given, the disk's size
        assertEquals("0", r.field("identify_rc"), out);
        String id = section(out, "identify");
        assertTrue(id.contains("serial:      " + SERIAL + "\n"), id);
        assertTrue(id.contains("model:       QEMU NVMe Ctrl"), id);
        assertTrue(id.contains("namespace:   1: " + DISK / 512 + " blocks of 512 bytes"), id);

        // the same through --json (docs/cli.md's schemas), parsed by an independent strict parser
        assertEquals("0", r.field("infojson_rc"), out);
        Map<?, ?> infoJson = (Map<?, ?>) StrictJson.parse(section(out, "infojson"));
        assertEquals(VfioGuest.BDF, infoJson.get("device"));
        assertEquals("vfio-pci", infoJson.get("driver"));
        Map<?, ?> groupJson = (Map<?, ?>) infoJson.get("group");
        assertEquals(Long.parseLong(r.field("group")), groupJson.get("id"));
        assertEquals(true, groupJson.get("viable"));
        assertEquals("Type1v2", ((Map<?, ?>) infoJson.get("iommu")).get("type"));
        Map<?, ?> bar0 = (Map<?, ?>) ((List<?>) infoJson.get("regions")).getFirst();
        assertEquals(List.of("BAR0", 16384L, true, true, true), List.of(bar0.get("name"), bar0.get("size"),
                bar0.get("readable"), bar0.get("writable"), bar0.get("mmap")), bar0.toString());
        assertTrue(((List<?>) infoJson.get("irqs")).stream().map(Map.class::cast)
                .anyMatch(q -> q.get("type").equals("MSI-X") && (Long) q.get("count") > 0), infoJson.toString());
        assertEquals("0", r.field("identifyjson_rc"), out);
        Map<?, ?> idJson = (Map<?, ?>) StrictJson.parse(section(out, "identifyjson"));
        assertEquals(SERIAL, idJson.get("serial"));
        assertEquals("poll", idJson.get("irq_mode"));
        assertEquals(DISK / 512, ((Map<?, ?>) idJson.get("namespace")).get("blocks"));
        Map<?, ?> readJson = (Map<?, ?>) StrictJson.parse(section(out, "readhost"));
        assertEquals(List.of(LBA_HOST, 32L, 512L, "/tmp/host.bin", sha256(hostData)), List.of(readJson.get("lba"),
                readJson.get("blocks"), readJson.get("block_size"), readJson.get("out"), readJson.get("sha256")));
        assertEquals("0", r.field("readinline_rc"), out);
        Map<?, ?> inline = (Map<?, ?>) StrictJson.parse(section(out, "readinline"));
        assertArrayEquals(java.util.Arrays.copyOf(hostData, 1024),
                java.util.Base64.getDecoder().decode((String) inline.get("data_base64")));
        Map<?, ?> writeJson = (Map<?, ?>) StrictJson.parse(section(out, "write"));
        assertEquals(List.of(LBA_JAVA, 32L, sha256(javaData), true), List.of(writeJson.get("lba"),
                writeJson.get("blocks"), writeJson.get("sha256"), writeJson.get("flushed")));

        // reads through MSI-X and INTx, writes through MSI-X; the kernel and the host see the Java driver's data
        assertEquals("0", r.field("readhost_rc"), out);
        assertEquals(sha256(hostData), r.field("readhost_sha"), "the Java driver read what the host wrote");
        assertEquals("0", r.field("write_rc"), out);
        assertEquals("0", r.field("readback_rc"), out);
        assertEquals(sha256(javaData), r.field("readback_sha"), "the Java driver read back what it wrote");
        assertEquals(SERIAL, r.field("kernel_serial"));
        assertEquals(sha256(javaData), r.field("kernel_sha"), "the kernel's nvme driver reads the Java driver's data");
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "r")) {
            byte[] onDisk = new byte[BYTES];
            f.seek(LBA_JAVA * 512);
            f.readFully(onDisk);
            assertArrayEquals(javaData, onDisk, "the host image holds the Java driver's data");
        }

        // SIGTERM: the JVM exits through the shutdown hook, and the next user gets the device
        assertEquals("143", r.field("sigterm_rc"), out);
        String bench = section(out, "bench");
        assertTrue(bench.startsWith("bench: " + VfioGuest.BDF + ", namespace 1 (64M), randread 4k qd 4"), bench);
        assertTrue(bench.contains("iovirt: terminating: NVMe controller " + VfioGuest.BDF + " shut down"), bench);
        // the shutdown order: the reads in flight complete before CC.SHN / CC.EN=0, then BAR, DMA, group, container
        assertTrue(bench.matches("(?s).*shut down \\((\\d+ I/O commands in flight completed first|no I/O in flight)\\); "
                + "device, DMA mappings, group and container released.*"), bench);

        // a mapping beyond the locked-memory limit fails with the limit and the remedy named
        assertEquals("1", r.field("memlock_rc"), out);
        String memlock = section(out, "memlock");
        assertTrue(memlock.startsWith("iovirt vfio nvme identify: VFIO_IOMMU_MAP_DMA of "), memlock);
        assertTrue(memlock.contains("ENOMEM") && memlock.contains("RLIMIT_MEMLOCK, now 64 KiB (soft)")
                && memlock.contains("ulimit -l"), memlock);

        // the IOMMU: the PRP list fetch fails, memory outside the mappings is unchanged, the kernel logs the fault
        assertEquals("0", r.field("iommu_rc"), out);
        String iommu = section(out, "iommu");
        Matcher m = Pattern.compile("unmapped IOVA: +0x([0-9a-f]+)").matcher(iommu);
        assertTrue(m.find(), iommu);
        String iova = m.group(1);
        assertTrue(iommu.contains("read, PRP list there:      Data Transfer Error"), iommu);
        assertTrue(iommu.contains("canary outside mappings:   unchanged"), iommu);
        assertTrue(iommu.contains("sentinel in the arena:     unchanged"), iommu);
        assertEquals("0", r.field("iommujson_rc"), out);
        Map<?, ?> iommuJson = (Map<?, ?>) StrictJson.parse(section(out, "iommujson"));
        assertEquals(true, iommuJson.get("confined"), iommuJson.toString());
        assertEquals(false, ((Map<?, ?>) iommuJson.get("prp_list_status")).get("success"), iommuJson.toString());
        assertEquals(List.of(true, true, true), List.of(iommuJson.get("canary_intact"),
                iommuJson.get("sentinel_intact"), iommuJson.get("controller_healthy")), iommuJson.toString());
        // Both probes fault (a DMA write, then a DMA read at that IOVA), but QEMU's VT-d does not record a fault while
        // an earlier one is still pending ("compression of faults"), so the guest may log only the first.
        String dmesg = section(out, "dmesg");
        assertTrue(dmesg.matches("(?s).*DMAR: \\[DMA (Write|Read) NO_PASID\\] Request device \\[01:00\\.0\\] fault addr 0x"
                + iova + " .*"), dmesg);
        assertTrue(!bench.contains("iovirt vfio nvme bench:"), "no error reported for a signalled exit: " + bench);
    }

    /** The lines after "=== name" up to the next "=== " or "name_rc=". */
    static String section(String out, String name) {
        int from = out.indexOf("=== " + name + "\n");
        if (from < 0) {
            return "";
        }
        from += name.length() + 5;
        int to = out.length();
        for (String end : new String[]{"\n=== ", "\n" + name + "_rc="}) {
            int i = out.indexOf(end, from - 1);
            if (i >= 0) {
                to = Math.min(to, i + 1);
            }
        }
        return out.substring(from, to);
    }

    static String sha256(byte[] data) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }
}
