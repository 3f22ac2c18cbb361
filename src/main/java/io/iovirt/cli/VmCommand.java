// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.host.HostPaths;
import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.linux.SocketAccess;
import io.iovirt.net.Mac;
import io.iovirt.vm.Accelerator;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.compose.VmComposer;
import io.iovirt.vm.compose.VmSpec;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

/** {@code iovirt vm}: compose one QEMU guest from any mix of the five techniques. */
@Command(
        name = "vm",
        mixinStandardHelpOptions = true,
        description = "Compose and run VMs.",
        subcommands = {VmCommand.Run.class})
final class VmCommand implements Runnable {
    @picocli.CommandLine.Spec
    picocli.CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        throw Contract.subcommandRequired(spec);
    }

    @Command(
            name = "run",
            footerHeading = "%nExamples:%n",
            footer = {
                "  iovirt vm run vm1 --disk pv:disk.raw --nic pv,mac=52:54:00:00:00:01",
                "  iovirt vm run vm1 --vfio 0000:03:10.0 --command \"lspci\""
            },
            mixinStandardHelpOptions = true,
            description = {
                "Run one QEMU guest with disks, NICs and host devices wired to iovirt.",
                "Wire disks, NICs and host devices into one QEMU guest: PV devices are served by iovirt (vhost-user),"
                        + " FV devices emulated by QEMU (disks on iovirt's NBD export, NICs on its switch), VFIO devices"
                        + " and SR-IOV VFs passed through after the host registry assigns them to this VM.",
                "By default boots iovirt's test guest (Debian kernel + busybox) and runs --command in it (default:"
                        + " list what the guest sees). With --serve, starts only the backends, prints the QEMU device"
                        + " arguments for your own guest, and runs until SIGINT/SIGTERM."
            })
    static final class Run implements Callable<Integer> {
        @CommandLine.Mixin
        LogOptions logOptions;

        @CommandLine.Spec
        CommandLine.Model.CommandSpec spec;

        @Parameters(index = "0", paramLabel = "NAME", description = "VM name (owner of its assigned devices).")
        String name;

        @Option(
                names = "--profile",
                defaultValue = "pvhvm",
                paramLabel = "P",
                description =
                        "pvhvm (default: any mix; PV devices with MSI-X via eventfds, kvmclock under KVM) or hvm (emulated devices only).")
        String profile;

        @Option(
                names = "--disk",
                paramLabel = "pv|fv:IMAGE[,ro][,bus=ahci|nvme]",
                description =
                        "A disk (raw or qcow2): pv (virtio-blk served by iovirt) or fv (a SATA disk on AHCI, or with bus=nvme an NVMe controller, emulated by QEMU on iovirt's NBD export).")
        List<String> disks = new ArrayList<>();

        @Option(
                names = "--nic",
                paramLabel = "pv|fv[,mac=MAC]",
                description = "A NIC on iovirt's switch: pv (virtio-net) or fv (e1000).")
        List<String> nics = new ArrayList<>();

        @Option(names = "--vfio", paramLabel = "BDF", description = "Pass a host device (bound to vfio-pci) through.")
        List<String> vfio = new ArrayList<>();

        @Option(
                names = "--vf",
                paramLabel = "PF",
                description = "Pass through a free virtual function of this SR-IOV physical function.")
        List<String> vfPools = new ArrayList<>();

        @Option(
                names = "--memory",
                defaultValue = "512",
                paramLabel = "MiB",
                description = "Guest RAM (default ${DEFAULT-VALUE}).")
        int memory;

        @Option(
                names = "--cpus",
                defaultValue = "1",
                paramLabel = "N",
                description = "vCPUs (default ${DEFAULT-VALUE}).")
        int cpus;

        @Option(names = "--command", paramLabel = "SCRIPT", description = "Shell script to run in the test guest.")
        String command;

        @Option(
                names = "--libvirt-xml",
                description = {
                    "Only run the backends and print a libvirt domain (XML) whose devices are them; "
                            + "define it with 'virsh define' while this runs."
                })
        boolean libvirtXml;

        @Option(names = "--serve", description = "Only run the backends and print the QEMU device arguments.")
        boolean serve;

        @CommandLine.Mixin
        SocketAccessOptions socketAccess;

        @Option(
                names = "--run-dir",
                paramLabel = "DIR",
                description = "Where this run's directory for the backends' sockets is made (removed at exit; default "
                        + "the temporary directory). QEMU must be able to reach it: for libvirt's QEMU, with "
                        + "--socket-group and --allow-user.")
        Path runDir;

        @Option(
                names = "--state-dir",
                paramLabel = "DIR",
                description = "Assignment registry (default " + HostPaths.DEFAULT_STATE_DIR_NAME + ").")
        Path stateDir;

        @Option(
                names = "--timeout",
                defaultValue = "300",
                paramLabel = "S",
                description = "Kill the guest after S seconds (default ${DEFAULT-VALUE}).")
        int timeout;

        @Option(
                names = "--accel",
                defaultValue = "auto",
                paramLabel = "auto|kvm|tcg",
                description =
                        "Accelerator: kvm only if it can run a stock guest (hardware virtualization), else tcg (default ${DEFAULT-VALUE}).")
        String accel;

        static final String DEFAULT_COMMAND = """
                echo "block devices: $(ls /sys/block | tr '\\n' ' ')"
                for i in /sys/class/net/*; do [ -e $i/device/driver ] && echo "nic $(basename $i): $(basename $(readlink $i/device/driver)) $(cat $i/address)"; done
                echo "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
                grep -E 'virtio|ahci|eth|vfio|nvme' /proc/interrupts | awk '{print "irq " $1 " " $(NF-1) " " $NF}'
                """;

        @Override
        public Integer call() throws Exception {
            logOptions.apply();
            // Everything that can be refused is checked before a backend starts or a device is assigned.
            try {
                AssignmentRegistry.checkVmName(name);
            } catch (io.iovirt.host.HostConfigException e) {
                throw usage("NAME: " + e.getMessage());
            }
            if (timeout < 1) {
                // 0 or less booted the guest and then killed it at once ("did not finish within -5 s")
                throw usage("--timeout must be at least 1 second, got " + timeout);
            }
            VmSpec vm;
            try {
                vm = new VmSpec(
                        name,
                        parseProfile(),
                        memory,
                        cpus,
                        disks.stream().map(this::disk).toList(),
                        nics.stream().map(this::nic).toList(),
                        vfio,
                        vfPools);
            } catch (IllegalArgumentException e) {
                throw usage(e.getMessage());
            }
            Accelerator.Decision decision = Accelerator.forMode(parseAccel(accel));
            System.err.println("accelerator: " + decision.describe());
            HostPaths host = HostPaths.system();
            if (stateDir != null) {
                host = host.withStateDir(stateDir);
            }
            boolean guestMode = !libvirtXml && !serve;
            GuestImage image = guestMode ? GuestImage.ensure() : null;
            SocketAccess access = socketAccess.access();
            // Caught from here on: the JVM's own handling exits at once (status 143), leaving QEMU's temporary files,
            // the run directory and images that were never closed (qcow2 metadata not written) behind.
            Signals.Termination termination = Signals.watch();
            Path dir = runDirectory(access);
            try {
                if (termination.arrived() != null) {
                    return stopped(termination.arrived(), false);
                }
                try (VmComposer c = VmComposer.compose(vm, dir, host, decision, access)) {
                    for (VmComposer.Device d : c.devices()) {
                        System.err.printf("%-7s %s%n", d.technique(), d.description());
                    }
                    if (libvirtXml) {
                        System.out.print(io.iovirt.daemon.LibvirtXml.domain(
                                new io.iovirt.daemon.LibvirtXml.Domain(name, memory, cpus, null, null, null, null),
                                io.iovirt.daemon.LibvirtXml.fromQemuArgs(c.qemuArgs())));
                        System.out.flush();
                        System.err.println("backends running; stop with Ctrl-C or SIGTERM");
                        termination.await();
                        return 0;
                    }
                    if (serve) {
                        System.out.println("qemu-system-x86_64 -machine q35 -m " + memory
                                + "M -object memory-backend-memfd,id=mem,size=" + memory
                                + "M,share=on -numa node,memdev=mem "
                                + String.join(
                                        " ",
                                        c.qemuArgs().stream()
                                                .map(Run::shellWord)
                                                .toList())
                                + " ...");
                        System.err.println("backends running; stop with Ctrl-C or SIGTERM");
                        termination.await();
                        return 0;
                    }
                    QemuGuest guest = QemuGuest.builder(image)
                            .name(name)
                            .accelerator(decision)
                            .memoryMiB(memory)
                            .cpus(cpus)
                            .modules(c.modules().toArray(String[]::new))
                            .args(c.qemuArgs())
                            .payload(command != null ? command : DEFAULT_COMMAND)
                            .build();
                    return runGuest(guest, termination);
                } // the backends stop: the images are flushed and closed
            } finally {
                try (var files = Files.walk(dir)) {
                    files.sorted(java.util.Comparator.reverseOrder())
                            .forEach(p -> p.toFile().delete());
                }
            }
        }

        /**
         * Runs the guest until its payload ends, or until a termination signal: then QEMU is killed (by interrupting
         * this thread, which every wait of {@link QemuGuest#run} answers by closing the guest and its directory), and
         * the caller closes the backends and removes the run directory as after any other end.
         */
        private int runGuest(QemuGuest guest, Signals.Termination termination) {
            Thread runner = Thread.currentThread();
            Object lock = new Object();
            boolean[] over = {false};
            Thread watcher = Thread.ofPlatform().daemon().name("vm-run-signals").start(() -> {
                try {
                    termination.await();
                } catch (InterruptedException e) {
                    return; // the guest ended first
                }
                synchronized (lock) {
                    if (!over[0]) {
                        runner.interrupt();
                    }
                }
            });
            try {
                if (termination.arrived() != null) { // while the backends started: no guest to boot
                    return stopped(termination.arrived(), false);
                }
                GuestResult r = guest.run(Duration.ofSeconds(timeout));
                System.out.print(r.output());
                return r.exitCode() == 0 ? 0 : 1;
            } catch (RuntimeException e) {
                if (termination.arrived() != null) {
                    return stopped(termination.arrived(), true);
                }
                throw e;
            } finally {
                synchronized (lock) {
                    over[0] = true;
                }
                watcher.interrupt();
                // An interrupt left over would make the images' FileChannels close themselves under the flush that
                // closing the backends does next.
                Thread.interrupted();
            }
        }

        /** After a termination signal: one line saying what was stopped; the exit status is 128 + the signal. */
        private int stopped(String signal, boolean guestStarted) {
            System.err.println("iovirt vm run " + name + ": " + signal + ": "
                    + (guestStarted ? "guest stopped (QEMU killed); " : "")
                    + "closing the backends (images flushed) and removing the run's files");
            return 128
                    + switch (signal) {
                        case "SIGHUP" -> 1;
                        case "SIGINT" -> 2;
                        default -> 15;
                    };
        }

        /**
         * A new directory for this run's sockets under --run-dir (default java.io.tmpdir), removed at exit. With a
         * socket group it is group-owned and mode 0750, so QEMU running as another user (libvirt's) can reach the
         * sockets; otherwise 0700. Its name does not carry the VM's, so socket paths stay short.
         */
        private Path runDirectory(SocketAccess access) throws IOException {
            Path parent = runDir != null ? runDir : Path.of(System.getProperty("java.io.tmpdir"));
            if (!Files.isDirectory(parent)) {
                throw new io.iovirt.util.ActionableException(
                        "--run-dir " + parent + " is not a directory", "create it, or choose another with --run-dir");
            }
            Path dir = Files.createTempDirectory(parent, "iovirt-vm-");
            try {
                // the longest socket name the composer uses, e.g. disk12.sock
                int longest = dir.resolve("disk" + Math.max(disks.size(), nics.size()) + ".sock")
                        .toString()
                        .getBytes(java.nio.charset.StandardCharsets.UTF_8)
                        .length;
                if (longest > io.iovirt.vm.UnixSockets.MAX_PATH_BYTES) {
                    throw new io.iovirt.util.ActionableException(
                            "--run-dir " + parent + " is too long for UNIX socket paths (" + longest + " bytes in "
                                    + dir + ", the limit is " + io.iovirt.vm.UnixSockets.MAX_PATH_BYTES + ")",
                            "choose a shorter directory with --run-dir, e.g. /run/iovirt-vm");
                }
                if (access.group() != null) { // fails with a clear message for a group that does not exist
                    dir.getFileSystem().getUserPrincipalLookupService().lookupPrincipalByGroupName(access.group());
                }
                // created 0700; group and mode set on its inode, never by path (a symlink swapped in is refused)
                access.applyToDirectory(dir);
                return dir;
            } catch (java.nio.file.attribute.UserPrincipalNotFoundException e) {
                Files.deleteIfExists(dir);
                throw new io.iovirt.util.ActionableException(
                        "--socket-group " + access.group() + ": no such group",
                        "create it (groupadd " + access.group() + ") and add QEMU's user to it, or name another");
            } catch (IOException | RuntimeException e) {
                Files.deleteIfExists(dir);
                throw e;
            }
        }

        /**
         * {@code arg} as one shell word, for the command line --serve prints to be pasted: the socket paths are
         * under --run-dir, which may hold a space or any other character the shell would split or expand.
         */
        static String shellWord(String arg) {
            return arg.matches("[A-Za-z0-9_./,:=@%+-]+") ? arg : "'" + arg.replace("'", "'\\''") + "'";
        }

        private Accelerator.Mode parseAccel(String text) {
            try {
                return Accelerator.Mode.parse(text);
            } catch (IllegalArgumentException e) {
                throw usage("--accel: " + e.getMessage());
            }
        }

        private VmSpec.Profile parseProfile() {
            return switch (profile.toLowerCase(Locale.ROOT)) {
                case "pvhvm" -> VmSpec.Profile.PVHVM;
                case "hvm" -> VmSpec.Profile.HVM;
                default -> throw usage("--profile must be pvhvm or hvm, got '" + profile + "'");
            };
        }

        private VmSpec.Disk disk(String text) {
            String[] parts = text.split(",");
            String[] kindAndPath = parts[0].split(":", 2);
            if (kindAndPath.length != 2 || kindAndPath[1].isEmpty()) {
                throw usage("--disk " + text + ": want pv:IMAGE or fv:IMAGE");
            }
            boolean ro = false;
            VmSpec.Bus bus = VmSpec.Bus.AHCI;
            for (int i = 1; i < parts.length; i++) {
                if (parts[i].equals("ro")) {
                    ro = true;
                } else if (parts[i].startsWith("bus=")) {
                    bus = switch (parts[i].substring(4)) {
                        case "ahci" -> VmSpec.Bus.AHCI;
                        case "nvme" -> VmSpec.Bus.NVME;
                        default ->
                            throw usage("--disk " + text + ": bus must be ahci or nvme, got '" + parts[i].substring(4)
                                    + "'");
                    };
                } else {
                    throw usage("--disk " + text + ": unknown option '" + parts[i] + "' (known: ro, bus=ahci|nvme)");
                }
            }
            VmSpec.Kind kind = kind(kindAndPath[0], "--disk " + text);
            if (kind == VmSpec.Kind.PV && bus != VmSpec.Bus.AHCI) {
                throw usage(
                        "--disk " + text + ": bus= chooses the controller QEMU emulates for an fv disk; a pv disk is"
                                + " virtio-blk served by iovirt (use fv:" + kindAndPath[1] + ",bus=nvme)");
            }
            return new VmSpec.Disk(kind, Path.of(kindAndPath[1]), ro, bus);
        }

        private VmSpec.Nic nic(String text) {
            String[] parts = text.split(",");
            long mac = -1;
            for (int i = 1; i < parts.length; i++) {
                if (!parts[i].startsWith("mac=")) {
                    throw usage("--nic " + text + ": unknown option '" + parts[i] + "' (known: mac=MAC)");
                }
                try {
                    mac = Mac.parse(parts[i].substring(4));
                } catch (IllegalArgumentException e) {
                    throw usage("--nic " + text + ": " + e.getMessage());
                }
            }
            return new VmSpec.Nic(kind(parts[0], "--nic " + text), mac);
        }

        private VmSpec.Kind kind(String k, String where) {
            return switch (k) {
                case "pv" -> VmSpec.Kind.PV;
                case "fv" -> VmSpec.Kind.FV;
                default -> throw usage(where + ": kind must be pv or fv, got '" + k + "'");
            };
        }

        private CommandLine.ParameterException usage(String msg) {
            return new CommandLine.ParameterException(spec.commandLine(), msg);
        }
    }
}
