// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.vm.Accelerator;
import io.iovirt.vm.demo.DiskDemo;
import io.iovirt.vm.demo.NetDemo;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code iovirt demo}: boots a guest and compares the I/O techniques on one workload. */
@Command(
        name = "demo",
        footerHeading = "%nExamples:%n",
        footer = {"  iovirt demo", "  iovirt demo --only disk --seconds 10 --json"},
        mixinStandardHelpOptions = true,
        description = {
            "Compare a disk and a NIC QEMU emulates with the ones iovirt serves, in a real guest.",
            "Boots a guest (Debian kernel + busybox, built and cached on first use) under QEMU and runs the same"
                    + " fio workload on a disk QEMU emulates (AHCI, full virtualization) and on a virtio-blk disk"
                    + " iovirt serves over vhost-user (paravirtualization); prints throughput, latency and host CPU"
                    + " per I/O of each."
        })
final class DemoCommand implements Callable<Integer> {
    @picocli.CommandLine.Spec
    picocli.CommandLine.Model.CommandSpec spec;

    @Option(
            names = "--seconds",
            defaultValue = "5",
            paramLabel = "N",
            description = "Seconds per fio phase (default ${DEFAULT-VALUE}).")
    int seconds;

    @Option(names = "--json", description = "Print the results as JSON instead of a table.")
    boolean json;

    @Option(names = "--only", paramLabel = "PART", description = "Run only 'disk' or 'net'.")
    String only;

    @Option(
            names = "--keep",
            paramLabel = "DIR",
            description = "Keep images and logs in DIR instead of a temporary directory.")
    Path keep;

    @Option(
            names = "--accel",
            defaultValue = "auto",
            paramLabel = "auto|kvm|tcg",
            description = {
                "Accelerator (default ${DEFAULT-VALUE}): auto uses KVM only when it can run a stock guest"
                        + " (/dev/kvm opens, API 12, KVM_CREATE_VM works, CPU has vmx/svm) and falls back to TCG if a"
                        + " KVM guest fails early; kvm refuses to run on an unusable KVM; tcg always emulates."
            })
    String accel;

    private static void progress(String line) {
        System.err.println("demo: " + line);
    }

    @Override
    public Integer call() throws Exception {
        if (seconds < 1 || seconds > 600) {
            throw Contract.usage(spec, "--seconds must be between 1 and 600, got " + seconds);
        }
        if (only != null && !only.equals("disk") && !only.equals("net")) {
            throw Contract.usage(spec, "--only must be 'disk' or 'net', got '" + only + "'");
        }
        Accelerator.Mode mode;
        try {
            mode = Accelerator.Mode.parse(accel);
        } catch (IllegalArgumentException e) {
            throw new picocli.CommandLine.ParameterException(
                    new picocli.CommandLine(this), "--accel: " + e.getMessage());
        }
        Accelerator.Decision decision = Accelerator.forMode(mode);
        progress("accelerator " + decision.describe());
        Path dir = keep != null ? Files.createDirectories(keep) : Files.createTempDirectory("iovirt-demo");
        // Ctrl-C or SIGTERM: the directory (two 256 MiB images, the guest's files) is removed all the same.
        DemoCleanup cleanup = keep != null ? null : DemoCleanup.register(dir, Thread.currentThread());
        try {
            boolean disk = only == null || only.equals("disk");
            boolean net = only == null || only.equals("net");
            DiskDemo.Report disks = disk ? new DiskDemo(dir, seconds, DemoCommand::progress, decision).run() : null;
            List<NetDemo.Result> nics = net ? new NetDemo(dir, DemoCommand::progress, decision).run() : null;
            if (json) {
                System.out.println("{\"disk\":" + (disks == null ? "null" : DiskDemo.json(disks)) + ",\"net\":"
                        + (nics == null ? "null" : NetDemo.json(nics)) + "}");
            } else {
                if (disks != null) {
                    DiskDemo.print(disks, System.out);
                }
                if (nics != null) {
                    NetDemo.print(nics, System.out);
                }
            }
            return 0;
        } finally {
            if (cleanup != null) {
                cleanup.commandEnded();
            }
        }
    }
}
