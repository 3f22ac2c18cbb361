// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.regex.Pattern;

/**
 * A QEMU guest that boots the {@link GuestImage} kernel, runs one shell script (the payload) as root in its
 * initramfs, and powers off. Every guest gets its own directory with the console log, QEMU's log and its initrd:
 * the cached base archive, optionally the fio layer, then a small archive with /run.sh and the payload's files (the
 * kernel unpacks concatenated cpio archives in order, so nothing is rebuilt per run).
 *
 * <p>Guest RAM is a shared memfd bound to a NUMA node, which vhost-user backends need to map it. The accelerator
 * is {@link Accelerator#system()} (KVM only when it can run a stock guest; {@code IOVIRT_ACCEL} overrides) unless the
 * builder is given one. In auto mode a KVM guest that fails early (QEMU reports a KVM internal error or emulation
 * failure, or its init line does not show within 60 s: the firmware's banner does not count) is killed and booted
 * again under TCG, with one line to the notice sink. A migration destination ({@link Builder#incoming}) is not: it runs
 * no code until it is migrated to, and it runs under the accelerator its source ended up with, fallback included
 * (QEMU cannot migrate between KVM and TCG: the CPU models differ).
 *
 * <pre>{@code
 * GuestResult r = QemuGuest.builder(GuestImage.ensure())
 *         .workDir(dir)
 *         .args("-chardev", "socket,id=c0,path=" + QemuGuest.escape(sock.toString()),
 *               "-device", "vhost-user-blk-pci,chardev=c0")
 *         .payload("dd if=/dev/vda bs=1M count=8 iflag=direct | sha256sum")
 *         .build()
 *         .run(Duration.ofSeconds(60));
 * }</pre>
 */
public final class QemuGuest {

    public static final String PROGRAM = "qemu-system-x86_64";
    /** The least guest memory the test guest (kernel and initramfs in RAM) is booted with. */
    public static final int MIN_MEMORY_MIB = 128;
    /**
     * How long a KVM guest in auto mode has to print its init line. A working KVM guest's kernel reaches its init in
     * about a second; the margin is for a loaded host.
     */
    static final Duration KVM_FIRST_OUTPUT = Duration.ofSeconds(60);
    /**
     * no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer probe can miss its window and panic
     * ("IO-APIC + timer doesn't work", seen in CI); the check proves nothing about an emulated board.
     */
    private static final String BASE_KERNEL_ARGS = "console=ttyS0 panic=-1 quiet no_timer_check";
    /** The kernel's x86 command-line limit is 2048 bytes including the NUL. */
    private static final int MAX_CMDLINE = 2047;
    /** Mounted over by /init, or owned by it: payload files there would be hidden or break the boot. */
    private static final List<String> RESERVED = List.of("/proc", "/sys", "/dev", "/tmp", "/run", "/init", "/run.sh");

    private static final Pattern KERNEL_ARG = Pattern.compile("[A-Za-z0-9_.,:/=+@-]+");

    /**
     * Kernel arguments this class sets itself, and what sets them: a caller's {@link Builder#kernelArgs} value would
     * silently conflict with ours (the kernel takes the last console= and panic=, /init sees one of two modules=)
     * or be ignored (init= under an initramfs, whose /init runs the payload), so it is refused.
     */
    private static final Map<String, String> OWN_KERNEL_ARGS = Map.of(
            "console",
                    "QemuGuest sets console=ttyS0 itself: the serial console is the console log it reads results from",
            "init", "QemuGuest boots its own /init, which runs the script given to payload(): use payload()",
            "rdinit", "QemuGuest boots its own /init, which runs the script given to payload(): use payload()",
            "modules", "modules() sets it: use modules()",
            "panic", "QemuGuest sets panic=-1 itself: a panicking guest powers off, which ends the run");

    private final Builder b;

    private QemuGuest(Builder b) {
        this.b = b;
    }

    public static Builder builder(GuestImage image) {
        return new Builder(image);
    }

    /** QEMU's option syntax: a comma inside a value is written as two commas. */
    public static String escape(String value) {
        return value.replace(",", ",,");
    }

    /** The accelerator this guest will be started with (before any fallback). */
    public Accelerator.Decision accelerator() {
        return b.accelerator != null ? b.accelerator : Accelerator.system();
    }

    /** Boots, waits for the payload to finish (at most {@code timeout}) and always kills QEMU before returning. */
    public GuestResult run(Duration timeout) {
        try (RunningGuest guest = start(timeout.plusSeconds(30))) {
            return guest.awaitExit(timeout);
        }
    }

    /**
     * Starts QEMU and returns at once; the caller closes the result (which kills QEMU). {@code lifetime} is a
     * safety net: QEMU is killed after it even if nobody closes the guest.
     */
    public RunningGuest start(Duration lifetime) {
        Accelerator.Decision accel = accelerator();
        RunningGuest guest = start(accel, lifetime);
        if (!accel.mayFallBack() || b.incoming != null) {
            return guest; // a destination prints nothing before the migration, which starts after this returns
        }
        String why;
        try {
            why = guest.awaitFirstOutputUnderKvm(KVM_FIRST_OUTPUT);
        } catch (RuntimeException e) {
            guest.close();
            throw e;
        }
        if (why == null) {
            return guest;
        }
        guest.kill();
        guest.discardCoreDumps();
        guest.close();
        Accelerator.Decision tcg = accel.fallBack(why);
        b.notice.accept(b.name + ": KVM guest failed early (" + why + "); booting it again under TCG");
        return start(tcg, lifetime);
    }

    private RunningGuest start(Accelerator.Decision accel, Duration lifetime) {
        Path dir = null;
        try {
            Path parent = b.workDir != null ? b.workDir : Path.of(System.getProperty("java.io.tmpdir"));
            Files.createDirectories(parent);
            dir = Files.createTempDirectory(parent, "guest-");
            Path initrd = dir.resolve("initrd.cpio");
            writeInitrd(initrd);
            Path console = dir.resolve("console.log");
            List<String> cmd = command(accel, initrd, console);
            Files.writeString(dir.resolve("command.txt"), String.join(" ", cmd) + "\n");
            ChildProcess qemu = ChildProcess.builder(cmd)
                    .name(b.name)
                    .log(dir.resolve("qemu.log"))
                    .directory(dir)
                    .lifetime(lifetime)
                    .start();
            return new RunningGuest(b.name, qemu, dir, console, initrd, b.workDir == null, accel);
        } catch (IOException e) {
            discard(dir);
            throw new UncheckedIOException("cannot prepare guest " + b.name + ": " + e.getMessage(), e);
        } catch (RuntimeException | Error e) {
            discard(dir); // e.g. QEMU missing (ChildProcess throws UncheckedIOException): no guest will clean up
            throw e;
        }
    }

    /**
     * What {@link RunningGuest#close} would have removed of a guest that did not start: its whole directory when it
     * is a temporary one, else the initrd copy (several MB).
     */
    private void discard(Path dir) {
        if (dir == null) {
            return;
        }
        try {
            if (b.workDir == null) {
                try (java.util.stream.Stream<Path> all = Files.walk(dir)) {
                    all.sorted(java.util.Comparator.reverseOrder())
                            .forEach(p -> p.toFile().delete());
                }
            } else {
                Files.deleteIfExists(dir.resolve("initrd.cpio"));
            }
        } catch (IOException | UncheckedIOException e) {
            // the failure that brought us here is the one to report
        }
    }

    /** The QEMU command line for the given accelerator, initrd and console file. */
    List<String> command(Accelerator.Decision accel, Path initrd, Path console) {
        List<String> cmd = new ArrayList<>();
        cmd.add(PROGRAM);
        cmd.addAll(accel.qemuArgs());
        cmd.addAll(List.of(
                "-machine",
                "q35" + (b.machineOptions.isEmpty() ? "" : "," + b.machineOptions),
                "-smp",
                Integer.toString(b.cpus),
                "-m",
                b.memoryMiB + "M",
                "-object",
                "memory-backend-memfd,id=mem0,size=" + b.memoryMiB + "M,share=on",
                "-numa",
                "node,memdev=mem0",
                "-nodefaults",
                "-nographic",
                "-chardev",
                "file,id=console0,path=" + escape(console.toAbsolutePath().toString()),
                "-serial",
                "chardev:console0",
                "-kernel",
                b.image.kernel().toAbsolutePath().toString(),
                "-initrd",
                initrd.toAbsolutePath().toString(),
                "-append",
                kernelCommandLine()));
        if (!b.allowReboot) {
            cmd.add("-no-reboot");
        }
        cmd.addAll(b.args);
        if (b.incoming != null) {
            cmd.addAll(List.of("-incoming", b.incoming));
        }
        return cmd;
    }

    String kernelCommandLine() {
        StringBuilder s = new StringBuilder(BASE_KERNEL_ARGS);
        if (!b.modules.isEmpty()) {
            s.append(" modules=").append(String.join(",", b.modules));
        }
        for (String arg : b.kernelArgs) {
            s.append(' ').append(arg);
        }
        if (s.length() > MAX_CMDLINE) {
            throw new IllegalArgumentException("kernel command line is " + s.length() + " bytes, the limit is "
                    + MAX_CMDLINE + ": pass data as payload files instead");
        }
        return s.toString();
    }

    /**
     * Writes this guest's initrd (base image, payload and files) to {@code initrd} and returns the kernel command
     * line to boot it with: for running the same guest under another VMM, e.g. a libvirt domain.
     */
    public String exportBoot(Path initrd) throws IOException {
        writeInitrd(initrd);
        return kernelCommandLine();
    }

    private void writeInitrd(Path initrd) throws IOException {
        ByteArrayOutputStream payload = new ByteArrayOutputStream();
        try (CpioWriter cpio = new CpioWriter(payload)) {
            cpio.file("run.sh", b.payload.getBytes(StandardCharsets.UTF_8), 0755);
            for (Map.Entry<String, GuestFile> f : b.files.entrySet()) {
                byte[] content =
                        f.getValue().content != null ? f.getValue().content : Files.readAllBytes(f.getValue().host);
                cpio.file(f.getKey(), content, f.getValue().mode);
            }
        }
        try (FileChannel out = FileChannel.open(initrd, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
            append(out, b.image.initrd());
            if (b.fio) {
                append(out, b.image.fioLayer());
            }
            java.nio.ByteBuffer buf = java.nio.ByteBuffer.wrap(payload.toByteArray());
            while (buf.hasRemaining()) {
                out.write(buf);
            }
        }
    }

    /** Copies an archive and pads with zeros to 4 bytes: the kernel expects each archive 4-byte aligned. */
    private static void append(FileChannel out, Path archive) throws IOException {
        try (FileChannel in = FileChannel.open(archive, StandardOpenOption.READ)) {
            long size = in.size();
            for (long pos = 0; pos < size; ) {
                pos += in.transferTo(pos, size - pos, out);
            }
        }
        long pad = (4 - (out.position() & 3)) & 3;
        out.write(java.nio.ByteBuffer.allocate((int) pad));
    }

    private record GuestFile(Path host, byte[] content, int mode) {}

    /** What the guest looks like and runs. */
    public static final class Builder {
        private final GuestImage image;
        private String name = "guest";
        private int memoryMiB = 512;
        private int cpus = 1;
        private String machineOptions = "";
        private boolean allowReboot;
        private boolean fio;
        private Path workDir;
        private String payload;
        private Accelerator.Decision accelerator;
        /** The migration URI of a destination, or null. */
        private String incoming;

        private java.util.function.Consumer<String> notice = line -> System.err.println("iovirt: " + line);
        private final List<String> modules = new ArrayList<>();
        private final List<String> kernelArgs = new ArrayList<>();
        private final List<String> args = new ArrayList<>();
        private final Map<String, GuestFile> files = new LinkedHashMap<>();

        private Builder(GuestImage image) {
            this.image = Objects.requireNonNull(image);
        }

        /** Used in messages and as the QEMU process name in logs. */
        public Builder name(String name) {
            this.name = Objects.requireNonNull(name);
            return this;
        }

        public Builder memoryMiB(int memoryMiB) {
            if (memoryMiB < MIN_MEMORY_MIB) {
                throw new IllegalArgumentException(
                        "guest memory " + memoryMiB + " MiB is too small (min " + MIN_MEMORY_MIB + ")");
            }
            this.memoryMiB = memoryMiB;
            return this;
        }

        public Builder cpus(int cpus) {
            if (cpus < 1) {
                throw new IllegalArgumentException("cpus must be at least 1");
            }
            this.cpus = cpus;
            return this;
        }

        /** Extra q35 options, e.g. {@code kernel-irqchip=split}. */
        public Builder machineOptions(String options) {
            this.machineOptions = Objects.requireNonNull(options);
            return this;
        }

        /**
         * Let the guest reboot (omit {@code -no-reboot}). The guest still ends by powering off after the payload;
         * a payload that runs {@code reboot -f} boots again and runs again.
         */
        public Builder allowReboot(boolean allowReboot) {
            this.allowReboot = allowReboot;
            return this;
        }

        /** Append the fio layer (fio and its ~85 MB of libraries; costs ~0.7 s of boot under TCG). */
        public Builder fio() {
            this.fio = true;
            return this;
        }

        /** The accelerator to use instead of {@link Accelerator#system()} (e.g. from an --accel option). */
        public Builder accelerator(Accelerator.Decision accelerator) {
            this.accelerator = Objects.requireNonNull(accelerator);
            return this;
        }

        /**
         * Makes this guest the destination of a migration from {@code source}: QEMU waits on {@code uri}
         * ({@code -incoming}) and runs under the accelerator the source ended up with (KVM, or TCG when KVM was
         * unusable or the source fell back to it), since a KVM guest cannot be migrated into TCG or back. Everything
         * else must match the source's builder (memory, devices, initrd); this does not check it.
         */
        public Builder incoming(String uri, RunningGuest source) {
            return incoming(uri, source.accelerator());
        }

        /** {@link #incoming(String, RunningGuest)} from a source that ran under {@code sourceAccelerator}. */
        Builder incoming(String uri, Accelerator.Decision sourceAccelerator) {
            this.incoming = Objects.requireNonNull(uri);
            this.accelerator = Objects.requireNonNull(sourceAccelerator);
            return this;
        }

        /** Where the one-line notice of a KVM-to-TCG fallback goes (default: standard error). */
        public Builder notice(java.util.function.Consumer<String> notice) {
            this.notice = Objects.requireNonNull(notice);
            return this;
        }

        /** Parent of this guest's own directory; defaults to java.io.tmpdir (then deleted when the guest is closed). */
        public Builder workDir(Path workDir) {
            this.workDir = workDir;
            return this;
        }

        /** Modules /init loads before the payload, with their dependencies (default: virtio_pci, virtio_blk). */
        public Builder modules(String... modules) {
            for (String m : modules) {
                if (!m.matches("[A-Za-z0-9_-]+")) {
                    throw new IllegalArgumentException("bad module name '" + m + "'");
                }
                this.modules.add(m);
            }
            return this;
        }

        /**
         * Kernel command-line words; {@code key=value} words reach /init and the payload as environment. Words this
         * class sets itself (console=, init=, rdinit=, modules=, panic=) are refused, naming what sets them.
         */
        public Builder kernelArgs(String... words) {
            for (String w : words) {
                if (!KERNEL_ARG.matcher(w).matches()) {
                    throw new IllegalArgumentException("kernel argument '" + w + "' has characters the kernel would "
                            + "split or quote; pass data as a payload file instead");
                }
                int eq = w.indexOf('=');
                String own = OWN_KERNEL_ARGS.get(eq < 0 ? w : w.substring(0, eq));
                if (own != null) {
                    throw new IllegalArgumentException("kernel argument '" + w + "' is not the caller's: " + own);
                }
                kernelArgs.add(w);
            }
            return this;
        }

        /** Raw QEMU arguments (devices, chardevs, netdevs, drives), appended after the built-in ones. */
        public Builder args(String... args) {
            this.args.addAll(List.of(args));
            return this;
        }

        public Builder args(List<String> args) {
            this.args.addAll(args);
            return this;
        }

        /** The shell script /init runs (busybox sh, cwd /root, stdin /dev/null); its exit status is the result. */
        public Builder payload(String script) {
            this.payload = Objects.requireNonNull(script);
            return this;
        }

        /** A file the payload can use, copied from the host at start. */
        public Builder file(String guestPath, Path hostFile) {
            files.put(checkGuestPath(guestPath), new GuestFile(Objects.requireNonNull(hostFile), null, 0644));
            return this;
        }

        public Builder file(String guestPath, byte[] content, int mode) {
            files.put(checkGuestPath(guestPath), new GuestFile(null, content.clone(), mode));
            return this;
        }

        public QemuGuest build() {
            if (payload == null) {
                throw new IllegalStateException("a guest needs a payload script");
            }
            if (args.contains("-incoming")) {
                throw new IllegalStateException("a migration destination is made with incoming(uri, source), which"
                        + " gives it the source's accelerator; not with -incoming in args()");
            }
            return new QemuGuest(this);
        }

        private static String checkGuestPath(String path) {
            if (!path.startsWith("/") || path.contains("/../") || path.endsWith("/..") || path.endsWith("/")) {
                throw new IllegalArgumentException("guest file path must be absolute and normalized: '" + path + "'");
            }
            for (String r : RESERVED) {
                if (path.equals(r) || path.startsWith(r + "/")) {
                    throw new IllegalArgumentException("guest file " + path + " is under " + r
                            + ", which /init mounts over or owns; use /root or /opt");
                }
            }
            return path;
        }
    }
}
