// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.util.Printable;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Who may write an image: an OFD lock (fcntl F_OFD_SETLK) over the whole file, exclusive for a writable export and
 * shared for a read-only one, like QEMU's image locking. The lock follows the active frontend, not the process: a
 * backend takes it when its frontend starts the first queue and drops it when the last one stops, so during a live
 * migration the source's backend hands the image to the destination's at the switch-over, while two VMs running
 * on one writable image at once are refused.
 *
 * <p>The lock lives on a descriptor of its own — an open file description of its own ({@link #open}), or a dup of
 * the one an export reads and writes the image through ({@link #on}), which takes no OFD locks itself — so it works
 * whatever opens the image for I/O, and the kernel drops it when the process dies, however it dies. An exclusive
 * lock covers the whole file, so it also conflicts with QEMU's own image locks (byte-range OFD locks in the same
 * file): a QEMU or qemu-img that opens the image with locking on sees it in use, and the other way round. A shared
 * lock takes the bytes of QEMU's scheme a QEMU reader takes (it reads; it lets nobody write or resize), so QEMU
 * writers and readers see it as QEMU sees one of its own readers: a writer is refused, a reader is not. A whole-file
 * read lock would do neither: it refuses QEMU's readers and is granted beside a QEMU writer, whose locks are all
 * read locks.
 */
public final class ImageLock implements AutoCloseable {
    /*
     * QEMU's image locking (block/file-posix.c): a user holds a read lock on byte PERM_BASE + p for each permission
     * p it has, and on SHARED_BASE + p for each it does not let others have; it is refused when another user holds
     * SHARED_BASE + p for a p it wants, or PERM_BASE + p for a p it does not share. Permissions: 0 consistent read,
     * 1 write, 2 write unchanged, 3 resize.
     */
    private static final long PERM_BASE = 100;
    private static final long SHARED_BASE = 200;
    private static final int READ = 0;
    private static final int WRITE = 1;
    private static final int RESIZE = 3;
    /** What a reader holds: it reads, and shares neither writing nor resizing. */
    private static final long[] READER_HOLDS = {PERM_BASE + READ, SHARED_BASE + WRITE, SHARED_BASE + RESIZE};
    /** What refuses a reader besides a whole-file write lock: a writer, a resizer, a user that shares no reads. */
    private static final long[] READER_EXCLUDES = {PERM_BASE + WRITE, PERM_BASE + RESIZE, SHARED_BASE + READ};

    /**
     * A byte no QEMU user locks, apart from (not adjacent to, so not merged with) the reader's bytes: a lock held on
     * it marks the open file description whose holders are being looked for ({@link #holdersBesideOurReaderBytes}).
     */
    private static final long MARK = 0;
    /** One mark at a time in this process: another lock's mark would hide its holder's lines. */
    private static final Object MARKING = new Object();

    private final Path path;
    /** The type taken by {@link #acquire}: changed by {@link #retype}. */
    private boolean shared;
    /** The type held while {@link #held}: exclusive from a shared lock's conversion on, until released. */
    private boolean heldShared;

    private final Fd fd;
    private boolean held;

    private ImageLock(Path path, boolean shared, Fd fd) {
        this.path = path;
        this.shared = shared;
        this.fd = fd;
    }

    /**
     * Opens the image for locking (not for I/O).
     *
     * @param shared true for a read-only export (read locks share; they exclude writers)
     * @throws IOException the image cannot be opened (for writing, unless shared)
     */
    public static ImageLock open(Path image, boolean shared) throws IOException {
        try {
            return new ImageLock(
                    image, shared, RawImage.openFileOrDevice(image, shared ? FileIo.O_RDONLY : FileIo.O_RDWR));
        } catch (LinuxException e) {
            throw new IOException(
                    "cannot open " + Printable.of(image) + " to lock it: " + Printable.of(e.getMessage()), e);
        }
    }

    /**
     * Locks through {@code fd} (taken over: closed with the lock), a descriptor of {@code image} already open — a dup
     * of the descriptor an export opened it with ({@link DiskImage#dupFile}): nothing is opened, so taking the lock
     * does not wait for a file system that does not answer to look the path up and open it again. Its open file
     * description is the export's own, which takes no OFD locks itself, so the lock is this one alone.
     *
     * @param shared true for a read-only export (read locks share; they exclude writers); false needs {@code fd}
     *               open for writing
     */
    public static ImageLock on(Path image, boolean shared, Fd fd) {
        return new ImageLock(image, shared, fd);
    }

    /**
     * The lock of an export whose clients come and go (an NBD export), taken now and held until closed: exclusive
     * for a writable export (a second writer would corrupt the image), shared for a read-only one (whose clients
     * must not be served data another process changes under them).
     *
     * @param who names the export, for the warning and the error
     * @return the held lock; null when the image cannot be opened (opening it for I/O will say why) or its file
     *         system has no OFD locks (served unlocked, with a warning)
     * @throws IOException another process holds the image in a way that conflicts (named)
     */
    public static ImageLock holdForExport(Path image, boolean readOnly, String who) throws IOException {
        ImageLock lock;
        try {
            lock = open(image, readOnly);
        } catch (IOException e) {
            return null;
        }
        return hold(lock, image, readOnly, who);
    }

    /**
     * {@link #holdForExport} through {@code fd} (taken over, closed with the lock, or now when refused): a dup of the
     * descriptor the image was opened and checked as, so the lock is on that very file — not on whatever the path
     * names by the time a second open looks it up (a backing file a policy allowed, swapped meanwhile for a link to
     * another tenant's disk, whose writers a lock on it would fence) — and nothing is opened that could fail.
     *
     * @return the held lock; null when the file system has no OFD locks (served unlocked, with a warning)
     * @throws IOException another process holds the image in a way that conflicts (named)
     */
    public static ImageLock holdForExport(Path image, Fd fd, boolean readOnly, String who) throws IOException {
        return hold(on(image, readOnly, fd), image, readOnly, who);
    }

    private static ImageLock hold(ImageLock lock, Path image, boolean readOnly, String who) throws IOException {
        String why;
        try {
            why = lock.acquire();
        } catch (LinuxException e) {
            lock.close();
            System.getLogger(ImageLock.class.getName())
                    .log(
                            System.Logger.Level.WARNING,
                            who + ": serving " + image + " without the image lock: " + e.getMessage());
            return null;
        }
        if (why != null) {
            lock.close();
            // "image P is in use by <holders>", without the blk export's explanation (a VM, a migration)
            int vm = why.indexOf(": another VM");
            throw new IOException((vm < 0 ? why : why.substring(0, vm))
                    + (readOnly
                            ? "; a read-only export would serve data that changes under its clients: stop the"
                                    + " writer first (or export a copy of the image)"
                            : "; a second writer would corrupt it: stop the other user of the image first (or export"
                                    + " it read-only if it only reads)"));
        }
        return lock;
    }

    public Path path() {
        return path;
    }

    /** Whether {@link #acquire} takes a shared lock (while held: whether the lock held is shared). */
    public synchronized boolean shared() {
        return held ? heldShared : shared;
    }

    /** True while this export holds the lock. */
    public synchronized boolean held() {
        return held;
    }

    /**
     * Takes the lock without waiting (a no-op when held).
     *
     * @return null when taken; otherwise why not, naming the holder(s) as far as this host shows them
     * @throws LinuxException the lock call itself failed (e.g. the file system does not support locks)
     */
    public synchronized String acquire() throws LinuxException {
        if (held) {
            return null;
        }
        if (shared ? lockForReading() : FileIo.ofdLock(fd, FileIo.F_WRLCK)) {
            held = true;
            heldShared = shared;
            return null;
        }
        return "image " + Printable.of(path) + " is in use " + (shared ? "for writing " : "") + "by " + holders()
                + ": another VM runs on it (a migration's source releases it when its queues stop)";
    }

    /**
     * Takes a reader's bytes, then looks for a writer: in that order, as QEMU does (it locks, then checks), so of a
     * reader and a writer starting at once at least one sees the other. False (nothing kept) when refused.
     */
    private boolean lockForReading() throws LinuxException {
        boolean taken = false;
        try {
            taken = true;
            for (long b : READER_HOLDS) {
                taken = taken && FileIo.ofdLock(fd, FileIo.F_RDLCK, b, 1);
            }
            for (long b : READER_EXCLUDES) {
                taken = taken && FileIo.ofdConflict(fd, FileIo.F_WRLCK, b, 1) == FileIo.F_UNLCK;
            }
            return taken;
        } catch (LinuxException e) {
            taken = false;
            throw e;
        } finally {
            if (!taken) {
                try {
                    FileIo.ofdLock(fd, FileIo.F_UNLCK); // the bytes taken before the refusal
                } catch (LinuxException e) {
                    // no lock was taken either (no OFD locks here): the caller hears of the first failure
                }
            }
        }
    }

    /**
     * Changes the type of this lock, as its export is switched read-only or writable while served (the daemon's
     * blk.set-readonly): {@link #acquire} takes the new type from now on. A shared lock held is
     * converted to an exclusive one in place: one F_OFD_SETLK of a write lock over the whole file, on the open file
     * description that holds the reader's bytes, replaces them at once if no other open file description holds a lock
     * on the file, and changes nothing if one does, so there is no moment in which the image is unlocked or written
     * under a shared lock. An exclusive lock held stays exclusive here: a switch to read-only does not wait for the
     * writes that passed their checks before it, and a reader let in now could see them land (QEMU drains the disk
     * before it drops its write permission). Its owner converts it with {@link #share} once they have ended and are
     * flushed; the export's next frontend takes the shared lock.
     *
     * @param shared the type wanted: true for a read-only export, false for a writable one (the descriptor must then
     *               be open for writing)
     * @return null when done; otherwise (nothing changed) why not, naming the other users of the image
     * @throws LinuxException the lock call itself failed (EBADF: the descriptor is open for reading only)
     */
    public synchronized String retype(boolean shared) throws LinuxException {
        if (held && heldShared && !shared) {
            if (!FileIo.ofdLock(fd, FileIo.F_WRLCK)) {
                return "image " + Printable.of(path) + " is in use by " + holdersBesideOurReaderBytes();
            }
            heldShared = false;
        }
        this.shared = shared;
        return null;
    }

    /**
     * Turns the exclusive lock held into the shared one in place, once the export it guards no longer writes (its
     * switch to read-only has drained and flushed the writes sent before it): from then on readers (a QEMU reader,
     * another read-only export) are let in, and {@link #acquire} takes a shared lock. Each step is one F_OFD_SETLK on
     * this open file description: first the reader's bytes become read locks (the write lock held over them makes
     * that a conversion no other user can be in the way of), then the rest of the file is unlocked piece by piece.
     * The bytes that keep writers out ({@link #READER_HOLDS}) stay locked throughout, so no writer gets in between. A
     * no-op when not held or already shared.
     *
     * @throws LinuxException a lock call failed (ENOLCK): before the reader's bytes are taken, the lock is made
     *                        whole-file exclusive again and stays so; after, it counts as shared (readers may be let
     *                        in), some of the rest perhaps still write-locked
     */
    public synchronized void share() throws LinuxException {
        shared = true;
        if (!held || heldShared) {
            return;
        }
        try {
            for (long b : READER_HOLDS) {
                FileIo.ofdLock(fd, FileIo.F_RDLCK, b, 1);
            }
        } catch (LinuxException e) {
            FileIo.ofdLock(fd, FileIo.F_WRLCK); // back to what it was; nobody else can hold the bytes in between
            throw e;
        }
        // A reader's lock from here on, whatever follows: once a piece below is unlocked a reader may get in, and a
        // failed unlock after that (ENOLCK) must not leave it counted exclusive, or retype(false) would skip the
        // whole-file write lock that refuses while a reader holds the image, and writing would start beside it. The
        // pieces still write-locked after such a failure only refuse more users.
        heldShared = true;
        long from = 0;
        for (long b : READER_HOLDS) { // ascending
            if (b > from) {
                FileIo.ofdLock(fd, FileIo.F_UNLCK, from, b - from);
            }
            from = b + 1;
        }
        FileIo.ofdLock(fd, FileIo.F_UNLCK, from, 0); // to the end, however the file grows
    }

    /** Drops the lock (a no-op when not held). */
    public synchronized void release() {
        if (!held) {
            return;
        }
        held = false;
        try {
            FileIo.ofdLock(fd, FileIo.F_UNLCK);
        } catch (LinuxException e) {
            // cannot happen for an open descriptor; closing it drops the lock anyway
            System.getLogger(ImageLock.class.getName())
                    .log(System.Logger.Level.WARNING, "unlocking " + path + " failed: " + e.getMessage());
        }
    }

    /**
     * Drops the lock and closes its descriptor. Unlocked first: closing a descriptor drops an OFD lock only when it
     * is the last one of its open file description, and the descriptor of a lock taken {@link #on} a dup shares the
     * export's, which stays open while the image is (and while an io_uring ring that had it registered is torn down).
     */
    @Override
    public synchronized void close() {
        release();
        fd.close();
    }

    /**
     * Closes the lock's descriptor without unlocking, for an export that gave up on writes still in the kernel (an
     * io_uring it could not wait for): the kernel drops an OFD lock only when the last reference to its open file
     * description goes, and each such request holds one until it has completed. So once the export has closed its
     * own descriptors, the lock is held exactly as long as such a write may still land, however long that is; an
     * unlock here would let another writer in under it.
     */
    public synchronized void closeLeavingLockToKernel() {
        held = false;
        fd.close();
    }

    /**
     * The processes holding locks on this image's inode that conflict with this lock (any lock for an exclusive
     * one; a write lock or a lock on a writer's byte for a shared one, so a QEMU reader beside the writer is not
     * named). An OFD lock does not name its owner (F_OFD_GETLK and, since Linux 6.x, /proc/locks report pid -1),
     * but the kernel lists each lock under the descriptor that holds it in /proc/PID/fdinfo/FD ("lock:" lines):
     * scanned only when a lock is refused, for the error message (the daemon's --state lock names its holder so).
     */
    public String holders() {
        boolean ofShared;
        synchronized (this) {
            ofShared = shared;
        }
        return holders(ofShared);
    }

    /**
     * {@link #holders()} that conflict with the exclusive lock this shared one was refused conversion to, without this
     * one's own reader bytes. Every descriptor of its open file description lists them (the export's own too), and
     * another export of this process holding a reader's bytes lists the very same lines, which filtering reader bytes
     * by pid hid: such a refusal named "another process (not visible in /proc here)". So this one first marks its open
     * file description with a read lock on {@link #MARK} (a byte no QEMU user locks, and a read lock, which refuses
     * no one a shared lock did not refuse already): the descriptors of this process that list it are this lock's.
     */
    private String holdersBesideOurReaderBytes() throws LinuxException {
        String id;
        try {
            id = inodeId();
        } catch (IOException | RuntimeException e) {
            return invisible(e);
        }
        List<Holder> found;
        synchronized (MARKING) {
            boolean marked = FileIo.ofdLock(fd, FileIo.F_RDLCK, MARK, 1); // refused: cannot be while held shared
            try {
                found = scan(id, false, !marked);
            } catch (IOException | RuntimeException e) {
                return invisible(e);
            } finally {
                if (marked) {
                    FileIo.ofdLock(fd, FileIo.F_UNLCK, MARK, 1);
                }
            }
        }
        return name(found);
    }

    /** {@link #holders()} of a lock of the type {@code ofShared}. */
    private String holders(boolean ofShared) {
        List<Holder> found;
        try {
            String id = inodeId();
            synchronized (MARKING) { // no lock of this process marked meanwhile, whose holder would go unnamed
                found = scan(id, ofShared, false);
            }
        } catch (IOException | RuntimeException e) {
            return invisible(e);
        }
        return name(found);
    }

    /** A process holding a lock on the image, and its lock ("ofdlck read"). */
    private record Holder(long pid, String lock) {}

    /**
     * The processes whose descriptors list a lock on the inode {@code id} conflicting with one of type
     * {@code ofShared}: /proc's fdinfo files alone, read under {@link #MARKING} (no process's command line, whose
     * read waits for that process's memory map). Not this lock: in this process, no descriptor that lists a lock on
     * {@link #MARK} (marked by {@link #holdersBesideOurReaderBytes}), nor, with {@code notOurReaderBytes}, a lock on a
     * reader's byte (when the mark could not be taken).
     */
    private static List<Holder> scan(String id, boolean ofShared, boolean notOurReaderBytes) throws IOException {
        List<Holder> found = new ArrayList<>();
        long self = ProcessHandle.current().pid();
        try (var procs = Files.newDirectoryStream(Path.of("/proc"), "[0-9]*")) {
            for (Path proc : procs) {
                long pid = Long.parseLong(proc.getFileName().toString());
                String lock = lockLine(proc.resolve("fdinfo"), id, ofShared, pid == self, notOurReaderBytes);
                if (lock != null) {
                    found.add(new Holder(pid, lock));
                }
            }
        }
        return found;
    }

    private static String name(List<Holder> found) {
        long self = ProcessHandle.current().pid();
        List<String> names = new ArrayList<>();
        for (Holder h : found) {
            names.add("pid " + h.pid() + (h.pid() == self ? " (this process)" : "") + describe(h.pid()) + " ("
                    + h.lock() + ")");
        }
        return names.isEmpty() ? "another process (not visible in /proc here)" : String.join(", ", names);
    }

    private static String invisible(Exception e) {
        return "another process (its pid is not visible here: " + e.getMessage() + ")";
    }

    /**
     * The image's inode as lock lines name it (" fe:00:5678 "), from procfs alone: this process's fdinfo of the lock's
     * descriptor (its mount and inode number) and its mountinfo (the mount's device). A stat of the path, or of the
     * descriptor, asks the image's file system, which may not answer (a stopped FUSE daemon, a hung NFS server): the
     * callers hold this lock's monitor, and a device's lock for the type of the lock its frontends take, so a refusal
     * waited for that file system with the vhost-user session's thread (a frontend starting) and the daemon's control
     * thread (blk.set-readonly) waiting behind it. A kernel older than 5.14 (no "ino:" in fdinfo) stats the path.
     */
    private String inodeId() throws IOException {
        long mount = -1;
        long ino = -1;
        for (String line : Files.readAllLines(Path.of("/proc/self/fdinfo", Integer.toString(fd.get())))) {
            if (line.startsWith("mnt_id:")) {
                mount = Long.parseLong(line.substring("mnt_id:".length()).strip());
            } else if (line.startsWith("ino:")) {
                ino = Long.parseLong(line.substring("ino:".length()).strip());
            }
        }
        if (ino < 0) {
            long dev = (Long) Files.getAttribute(path, "unix:dev");
            long inode = (Long) Files.getAttribute(path, "unix:ino");
            return String.format(" %02x:%02x:%d ", major(dev), minor(dev), inode);
        }
        // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw": major:minor is the superblock's device,
        // which lock lines name (a btrfs subvolume's stat reports a device of its own)
        for (String line : Files.readAllLines(Path.of("/proc/self/mountinfo"))) {
            String[] f = line.split(" ", 4);
            if (f.length > 2 && f[0].equals(Long.toString(mount))) {
                String[] dev = f[2].split(":");
                return String.format(" %02x:%02x:%d ", Long.parseLong(dev[0]), Long.parseLong(dev[1]), ino);
            }
        }
        throw new IOException("mount " + mount + " of " + path + " is not in /proc/self/mountinfo");
    }

    /**
     * "ofdlck write" when a descriptor in {@code fdinfo} holds a lock on the inode {@code id} that conflicts with a
     * lock of ours ({@code shared} or not), else null. In this process ({@code self}): not a descriptor that holds
     * the mark ({@link #holdersBesideOurReaderBytes}), nor, with {@code notOurReaderBytes}, a lock on a reader's
     * byte.
     */
    private static String lockLine(Path fdinfo, String id, boolean shared, boolean self, boolean notOurReaderBytes) {
        boolean notReaderBytes = self && notOurReaderBytes;
        try (var fds = Files.newDirectoryStream(fdinfo)) {
            for (Path fd : fds) {
                try {
                    List<String> lines = Files.readAllLines(fd);
                    if (self && lines.stream().anyMatch(l -> isMark(l, id))) {
                        continue; // a descriptor of this lock's own open file description, marked
                    }
                    for (String line : lines) {
                        // "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:5678 0 EOF"
                        if (line.startsWith("lock:") && (line + " ").contains(id)) {
                            String[] f = line.trim().split("\\s+");
                            if (notReaderBytes && f.length >= 9 && onReaderByte(f[4], f[7], f[8])) {
                                continue;
                            }
                            if (!shared || f.length < 9 || excludesReaders(f[4], f[7], f[8])) {
                                return f.length > 4 ? (f[2] + " " + f[4]).toLowerCase() : "lock";
                            }
                        }
                    }
                } catch (IOException ignored) {
                    // the descriptor was closed meanwhile
                }
            }
        } catch (IOException | RuntimeException ignored) {
            // the process ended, or its descriptors are not ours to see
        }
        return null;
    }

    /** Whether a lock of {@code type} ("READ", "WRITE") on bytes {@code start..end} ("EOF") refuses a reader. */
    private static boolean excludesReaders(String type, String start, String end) {
        if (!type.equals("READ")) {
            return true;
        }
        try {
            long from = Long.parseLong(start);
            long to = end.equals("EOF") ? Long.MAX_VALUE : Long.parseLong(end);
            for (long b : READER_EXCLUDES) {
                if (from <= b && b <= to) {
                    return true;
                }
            }
            return false;
        } catch (NumberFormatException e) {
            return true; // a line of a form not known here: name its holder rather than hide it
        }
    }

    /** Whether {@code line} of an fdinfo is a read lock on {@link #MARK} of the inode {@code id}. */
    private static boolean isMark(String line, String id) {
        String[] f = line.trim().split("\\s+");
        String mark = Long.toString(MARK);
        return line.startsWith("lock:")
                && (line + " ").contains(id)
                && f.length >= 9
                && f[4].equals("READ")
                && f[7].equals(mark)
                && f[8].equals(mark);
    }

    /** Whether a lock of {@code type} on bytes {@code start..end} is one a reader ({@link #READER_HOLDS}) takes. */
    private static boolean onReaderByte(String type, String start, String end) {
        for (long b : READER_HOLDS) {
            if (type.equals("READ") && start.equals(Long.toString(b)) && end.equals(Long.toString(b))) {
                return true;
            }
        }
        return false;
    }

    private static String describe(long pid) {
        try {
            byte[] raw = Files.readAllBytes(Path.of("/proc", Long.toString(pid), "cmdline"));
            String cmd =
                    new String(raw, StandardCharsets.UTF_8).replace('\0', ' ').strip();
            if (cmd.length() > 200) { // the end names the export (socket, image), the start the program
                cmd = cmd.substring(0, 60) + " ... " + cmd.substring(cmd.length() - 135);
            }
            return cmd.isEmpty() ? "" : " '" + cmd + "'";
        } catch (IOException e) {
            return "";
        }
    }

    private static long major(long dev) {
        return ((dev >>> 8) & 0xfff) | ((dev >>> 32) & ~0xfffL);
    }

    private static long minor(long dev) {
        return (dev & 0xff) | ((dev >>> 12) & ~0xffL);
    }

    @Override
    public String toString() {
        return (shared() ? "shared" : "exclusive") + " lock on " + path + (held() ? " (held)" : "");
    }
}
