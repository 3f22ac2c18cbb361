package io.iovirt.cli;

import io.iovirt.vm.demo.DiskDemo;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.concurrent.Callable;
import java.util.stream.Stream;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code iovirt demo}: boots a guest and compares the I/O techniques on one workload. */
@Command(name = "demo", mixinStandardHelpOptions = true,
        description = {"Boot a guest (Debian kernel + busybox, built and cached on first use) under QEMU and run the same",
                "fio workload on a disk QEMU emulates (AHCI, full virtualization) and on a virtio-blk disk iovirt serves",
                "over vhost-user (paravirtualization); print throughput, latency and host CPU per I/O of each."})
final class DemoCommand implements Callable<Integer> {
    @Option(names = "--seconds", defaultValue = "5", paramLabel = "N", description = "Seconds per fio phase (default ${DEFAULT-VALUE}).")
    int seconds;

    @Option(names = "--json", description = "Print the results as JSON instead of a table.")
    boolean json;

    @Option(names = "--keep", paramLabel = "DIR", description = "Keep images and logs in DIR instead of a temporary directory.")
    Path keep;

    @Option(names = "--verbose", description = "Print stack traces on errors.")
    boolean verbose;

    @Override
    public Integer call() throws Exception {
        if (seconds < 1 || seconds > 600) {
            throw new IllegalArgumentException("--seconds must be between 1 and 600, got " + seconds);
        }
        Path dir = keep != null ? Files.createDirectories(keep) : Files.createTempDirectory("iovirt-demo");
        try {
            DiskDemo.Report report = new DiskDemo(dir, seconds, line -> System.err.println("demo: " + line)).run();
            if (json) {
                System.out.println(DiskDemo.json(report));
            } else {
                DiskDemo.print(report, System.out);
            }
            return 0;
        } finally {
            if (keep == null) {
                try (Stream<Path> all = Files.walk(dir)) {
                    all.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
                }
            }
        }
    }
}
