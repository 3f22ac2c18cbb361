// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciSysfs;
import io.iovirt.util.ActionableException;
import io.iovirt.util.ByteSizes;
import io.iovirt.util.Json;
import io.iovirt.vfio.DeviceInfo;
import io.iovirt.vfio.DmaBuffer;
import io.iovirt.vfio.IommuEnvironment;
import io.iovirt.vfio.IommuInfo;
import io.iovirt.vfio.IrqInfo;
import io.iovirt.vfio.RegionInfo;
import io.iovirt.vfio.VfioContainer;
import io.iovirt.vfio.VfioDevice;
import io.iovirt.vfio.VfioException;
import io.iovirt.vfio.VfioGroup;
import io.iovirt.vfio.VfioSession;
import io.iovirt.vfio.nvme.IommuCheck;
import io.iovirt.vfio.nvme.NvmeBench;
import io.iovirt.vfio.nvme.NvmeController;
import io.iovirt.vfio.nvme.NvmeController.IrqMode;
import java.io.PrintWriter;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.ParentCommand;

/** {@code iovirt vfio ...}: devices owned from user space through VFIO, and the Java NVMe driver on top. */
@Command(
        name = "vfio",
        mixinStandardHelpOptions = true,
        description = "Own a PCI device from user space through VFIO (the device must be bound to vfio-pci).",
        subcommands = {VfioCommand.Info.class, VfioCommand.Nvme.class})
public final class VfioCommand implements Runnable {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        throw Contract.subcommandRequired(spec);
    }

    // ---- vfio info ------------------------------------------------------------------------------------------------

    @Command(
            name = "info",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt vfio info 0000:01:00.0"},
            mixinStandardHelpOptions = true,
            description =
                    "Show a device's IOMMU group, the container's IOMMU, and the regions and interrupts VFIO reports.")
    static final class Info implements Callable<Integer> {
        @CommandLine.Spec
        CommandLine.Model.CommandSpec spec;

        @Parameters(
                index = "0",
                paramLabel = "BDF",
                description = "PCI address, e.g. 0000:01:00.0",
                converter = BdfConverter.class)
        Bdf address;

        @Option(names = "--json", description = "Print what VFIO reports as one JSON document (schema in docs/cli.md).")
        boolean json;

        @Override
        public Integer call() throws Exception {
            PrintWriter stdout = spec.commandLine().getOut();
            // The text is printed as it is learnt (a group that is not viable still shows its members); the JSON
            // document only when everything was read.
            PrintWriter out = json ? new PrintWriter(java.io.Writer.nullWriter()) : stdout;
            Map<String, Object> doc = new LinkedHashMap<>();
            PciSysfs sysfs = PciSysfs.SYSTEM;
            int group = sysfs.iommuGroup(address);
            String driver = sysfs.driver(address).orElse(null);
            doc.put("device", address.toString());
            doc.put("ids", sysfs.ids(address).toString());
            doc.put("driver", driver);
            out.printf(
                    "device:      %s [%s], driver %s%n", address, sysfs.ids(address), driver == null ? "none" : driver);
            List<String> members = new ArrayList<>();
            List<Map<String, Object>> memberDocs = new ArrayList<>();
            for (Bdf m : sysfs.groupMembers(group)) {
                String md = sysfs.driver(m).orElse(null);
                members.add(m + " (" + (md == null ? "no driver" : md) + ")");
                Map<String, Object> mdoc = new LinkedHashMap<>();
                mdoc.put("bdf", m.toString());
                mdoc.put("driver", md);
                memberDocs.add(mdoc);
            }
            IommuEnvironment env = IommuEnvironment.detect();
            Map<String, Object> envDoc = new LinkedHashMap<>();
            envDoc.put("vfio_container", env.vfioContainer());
            envDoc.put("iommufd", env.iommufd());
            envDoc.put("vfio_device_cdevs", env.vfioDeviceCdevs());
            envDoc.put("iommu_groups", env.iommuGroups());
            doc.put("interfaces", envDoc);
            out.printf("interfaces:  %s%n", env.summary());
            Optional<Path> cdev = IommuEnvironment.deviceCdev(sysfs, Path.of("/dev"), address);
            doc.put("device_cdev", cdev.map(Path::toString).orElse(null));
            cdev.ifPresent(c -> out.printf("device cdev: %s (for iommufd; iovirt uses the group interface)%n", c));
            try (VfioContainer container = VfioContainer.open()) {
                List<String> types = new ArrayList<>();
                for (VfioContainer.IommuType t : container.supportedIommuTypes()) {
                    types.add(t.label);
                }
                List<String> ext = new ArrayList<>();
                for (VfioContainer.Extension x : container.supportedExtensions()) {
                    ext.add(x.label);
                }
                Map<String, Object> cDoc = new LinkedHashMap<>();
                cDoc.put("api_version", container.apiVersion());
                cDoc.put("iommu_types", types);
                cDoc.put("extensions", ext);
                doc.put("container", cDoc);
                out.printf(
                        "container:   VFIO API %d; IOMMU types: %s; extensions: %s%n",
                        container.apiVersion(),
                        types.isEmpty() ? "none (load vfio_iommu_type1)" : String.join(", ", types),
                        ext.isEmpty() ? "none" : String.join(", ", ext));
                try (VfioGroup g = VfioGroup.open(group)) {
                    VfioGroup.Status st = g.status();
                    Map<String, Object> gDoc = new LinkedHashMap<>();
                    gDoc.put("id", group);
                    gDoc.put("viable", st.viable());
                    gDoc.put("members", memberDocs);
                    doc.put("group", gDoc);
                    out.printf(
                            "group:       %d, %s; members: %s%n",
                            group, st.viable() ? "viable" : "NOT viable", String.join(", ", members));
                    out.flush();
                    g.requireViable(sysfs);
                }
            }
            try (VfioSession s = VfioSession.open(address)) {
                IommuInfo iommu = s.iommu().info();
                Map<String, Object> iDoc = new LinkedHashMap<>();
                iDoc.put("type", s.container().iommuType().label);
                List<Long> pageSizes = new ArrayList<>();
                for (int bit = 0; bit < 64; bit++) {
                    if ((iommu.pageSizes() & (1L << bit)) != 0) {
                        pageSizes.add(1L << bit);
                    }
                }
                iDoc.put("page_sizes", pageSizes);
                List<Map<String, Object>> ranges = new ArrayList<>();
                for (IommuInfo.IovaRange r : iommu.iovaRanges()) {
                    Map<String, Object> rDoc = new LinkedHashMap<>();
                    rDoc.put("start", r.start());
                    rDoc.put("end", r.end());
                    ranges.add(rDoc);
                }
                iDoc.put("iova_ranges", iommu.iovaRanges().isEmpty() ? null : ranges);
                iDoc.put(
                        "dma_mappings_available",
                        iommu.dmaMappingsAvailable().isPresent()
                                ? iommu.dmaMappingsAvailable().getAsInt()
                                : null);
                doc.put("iommu", iDoc);
                out.printf(
                        "iommu:       %s; page sizes %s; IOVA ranges %s; DMA mappings available %s%n",
                        s.container().iommuType().label,
                        iommu.pageSizesText(),
                        iommu.iovaRanges().isEmpty()
                                ? "not reported"
                                : iommu.iovaRanges().toString(),
                        iommu.dmaMappingsAvailable().isPresent()
                                ? iommu.dmaMappingsAvailable().getAsInt()
                                : "not reported");
                VfioDevice d = s.device();
                DeviceInfo di = d.info();
                Map<String, Object> dDoc = new LinkedHashMap<>();
                dDoc.put(
                        "flags",
                        di.flagsText().isEmpty()
                                ? List.of()
                                : List.of(di.flagsText().split(" ")));
                dDoc.put("regions", di.numRegions());
                dDoc.put("irqs", di.numIrqs());
                doc.put("vfio_device", dDoc);
                out.printf(
                        "vfio device: flags %s; %d regions, %d IRQ indexes%n",
                        di.flagsText(), di.numRegions(), di.numIrqs());
                out.println("regions:");
                out.printf("  %-5s %-7s %-8s %-14s %-9s %s%n", "index", "name", "size", "offset", "flags", "caps");
                List<Map<String, Object>> regions = new ArrayList<>();
                for (RegionInfo r : d.regions()) {
                    out.printf(
                            "  %-5d %-7s %-8s 0x%-12x %-9s %s%n",
                            r.index(), r.name(), ByteSizes.binary(r.size()), r.offset(), r.flagsText(), r.capsText());
                    Map<String, Object> rDoc = new LinkedHashMap<>();
                    rDoc.put("index", r.index());
                    rDoc.put("name", r.name());
                    rDoc.put("size", r.size());
                    rDoc.put("offset", r.offset());
                    rDoc.put("readable", r.readable());
                    rDoc.put("writable", r.writable());
                    rDoc.put("mmap", r.mmappable());
                    rDoc.put("caps", r.capTexts());
                    regions.add(rDoc);
                }
                doc.put("regions", regions);
                out.println("irqs:");
                out.printf("  %-5s %-6s %-6s %s%n", "index", "type", "count", "flags");
                List<Map<String, Object>> irqs = new ArrayList<>();
                for (IrqInfo i : d.irqs()) {
                    out.printf("  %-5d %-6s %-6d %s%n", i.index(), i.name(), i.count(), i.flagsText());
                    Map<String, Object> qDoc = new LinkedHashMap<>();
                    qDoc.put("index", i.index());
                    qDoc.put("type", i.name());
                    qDoc.put("count", i.count());
                    qDoc.put("eventfd", i.eventfd());
                    qDoc.put("maskable", i.maskable());
                    qDoc.put("automasked", i.automasked());
                    qDoc.put("noresize", i.noResize());
                    irqs.add(qDoc);
                }
                doc.put("irqs", irqs);
            }
            out.flush();
            if (json) {
                stdout.println(Json.write(doc));
                stdout.flush();
            }
            return 0;
        }
    }

    // ---- vfio nvme ------------------------------------------------------------------------------------------------

    @Command(
            name = "nvme",
            mixinStandardHelpOptions = true,
            description = "Drive an NVMe controller with iovirt's user-space driver (bind it to vfio-pci first).",
            subcommands = {Identify.class, Read.class, Write.class, Bench.class, IommuCheckCommand.class})
    static final class Nvme implements Runnable {
        @CommandLine.Spec
        CommandLine.Model.CommandSpec spec;

        // Optional to picocli so that 'vfio nvme identify --help' shows help; every subcommand requires it (address()).
        @Parameters(
                index = "0",
                arity = "0..1",
                paramLabel = "BDF",
                description = "PCI address of the controller, e.g. 0000:01:00.0 (bound to vfio-pci).",
                converter = BdfConverter.class)
        Bdf address;

        @Override
        public void run() {
            throw Contract.subcommandRequired(spec);
        }

        /** The controller's address; a usage error of {@code sub} when it was not given. */
        Bdf address(CommandLine.Model.CommandSpec sub) {
            if (address == null) {
                throw Contract.usage(
                        sub, "missing the controller's address: iovirt vfio nvme BDF " + sub.name() + " ...");
            }
            return address;
        }
    }

    /** Options every NVMe subcommand takes. */
    static final class NvmeOptions {
        @CommandLine.Spec(CommandLine.Spec.Target.MIXEE)
        CommandLine.Model.CommandSpec mixee;

        @Option(
                names = "--irq",
                paramLabel = "MODE",
                defaultValue = "auto",
                description = "How completions are noticed: auto (MSI-X, else MSI, else INTx), poll, msix, msi, intx. "
                        + "Default: ${DEFAULT-VALUE}.")
        String irq;

        @Option(
                names = "--timeout",
                paramLabel = "SECONDS",
                defaultValue = "30",
                description = "Per-command timeout. Default: ${DEFAULT-VALUE}.")
        int timeoutSeconds;

        IrqMode irqMode() {
            try {
                return IrqMode.valueOf(irq.toUpperCase(Locale.ROOT));
            } catch (IllegalArgumentException e) {
                throw Contract.usage(mixee, "--irq must be auto, poll, msix, msi or intx: " + irq);
            }
        }

        NvmeController.Options options(int depth, long dataBytes) {
            if (timeoutSeconds < 1 || timeoutSeconds > 3600) {
                throw Contract.usage(mixee, "--timeout must be 1..3600 seconds: " + timeoutSeconds);
            }
            return NvmeController.Options.defaults()
                    .withIrqMode(irqMode())
                    .withIoQueueDepth(depth)
                    .withDataBytes(dataBytes)
                    .withCommandTimeout(Duration.ofSeconds(timeoutSeconds));
        }
    }

    /**
     * An open session and controller that are released on every path: normal return, exception, and SIGTERM/SIGINT.
     * The shutdown hook is registered before anything is opened, so a signal at any moment releases what is open by
     * then (the kernel would release the device anyway when the process dies, but this way the controller gets an
     * orderly shutdown and the release order stays device → mappings → group → container).
     */
    static final class OpenController implements AutoCloseable {
        private final Bdf address;
        private final Thread hook;
        private volatile VfioSession session;
        private volatile NvmeController controller;
        private volatile boolean signalled;

        OpenController(Bdf address, NvmeController.Options options) throws VfioException {
            this.address = address;
            this.hook = new Thread(this::releaseOnSignal, "iovirt-vfio-release");
            Runtime.getRuntime().addShutdownHook(hook);
            try {
                session = VfioSession.open(address);
                controller = NvmeController.open(session, options);
            } catch (VfioException | RuntimeException e) {
                close();
                throw e;
            }
        }

        NvmeController controller() {
            return controller;
        }

        /** Whether the shutdown hook has released the device (the command's thread then fails on closed memory). */
        boolean signalled() {
            return signalled;
        }

        private void releaseOnSignal() {
            if (session == null) {
                return;
            }
            signalled = true;
            NvmeController c = controller;
            release();
            System.err.println("iovirt: terminating: NVMe controller " + address + " shut down ("
                    + (c == null ? "not started" : c.quiesceReport())
                    + "); device, DMA mappings, group and container released");
            System.err.flush();
        }

        private synchronized void release() {
            NvmeController c = controller;
            VfioSession s = session;
            try {
                if (c != null) {
                    c.close();
                }
            } finally {
                if (s != null) {
                    s.close();
                }
            }
        }

        @Override
        public void close() {
            try {
                Runtime.getRuntime().removeShutdownHook(hook);
            } catch (IllegalStateException shuttingDown) {
                return; // the hook is running or will run: it releases everything
            }
            release();
        }
    }

    /** What an NVMe subcommand does with the open controller; returns the exit code. */
    @FunctionalInterface
    interface NvmeBody {
        Integer run(NvmeController c) throws Exception;
    }

    /**
     * Opens the controller, runs {@code body}, releases everything. When a signal's shutdown hook releases the device
     * while the body runs, the body's resulting failure (closed memory, closed descriptors) is not reported: the
     * process is exiting because it was asked to.
     */
    /**
     * Says "not an NVMe controller" before anything else: opening the device first would blame the IOMMU (or the
     * driver) for what is a wrong address.
     */
    static void requireNvme(PciSysfs sysfs, Bdf address) {
        if (!sysfs.exists(address)) {
            return; // opening it says there is no such device, with the remedy
        }
        int cls = sysfs.tree().readHex(PciDevice.dir(address) + "/class", 6);
        if (cls != PciDevice.CLASS_NVME) {
            throw new ActionableException(
                    address + " is not an NVMe controller (PCI class " + String.format("%06x", cls)
                            + ", an NVMe controller is 010802)",
                    "pick the controller's address from iovirt host devices");
        }
    }

    static Integer withController(Bdf address, NvmeController.Options options, NvmeBody body) throws Exception {
        requireNvme(PciSysfs.SYSTEM, address);
        try (OpenController oc = new OpenController(address, options)) {
            try {
                return body.run(oc.controller());
            } catch (Exception | Error e) {
                if (oc.signalled()) {
                    return 128 + 15;
                }
                throw e;
            }
        }
    }

    /**
     * What every {@code vfio nvme ADDRESS ...} subcommand has: the parent's address, the controller options, and a
     * way to run on an opened controller.
     */
    abstract static class NvmeSubcommand implements Callable<Integer> {
        @ParentCommand
        Nvme parent;

        @Mixin
        NvmeOptions opts = new NvmeOptions();

        @CommandLine.Spec
        CommandLine.Model.CommandSpec spec;

        /** Opens the controller with {@code depth} queue entries and {@code bufferBytes} of DMA memory, runs {@code body}. */
        final Integer onController(int depth, long bufferBytes, NvmeBody body) throws Exception {
            return withController(parent.address(spec), opts.options(depth, bufferBytes), body);
        }
    }

    @Command(
            name = "identify",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt vfio nvme 0000:01:00.0 identify"},
            mixinStandardHelpOptions = true,
            description = "Print the controller's serial number, model, firmware and its first namespace's size.")
    static final class Identify extends NvmeSubcommand {
        @Option(names = "--json", description = "Print the identity as JSON (schema in docs/cli.md).")
        boolean json;

        @Override
        public Integer call() throws Exception {
            PrintWriter out = spec.commandLine().getOut();
            return onController(16, 64 << 10, c -> {
                var id = c.identity();
                var ns = c.namespace();
                if (json) {
                    Map<String, Object> nsDoc = new LinkedHashMap<>();
                    nsDoc.put("nsid", ns.nsid());
                    nsDoc.put("blocks", ns.size());
                    nsDoc.put("block_size", ns.blockSize());
                    nsDoc.put("bytes", ns.bytes());
                    nsDoc.put("lba_format", ns.formatIndex());
                    nsDoc.put("lba_formats", ns.formats().size());
                    Map<String, Object> doc = new LinkedHashMap<>();
                    doc.put("device", parent.address.toString());
                    doc.put("model", id.model());
                    doc.put("serial", id.serial());
                    doc.put("firmware", id.firmware());
                    doc.put("nvme_version", c.version());
                    doc.put("vendor_id", id.vendorId());
                    doc.put("controller_id", id.controllerId());
                    doc.put("max_transfer_bytes", c.maxTransferBytes());
                    doc.put("io_queue_depth", c.ioQueueDepth());
                    doc.put("irq_mode", c.irqMode().name().toLowerCase(Locale.ROOT));
                    doc.put("namespace", nsDoc);
                    out.println(Json.write(doc));
                    out.flush();
                    return Contract.OK;
                }
                out.printf("device:      %s%n", parent.address);
                out.printf("model:       %s%n", id.model());
                out.printf("serial:      %s%n", id.serial());
                out.printf("firmware:    %s%n", id.firmware());
                out.printf(
                        "version:     NVMe %s, vendor %04x, controller id %d%n",
                        c.version(), id.vendorId(), id.controllerId());
                out.printf(
                        "transfers:   up to %s per command, I/O queue depth %d, completions by %s%n",
                        ByteSizes.binary(c.maxTransferBytes()), c.ioQueueDepth(), c.irqMode());
                out.printf(
                        "namespace:   %d: %d blocks of %d bytes (%s), LBA format %d of %d%n",
                        ns.nsid(),
                        ns.size(),
                        ns.blockSize(),
                        ByteSizes.binary(ns.bytes()),
                        ns.formatIndex(),
                        ns.formats().size());
                out.flush();
                return 0;
            });
        }
    }

    @Command(
            name = "read",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt vfio nvme 0000:01:00.0 read --lba 0 --count 8 --out first-4k.bin"},
            mixinStandardHelpOptions = true,
            description = "Read logical blocks; writes them to --out FILE, or prints a hex dump.")
    static final class Read extends NvmeSubcommand {

        @Option(names = "--lba", required = true, description = "First logical block.")
        long lba;

        @Option(names = "--count", defaultValue = "1", description = "Number of logical blocks. Default: 1.")
        long count;

        @Option(names = "--out", paramLabel = "FILE", description = "Write the data to FILE instead of dumping it.")
        Path outFile;

        @Option(
                names = "--json",
                description = "Print what was read as one JSON document (schema in docs/cli.md): "
                        + "the data's SHA-256, and the data itself in base64 unless --out is given.")
        boolean json;

        @Override
        public Integer call() throws Exception {
            if (count < 1 || count > (1L << 32)) {
                throw Contract.usage(spec, "--count must be 1..2^32: " + count);
            }
            PrintWriter out = spec.commandLine().getOut();
            return onController(16, 1 << 20, c -> {
                int bs = c.blockSize();
                int perCommand = (int) Math.min(count, Math.min(c.maxTransferBytes(), 1 << 20) / bs);
                DmaBuffer buf = c.allocateBuffer((long) perCommand * bs);
                if (json && outFile == null && count * bs > MAX_JSON_DATA) {
                    throw Contract.usage(
                            spec,
                            "--json without --out carries at most " + ByteSizes.binary(MAX_JSON_DATA)
                                    + " of data; pass --out FILE for " + count + " blocks of " + bs + " bytes");
                }
                MessageDigest sha = sha256();
                java.io.ByteArrayOutputStream inline =
                        json && outFile == null ? new java.io.ByteArrayOutputStream() : null;
                try (var file = outFile == null
                        ? null
                        : FileIo.open(outFile, FileIo.O_WRONLY | FileIo.O_CREAT | FileIo.O_TRUNC, 0644)) {
                    long done = 0;
                    while (done < count) {
                        int n = (int) Math.min(perCommand, count - done);
                        c.read(lba + done, n, buf);
                        MemorySegment data = buf.segment().asSlice(0, (long) n * bs);
                        byte[] bytes = data.toArray(ValueLayout.JAVA_BYTE);
                        sha.update(bytes);
                        if (file != null) {
                            FileIo.writeFully(file, data, done * bs);
                        } else if (inline != null) {
                            inline.write(bytes);
                        } else {
                            hexdump(out, data, (lba + done) * bs);
                        }
                        done += n;
                    }
                }
                if (json) {
                    Map<String, Object> doc = transferDoc(parent.address, lba, count, bs, sha);
                    doc.put("out", outFile == null ? null : outFile.toString());
                    if (inline != null) {
                        doc.put("data_base64", java.util.Base64.getEncoder().encodeToString(inline.toByteArray()));
                    }
                    out.println(Json.write(doc));
                } else if (outFile != null) {
                    out.printf("read %d blocks of %d bytes at LBA %d into %s%n", count, bs, lba, outFile);
                }
                out.flush();
                return 0;
            });
        }
    }

    @Command(
            name = "write",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt vfio nvme 0000:01:00.0 write --lba 0 --count 8 --in block.bin"},
            mixinStandardHelpOptions = true,
            description = "Write logical blocks from --pattern TEXT (repeated) or --in FILE (zero-padded), then flush.")
    static final class Write extends NvmeSubcommand {

        @Option(names = "--lba", required = true, description = "First logical block.")
        long lba;

        @Option(
                names = "--count",
                description = "Number of logical blocks (default: 1 for --pattern, the file's " + "size for --in).")
        Long count;

        @CommandLine.ArgGroup(exclusive = true, multiplicity = "1")
        Source source;

        @Option(names = "--json", description = "Print what was written as one JSON document (schema in docs/cli.md).")
        boolean json;

        static final class Source {
            @Option(names = "--pattern", paramLabel = "TEXT", description = "Bytes of TEXT (UTF-8), repeated.")
            String pattern;

            @Option(names = "--in", paramLabel = "FILE", description = "Data from FILE.")
            Path in;
        }

        @Override
        public Integer call() throws Exception {
            PrintWriter out = spec.commandLine().getOut();
            return onController(16, 1 << 20, c -> {
                try (Arena arena = Arena.ofConfined()) {
                    return write(c, arena, out);
                }
            });
        }

        private int write(NvmeController c, Arena arena, PrintWriter out) throws Exception {
            int bs = c.blockSize();
            MemorySegment data;
            if (source.pattern != null) {
                byte[] p = source.pattern.getBytes(StandardCharsets.UTF_8);
                if (p.length == 0) {
                    throw Contract.usage(spec, "--pattern must not be empty");
                }
                long blocks = count == null ? 1 : count;
                checkCount(blocks);
                data = arena.allocate(blocks * bs);
                for (long i = 0; i < data.byteSize(); i++) {
                    data.set(ValueLayout.JAVA_BYTE, i, p[(int) (i % p.length)]);
                }
            } else {
                try (var f = FileIo.open(source.in, FileIo.O_RDONLY)) {
                    long size = FileIo.size(f);
                    long blocks = count == null ? Math.max(1, (size + bs - 1) / bs) : count;
                    checkCount(blocks);
                    data = arena.allocate(blocks * bs);
                    FileIo.readFully(f, data, 0);
                } catch (LinuxException e) {
                    throw new IllegalArgumentException("cannot read --in " + source.in + ": " + e.getMessage(), e);
                }
            }
            long blocks = data.byteSize() / bs;
            MessageDigest sha = sha256();
            sha.update(data.asByteBuffer());
            int perCommand = (int) Math.min(blocks, Math.min(c.maxTransferBytes(), 1 << 20) / bs);
            DmaBuffer buf = c.allocateBuffer((long) perCommand * bs);
            long done = 0;
            while (done < blocks) {
                int n = (int) Math.min(perCommand, blocks - done);
                MemorySegment.copy(data, done * bs, buf.segment(), 0, (long) n * bs);
                c.write(lba + done, n, buf);
                done += n;
            }
            c.flush();
            if (json) {
                Map<String, Object> doc = transferDoc(parent.address, lba, blocks, bs, sha);
                doc.put("flushed", true);
                out.println(Json.write(doc));
            } else {
                out.printf("wrote %d blocks of %d bytes at LBA %d%n", blocks, bs, lba);
            }
            out.flush();
            return 0;
        }

        private void checkCount(long blocks) {
            if (blocks < 1 || blocks > (1L << 24)) {
                throw Contract.usage(spec, "--count must be 1..2^24 blocks: " + blocks);
            }
        }
    }

    @Command(
            name = "bench",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt vfio nvme 0000:01:00.0 bench --seconds 10 --qd 32"},
            mixinStandardHelpOptions = true,
            description = "4 KiB random reads at a fixed queue depth for a fixed time; prints IOPS and latency.")
    static final class Bench extends NvmeSubcommand {

        @Option(names = "--qd", defaultValue = "1", description = "Reads kept outstanding. Default: ${DEFAULT-VALUE}.")
        int qd;

        @Option(names = "--seconds", defaultValue = "10", description = "Duration. Default: ${DEFAULT-VALUE}.")
        double seconds;

        @Option(names = "--json", description = "One JSON object instead of text.")
        boolean json;

        @Override
        public Integer call() throws Exception {
            PrintWriter out = spec.commandLine().getOut();
            if (qd < 1 || qd > 1023) {
                throw Contract.usage(spec, "--qd must be 1..1023: " + qd);
            }
            int depth = Math.max(qd + 1, 16);
            return onController(depth, (long) depth * NvmeBench.IO_SIZE, c -> {
                spec.commandLine()
                        .getErr()
                        .printf(
                                "bench: %s, namespace %d (%s), randread 4k qd %d for %.0f s, " + "completions by %s%n",
                                parent.address,
                                c.namespace().nsid(),
                                ByteSizes.binary(c.namespace().bytes()),
                                qd,
                                seconds,
                                c.irqMode());
                spec.commandLine().getErr().flush();
                NvmeBench.Result r = NvmeBench.randomRead(c, qd, seconds, System.nanoTime());
                out.println(json ? r.json() : r.describe());
                out.flush();
                return 0;
            });
        }
    }

    @Command(
            name = "iommu-check",
            footerHeading = "%nExamples:%n",
            footer = {"  iovirt vfio nvme 0000:01:00.0 iommu-check"},
            mixinStandardHelpOptions = true,
            description = "Point the controller at an IOVA that was never mapped and show the IOMMU blocks it "
                    + "(reads LBA 0; writes nothing to the disk). Exit 0 when confined, 3 when not, 1 when the check "
                    + "could not run.")
    static final class IommuCheckCommand extends NvmeSubcommand {

        @Option(
                names = "--json",
                description = "Print the probes' results as one JSON document (schema in docs/cli.md).")
        boolean json;

        @Override
        public Integer call() throws Exception {
            PrintWriter out = spec.commandLine().getOut();
            // 128 KiB: the probes' buffers for the largest blocks (64 KiB) and their pages
            return onController(16, 128 << 10, c -> {
                IommuCheck.Result r = IommuCheck.run(c);
                if (json) {
                    Map<String, Object> doc = new LinkedHashMap<>();
                    doc.put("device", parent.address.toString());
                    doc.put("unmapped_iova", r.unmappedIova());
                    doc.put("data_pointer_status", statusDoc(r.dataPointerStatus()));
                    doc.put("prp_list_status", statusDoc(r.prpListStatus()));
                    doc.put("canary_intact", r.canaryIntact());
                    doc.put("sentinel_intact", r.sentinelIntact());
                    doc.put("controller_healthy", r.controllerHealthy());
                    doc.put("confined", r.blocked());
                    out.println(Json.write(doc));
                } else {
                    out.println(r.describe());
                }
                out.flush();
                return r.blocked() ? Contract.OK : Contract.CHECK_FAILED; // 1 stays "could not run the check"
            });
        }
    }

    /** The most data {@code read --json} carries inline (base64); more needs --out. */
    static final long MAX_JSON_DATA = 16L << 20;

    static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new AssertionError("every JDK has SHA-256", e);
        }
    }

    /** The fields read and write --json share: where, how much, and the data's SHA-256. */
    static Map<String, Object> transferDoc(Bdf device, long lba, long blocks, int blockSize, MessageDigest sha) {
        Map<String, Object> doc = new LinkedHashMap<>();
        doc.put("device", device.toString());
        doc.put("lba", lba);
        doc.put("blocks", blocks);
        doc.put("block_size", blockSize);
        doc.put("bytes", blocks * blockSize);
        doc.put("sha256", java.util.HexFormat.of().formatHex(sha.digest()));
        return doc;
    }

    /** An NVMe completion status: {"code": 15-bit status, "success", "text"}. */
    static Map<String, Object> statusDoc(int status) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("code", status);
        m.put("success", io.iovirt.vfio.nvme.NvmeStatus.success(status));
        m.put("text", io.iovirt.vfio.nvme.NvmeStatus.describe(status));
        return m;
    }

    /** xxd-like: offset, 16 bytes in hex, ASCII; runs of identical lines collapse to "*". */
    static void hexdump(PrintWriter out, MemorySegment data, long base) {
        byte[] prev = null;
        boolean starred = false;
        long n = data.byteSize();
        for (long off = 0; off < n; off += 16) {
            int len = (int) Math.min(16, n - off);
            byte[] line = data.asSlice(off, len).toArray(ValueLayout.JAVA_BYTE);
            if (prev != null && len == 16 && java.util.Arrays.equals(prev, line) && off + 16 < n) {
                if (!starred) {
                    out.println("*");
                    starred = true;
                }
                continue;
            }
            starred = false;
            prev = line;
            StringBuilder sb = new StringBuilder(String.format("%08x: ", base + off));
            for (int i = 0; i < 16; i++) {
                sb.append(i < len ? String.format("%02x", line[i] & 0xff) : "  ");
                if (i % 2 == 1) {
                    sb.append(' ');
                }
            }
            sb.append(' ');
            for (int i = 0; i < len; i++) {
                int b = line[i] & 0xff;
                sb.append(b >= 0x20 && b < 0x7f ? (char) b : '.');
            }
            out.println(sb);
        }
    }
}
