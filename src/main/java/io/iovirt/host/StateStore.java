// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import io.iovirt.pci.SysfsTree;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Supplier;
import java.util.stream.Stream;

/**
 * iovirt's persistent state: small tables of space-separated fields in a state directory, changed only under an
 * exclusive lock (a {@link FileChannel#lock() file lock}, which serializes processes, plus a JVM lock, because file
 * locks are per process) and replaced atomically: write a temporary file, fsync it, rename it over the table, fsync
 * the directory. A reader therefore sees the old table or the new one, never a mix, even after a writer is killed.
 *
 * <p>File format: a header line {@code iovirt-<name> 1}, one row per line, and a trailer {@code end <rows>} that
 * makes a truncated file (edited by hand, or by a tool that writes in place) detectable.
 */
public final class StateStore {
    public static final String CRASHPOINT_PROPERTY = "iovirt.test.crashpoint";
    private static final ConcurrentHashMap<Path, ReentrantLock> JVM_LOCKS = new ConcurrentHashMap<>();
    private static final AtomicLong TEMP_COUNTER = new AtomicLong();
    private static final int MAX_TABLE_BYTES = 16 * 1024 * 1024;

    private final Path dir;

    public StateStore(Path dir) {
        this.dir = dir.toAbsolutePath().normalize();
    }

    public Path dir() {
        return dir;
    }

    /** Runs {@code action} holding the state directory's lock (reentrant within this thread). */
    public <T> T locked(Supplier<T> action) {
        ensureDir();
        Path lockFile = dir.resolve("lock");
        ReentrantLock jvmLock = JVM_LOCKS.computeIfAbsent(lockFile, k -> new ReentrantLock());
        jvmLock.lock();
        try {
            if (jvmLock.getHoldCount() > 1) {
                return action.get();
            }
            try (FileChannel ch = FileChannel.open(lockFile, StandardOpenOption.CREATE, StandardOpenOption.WRITE);
                 FileLock ignored = ch.lock()) {
                return action.get();
            } catch (IOException e) {
                throw new HostConfigException("cannot lock " + lockFile + ": " + SysfsTree.reason(e), remedy(e), e);
            }
        } finally {
            jvmLock.unlock();
        }
    }

    /** The rows of a table (each split on single spaces); empty when it was never written. */
    public List<String[]> read(String name) {
        Path file = dir.resolve(name);
        byte[] data;
        try {
            if (Files.size(file) > MAX_TABLE_BYTES) {
                throw new HostConfigException(file + " is larger than " + MAX_TABLE_BYTES + " bytes", "it is not an iovirt state file: move it away");
            }
            data = Files.readAllBytes(file);
        } catch (NoSuchFileException e) {
            return List.of();
        } catch (IOException e) {
            throw new HostConfigException("cannot read " + file + ": " + SysfsTree.reason(e), remedy(e), e);
        }
        String[] lines = new String(data, StandardCharsets.UTF_8).split("\n", -1);
        String header = "iovirt-" + name + " 1";
        if (lines.length < 3 || !lines[0].equals(header)) {
            throw corrupt(file, "first line is not '" + header + "'");
        }
        // Expect: header, rows..., "end N", "" (final newline).
        int last = lines.length - 1;
        if (!lines[last].isEmpty() || !lines[last - 1].startsWith("end ")) {
            throw corrupt(file, "the 'end' line is missing (truncated?)");
        }
        List<String[]> rows = new ArrayList<>();
        for (int i = 1; i < last - 1; i++) {
            rows.add(lines[i].split(" ", -1));
        }
        if (!lines[last - 1].equals("end " + rows.size())) {
            throw corrupt(file, "'" + SysfsTree.printable(lines[last - 1]) + "' does not match " + rows.size() + " rows (truncated?)");
        }
        return rows;
    }

    /** Replaces a table atomically and durably. Call with the lock held. */
    public void write(String name, List<String[]> rows) {
        ensureDir();
        StringBuilder b = new StringBuilder("iovirt-").append(name).append(" 1\n");
        for (String[] row : rows) {
            for (String field : row) {
                if (field.isEmpty() || field.chars().anyMatch(c -> c <= ' ' || c == 0x7f)) {
                    throw new IllegalArgumentException("state field must be non-empty without blanks: '" + field + "'");
                }
            }
            b.append(String.join(" ", row)).append('\n');
        }
        b.append("end ").append(rows.size()).append('\n');
        byte[] data = b.toString().getBytes(StandardCharsets.UTF_8);
        Path file = dir.resolve(name);
        Path temp = dir.resolve(name + ".tmp-" + ProcessHandle.current().pid() + "-" + TEMP_COUNTER.incrementAndGet());
        try {
            removeStaleTemps(name);
            try (FileChannel ch = FileChannel.open(temp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                int half = data.length / 2;
                writeFully(ch, ByteBuffer.wrap(data, 0, half));
                crashPoint("state-temp-partial");
                writeFully(ch, ByteBuffer.wrap(data, half, data.length - half));
                ch.force(true);
            }
            crashPoint("state-before-rename");
            try {
                Files.move(temp, file, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                throw new HostConfigException("the filesystem of " + dir + " cannot rename atomically",
                        "put the state directory on a local filesystem (--state-dir)", e);
            }
            syncDir();
        } catch (IOException e) {
            try {
                Files.deleteIfExists(temp);
            } catch (IOException ignored) {
                // The next writer removes it.
            }
            throw new HostConfigException("cannot write " + file + ": " + SysfsTree.reason(e), remedy(e), e);
        }
    }

    private static void writeFully(FileChannel ch, ByteBuffer buf) throws IOException {
        while (buf.hasRemaining()) {
            ch.write(buf);
        }
    }

    /** Temporary files left by writers that died before their rename (we hold the lock, so none is live). */
    private void removeStaleTemps(String name) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            for (Path p : s.filter(p -> p.getFileName().toString().startsWith(name + ".tmp-")).toList()) {
                Files.deleteIfExists(p);
            }
        }
    }

    private void syncDir() throws IOException {
        try (FileChannel d = FileChannel.open(dir, StandardOpenOption.READ)) {
            d.force(true);
        }
    }

    private void ensureDir() {
        if (Files.isDirectory(dir)) {
            return;
        }
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new HostConfigException("cannot create the state directory " + dir + ": " + SysfsTree.reason(e),
                    e instanceof AccessDeniedException ? "run as root, or choose another with --state-dir" : "choose another with --state-dir", e);
        }
    }

    private static HostConfigException corrupt(Path file, String why) {
        return new HostConfigException(file + " is damaged: " + why,
                "it was edited or written outside iovirt; fix or remove that file (iovirt only ever replaces it atomically)");
    }

    private static String remedy(IOException e) {
        return e instanceof AccessDeniedException ? "run as root, or choose another directory with --state-dir"
                : "check the filesystem of the state directory (--state-dir)";
    }

    /**
     * Test hook for crash-safety tests: when the system property names this point, announce it on stdout and stop
     * here until the process is killed. Never set outside tests.
     */
    static void crashPoint(String name) {
        if (name.equals(System.getProperty(CRASHPOINT_PROPERTY))) {
            System.out.println("CRASHPOINT " + name);
            System.out.flush();
            while (true) {
                try {
                    Thread.sleep(60_000);
                } catch (InterruptedException e) {
                    // Only SIGKILL ends this.
                }
            }
        }
    }
}
