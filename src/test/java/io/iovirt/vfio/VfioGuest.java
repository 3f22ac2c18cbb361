// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import io.iovirt.vm.GuestImage;
import io.iovirt.vm.QemuGuest;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * A QEMU guest with an emulated VT-d IOMMU and an NVMe controller behind a PCIe root port (its own IOMMU group), that
 * runs this build of iovirt itself: the host's root is shared read-only over virtio-9p and the payload chroots into
 * it, so the guest runs the host's JDK and this checkout's classes against its own kernel, sysfs and /dev/vfio.
 */
final class VfioGuest {
    /** Where the guest kernel puts the controller: bus 1 behind root port rp1. */
    static final String BDF = "0000:01:00.0";

    private VfioGuest() {}

    /** QEMU arguments: VT-d with interrupt remapping, the controller with {@code serial} over {@code disk}, 9p root. */
    static List<String> qemuArgs(Path disk, String serial) {
        return qemuArgs(disk, serial, null);
    }

    /**
     * As {@link #qemuArgs(Path, String)}, with the namespace as an explicit {@code nvme-ns} device (nsid 1) that takes
     * {@code namespaceOptions} (e.g. {@code ms=8,mset=1}: 8 bytes of metadata per block, interleaved with the data),
     * or the controller's own namespace when null.
     */
    static List<String> qemuArgs(Path disk, String serial, String namespaceOptions) {
        List<String> args = new ArrayList<>(List.of(
                "-cpu", "max",
                "-device", "intel-iommu,intremap=on,caching-mode=on",
                "-device", "pcie-root-port,id=rp1,chassis=1,slot=1",
                "-drive", "file=" + QemuGuest.escape(disk.toString()) + ",if=none,id=nvm0,format=raw,cache=none"));
        if (namespaceOptions == null) {
            args.addAll(List.of("-device", "nvme,id=nvme0,serial=" + serial + ",bus=rp1,drive=nvm0"));
        } else {
            args.addAll(List.of(
                    "-device", "nvme,id=nvme0,serial=" + serial + ",bus=rp1",
                    "-device", "nvme-ns,drive=nvm0,bus=nvme0,nsid=1," + namespaceOptions));
        }
        args.addAll(
                List.of("-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"));
        return args;
    }

    static QemuGuest.Builder builder(GuestImage image, Path workDir, String name, Path disk, String serial) {
        return builder(image, workDir, name, disk, serial, null);
    }

    /** A guest whose controller's namespace takes {@code namespaceOptions} (see {@link #qemuArgs(Path, String, String)}). */
    static QemuGuest.Builder builder(
            GuestImage image, Path workDir, String name, Path disk, String serial, String namespaceOptions) {
        return QemuGuest.builder(image)
                .name(name)
                .workDir(workDir)
                .memoryMiB(1536)
                .cpus(2)
                .machineOptions("kernel-irqchip=split")
                .kernelArgs("intel_iommu=on")
                .modules("virtio_pci", "9pnet_virtio", "9p", "nvme", "vfio_pci", "vfio_iommu_type1")
                .args(qemuArgs(disk, serial, namespaceOptions));
    }

    /**
     * Shell functions for payloads: the host root at /host, {@code iovirt ARGS} running this build's CLI in the
     * chroot, and {@code bind DRIVER} moving the controller to a driver through driver_override.
     */
    static String preamble() {
        String javaHome = System.getProperty("java.home");
        return """
                mkdir -p /host
                mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /host || { echo "no 9p root"; exit 91; }
                mount -t proc proc /host/proc && mount -t sysfs sysfs /host/sys && mount -t devtmpfs devtmpfs /host/dev \\
                    && mount -t tmpfs tmpfs /host/tmp || { echo "cannot mount inside /host"; exit 92; }
                JH=%s
                CP=%s
                BDF=%s
                D=/sys/bus/pci/devices/$BDF
                # a script that execs the JVM, so "sh /root/iovirt ... &" gives the JVM's own pid in $!;
                # $IOVIRT_PREFIX runs before the JVM inside the chroot (e.g. setpriv to drop capabilities)
                cat >/root/iovirt <<EOF
                exec chroot /host \\$IOVIRT_PREFIX env LD_LIBRARY_PATH=$JH/lib $JH/bin/java --enable-native-access=ALL-UNNAMED \\
                    -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$CP" io.iovirt.cli.Main "\\$@"
                EOF
                iovirt() { sh /root/iovirt "$@"; }
                bind() {
                    [ -e $D/driver ] && echo $BDF > $D/driver/unbind
                    echo $1 > $D/driver_override
                    echo $BDF > /sys/bus/pci/drivers_probe
                    [ "$(basename "$(readlink $D/driver)")" = "$1" ] || { echo "cannot bind $BDF to $1"; return 1; }
                }
                """.formatted(javaHome, classPath(), BDF);
    }

    /**
     * This build's classes and picocli: real paths (not surefire's manifest jar in /tmp, which the chroot hides). A
     * checkout under /tmp (CI may clone there) is staged to /var/tmp first, since the guest mounts a tmpfs on /tmp.
     */
    static String classPath() {
        List<String> cp = new ArrayList<>();
        for (Class<?> c : new Class<?>[] {io.iovirt.cli.Main.class, picocli.CommandLine.class}) {
            try {
                Path p = Path.of(
                        c.getProtectionDomain().getCodeSource().getLocation().toURI());
                cp.add((p.startsWith("/tmp") ? stage(p) : p).toString());
            } catch (java.net.URISyntaxException | java.io.IOException e) {
                throw new IllegalStateException("cannot prepare the guest's class path: " + e.getMessage(), e);
            }
        }
        return String.join(":", cp);
    }

    private static Path stage(Path source) throws java.io.IOException {
        Path target = Path.of(
                "/var/tmp/iovirt-guest-classpath",
                Integer.toHexString(source.toString().hashCode()),
                source.getFileName().toString());
        try (var files = java.nio.file.Files.walk(source)) {
            for (Path f : (Iterable<Path>) files::iterator) {
                Path t = target.resolve(source.relativize(f).toString());
                if (java.nio.file.Files.isDirectory(f)) {
                    java.nio.file.Files.createDirectories(t);
                } else {
                    java.nio.file.Files.createDirectories(t.getParent());
                    java.nio.file.Files.copy(f, t, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
                }
            }
        }
        return target;
    }

    static byte[] pattern(long seed, int size) {
        byte[] b = new byte[size];
        new Random(seed).nextBytes(b);
        return b;
    }
}
