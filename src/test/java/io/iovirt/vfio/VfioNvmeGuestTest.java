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
    /** One run took 3.8 minutes at load 7-13; at load ~20 twelve minutes were not enough (JVM starts dominate). */
    static final Duration TIMEOUT = Duration.ofMinutes(25);

    static final String SERIAL = "iovirt-vfio-7";
    static final long DISK = 64L << 20;
    static final long LBA_HOST = 4096; // pre-filled by the host, read by the Java driver
    static final long LBA_JAVA = 10240; // written by the Java driver
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
                        # every JVM start costs minutes in a TCG guest on a loaded host: info, read, write and
                        # iommu-check run with --json only (the same data as their text), identify as text
                        step info iovirt vfio info $BDF --json
                        step identify iovirt vfio nvme $BDF identify --irq poll
                        step readhost iovirt vfio nvme $BDF read --lba %1$d --count 32 --out /tmp/host.bin --irq msix --json
                        echo readhost_sha=$(sha256sum /host/tmp/host.bin | cut -d' ' -f1)
                        step write iovirt vfio nvme $BDF write --lba %2$d --in /tmp/pattern.bin --irq msix --json
                        step readback iovirt vfio nvme $BDF read --lba %2$d --count 32 --irq intx --json

                        # SIGTERM while the driver is busy: the shutdown hook releases everything
                        sh /root/iovirt vfio nvme $BDF bench --qd 4 --seconds 600 --irq poll >/root/bench.out 2>&1 &
                        pid=$!
                        for i in $(seq 3000); do grep -q "^bench:" /root/bench.out && break; sleep 0.1; done
                        sleep 1
                        kill -TERM $pid; wait $pid; echo sigterm_rc=$?
                        echo "=== bench"; cat /root/bench.out

                        # without CAP_IPC_LOCK, pinning DMA memory is charged to RLIMIT_MEMLOCK: 64 KiB is too little
                        step memlock sh -c 'ulimit -l 64; IOVIRT_PREFIX="/usr/bin/setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock" sh /root/iovirt vfio nvme $0 identify' $BDF
                        step iommu iovirt vfio nvme $BDF iommu-check --json
                        echo "=== dmesg"; dmesg | grep -i dmar

                        bind nvme || exit 94
                        for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
                        echo kernel_serial=$(cat /sys/class/nvme/nvme0/serial)
                        echo kernel_sha=$(dd if=/dev/nvme0n1 bs=512 skip=%2$d count=32 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                        """.formatted(LBA_HOST, LBA_JAVA))
                .build()
                .run(TIMEOUT);

        String out = r.output();
        System.out.println(out); // kept in the surefire report: what iovirt printed inside the guest
        assertEquals(0, r.exitCode(), out);
        assertEquals("nvme", r.field("initial_driver"), out);

        // vfio info --json: the group is viable, BAR0 is mappable, the IRQ indexes are there (docs/cli.md's schema,
        // parsed by an independent strict parser)
        assertEquals("0", r.field("info_rc"), out);
        Map<?, ?> info = (Map<?, ?>) json(section(out, "info"));
        assertEquals(VfioGuest.BDF, info.get("device"));
        assertEquals("vfio-pci", info.get("driver"));
        Map<?, ?> group = (Map<?, ?>) info.get("group");
        assertEquals(Long.parseLong(r.field("group")), group.get("id"));
        assertEquals(true, group.get("viable"));
        assertEquals(List.of(Map.of("bdf", VfioGuest.BDF, "driver", "vfio-pci")), group.get("members"));
        assertEquals("Type1v2", ((Map<?, ?>) info.get("iommu")).get("type"));
        List<Map<?, ?>> regions = ((List<?>) info.get("regions"))
                .stream().<Map<?, ?>>map(x -> (Map<?, ?>) x).toList();
        assertEquals(
                List.of("BAR0", 16384L, 0L, true, true, true),
                List.of(
                        regions.get(0).get("name"),
                        regions.get(0).get("size"),
                        regions.get(0).get("offset"),
                        regions.get(0).get("readable"),
                        regions.get(0).get("writable"),
                        regions.get(0).get("mmap")),
                regions.get(0).toString());
        assertEquals(
                List.of("config", 4096L),
                List.of(regions.get(7).get("name"), regions.get(7).get("size")));
        List<Map<?, ?>> irqs = ((List<?>) info.get("irqs"))
                .stream().<Map<?, ?>>map(x -> (Map<?, ?>) x).toList();
        assertEquals(
                List.of("INTx", 1L, true, true, true),
                List.of(
                        irqs.get(0).get("type"),
                        irqs.get(0).get("count"),
                        irqs.get(0).get("eventfd"),
                        irqs.get(0).get("maskable"),
                        irqs.get(0).get("automasked")),
                irqs.toString());
        assertEquals("MSI-X", irqs.get(2).get("type"));
        assertTrue(
                (Long) irqs.get(2).get("count") > 0
                        && irqs.get(2).get("noresize").equals(true),
                irqs.toString());

        // identify: the serial QEMU was given, the disk's size
        assertEquals("0", r.field("identify_rc"), out);
        String id = section(out, "identify");
        assertTrue(id.contains("serial:      " + SERIAL + "\n"), id);
        assertTrue(id.contains("model:       QEMU NVMe Ctrl"), id);
        assertTrue(id.contains("namespace:   1: " + DISK / 512 + " blocks of 512 bytes"), id);

        // read and write --json: where, how much, the data's SHA-256 (and, without --out, the data itself)
        Map<?, ?> readJson = (Map<?, ?>) json(section(out, "readhost"));
        assertEquals(
                List.of(LBA_HOST, 32L, 512L, "/tmp/host.bin", sha256(hostData)),
                List.of(
                        readJson.get("lba"),
                        readJson.get("blocks"),
                        readJson.get("block_size"),
                        readJson.get("out"),
                        readJson.get("sha256")));
        Map<?, ?> writeJson = (Map<?, ?>) json(section(out, "write"));
        assertEquals(
                List.of(LBA_JAVA, 32L, sha256(javaData), true),
                List.of(
                        writeJson.get("lba"),
                        writeJson.get("blocks"),
                        writeJson.get("sha256"),
                        writeJson.get("flushed")));

        // reads through MSI-X and INTx, writes through MSI-X; the kernel and the host see the Java driver's data
        assertEquals("0", r.field("readhost_rc"), out);
        assertEquals(sha256(hostData), r.field("readhost_sha"), "the Java driver read what the host wrote");
        assertEquals("0", r.field("write_rc"), out);
        assertEquals("0", r.field("readback_rc"), out);
        Map<?, ?> back = (Map<?, ?>) json(section(out, "readback"));
        assertEquals(sha256(javaData), back.get("sha256"), "the Java driver read back what it wrote");
        assertArrayEquals(javaData, java.util.Base64.getDecoder().decode((String) back.get("data_base64")));
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
        assertTrue(
                bench.matches("(?s).*shut down \\((\\d+ I/O commands in flight completed first|no I/O in flight)\\); "
                        + "device, DMA mappings, group and container released.*"),
                bench);

        // a mapping beyond the locked-memory limit fails with the limit and the remedy named
        assertEquals("1", r.field("memlock_rc"), out);
        String memlock = section(out, "memlock");
        assertTrue(memlock.startsWith("iovirt vfio nvme identify: VFIO_IOMMU_MAP_DMA of "), memlock);
        assertTrue(
                memlock.contains("ENOMEM")
                        && memlock.contains("RLIMIT_MEMLOCK, now 64 KiB (soft)")
                        && memlock.contains("ulimit -l"),
                memlock);

        // the IOMMU (iommu-check --json): the PRP list fetch fails, memory outside the mappings is unchanged, the
        // kernel logs the fault
        assertEquals("0", r.field("iommu_rc"), out);
        Map<?, ?> iommu = (Map<?, ?>) json(section(out, "iommu"));
        String iova = Long.toHexString((Long) iommu.get("unmapped_iova"));
        assertEquals(true, iommu.get("confined"), iommu.toString());
        assertTrue(
                ((String) ((Map<?, ?>) iommu.get("prp_list_status")).get("text")).startsWith("Data Transfer Error"),
                iommu.toString());
        assertEquals(
                List.of(true, true, true),
                List.of(iommu.get("canary_intact"), iommu.get("sentinel_intact"), iommu.get("controller_healthy")),
                iommu.toString());
        // Both probes fault (a DMA write, then a DMA read at that IOVA), but QEMU's VT-d does not record a fault while
        // an earlier one is still pending ("compression of faults"), so the guest may log only the first.
        String dmesg = section(out, "dmesg");
        assertTrue(
                dmesg.matches("(?s).*DMAR: \\[DMA (Write|Read) NO_PASID\\] Request device \\[01:00\\.0\\] fault addr 0x"
                        + iova + " .*"),
                dmesg);
        assertTrue(!bench.contains("iovirt vfio nvme bench:"), "no error reported for a signalled exit: " + bench);
    }

    /**
     * A step's --json output parsed strictly, without the guest kernel's console lines ("[  877.57] DMAR: ...", the
     * IOMMU fault iommu-check provokes) that the serial console interleaves with it.
     */
    static Object json(String section) {
        return StrictJson.parse(section.lines()
                .filter(l -> !l.matches("\\[\\s*\\d+\\.\\d+\\] .*"))
                .collect(java.util.stream.Collectors.joining("\n")));
    }

    /** The lines after "=== name" up to the next "=== " or "name_rc=". */
    static String section(String out, String name) {
        int from = out.indexOf("=== " + name + "\n");
        if (from < 0) {
            return "";
        }
        from += name.length() + 5;
        int to = out.length();
        for (String end : new String[] {"\n=== ", "\n" + name + "_rc="}) {
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
