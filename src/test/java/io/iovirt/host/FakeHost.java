// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Writes a fake /sys, /proc and /dev under a temporary directory, laid out as the kernel lays them out (devices under
 * devices/pci0000:00, bus/pci/devices and class/* as relative symlinks, IOMMU groups with device links), so the
 * host package reads it exactly as it reads the real thing. It cannot play the kernel's part on writes: a write to
 * drivers_probe only leaves the written value in the file.
 */
public final class FakeHost {
    public final Path root;
    public final Path sys;
    public final Path proc;
    public final Path dev;
    public final Path state;
    private final StringBuilder mounts = new StringBuilder();
    private final StringBuilder routes =
            new StringBuilder("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n");

    public FakeHost(Path root) {
        this.root = root;
        this.sys = root.resolve("sys");
        this.proc = root.resolve("proc");
        this.dev = root.resolve("dev");
        this.state = root.resolve("state");
        mkdir(sys.resolve("bus/pci/devices"));
        mkdir(sys.resolve("bus/pci/drivers"));
        mkdir(sys.resolve("devices/pci0000:00"));
        mkdir(sys.resolve("kernel"));
        mkdir(sys.resolve("module"));
        mkdir(sys.resolve("class/block"));
        mkdir(sys.resolve("class/net"));
        mkdir(sys.resolve("firmware/acpi/tables"));
        mkdir(dev);
        write(sys.resolve("bus/pci/drivers_probe"), "");
        write(proc.resolve("cmdline"), "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n");
        write(proc.resolve("interrupts"), "           CPU0\n  0:         10   IO-APIC   2-edge      timer\n");
        write(
                proc.resolve("self/limits"),
                "Limit                     Soft Limit           Hard Limit           Units\n"
                        + "Max locked memory         8388608              8388608              bytes\n");
        write(proc.resolve("self/status"), "Name:\tjava\nCapEff:\t0000000000000000\n");
        flushMounts();
        flushRoutes();
    }

    // ---------------------------------------------------------------- CPU, firmware, kernel

    public FakeHost intelCpu(boolean vmx) {
        return cpu("GenuineIntel", "fpu vme de pse tsc msr pae" + (vmx ? " vmx" : "") + " sse sse2");
    }

    public FakeHost amdCpu(boolean svm) {
        return cpu("AuthenticAMD", "fpu vme de pse tsc msr pae" + (svm ? " svm" : "") + " sse sse2");
    }

    public FakeHost cpu(String vendor, String flags) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < 2; i++) {
            b.append("processor\t: ")
                    .append(i)
                    .append("\nvendor_id\t: ")
                    .append(vendor)
                    .append("\nflags\t\t: ")
                    .append(flags)
                    .append("\n\n");
        }
        write(proc.resolve("cpuinfo"), b.toString());
        return this;
    }

    public FakeHost cmdline(String text) {
        write(proc.resolve("cmdline"), text + "\n");
        return this;
    }

    public FakeHost acpiTable(String name) {
        write(sys.resolve("firmware/acpi/tables/" + name), "table");
        return this;
    }

    public FakeHost iommu(String name) {
        mkdir(sys.resolve("devices/virtual/iommu/" + name));
        mkdir(sys.resolve("class/iommu"));
        link(sys.resolve("class/iommu/" + name), "../../devices/virtual/iommu/" + name);
        return this;
    }

    public FakeHost interruptRemapping() {
        write(
                proc.resolve("interrupts"),
                "           CPU0\n  0:         10   IR-IO-APIC    2-edge      timer\n"
                        + " 24:          0   IR-PCI-MSI-0000:00:1f.2    0-edge      ahci\n");
        return this;
    }

    /**
     * A /dev/kvm node. A fixture file cannot answer KVM ioctls, so a check run through {@link #kvmProbe()} sees it as
     * the kind of KVM given here; the real probe (the CLI on fixture roots) sees "not a KVM device".
     */
    public FakeHost kvm() {
        return kvm(KvmKind.WORKING);
    }

    public FakeHost kvm(KvmKind kind) {
        write(dev.resolve("kvm"), "");
        kvmKind = kind;
        return this;
    }

    /** What {@link #kvmProbe()} reports for the fixture's /dev/kvm. */
    public enum KvmKind {
        WORKING,
        DENIED,
        NO_VM
    }

    private KvmKind kvmKind = KvmKind.WORKING;

    /** A KVM probe for {@link HostCheck#run(HostPaths, long, java.util.function.BiFunction)} on this fixture. */
    public java.util.function.BiFunction<Path, String, io.iovirt.vm.Accelerator.KvmFacts> kvmProbe() {
        return (device, cpuinfo) -> {
            io.iovirt.vm.Accelerator.KvmFacts real = io.iovirt.vm.Accelerator.probe(device, cpuinfo);
            if (!real.exists()) {
                return real;
            }
            return switch (kvmKind) {
                case WORKING -> new io.iovirt.vm.Accelerator.KvmFacts(device, true, 0, 12, 0, real.cpuFlags());
                case DENIED ->
                    new io.iovirt.vm.Accelerator.KvmFacts(
                            device, true, io.iovirt.linux.Errno.EACCES, 0, 0, real.cpuFlags());
                case NO_VM ->
                    new io.iovirt.vm.Accelerator.KvmFacts(
                            device, true, 0, 12, -io.iovirt.linux.Errno.EBUSY, real.cpuFlags());
            };
        };
    }

    /** /dev/net/tun, /dev/vhost-net and reserved huge pages: what a host for every technique has. */
    public FakeHost netDevicesAndHugepages(long hugepages) {
        write(dev.resolve("net/tun"), "");
        write(dev.resolve("vhost-net"), "");
        write(
                proc.resolve("meminfo"),
                "MemTotal:       24000000 kB\nHugePages_Total:    " + hugepages + "\nHugePages_Free:     " + hugepages
                        + "\nHugepagesize:       2048 kB\n");
        return this;
    }

    public FakeHost capIpcLock() {
        write(proc.resolve("self/status"), "Name:\tjava\nCapEff:\t000001ffffffffff\n");
        return this;
    }

    /** vfio, vfio_iommu_type1 and vfio-pci loaded, /dev/vfio/vfio present. */
    public FakeHost vfio() {
        mkdir(sys.resolve("module/vfio"));
        mkdir(sys.resolve("module/vfio_iommu_type1/parameters"));
        write(sys.resolve("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"), "N\n");
        mkdir(sys.resolve("module/vfio_pci"));
        driver("vfio-pci");
        write(dev.resolve("vfio/vfio"), "");
        return this;
    }

    /** A driver directory with bind/unbind/new_id. */
    public FakeHost driver(String name) {
        Path d = sys.resolve("bus/pci/drivers/" + name);
        mkdir(d);
        for (String f : List.of("bind", "unbind", "new_id", "remove_id")) {
            if (!Files.exists(d.resolve(f))) {
                write(d.resolve(f), "");
            }
        }
        return this;
    }

    /** A typical Intel host with the IOMMU on: VT-x, /dev/kvm, DMAR, dmar0, IR, intel_iommu=on iommu=pt, vfio. */
    public FakeHost intelHostWithIommu() {
        return intelCpu(true)
                .kvm()
                .acpiTable("DMAR")
                .iommu("dmar0")
                .interruptRemapping()
                .cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro intel_iommu=on iommu=pt")
                .vfio()
                .capIpcLock()
                .netDevicesAndHugepages(512);
    }

    /** An AMD host: AMD-V, IVRS, ivhd0, IR, no command-line switch needed. */
    public FakeHost amdHostWithIommu() {
        return amdCpu(true)
                .kvm()
                .acpiTable("IVRS")
                .iommu("ivhd0")
                .interruptRemapping()
                .vfio()
                .capIpcLock()
                .netDevicesAndHugepages(512);
    }

    // ---------------------------------------------------------------- PCI devices

    public final class Dev {
        final String bdf;
        final Path dir;

        public Dev(String bdf) {
            this.bdf = bdf;
            this.dir = sys.resolve("devices/pci0000:00/" + bdf);
        }

        public Dev attr(String name, String value) {
            write(dir.resolve(name), value);
            return this;
        }

        public Dev driver(String name) {
            FakeHost.this.driver(name);
            relink(dir.resolve("driver"), "../../../bus/pci/drivers/" + name);
            link(sys.resolve("bus/pci/drivers/" + name + "/" + bdf), "../../../../devices/pci0000:00/" + bdf);
            return this;
        }

        public Dev group(int n) {
            Path g = sys.resolve("kernel/iommu_groups/" + n + "/devices");
            mkdir(g);
            write(g.getParent().resolve("type"), "DMA\n");
            link(g.resolve(bdf), "../../../../devices/pci0000:00/" + bdf);
            relink(dir.resolve("iommu_group"), "../../../kernel/iommu_groups/" + n);
            write(dev.resolve("vfio/" + n), "");
            return this;
        }

        /** SR-IOV PF attributes with {@code vfs} existing VF links. */
        public Dev sriov(int total, List<String> vfs) {
            attr("sriov_totalvfs", total + "\n");
            attr("sriov_numvfs", vfs.size() + "\n");
            attr("sriov_drivers_autoprobe", "1\n");
            attr("sriov_offset", "1\n");
            attr("sriov_stride", "1\n");
            for (int i = 0; i < vfs.size(); i++) {
                link(dir.resolve("virtfn" + i), "../" + vfs.get(i));
            }
            return this;
        }

        public Dev physfn(String pf) {
            link(dir.resolve("physfn"), "../" + pf);
            return this;
        }

        public Dev nvmeController(String name) {
            mkdir(dir.resolve("nvme/" + name));
            write(dev.resolve(name), "");
            return this;
        }

        /** A block device (and optional partitions) below this function, as /sys/class/block links. */
        public Dev block(String subpath, String name, String... partitions) {
            Path bdir = dir.resolve(subpath).resolve(name);
            mkdir(bdir);
            String rel = "../../devices/pci0000:00/" + bdf + "/" + subpath + "/" + name;
            link(sys.resolve("class/block/" + name), rel);
            for (String p : partitions) {
                mkdir(bdir.resolve(p));
                write(bdir.resolve(p + "/partition"), "1\n");
                link(sys.resolve("class/block/" + p), rel + "/" + p);
            }
            return this;
        }

        public Dev net(String iface, int queues) {
            Path ndir = dir.resolve("net/" + iface);
            mkdir(ndir);
            for (int q = 0; q < queues; q++) {
                mkdir(ndir.resolve("queues/rx-" + q));
                mkdir(ndir.resolve("queues/tx-" + q));
            }
            link(sys.resolve("class/net/" + iface), "../../devices/pci0000:00/" + bdf + "/net/" + iface);
            return this;
        }
    }

    /** A PCI function with its standard attributes. */
    public Dev device(String bdf, int vendor, int device, int cls) {
        Dev d = new Dev(bdf);
        mkdir(d.dir);
        d.attr("vendor", String.format("0x%04x\n", vendor));
        d.attr("device", String.format("0x%04x\n", device));
        d.attr("class", String.format("0x%06x\n", cls));
        d.attr("subsystem_vendor", String.format("0x%04x\n", vendor));
        d.attr("subsystem_device", "0x0000\n");
        d.attr("revision", "0x01\n");
        d.attr("driver_override", "(null)\n");
        d.attr("reset", "");
        d.attr("reset_method", "flr bus\n");
        link(sys.resolve("bus/pci/devices/" + bdf), "../../../devices/pci0000:00/" + bdf);
        return d;
    }

    public Dev dev(String bdf) {
        return new Dev(bdf);
    }

    // ---------------------------------------------------------------- host usage

    public FakeHost mount(String source, String target) {
        mounts.append(source).append(' ').append(target).append(" ext4 rw,relatime 0 0\n");
        flushMounts();
        return this;
    }

    public FakeHost defaultRoute(String iface) {
        routes.append(iface).append("\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n");
        flushRoutes();
        return this;
    }

    private void flushMounts() {
        write(proc.resolve("mounts"), "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n" + mounts);
    }

    private void flushRoutes() {
        write(proc.resolve("net/route"), routes.toString());
    }

    // ---------------------------------------------------------------- access

    public HostPaths paths() {
        return new HostPaths(sys, proc, dev, state, null, List.of());
    }

    public HostPaths paths(Path pciIds) {
        return new HostPaths(sys, proc, dev, state, pciIds, List.of());
    }

    /** The CLI options that point at this fixture. */
    public List<String> cliRoots() {
        return new ArrayList<>(List.of(
                "--sysfs-root",
                sys.toString(),
                "--proc-root",
                proc.toString(),
                "--dev-root",
                dev.toString(),
                "--state-dir",
                state.toString()));
    }

    public String read(String sysRelative) {
        try {
            return Files.readString(sys.resolve(sysRelative));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static void write(Path p, String content) {
        try {
            Files.createDirectories(p.getParent());
            Files.writeString(p, content, StandardCharsets.ISO_8859_1);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static void mkdir(Path p) {
        try {
            Files.createDirectories(p);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static void link(Path link, String target) {
        try {
            Files.createDirectories(link.getParent());
            Files.createSymbolicLink(link, Path.of(target));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static void relink(Path link, String target) {
        try {
            Files.deleteIfExists(link);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        link(link, target);
    }
}
