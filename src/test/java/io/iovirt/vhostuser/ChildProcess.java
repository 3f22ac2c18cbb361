package io.iovirt.vhostuser;

import io.iovirt.testing.Await;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

/** A peer process (QEMU, qemu-storage-daemon) for a test: output to a log file, always killed on close. */
final class ChildProcess implements AutoCloseable {
    private final Process process;
    private final Path log;
    private final String name;

    private final Path dir;
    private final String program;

    private ChildProcess(Process process, Path log, String name, Path dir, String program) {
        this.dir = dir;
        this.program = program;
        this.process = process;
        this.log = log;
        this.name = name;
    }

    static ChildProcess start(Path dir, String name, List<String> command) throws IOException {
        Path log = dir.resolve(name + ".log");
        // may dump core into dir: a crash reaches the failure message as a gdb backtrace
        Process p = new ProcessBuilder(io.iovirt.vm.CoreDump.wrap(command)).directory(dir.toFile())
                .redirectErrorStream(true).redirectOutput(log.toFile())
                .redirectInput(ProcessBuilder.Redirect.from(Path.of("/dev/null").toFile())).start();
        return new ChildProcess(p, log, name, dir, command.getFirst());
    }

    static boolean installed(String program) {
        for (String dir : System.getenv().getOrDefault("PATH", "/usr/bin").split(":")) {
            if (Files.isExecutable(Path.of(dir, program))) {
                return true;
            }
        }
        return false;
    }

    /** Waits (bounded) until {@code condition} holds; fails with the process's output if it exits or time runs out. */
    void await(String what, Duration timeout, BooleanSupplier condition) {
        Await.until(timeout, () -> what + "; " + name + " said:\n" + output(), () -> {
            if (condition.getAsBoolean()) {
                return true;
            }
            if (!process.isAlive()) {
                String crash = io.iovirt.vm.CoreDump.report(name, process.pid(), process.exitValue(), dir, program);
                throw new AssertionError(name + " exited with " + process.exitValue() + " before " + what + ":\n" + output()
                        + (crash.isEmpty() ? "" : "\n" + crash));
            }
            return false;
        });
    }

    boolean isAlive() {
        return process.isAlive();
    }

    String output() {
        try {
            return Files.readString(log);
        } catch (IOException e) {
            return "(no output: " + e.getMessage() + ")";
        }
    }

    /** Kills the process and waits for it to be gone. */
    @Override
    public void close() {
        process.destroyForcibly();
        try {
            process.waitFor(30, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
