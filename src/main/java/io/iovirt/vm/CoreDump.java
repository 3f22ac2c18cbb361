// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/**
 * Core dumps of child processes (QEMU, qemu-storage-daemon, testpmd) and their backtraces: a child started through
 * {@link #wrap} may dump core into its working directory, and {@link #report} turns a death by signal into a
 * message with gdb's backtrace. Nothing host-wide is changed: RLIMIT_CORE is raised for the child alone, and the
 * kernel's core_pattern is only read (the default "core" writes the dump into the child's working directory).
 */
public final class CoreDump {
    /**
     * Raise the soft core limit (up to the hard one) and leave shared memory out of the dump (coredump_filter 0x31:
     * anonymous private, ELF headers, private huge pages): a guest's RAM is a shared memfd of hundreds of MiB that
     * a backtrace does not need. {@code exec} keeps the pid.
     */
    private static final String WRAPPER =
            "ulimit -c unlimited 2>/dev/null || ulimit -c \"$(ulimit -H -c)\" 2>/dev/null;"
                    + " echo 0x31 > /proc/self/coredump_filter 2>/dev/null; exec \"$@\"";

    private static final Map<Integer, String> SIGNALS = Map.of(
            4, "SIGILL", 5, "SIGTRAP", 6, "SIGABRT", 7, "SIGBUS", 8, "SIGFPE", 9, "SIGKILL", 11, "SIGSEGV", 15,
            "SIGTERM", 31, "SIGSYS");
    /** Signals whose default action dumps core. */
    private static final List<Integer> CORE_SIGNALS = List.of(3, 4, 5, 6, 7, 8, 11, 24, 25, 31);

    private static final int MAX_LINES = 120;
    private static final long GDB_TIMEOUT_SECONDS = 120;

    private CoreDump() {}

    /** {@code command} run through a shell that enables core dumps for it; unchanged if the program is not found. */
    public static List<String> wrap(List<String> command) {
        if (resolve(command.getFirst()) == null || resolve("sh") == null) {
            return command; // let ProcessBuilder report the missing program as before
        }
        List<String> argv = new ArrayList<>(List.of("sh", "-c", WRAPPER, "iovirt-core-wrapper"));
        argv.addAll(command);
        return argv;
    }

    /**
     * For a process that exited with {@code status} (Java reports death by signal N as 128 + N): "" for a normal
     * exit, else a line naming the signal followed, when a core is found in {@code directory}, by gdb's backtrace of
     * the crashing thread and the other threads' top frames. The core is deleted afterwards (it is large).
     */
    public static String report(String name, long pid, int status, Path directory, String program) {
        if (status <= 128 || status > 128 + 64) {
            return "";
        }
        int signal = status - 128;
        StringBuilder s = new StringBuilder(
                name + " (pid " + pid + ") was killed by " + SIGNALS.getOrDefault(signal, "signal " + signal));
        if (!CORE_SIGNALS.contains(signal)) {
            return s.toString();
        }
        Path core = directory == null ? null : findCore(directory, pid);
        if (core == null) {
            return s.append("; no core dump found")
                    .append(directory == null ? "" : " in " + directory)
                    .append(" (core_pattern: ")
                    .append(corePattern())
                    .append(")")
                    .toString();
        }
        s.append("; backtrace from ").append(core).append(":\n").append(backtrace(program, core));
        try {
            Files.deleteIfExists(core);
        } catch (IOException e) {
            s.append("\n(could not delete the core: ").append(e.getMessage()).append(")");
        }
        return s.toString();
    }

    static String corePattern() {
        try {
            return Files.readString(Path.of("/proc/sys/kernel/core_pattern")).strip();
        } catch (IOException e) {
            return "unreadable";
        }
    }

    /** The core of {@code pid} in {@code directory}: core, core.PID, or any core* file naming the pid. */
    static Path findCore(Path directory, long pid) {
        String pattern = corePattern();
        if (pattern.startsWith("|")) {
            return null; // piped to a handler (systemd-coredump, apport): not in the directory
        }
        for (String candidate : new String[] {"core." + pid, "core"}) {
            Path p = directory.resolve(candidate);
            if (Files.isRegularFile(p)) {
                return p;
            }
        }
        try (Stream<Path> files = Files.list(directory)) {
            return files.filter(p -> {
                        String f = p.getFileName().toString();
                        return f.startsWith("core") && f.contains(Long.toString(pid));
                    })
                    .findFirst()
                    .orElse(null);
        } catch (IOException e) {
            return null;
        }
    }

    /** gdb's backtrace of {@code core}, or why there is none. */
    static String backtrace(String program, Path core) {
        Path exe = resolve(program);
        if (exe == null) {
            return "(cannot find " + program + " for gdb)";
        }
        if (resolve("gdb") == null) {
            return "(gdb is not installed: apt-get install gdb; the core is " + core + ")";
        }
        try {
            Path out = Files.createTempFile("iovirt-gdb", ".txt");
            try {
                Process gdb = new ProcessBuilder(
                                "gdb",
                                "-batch",
                                "-nx",
                                "-q",
                                "-ex",
                                "set pagination off",
                                "-ex",
                                "bt",
                                "-ex",
                                "thread apply all bt 6",
                                exe.toString(),
                                core.toString())
                        .redirectErrorStream(true)
                        .redirectOutput(out.toFile())
                        .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
                        .start();
                if (!gdb.waitFor(GDB_TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
                    gdb.destroyForcibly();
                    return "(gdb took longer than " + GDB_TIMEOUT_SECONDS + " s)";
                }
                List<String> lines = Files.readAllLines(out, StandardCharsets.ISO_8859_1).stream()
                        .filter(l -> !l.startsWith("[New LWP") && !l.startsWith("warning: ") && !l.isBlank())
                        .toList();
                String text = String.join("\n", lines.subList(0, Math.min(lines.size(), MAX_LINES)));
                return lines.size() > MAX_LINES ? text + "\n(... " + (lines.size() - MAX_LINES) + " more lines)" : text;
            } finally {
                Files.deleteIfExists(out);
            }
        } catch (IOException e) {
            return "(cannot run gdb: " + e.getMessage() + ")";
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return "(interrupted while running gdb)";
        }
    }

    static Path resolve(String program) {
        if (program.contains("/")) {
            Path p = Path.of(program);
            return Files.isExecutable(p) ? p : null;
        }
        for (String dir : System.getenv().getOrDefault("PATH", "/usr/bin:/bin").split(":")) {
            if (!dir.isEmpty()) {
                Path p = Path.of(dir, program);
                if (Files.isExecutable(p)) {
                    return p;
                }
            }
        }
        return null;
    }
}
