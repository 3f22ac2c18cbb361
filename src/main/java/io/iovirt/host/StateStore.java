// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import io.iovirt.linux.SocketAccess;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.SysfsTree;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.OpenOption;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.FileAttribute;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantLock;
import java.util.function.Supplier;
import java.util.stream.Stream;

/**
 * iovirt's persistent state: small tables of space-separated fields in a state directory, changed only under an
 * exclusive lock (a {@link FileChannel#lock() file lock}, which serializes processes, plus a JVM lock, because file
 * locks are per process) and replaced atomically: write a temporary file, fsync it, rename it over the table, fsync
 * the directory (and, when this made the directory, its parent). A reader therefore sees the old table or the new
 * one, never a mix, even after a writer is killed.
 *
 * <p>File format: a header line {@code iovirt-<name> 1}, one row per line, and a trailer {@code end <rows>} that
 * makes a truncated file (edited by hand, or by a tool that writes in place) detectable.
 *
 * <p>Access: the directory is created mode 0700 and every file in it 0600, whatever the umask (the mode is set
 * explicitly, not left to the umask). An existing directory or table is used only when it belongs to our uid and is
 * writable by nobody else; a readable-by-others directory left by an older version is narrowed to 0700. The tables
 * decide which driver sysfs names and which VM owns a device, so a row is never trusted because it is in the file:
 * the owners of each table re-check every row when they read it ({@link #damaged}).
 */
public final class StateStore {
    public static final String CRASHPOINT_PROPERTY = "iovirt.test.crashpoint";
    private static final ConcurrentHashMap<Path, ReentrantLock> JVM_LOCKS = new ConcurrentHashMap<>();
    private static final AtomicLong TEMP_COUNTER = new AtomicLong();
    private static final System.Logger LOG = System.getLogger("io.iovirt.host");
    /** How long a wait for another process's lock stays silent: longer than any quick command holds it. */
    static final java.time.Duration QUIET_WAIT = java.time.Duration.ofSeconds(1);

    private static final int MAX_TABLE_BYTES = 16 * 1024 * 1024;
    private static final Set<PosixFilePermission> DIR_MODE = PosixFilePermissions.fromString("rwx------");
    private static final FileAttribute<Set<PosixFilePermission>> FILE_MODE =
            PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------"));
    private static final Set<PosixFilePermission> WRITABLE_BY_OTHERS =
            EnumSet.of(PosixFilePermission.GROUP_WRITE, PosixFilePermission.OTHERS_WRITE);

    /** Where the root host commands kept their tables until they had {@link HostPaths#DEFAULT_STATE_DIR}. */
    static final Path LEGACY_DIR = Path.of("/var/lib/iovirt");
    /** The host commands' tables (assignments, remembered drivers): what an upgrade brings from the legacy place. */
    static final List<String> HOST_TABLES = List.of("assignments", "drivers");
    /** State directories this JVM has brought the legacy tables into (once per process, under the lock). */
    private static final Set<Path> ADOPTED = ConcurrentHashMap.newKeySet();
    /** This thread is adopting (its {@link #locked} calls {@link #ensureDir} again). */
    private static final ThreadLocal<Boolean> ADOPTING = ThreadLocal.withInitial(() -> false);

    private final Path dir;
    /** Where tables of an older version may still be, or null. */
    private final Path legacyDir;

    public StateStore(Path dir) {
        this(dir, dir.toAbsolutePath().normalize().equals(HostPaths.DEFAULT_STATE_DIR) ? LEGACY_DIR : null);
    }

    /** A store that first moves the host tables an older version left in {@code legacyDir} (null: none) into it. */
    StateStore(Path dir, Path legacyDir) {
        this.dir = dir.toAbsolutePath().normalize();
        this.legacyDir = legacyDir;
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
            try (FileChannel ch = FileChannel.open(
                            lockFile,
                            Set.<OpenOption>of(
                                    StandardOpenOption.CREATE, StandardOpenOption.WRITE, LinkOption.NOFOLLOW_LINKS),
                            FILE_MODE);
                    FileLock ignored = lock(ch, lockFile)) {
                checkOwned(lockFile, false);
                return action.get();
            } catch (IOException e) {
                throw new HostConfigException("cannot lock " + lockFile + ": " + SysfsTree.reason(e), remedy(e), e);
            }
        } finally {
            jvmLock.unlock();
        }
    }

    /**
     * Takes the file lock, waiting as long as another process holds it — and saying so once the wait passes
     * {@link #QUIET_WAIT}: which file, which process (from /proc/locks) and what to do. Waits without a bound: the
     * holder is another iovirt command, whose sysfs writes can legitimately take long (creating VFs, a driver's
     * probe, an unbind that waits for the device to be let go), and a bound would fail a healthy command queued
     * behind them; a holder that is stuck is the user's to end, and the message names it.
     */
    private static FileLock lock(FileChannel ch, Path lockFile) throws IOException {
        long deadline = System.nanoTime() + QUIET_WAIT.toNanos();
        do {
            FileLock l = ch.tryLock();
            if (l != null) {
                return l;
            }
            try {
                Thread.sleep(10);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new java.nio.channels.FileLockInterruptionException();
            }
        } while (System.nanoTime() < deadline);
        long pid = lockHolder(lockFile);
        String who = pid <= 0
                ? "another process holds it (/proc/locks does not show which)"
                : "process " + pid + " holds it (" + commandLine(pid) + ")";
        LOG.log(
                System.Logger.Level.WARNING,
                "waiting for the state lock " + lockFile + ": " + who + "; iovirt changes host state one command at a"
                        + " time, so this one goes on when that one is done. If it is stuck, end it"
                        + (pid > 0 ? " (kill " + pid + ")" : "")
                        + ": its lock goes with it, and the state tables stay whole (each is replaced atomically)");
        return ch.lock();
    }

    /** The pid holding a POSIX lock on {@code file} according to /proc/locks, or -1 when it cannot be told. */
    static long lockHolder(Path file) {
        try {
            long ino = (Long) Files.getAttribute(file, "unix:ino");
            long dev = (Long) Files.getAttribute(file, "unix:dev");
            // /proc/locks names the file as MAJOR:MINOR:INODE, the device numbers in hex (glibc's major()/minor())
            long major = ((dev >>> 8) & 0xfff) | ((dev >>> 32) & ~0xfffL);
            long minor = (dev & 0xff) | ((dev >>> 12) & ~0xffL);
            String id = String.format("%02x:%02x:%d", major, minor, ino);
            for (String line : Files.readAllLines(Path.of("/proc/locks"))) {
                // "1: POSIX  ADVISORY  WRITE 1234 fe:00:2154503 0 EOF"; "1: -> POSIX ..." is a waiter, not the holder
                String[] f = line.trim().split("\\s+");
                if (f.length >= 6 && f[1].equals("POSIX") && f[5].equals(id)) {
                    return Long.parseLong(f[4]);
                }
            }
        } catch (IOException | RuntimeException e) {
            // not readable here (no /proc, another file system): the message says so
        }
        return -1;
    }

    /**
     * A process's command line for a message: for an iovirt JVM the iovirt command ({@code iovirt host vfs ...},
     * without the JVM's options and class path), other characters than printable ASCII shown as '?', at most 300
     * characters; or why it cannot be read.
     */
    private static String commandLine(long pid) {
        try {
            List<String> args = List.of(Files.readString(Path.of("/proc/" + pid + "/cmdline"), StandardCharsets.UTF_8)
                    .split("\0"));
            if (args.isEmpty() || args.getFirst().isEmpty()) {
                return "its command line is empty";
            }
            for (int i = 1; i < args.size(); i++) {
                if (args.get(i).equals("io.iovirt.cli.Main") || args.get(i - 1).equals("-jar")) {
                    args = new ArrayList<>(args.subList(i, args.size()));
                    args.set(0, "iovirt");
                    break;
                }
            }
            String cmd = String.join(" ", args).replaceAll("[^\\x20-\\x7e]", "?");
            return cmd.length() > 300 ? cmd.substring(0, 300) + "..." : cmd;
        } catch (IOException e) {
            return "its command line is not readable: " + SysfsTree.reason(e);
        }
    }

    /** The rows of a table (each split on single spaces); empty when it was never written. */
    public List<String[]> read(String name) {
        ensureDir();
        return readTable(name);
    }

    /** {@link #read} without the directory's checks: the table file's own (ours alone, the format). */
    private List<String[]> readTable(String name) {
        Path file = dir.resolve(name);
        byte[] data;
        try {
            if (!checkOwned(file, true)) {
                return List.of();
            }
            if (Files.size(file) > MAX_TABLE_BYTES) {
                throw new HostConfigException(
                        file + " is larger than " + MAX_TABLE_BYTES + " bytes",
                        "it is not an iovirt state file: move it away");
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
            throw corrupt(
                    file,
                    "'" + SysfsTree.printable(lines[last - 1]) + "' does not match " + rows.size()
                            + " rows (truncated?)");
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
            try (FileChannel ch = FileChannel.open(
                    temp, Set.<OpenOption>of(StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE), FILE_MODE)) {
                Files.setPosixFilePermissions(temp, PosixFilePermissions.fromString("rw-------"));
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
                throw new HostConfigException(
                        "the filesystem of " + dir + " cannot rename atomically",
                        "put the state directory on a local filesystem (--state-dir)",
                        e);
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
            // A regular file's write never returns 0 for a non-empty buffer; if one ever did (a strange
            // filesystem), looping would spin for ever with the state lock held.
            if (ch.write(buf) == 0) {
                throw new IOException("a write to the state file wrote nothing with " + buf.remaining()
                        + " bytes left (filesystem full or broken?)");
            }
        }
    }

    /** Temporary files left by writers that died before their rename (we hold the lock, so none is live). */
    private void removeStaleTemps(String name) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            for (Path p : s.filter(p -> p.getFileName().toString().startsWith(name + ".tmp-"))
                    .toList()) {
                Files.deleteIfExists(p);
            }
        }
    }

    private void syncDir() throws IOException {
        syncDir(dir);
    }

    private static void syncDir(Path d) throws IOException {
        try (FileChannel ch = FileChannel.open(d, StandardOpenOption.READ)) {
            ch.force(true);
        }
    }

    /**
     * Creates the directory (mode 0700) or checks the one there: ours, and writable by nobody else. Checked on every
     * use, not once: another process may have changed it since.
     */
    private void ensureDir() {
        checkDir();
        if (legacyDir != null && !ADOPTED.contains(dir) && !ADOPTING.get()) {
            ADOPTING.set(true); // the lock's own ensureDir, on this thread, must not adopt again
            try {
                locked(() -> {
                    adoptLegacyTables();
                    return null;
                });
                ADOPTED.add(dir); // only now: another thread of this JVM adopts (or finds nothing) under the lock
            } finally {
                ADOPTING.set(false);
            }
        }
    }

    /**
     * Brings the host tables an older version kept in {@link #legacyDir} (systemd now gives that directory to the
     * services' user at each start) into this directory, with this directory's lock held and, when the older
     * version's lock file is there, that lock too (a command of the older version still running must not find the
     * table gone and start a new one): an upgraded host keeps its assignments (a device owned by a VM must not look
     * free) and remembered drivers. Each table is read as a table — ours alone, the format's header and trailer — and
     * written here atomically and durably before the old file is removed, so another file system, a crash between
     * the two steps (the same rows both places: the old file is removed) or a file that is no table of ours (left
     * where it is, the command stops) loses nothing. A table both places have with different rows is left to the
     * administrator: the command stops and says what to check and do.
     */
    private void adoptLegacyTables() {
        StateStore legacy = new StateStore(legacyDir, null);
        for (String name : HOST_TABLES) {
            Path old = legacyDir.resolve(name);
            if (!Files.exists(old, LinkOption.NOFOLLOW_LINKS)) {
                continue;
            }
            Path target = dir.resolve(name);
            String how = "older versions of the host commands kept their tables in " + legacyDir + ", now in " + dir;
            List<String[]> rows;
            try {
                rows = legacy.lockedIfPresent(() -> legacy.readTable(name));
            } catch (HostConfigException e) {
                throw new HostConfigException(
                        "cannot bring " + old + " into " + dir + " (" + how + "): " + e.problem(),
                        e.remedy() + "; then run the command again, or move the table by hand (chown 0 " + old
                                + ", chmod 0600 " + old + ", mv " + old + " " + target + ")",
                        e);
            }
            List<String[]> here = readTable(name);
            if (Files.exists(target, LinkOption.NOFOLLOW_LINKS) && !sameRows(here, rows)) {
                throw new HostConfigException(
                        "the table " + name + " is in both " + old + " and " + target + ", with other rows (" + how
                                + ")",
                        "compare them, keep the current one as " + target + " and remove " + old);
            }
            if (!Files.exists(target, LinkOption.NOFOLLOW_LINKS)) {
                write(name, rows);
            }
            try {
                Files.delete(old);
                syncDir(legacyDir);
            } catch (IOException e) {
                throw new HostConfigException(
                        "copied " + old + " to " + target + " but cannot remove it: " + SysfsTree.reason(e),
                        "remove " + old + " (" + target + " has its rows)",
                        e);
            }
            LOG.log(System.Logger.Level.INFO, "moved " + old + " to " + target + " (" + how + ")");
        }
    }

    /** Runs {@code action} holding this directory's lock file when there is one of ours, else without it. */
    private <T> T lockedIfPresent(Supplier<T> action) {
        Path lockFile = dir.resolve("lock");
        try {
            boolean ours;
            try {
                ours = checkOwned(lockFile, true);
            } catch (HostConfigException e) {
                ours = false; // re-owned (systemd): an older version's command refuses that lock file, so runs none
            }
            if (!ours) {
                return action.get();
            }
            try (FileChannel ch = FileChannel.open(
                            lockFile, Set.<OpenOption>of(StandardOpenOption.WRITE, LinkOption.NOFOLLOW_LINKS));
                    FileLock ignored = lock(ch, lockFile)) {
                return action.get();
            }
        } catch (IOException e) {
            throw new HostConfigException("cannot lock " + lockFile + ": " + SysfsTree.reason(e), remedy(e), e);
        }
    }

    private static boolean sameRows(List<String[]> a, List<String[]> b) {
        if (a.size() != b.size()) {
            return false;
        }
        for (int i = 0; i < a.size(); i++) {
            if (!java.util.Arrays.equals(a.get(i), b.get(i))) {
                return false;
            }
        }
        return true;
    }

    /** {@link #ensureDir} without the legacy tables. */
    private void checkDir() {
        try {
            if (!Files.exists(dir)) {
                create();
            }
            int uid = (Integer) Files.getAttribute(dir, "unix:uid");
            Set<PosixFilePermission> mode = Files.getPosixFilePermissions(dir);
            if (!Files.isDirectory(dir)) {
                throw new HostConfigException(
                        "the state directory " + dir + " is not a directory",
                        "remove it, or choose another with --state-dir");
            }
            if (uid != SocketAccess.ownUid()) {
                throw new HostConfigException(
                        "the state directory " + dir + " belongs to uid " + uid + ", not to us (uid "
                                + SocketAccess.ownUid() + "): its tables decide which drivers iovirt binds",
                        "use a directory of your own with --state-dir (never a service's StateDirectory= such as"
                                + " /var/lib/iovirt: systemd gives that to the unit's User= at every start; the host"
                                + " commands' default is " + HostPaths.DEFAULT_STATE_DIR_NAME + "), or run iovirt as"
                                + " uid " + uid + ", or chown it to uid " + SocketAccess.ownUid()
                                + " and chmod 0700 (if you trust its contents)");
            }
            if (mode.stream().anyMatch(WRITABLE_BY_OTHERS::contains)) {
                throw new HostConfigException(
                        "the state directory " + dir + " is writable by other users (mode "
                                + PosixFilePermissions.toString(mode) + "): anyone could rewrite its tables",
                        "check its tables, then chmod 0700 " + dir + " (or choose another with --state-dir)");
            }
            if (!mode.equals(DIR_MODE)) {
                Files.setPosixFilePermissions(dir, DIR_MODE); // ours and not writable by others: narrow 0755 to 0700
            }
        } catch (IOException e) {
            throw new HostConfigException(
                    "cannot create the state directory " + dir + ": " + SysfsTree.reason(e),
                    e instanceof AccessDeniedException
                            ? "run as root, or choose another with --state-dir"
                            : "choose another with --state-dir",
                    e);
        }
    }

    /**
     * Creates the directory, mode 0700 from the start (mkdir applies the umask, which can only narrow it: no moment
     * in which others could put files in it), and makes each directory created durable in its parent — the tables
     * are fsynced with the directory they are in, but a directory whose own name is not on disk yet can vanish in a
     * crash with every table in it.
     */
    private void create() throws IOException {
        Path top = dir;
        while (top.getParent() != null && !Files.exists(top.getParent())) {
            top = top.getParent();
        }
        Files.createDirectories(dir.getParent());
        try {
            Files.createDirectory(dir, PosixFilePermissions.asFileAttribute(DIR_MODE));
        } catch (FileAlreadyExistsException e) {
            return; // another process made it first, and made it durable
        }
        for (Path p = dir; ; p = p.getParent()) {
            syncDir(p.getParent());
            if (p.equals(top)) {
                return;
            }
        }
    }

    /**
     * Checks a file of the state directory: a regular file (not a link), ours, and writable by nobody else.
     *
     * @return false when it does not exist (and {@code mayBeMissing})
     */
    private static boolean checkOwned(Path file, boolean mayBeMissing) throws IOException {
        if (mayBeMissing && !Files.exists(file, LinkOption.NOFOLLOW_LINKS)) {
            return false;
        }
        if (!Files.isRegularFile(file, LinkOption.NOFOLLOW_LINKS)) {
            throw new HostConfigException(
                    file + " is not a regular file (a link or device was put in its place)",
                    "remove it; iovirt only ever writes regular files there");
        }
        int uid = (Integer) Files.getAttribute(file, "unix:uid", LinkOption.NOFOLLOW_LINKS);
        Set<PosixFilePermission> mode = Files.getPosixFilePermissions(file, LinkOption.NOFOLLOW_LINKS);
        if (uid != SocketAccess.ownUid()) {
            throw new HostConfigException(
                    file + " belongs to uid " + uid + ", not to us (uid " + SocketAccess.ownUid() + ")",
                    "check its contents, then chown it to uid " + SocketAccess.ownUid()
                            + " and chmod 0600 (or remove it)");
        }
        if (mode.stream().anyMatch(WRITABLE_BY_OTHERS::contains)) {
            throw new HostConfigException(
                    file + " is writable by other users (mode " + PosixFilePermissions.toString(mode) + ")",
                    "check its contents, then chmod 0600 " + file);
        }
        return true;
    }

    /** A PCI address field as iovirt writes it (canonical DDDD:BB:DD.F), or null for anything else. */
    public static Bdf bdf(String field) {
        Bdf b = Bdf.tryParse(field);
        return b != null && b.toString().equals(field) ? b : null;
    }

    /**
     * The error for a row of table {@code name} that fails its owner's check.
     *
     * @param row the row's index in what {@link #read} returned (its line is {@code row + 2}: the header is line 1)
     */
    public HostConfigException damaged(String name, int row, String why) {
        return new HostConfigException(
                dir.resolve(name) + " line " + (row + 2) + " is damaged: " + why,
                "it was edited outside iovirt; fix or remove that line (iovirt never writes such a row)");
    }

    private static HostConfigException corrupt(Path file, String why) {
        return new HostConfigException(
                file + " is damaged: " + why,
                "it was edited or written outside iovirt; fix or remove that file (iovirt only ever replaces it atomically)");
    }

    private static String remedy(IOException e) {
        return e instanceof AccessDeniedException
                ? "run as root, or choose another directory with --state-dir"
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
