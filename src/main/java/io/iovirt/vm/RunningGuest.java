// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.regex.MatchResult;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/** A started QEMU guest. Closing it kills QEMU (SIGKILL) if it still runs and removes its initrd copy. */
public final class RunningGuest implements AutoCloseable {

    private static final long POLL_MS = 50;

    private final String name;
    private final ChildProcess qemu;
    private final Path dir;
    private final Path console;
    private final Path initrd;
    private final boolean deleteDir;
    private final Accelerator.Decision accelerator;
    private final long startNanos = System.nanoTime();

    RunningGuest(
            String name,
            ChildProcess qemu,
            Path dir,
            Path console,
            Path initrd,
            boolean deleteDir,
            Accelerator.Decision accelerator) {
        this.accelerator = accelerator;
        this.name = name;
        this.qemu = qemu;
        this.dir = dir;
        this.console = console;
        this.initrd = initrd;
        this.deleteDir = deleteDir;
    }

    public long pid() {
        return qemu.pid();
    }

    /** The accelerator this guest runs under, and why. */
    public Accelerator.Decision accelerator() {
        return accelerator;
    }

    /**
     * For a KVM guest in auto mode: waits until the console shows the guest's init line ({@link GuestResult#INIT}):
     * its kernel has run under KVM up to user space. Returns null when it did, or why KVM failed (QEMU's KVM error
     * line, or no init line within {@code timeout}); null also when QEMU exited without a KVM error, which the caller
     * then reports as usual. QEMU does not exit on a KVM internal error (the vCPU stops), so its log is watched too.
     * The firmware's lines do not count: SeaBIOS writes its banner to the serial console (-nographic) before the
     * kernel runs, and on a PVM host whose KVM now sets up -cpu host's vCPUs (QEMU aborted there before) the kernel
     * then stops with a KVM internal error, or hangs without one: taking the banner for a running guest left it hung
     * until the caller's timeout (CI, 2026-12-07).
     */
    String awaitFirstOutputUnderKvm(Duration timeout) {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            if (GuestResult.INIT.matcher(console()).find()) {
                return null;
            }
            String error = Accelerator.earlyKvmFailure(qemu.log());
            if (error != null) {
                return "QEMU: " + error;
            }
            if (!qemu.isAlive()) {
                // QEMU may abort while KVM sets up a vCPU; any other early exit is not KVM's doing (bad arguments):
                // the caller reports that as usual
                String exitError = Accelerator.earlyKvmFailure(qemu.log());
                return exitError == null ? null : "QEMU exited with status " + qemu.exitValue() + ": " + exitError;
            }
            if (System.nanoTime() > deadline) {
                return "the guest's kernel did not reach its init within " + timeout.toSeconds() + " s";
            }
            sleep();
        }
    }

    /** Deletes core dumps QEMU left in this guest's directory (after a failed KVM attempt nobody reads them). */
    void discardCoreDumps() {
        try (Stream<Path> files = Files.list(dir)) {
            for (Path f : (Iterable<Path>) files::iterator) {
                String n = f.getFileName().toString();
                if (n.equals("core") || n.startsWith("core.")) {
                    Files.deleteIfExists(f);
                }
            }
        } catch (IOException e) {
            // the directory is deleted with the guest, or kept for a person to look at
        }
    }

    public boolean isAlive() {
        return qemu.isAlive();
    }

    /** This guest's directory: console.log, qemu.log, command.txt. */
    public Path directory() {
        return dir;
    }

    /** The serial console so far, carriage returns removed. */
    public String console() {
        try {
            return Files.readString(console, StandardCharsets.ISO_8859_1).replace("\r", "");
        } catch (NoSuchFileException e) {
            return "";
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + console, e);
        }
    }

    /**
     * Waits until the console's complete lines show {@code pattern}. Throws if QEMU exits first or the timeout
     * passes, with the console's last lines and QEMU's log in the message.
     *
     * <p>Only text up to the last newline is matched: the guest's serial output reaches the file in pieces, and a
     * group such as {@code (.*)$} or {@code ([0-9a-f]+)} matched against a line still being written ends where the
     * piece ends (a test once read the first 26 of an md5's 32 digits and failed on a file that had arrived intact).
     */
    public MatchResult awaitConsole(Pattern pattern, Duration timeout) {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            String text = console();
            Matcher m = pattern.matcher(text.substring(0, text.lastIndexOf('\n') + 1));
            if (m.find()) {
                return m.toMatchResult();
            }
            if (!qemu.isAlive()) {
                throw failure(
                        "QEMU exited with status " + qemu.exitValue() + " before the console showed /" + pattern + "/");
            }
            if (System.nanoTime() > deadline) {
                throw failure("the console did not show /" + pattern + "/ within " + timeout.toSeconds() + " s");
            }
            sleep();
        }
    }

    /**
     * Waits until QEMU exits after the payload finished and returns the result. On timeout QEMU is killed and a
     * {@link GuestException} tells where the guest was.
     */
    public GuestResult awaitExit(Duration timeout) {
        if (!qemu.waitFor(timeout)) {
            qemu.kill();
            throw failure("guest did not finish within " + timeout.toSeconds() + " s (killed)");
        }
        String text = console();
        Matcher m = GuestResult.EXIT.matcher(text);
        Integer exit = null;
        while (m.find()) {
            exit = Integer.parseInt(m.group(1));
        }
        if (exit == null) {
            throw failure("QEMU exited with status " + qemu.exitValue() + " but the payload never finished");
        }
        return new GuestResult(
                exit, text, GuestResult.countBoots(text), Duration.ofNanos(System.nanoTime() - startNanos));
    }

    /** When QEMU died from a signal: the signal and gdb's backtrace of its core; "" while it runs or after a normal exit. */
    public String crashReport() {
        return qemu.crashReport();
    }

    /** SIGKILL to QEMU, as a host crash or an OOM kill would do; waits until it is gone. */
    public void kill() {
        qemu.kill();
    }

    @Override
    public void close() {
        try {
            qemu.close();
        } finally {
            removeFiles();
        }
    }

    private void removeFiles() {
        try {
            if (deleteDir) {
                try (Stream<Path> all = Files.walk(dir)) {
                    all.sorted(Comparator.reverseOrder())
                            .forEach(p -> p.toFile().delete());
                }
            } else {
                Files.deleteIfExists(initrd);
            }
        } catch (IOException e) {
            throw new UncheckedIOException("cannot clean up " + dir, e);
        }
    }

    private GuestException failure(String what) {
        String crash = qemu.crashReport();
        return new GuestException(name + ": " + what + "\n--- console (last lines) ---\n"
                + ChildProcess.tail(console(), 25) + "\n--- qemu log ---\n" + qemu.logTail(10)
                + (crash.isEmpty() ? "" : "\n--- crash ---\n" + crash)
                + "\n--- directory: " + dir);
    }

    private static void sleep() {
        try {
            Thread.sleep(POLL_MS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new GuestException("interrupted while waiting for the guest", e);
        }
    }
}
