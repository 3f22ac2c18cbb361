// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.testing.Await;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** Runs qemu-img / qemu-io (the real peers) for the storage tests, with a timeout and their output. */
public final class QemuTools {
    private QemuTools() {}

    public record Result(int exit, String output) {}

    /**
     * Runs {@code cmd}, returning its exit code and combined output; fails after 120 s. The output goes to a file
     * while it runs: read from a pipe only after the exit, a long one (qemu-img check of a corrupted image prints a
     * line per cluster) filled the pipe and the command never finished.
     */
    public static Result run(String... cmd) throws IOException, InterruptedException {
        Path log = Files.createTempFile("qemutools", ".out");
        try {
            Process p = new ProcessBuilder(cmd)
                    .redirectErrorStream(true)
                    .redirectOutput(log.toFile())
                    .start();
            try {
                if (!p.waitFor(120, TimeUnit.SECONDS)) {
                    throw new IOException(String.join(" ", cmd) + " did not finish in 120 s");
                }
            } finally {
                p.destroyForcibly();
            }
            // decoded leniently (Files.readString throws on bytes that are not UTF-8)
            return new Result(p.exitValue(), new String(Files.readAllBytes(log), StandardCharsets.UTF_8));
        } finally {
            Files.deleteIfExists(log);
        }
    }

    /** Runs {@code cmd} and asserts it succeeded; returns its output. */
    public static String ok(String... cmd) throws IOException, InterruptedException {
        Result r = run(cmd);
        assertEquals(0, r.exit(), () -> String.join(" ", cmd) + " failed:\n" + r.output());
        return r.output();
    }

    /** {@code qemu-img create -f qcow2 [-o OPT]... dir/name size}: the new image's path. */
    public static Path createQcow2(Path dir, String name, String size, String... opts)
            throws IOException, InterruptedException {
        Path p = dir.resolve(name);
        List<String> cmd = new ArrayList<>(List.of("qemu-img", "create", "-q", "-f", "qcow2"));
        for (String o : opts) {
            cmd.add("-o");
            cmd.add(o);
        }
        cmd.add(p.toString());
        cmd.add(size);
        ok(cmd.toArray(String[]::new));
        return p;
    }

    /** qemu-io on an image with the given commands (-c each). */
    public static Result qemuIo(Path image, String format, String... commands)
            throws IOException, InterruptedException {
        return qemuIo(image.toString(), format, commands);
    }

    /**
     * A qemu-io that has {@code image} (raw) open for writing and holds it, as a running QEMU holds its disk: started
     * and returned once QEMU's image locks are on the file. Destroy it to let go.
     */
    public static Process writerHolding(Path image) throws IOException {
        return holding(image, false);
    }

    /**
     * A qemu-io that has {@code image} (raw) open read-only ({@code -r}) and holds it, as a QEMU with a read-only disk
     * does: its image locks let other readers in and keep writers out. Destroy it to let go.
     */
    public static Process readerHolding(Path image) throws IOException {
        return holding(image, true);
    }

    /** {@link #readerHolding(Path)} of an image in {@code format} ("qcow2"). */
    public static Process readerHolding(Path image, String format) throws IOException {
        return holding(image, format, true);
    }

    private static Process holding(Path image, boolean readOnly) throws IOException {
        return holding(image, "raw", readOnly);
    }

    private static Process holding(Path image, String format, boolean readOnly) throws IOException {
        List<String> cmd = new ArrayList<>(List.of("qemu-io", "-f", format, "-c", "sleep 600000"));
        if (readOnly) {
            cmd.add(1, "-r");
        }
        cmd.add(image.toString());
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        // QEMU's lock bytes: 100 + a permission's bit while it holds that permission (consistent read is bit 0, write
        // bit 1). QEMU takes them one at a time, so the first lock seen on the file was not enough: a test that went
        // on then found no writer (CI, ImageLockTest.aSharedLockIsAReaderToQemu). Wait for the permission that makes
        // the role: a writer's write, a reader's consistent read.
        long role = readOnly ? 100 : 101;
        try (var fd = FileIo.open(image, FileIo.O_RDONLY)) {
            Await.until(Duration.ofSeconds(30), "qemu-io to lock " + image, () -> {
                if (!p.isAlive()) {
                    throw new IllegalStateException(
                            "qemu-io ended (exit " + p.exitValue() + ") before it locked " + image);
                }
                try {
                    return FileIo.ofdConflict(fd, FileIo.F_WRLCK, role, 1) != FileIo.F_UNLCK;
                } catch (LinuxException e) {
                    throw new IllegalStateException(e);
                }
            });
        } catch (IOException | RuntimeException e) {
            p.destroyForcibly();
            throw e;
        }
        return p;
    }

    /** qemu-io on an image file or an NBD URI. */
    public static Result qemuIo(String image, String format, String... commands)
            throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>(List.of("qemu-io", "-f", format));
        for (String c : commands) {
            cmd.add("-c");
            cmd.add(c);
        }
        cmd.add(image);
        return run(cmd.toArray(String[]::new));
    }

    /** qemu-io that must succeed and whose pattern checks must all match ("Pattern verification failed" absent). */
    public static String qemuIoOk(Path image, String format, String... commands)
            throws IOException, InterruptedException {
        return qemuIoOk(image.toString(), format, commands);
    }

    public static String qemuIoOk(String image, String format, String... commands)
            throws IOException, InterruptedException {
        Result r = qemuIo(image, format, commands);
        assertEquals(0, r.exit(), r.output());
        if (r.output().contains("Pattern verification failed") || r.output().contains("failed:")) {
            throw new AssertionError("qemu-io found different data:\n" + r.output());
        }
        return r.output();
    }

    /** {@code qemu-img check}: asserts no corruption (leaks are allowed when {@code leaksOk}). */
    public static String check(Path image, boolean leaksOk) throws IOException, InterruptedException {
        Result r = run("qemu-img", "check", "-f", "qcow2", image.toString());
        // exit 0 clean, 2 corruption, 3 leaks only
        boolean fine = r.exit() == 0 || (leaksOk && r.exit() == 3);
        if (!fine) {
            List<String> lines = r.output().lines().toList();
            String shown = lines.size() <= 60
                    ? r.output()
                    : String.join("\n", lines.subList(0, 40)) + "\n[" + (lines.size() - 50) + " lines left out]\n"
                            + String.join("\n", lines.subList(lines.size() - 10, lines.size()));
            throw new AssertionError("qemu-img check " + image + " exit " + r.exit() + ":\n" + shown);
        }
        return r.output();
    }
}
