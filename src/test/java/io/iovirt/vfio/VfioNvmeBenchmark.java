// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIfSystemProperty;
import org.junit.jupiter.api.io.TempDir;

/**
 * 4 KiB random reads, queue depth 1 and 32, on one emulated NVMe controller in one guest: first through iovirt's
 * Java driver over VFIO (polling, then MSI-X), then — after rebinding the controller — through the kernel's nvme
 * driver with fio (libaio, O_DIRECT). Not a test: it asserts only that every run produced numbers, and prints a
 * Markdown table (also written to target/benchmarks-vfio.md).
 *
 * <p>Run: {@code ./mvnw -B verify -DskipUTs -Dit.test=VfioNvmeBenchmark -Diovirt.bench=true [-Diovirt.bench.seconds=10]}
 */
@Tag("guest")
@EnabledIfSystemProperty(named = "iovirt.bench", matches = "true")
class VfioNvmeBenchmark {
    static final long DISK = 1L << 30;

    @TempDir
    Path dir;

    record Row(String path, String completion, int qd, double iops, double meanUs, double p50Us, double p99Us) {}

    @Test
    void javaDriverVersusKernelDriver() throws Exception {
        int seconds = Integer.getInteger("iovirt.bench.seconds", 10);
        Path disk = dir.resolve("nvme.raw");
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(DISK);
        }
        // Fill the image so reads return data rather than holes (QEMU reads holes without touching the disk cache).
        byte[] chunk = VfioGuest.pattern(3, 1 << 20);
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            for (long off = 0; off < DISK; off += chunk.length) {
                f.write(chunk);
            }
        }
        String fio = "chroot /host fio --name=k --filename=/dev/nvme0n1 --rw=randread --bs=4k --direct=1 "
                + "--ioengine=libaio --runtime=" + seconds + " --ramp_time=1 --time_based --lat_percentiles=1 "
                + "--randrepeat=0 --output-format=json --iodepth=";
        String payload = VfioGuest.preamble() + """
                bind vfio-pci || exit 93
                for mode in poll msix; do
                  for qd in 1 32; do
                    echo "java_${mode}_${qd}=$(iovirt vfio nvme $BDF bench --qd $qd --seconds %1$d --irq $mode --json)"
                  done
                done
                bind nvme || exit 94
                for i in $(seq 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
                echo none > /sys/block/nvme0n1/queue/scheduler 2>/dev/null
                for qd in 1 32; do
                  echo "=== fio $qd"
                  %2$s$qd | tr -d '\\n'
                  echo
                done
                """.formatted(seconds, fio);
        GuestResult r = VfioGuest.builder(GuestImage.ensure(), dir, "vfio-bench", disk, "iovirt-bench")
                .payload(payload)
                .build()
                .run(Duration.ofMinutes(20));
        assertEquals(0, r.exitCode(), r.output());

        List<Row> rows = new ArrayList<>();
        for (String mode : new String[] {"poll", "msix"}) {
            for (int qd : new int[] {1, 32}) {
                String j = r.field("java_" + mode + "_" + qd);
                rows.add(new Row(
                        "iovirt Java driver (VFIO)",
                        mode.equals("poll") ? "polling" : "MSI-X",
                        qd,
                        num(j, "iops"),
                        num(j, "lat_mean_us"),
                        num(j, "lat_p50_us"),
                        num(j, "lat_p99_us")));
            }
        }
        for (int qd : new int[] {1, 32}) {
            String j = fioJson(r.output(), qd);
            String read = j.substring(j.indexOf("\"read\""));
            String lat = read.substring(read.indexOf("\"lat_ns\""));
            rows.add(new Row(
                    "Linux nvme driver, fio libaio",
                    "interrupt",
                    qd,
                    num(read, "iops"),
                    num(lat, "mean") / 1e3,
                    num(lat, "50.000000") / 1e3,
                    num(lat, "99.000000") / 1e3));
        }
        String table = table(rows, seconds);
        System.out.println(table);
        Files.writeString(Path.of("target", "benchmarks-vfio.md"), table);
    }

    private static String fioJson(String out, int qd) {
        int i = out.indexOf("=== fio " + qd + "\n");
        if (i < 0) {
            throw new AssertionError("no fio output for qd " + qd + ":\n" + out);
        }
        int start = out.indexOf('{', i);
        int end = out.indexOf('\n', start);
        return out.substring(start, end < 0 ? out.length() : end);
    }

    private static double num(String json, String key) {
        Matcher m = Pattern.compile("\"" + Pattern.quote(key) + "\"\\s*:\\s*(-?[0-9.eE+]+)")
                .matcher(json);
        if (!m.find()) {
            throw new AssertionError("no \"" + key + "\" in " + json);
        }
        return Double.parseDouble(m.group(1));
    }

    static String table(List<Row> rows, int seconds) {
        StringBuilder sb = new StringBuilder();
        sb.append(String.format(
                Locale.ROOT,
                "4 KiB random reads, %d s per run, %s, one guest (QEMU 7.2 TCG, -smp 2, "
                        + "intel-iommu, emulated NVMe on a raw file), Linux 6.1 in the guest.%n%n",
                seconds,
                LocalDate.now()));
        sb.append("| path | completion | QD | IOPS | mean µs | p50 µs | p99 µs |\n");
        sb.append("|---|---|---:|---:|---:|---:|---:|\n");
        for (Row x : rows) {
            sb.append(String.format(
                    Locale.ROOT,
                    "| %s | %s | %d | %.0f | %.1f | %.1f | %.1f |%n",
                    x.path(),
                    x.completion(),
                    x.qd(),
                    x.iops(),
                    x.meanUs(),
                    x.p50Us(),
                    x.p99Us()));
        }
        sb.append('\n');
        for (int qd : new int[] {1, 32}) {
            double kernel = rows.stream()
                    .filter(x -> x.qd() == qd && x.path().startsWith("Linux"))
                    .findFirst()
                    .orElseThrow()
                    .iops();
            for (Row x : rows) {
                if (x.qd() == qd && !x.path().startsWith("Linux")) {
                    sb.append(String.format(
                            Locale.ROOT, "QD%d %s / kernel: %.2fx IOPS%n", qd, x.completion(), x.iops() / kernel));
                }
            }
        }
        return sb.toString();
    }
}
