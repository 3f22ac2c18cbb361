// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * A child process (QEMU, qemu-storage-daemon, a backend under test) whose stdout and stderr go to a log file, that
 * is killed with its whole process tree on {@link #close()}, when its optional lifetime runs out, and when this JVM
 * exits. Its stdin is /dev/null.
 *
 * <p>A child started in a {@linkplain Builder#directory directory} may dump core there (RLIMIT_CORE raised for it
 * alone, shared memory such as guest RAM left out of the dump): when it dies from a signal, {@link #crashReport()}
 * names the signal and carries gdb's backtrace, so a crash in CI is diagnosable from the log alone.
 */
public final class ChildProcess implements AutoCloseable {

    private static final Duration REAP_TIMEOUT = Duration.ofSeconds(10);
    /** Children still running; a shutdown hook kills them so no QEMU outlives an aborted test run or demo. */
    private static final Set<ChildProcess> LIVE = ConcurrentHashMap.newKeySet();
    /**
     * Set by the reaper before it kills: a thread still starting a child during the JVM's shutdown (the demo's thread
     * runs on after a SIGTERM) kills it itself, since the reaper may have passed already. Written before the reaper
     * reads {@link #LIVE}, read after a child is added to it: one of the two always sees the child.
     */
    private static volatile boolean reaping;

    static {
        Runtime.getRuntime()
                .addShutdownHook(new Thread(
                        () -> {
                            reaping = true;
                            LIVE.forEach(ChildProcess::killNoWait);
                        },
                        "iovirt-child-reaper"));
    }

    private final String name;
    private final List<String> command;
    private final Process process;
    private final Path log;
    private final Path directory;
    private String crash; // guarded by this: the core is read (and deleted) once
    private final CompletableFuture<Void> watchdog;

    private ChildProcess(
            String name, List<String> command, Process process, Path log, Path directory, Duration lifetime) {
        this.directory = directory;
        this.name = name;
        this.command = command;
        this.process = process;
        this.log = log;
        LIVE.add(this);
        process.onExit().thenRun(() -> LIVE.remove(this));
        this.watchdog = lifetime == null
                ? null
                : CompletableFuture.runAsync(
                        this::killNoWait,
                        CompletableFuture.delayedExecutor(lifetime.toMillis(), TimeUnit.MILLISECONDS));
    }

    public static Builder builder(List<String> command) {
        return new Builder(command);
    }

    public static Builder builder(String... command) {
        return new Builder(List.of(command));
    }

    public String name() {
        return name;
    }

    public List<String> command() {
        return command;
    }

    public long pid() {
        return process.pid();
    }

    public boolean isAlive() {
        return process.isAlive();
    }

    public Path logFile() {
        return log;
    }

    /** Waits until the process exits or the timeout passes; true if it exited. */
    public boolean waitFor(Duration timeout) {
        try {
            return process.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while waiting for " + name, e);
        }
    }

    /** The exit status; the process must have exited. */
    public int exitValue() {
        return process.exitValue();
    }

    /**
     * When the process has exited from a signal: one line naming it, and gdb's backtrace if it left a core in its
     * directory; "" while it runs or after a normal exit. A process killed by {@link #kill()}/{@link #stop} has no
     * core (SIGKILL/SIGTERM), so this is only the signal line then.
     */
    public String crashReport() {
        if (process.isAlive()) {
            return "";
        }
        synchronized (this) {
            if (crash == null) {
                crash = CoreDump.report(name, process.pid(), process.exitValue(), directory, command.getFirst());
            }
            return crash;
        }
    }

    /** Everything the process printed so far (stdout and stderr interleaved). */
    public String log() {
        try {
            return Files.readString(log, StandardCharsets.ISO_8859_1);
        } catch (NoSuchFileException e) {
            return "";
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the log of " + name + " at " + log, e);
        }
    }

    /** The last {@code lines} lines of the log, for error messages. */
    public String logTail(int lines) {
        return tail(log(), lines);
    }

    /** SIGTERM, then SIGKILL if the process has not exited within {@code grace}; waits until it is gone. */
    public void stop(Duration grace) {
        if (!process.isAlive()) {
            return;
        }
        process.destroy();
        if (!waitFor(grace)) {
            kill();
        }
    }

    /**
     * SIGKILL to the process and its descendants, then waits until it is gone — also when this thread is interrupted
     * (the interrupt is kept for the caller): a kill is how an interrupted wait cleans up, and the process is gone
     * moments after SIGKILL.
     */
    public void kill() {
        killNoWait();
        boolean interrupted = false;
        long deadline = System.nanoTime() + REAP_TIMEOUT.toNanos();
        while (process.isAlive()) {
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                break;
            }
            try {
                process.waitFor(left, TimeUnit.NANOSECONDS);
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    private void killNoWait() {
        // Descendants first: once the parent is gone they are reparented and no longer found through it.
        process.descendants().forEach(ProcessHandle::destroyForcibly);
        process.destroyForcibly();
    }

    @Override
    public void close() {
        if (watchdog != null) {
            watchdog.cancel(false);
        }
        kill();
    }

    @Override
    public String toString() {
        return name + " (pid " + process.pid() + ")";
    }

    static String tail(String text, int lines) {
        String[] all = text.replace("\r", "").split("\n", -1);
        int from = Math.max(0, all.length - lines);
        return String.join("\n", List.of(all).subList(from, all.length)).strip();
    }

    /** How a child is started. */
    public static final class Builder {
        private final List<String> command;
        private String name;
        private Path log;
        private Path directory;
        private Duration lifetime;
        private final Map<String, String> env = new LinkedHashMap<>();

        private Builder(List<String> command) {
            if (command.isEmpty()) {
                throw new IllegalArgumentException("empty command");
            }
            this.command = List.copyOf(command);
            this.name = Path.of(command.getFirst()).getFileName().toString();
        }

        /** Name used in messages; defaults to the program's file name. */
        public Builder name(String name) {
            this.name = Objects.requireNonNull(name);
            return this;
        }

        /** File that receives stdout and stderr (created or truncated). Required. */
        public Builder log(Path log) {
            this.log = Objects.requireNonNull(log);
            return this;
        }

        /** The working directory; a core dump of the child lands here (see {@link ChildProcess#crashReport()}). */
        public Builder directory(Path directory) {
            this.directory = directory;
            return this;
        }

        /** Kill the process after this long even if nobody closes it (a safety net, not a test timeout). */
        public Builder lifetime(Duration lifetime) {
            this.lifetime = lifetime;
            return this;
        }

        public Builder env(String key, String value) {
            env.put(key, value);
            return this;
        }

        /**
         * Starts the process and returns once it listens on the UNIX socket {@code socket}; if it exits or does not
         * listen within {@code timeout}, it is killed and the exception carries its log.
         */
        public ChildProcess startListening(Path socket, Duration timeout) {
            UnixSockets.checkPath(socket);
            ChildProcess child = start();
            try {
                UnixSockets.awaitListening(socket, child, timeout);
                return child;
            } catch (RuntimeException e) {
                child.close();
                throw e;
            }
        }

        public ChildProcess start() {
            Objects.requireNonNull(log, "log file");
            List<String> argv = new ArrayList<>(command);
            if (directory != null) {
                argv = CoreDump.wrap(command);
            }
            ProcessBuilder pb = new ProcessBuilder(argv)
                    .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
                    .redirectErrorStream(true)
                    .redirectOutput(log.toFile());
            if (directory != null) {
                pb.directory(directory.toFile());
            }
            pb.environment().putAll(env);
            try {
                ChildProcess child = new ChildProcess(name, command, pb.start(), log, directory, lifetime);
                if (reaping) {
                    child.kill();
                    throw new IllegalStateException("not starting " + name + ": iovirt is shutting down");
                }
                return child;
            } catch (IOException e) {
                throw new UncheckedIOException(
                        "cannot start " + name + " (" + command.getFirst() + "): " + e.getMessage()
                                + " — is it installed? scripts/install-deps.sh installs what iovirt uses",
                        e);
            }
        }
    }
}
