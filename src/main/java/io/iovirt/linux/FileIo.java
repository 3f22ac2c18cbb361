// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;

/**
 * File and block device I/O at addresses: pread/pwrite and preadv/pwritev go straight between the file and any
 * native segment (guest memory included), so the data path copies nothing in Java.
 *
 * <p>Every descriptor is opened close-on-exec: child processes (QEMU in tests) never inherit disk images.
 */
public final class FileIo {
    public static final int O_RDONLY = 0;
    public static final int O_WRONLY = 1;
    public static final int O_RDWR = 2;
    public static final int O_CREAT = 0100;
    public static final int O_EXCL = 0200;
    public static final int O_NOCTTY = 0400;
    public static final int O_TRUNC = 01000;
    public static final int O_APPEND = 02000;
    public static final int O_NONBLOCK = 04000;
    public static final int O_DSYNC = 010000;
    public static final int O_SYNC = 04010000;
    public static final int O_NOATIME = 01000000;
    public static final int O_CLOEXEC = 02000000;
    /** A descriptor that only names a file: no read or write, and the open does not reach its driver (nor waits). */
    public static final int O_PATH = 010000000;
    /** Differs between x86_64 (040000) and aarch64 (0200000). */
    public static final int O_DIRECT = Syscalls.X86_64 ? 040000 : 0200000;

    public static final int O_DIRECTORY = Syscalls.X86_64 ? 0200000 : 040000;
    public static final int O_NOFOLLOW = Syscalls.X86_64 ? 0400000 : 0100000;

    public static final int FALLOC_FL_KEEP_SIZE = 0x01;
    public static final int FALLOC_FL_PUNCH_HOLE = 0x02;
    public static final int FALLOC_FL_ZERO_RANGE = 0x10;

    /** Buffers for O_DIRECT: this alignment satisfies every device (logical blocks are at most 4 KiB). */
    public static final long DIRECT_ALIGNMENT = 4096;

    static final long BLKGETSIZE64 = Ioctl.ior(0x12, 114, 8);
    static final long BLKSSZGET = Ioctl.io(0x12, 104);
    static final long BLKDISCARD = Ioctl.io(0x12, 119);
    static final long BLKZEROOUT = Ioctl.io(0x12, 127);

    private static final int AT_FDCWD = -100;
    private static final int AT_EMPTY_PATH = 0x1000;
    private static final int STATX_BASIC_STATS = 0x7ff;
    private static final int STATX_DIOALIGN = 0x2000;
    private static final int S_IFMT = 0170000;
    private static final int S_IFREG = 0100000;
    private static final int S_IFBLK = 0060000;
    private static final int S_IFSOCK = 0140000;
    private static final int S_IFDIR = 0040000;
    private static final int S_IFCHR = 0020000;
    private static final int S_IFIFO = 0010000;
    private static final int S_IFLNK = 0120000;

    private FileIo() {}

    /**
     * What statx(2) reports about an open file. {@code directIoMemoryAlign}/{@code directIoOffsetAlign} are 0 when
     * the kernel or file system does not say (before Linux 6.1, or no O_DIRECT support). {@code dev} and {@code ino}
     * name the inode, {@code rdev} the device a device node is (both: major in the high 32 bits, minor in the low).
     */
    public record Stat(
            int mode,
            long size,
            int blockSize,
            long blocks,
            int directIoMemoryAlign,
            int directIoOffsetAlign,
            long dev,
            long ino,
            long rdev) {
        /** Whether {@code other} is the very same inode (same file system and inode number). */
        public boolean sameFile(Stat other) {
            return dev == other.dev && ino == other.ino;
        }

        public boolean isRegularFile() {
            return (mode & S_IFMT) == S_IFREG;
        }

        public boolean isBlockDevice() {
            return (mode & S_IFMT) == S_IFBLK;
        }

        public boolean isSocket() {
            return (mode & S_IFMT) == S_IFSOCK;
        }

        public boolean isDirectory() {
            return (mode & S_IFMT) == S_IFDIR;
        }

        public boolean isFifo() {
            return (mode & S_IFMT) == S_IFIFO;
        }

        /** What the file is, for messages: "a regular file", "a FIFO (named pipe)", "a character device"... */
        public String kind() {
            return switch (mode & S_IFMT) {
                case S_IFREG -> "a regular file";
                case S_IFBLK -> "a block device";
                case S_IFDIR -> "a directory";
                case S_IFCHR -> "a character device";
                case S_IFIFO -> "a FIFO (named pipe)";
                case S_IFSOCK -> "a UNIX socket";
                case S_IFLNK -> "a symbolic link";
                default -> "a file of unknown type (mode " + Integer.toOctalString(mode) + ")";
            };
        }
    }

    /** open(2) with O_CLOEXEC added; {@code mode} applies when creating. */
    public static Fd open(Path path, int flags, int mode) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            return Fd.adopt(Syscalls.check(
                    Syscalls.open(a.allocateFrom(path.toString()), flags | O_CLOEXEC, mode), "open", path));
        }
    }

    public static Fd open(Path path, int flags) throws LinuxException {
        return open(path, flags, 0);
    }

    /** One pread(2) into {@code dst}; returns the bytes read (fewer at end of file, 0 past it). */
    public static long pread(Fd fd, MemorySegment dst, long offset) throws LinuxException {
        int f = fd.get();
        return Syscalls.check(
                Syscalls.pread(f, dst, dst.byteSize(), offset),
                "pread",
                fd); // Fd prints "fd N" only on error: no string per call
    }

    /** One pwrite(2) from {@code src}; returns the bytes written. */
    public static long pwrite(Fd fd, MemorySegment src, long offset) throws LinuxException {
        int f = fd.get();
        return Syscalls.check(Syscalls.pwrite(f, src, src.byteSize(), offset), "pwrite", fd);
    }

    /** Reads until {@code dst} is full or the file ends; returns the bytes read. */
    public static long readFully(Fd fd, MemorySegment dst, long offset) throws LinuxException {
        long done = 0;
        long len = dst.byteSize();
        while (done < len) {
            long n = pread(fd, dst.asSlice(done), offset + done);
            if (n == 0) {
                break;
            }
            done += n;
        }
        return done;
    }

    /**
     * Writes all of {@code src}. A pwrite that writes nothing of a non-empty buffer (which POSIX allows, and a FUSE or
     * device driver can do) is an EIO: retrying it would loop forever, and the caller must not take the data as
     * written.
     */
    public static void writeFully(Fd fd, MemorySegment src, long offset) throws LinuxException {
        long done = 0;
        long len = src.byteSize();
        while (done < len) {
            long n = pwrite(fd, src.asSlice(done), offset + done);
            if (n == 0) {
                throw new LinuxException(
                        "pwrite",
                        fd + " at offset " + (offset + done) + ": wrote 0 of " + (len - done)
                                + " bytes, the file took no more",
                        Errno.EIO);
            }
            done += n;
        }
    }

    /** One preadv(2) over the first {@code count} entries of {@code iov}. */
    public static long preadv(Fd fd, IoVec iov, int count, long offset) throws LinuxException {
        checkCount(iov, count);
        int f = fd.get();
        return Syscalls.check(Syscalls.preadv(f, iov.segment(), count, offset), "preadv", fd);
    }

    /** One pwritev(2) from the first {@code count} entries of {@code iov}. */
    public static long pwritev(Fd fd, IoVec iov, int count, long offset) throws LinuxException {
        checkCount(iov, count);
        int f = fd.get();
        return Syscalls.check(Syscalls.pwritev(f, iov.segment(), count, offset), "pwritev", fd);
    }

    private static void checkCount(IoVec iov, int count) {
        if (count < 1 || count > iov.capacity()) {
            throw new IllegalArgumentException("iovec count " + count + " outside 1.." + iov.capacity());
        }
    }

    public static void fsync(Fd fd) throws LinuxException {
        int f = fd.get();
        Syscalls.check(Syscalls.fsync(f, false), "fsync", fd);
    }

    public static void fdatasync(Fd fd) throws LinuxException {
        int f = fd.get();
        Syscalls.check(Syscalls.fsync(f, true), "fdatasync", fd);
    }

    /** ftruncate(2): sets a regular file's size (growing leaves a hole that reads as zeros). */
    public static void ftruncate(Fd fd, long length) throws LinuxException {
        int f = fd.get();
        Syscalls.check(Syscalls.ftruncate(f, length), "ftruncate", "fd " + f + " to " + length + " bytes");
    }

    /** fallocate(2): e.g. {@code FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE} for discard. */
    public static void fallocate(Fd fd, int mode, long offset, long length) throws LinuxException {
        int f = fd.get();
        Syscalls.check(
                Syscalls.fallocate(f, mode, offset, length),
                "fallocate",
                "fd " + f + ", mode 0x" + Integer.toHexString(mode) + ", " + offset + "+" + length);
    }

    // ---- open file description locks (fcntl F_OFD_*, Linux 3.15) ----------------------------------------------

    /** struct flock l_type values. */
    public static final short F_RDLCK = 0;

    public static final short F_WRLCK = 1;
    public static final short F_UNLCK = 2;
    private static final int F_OFD_GETLK = 36;
    private static final int F_OFD_SETLK = 37;
    private static final int F_OFD_SETLKW = 38;

    /**
     * Takes (or with {@link #F_UNLCK} drops) an OFD lock on the whole file, without waiting. OFD locks belong to the
     * open file description, not the process: two opens of one file conflict even within one process, and the lock
     * goes away with the last descriptor of the description (also when the process is killed).
     *
     * @param type {@link #F_RDLCK} (shared), {@link #F_WRLCK} (exclusive; the descriptor must be open for writing)
     *             or {@link #F_UNLCK}
     * @return false when another open file description holds a conflicting lock
     */
    public static boolean ofdLock(Fd fd, short type) throws LinuxException {
        return ofdLock(fd, type, 0, 0);
    }

    /**
     * {@link #ofdLock(Fd, short)} on {@code length} bytes from {@code start} (0: to the end, however the file grows),
     * e.g. one of the bytes QEMU's image locking uses to say which permissions a user holds or shares.
     */
    public static boolean ofdLock(Fd fd, short type, long start, long length) throws LinuxException {
        int f = fd.get();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment flock = flock(a, type, start, length);
            int r = Syscalls.fcntl(f, F_OFD_SETLK, flock);
            if (r == -Errno.EAGAIN || r == -Errno.EACCES) {
                return false;
            }
            Syscalls.check(r, "fcntl", "F_OFD_SETLK type " + type + ", fd " + f);
            return true;
        }
    }

    /**
     * Takes an OFD lock on the whole file, waiting as long as another open file description holds a conflicting
     * one (F_OFD_SETLKW). Blocks the calling thread: call it on a platform thread.
     */
    public static void ofdLockWait(Fd fd, short type) throws LinuxException {
        int f = fd.get();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment flock = flock(a, type, 0, 0);
            int r = Syscalls.fcntl(f, F_OFD_SETLKW, flock); // retried on EINTR
            Syscalls.check(r, "fcntl", "F_OFD_SETLKW type " + type + ", fd " + f);
        }
    }

    /**
     * The type of lock another open file description holds that would conflict with taking {@code type} on the
     * whole file ({@link #F_RDLCK} or {@link #F_WRLCK}), or {@link #F_UNLCK} when there is none.
     */
    public static short ofdConflict(Fd fd, short type) throws LinuxException {
        return ofdConflict(fd, type, 0, 0);
    }

    /** {@link #ofdConflict(Fd, short)} on {@code length} bytes from {@code start} (0: to the end). */
    public static short ofdConflict(Fd fd, short type, long start, long length) throws LinuxException {
        int f = fd.get();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment flock = flock(a, type, start, length);
            Syscalls.check(Syscalls.fcntl(f, F_OFD_GETLK, flock), "fcntl", "F_OFD_GETLK type " + type + ", fd " + f);
            return flock.get(JAVA_SHORT, 0);
        }
    }

    /** struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid;}: l_pid 0 (the OFD rule). */
    private static MemorySegment flock(Arena a, short type, long start, long length) {
        MemorySegment flock = a.allocate(32, 8);
        flock.set(JAVA_SHORT, 0, type);
        flock.set(JAVA_SHORT, 2, (short) 0); // SEEK_SET
        flock.set(JAVA_LONG, 8, start);
        flock.set(JAVA_LONG, 16, length); // 0: to the end, however the file grows
        return flock;
    }

    public static final int SEEK_DATA = 3;
    public static final int SEEK_HOLE = 4;

    /**
     * lseek(2) with SEEK_DATA or SEEK_HOLE: the next data or hole offset at or after {@code offset}; -1 when
     * {@code offset} is at or past the end of the file (ENXIO), which for SEEK_DATA means "only a hole is left".
     */
    public static long seek(Fd fd, long offset, int whence) throws LinuxException {
        int f = fd.get();
        long r = Syscalls.lseek(f, offset, whence);
        if (r == -Errno.ENXIO) {
            return -1;
        }
        if (r >= 0) {
            return r;
        }
        // the message is built on failure only: SEEK_DATA/SEEK_HOLE run per NBD BLOCK_STATUS request
        return Syscalls.check(r, "lseek", "fd " + f + ", offset " + offset + ", whence " + whence);
    }

    public static Stat stat(Fd fd) throws LinuxException {
        int f = fd.get();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(256, 8);
            Syscalls.check(
                    Syscalls.statx(f, a.allocateFrom(""), AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_DIOALIGN, buf),
                    "statx",
                    "fd " + f);
            int mask = buf.get(JAVA_INT, 0);
            boolean dio = (mask & STATX_DIOALIGN) != 0;
            return new Stat(
                    Short.toUnsignedInt(buf.get(JAVA_SHORT, 28)),
                    buf.get(JAVA_LONG, 40),
                    buf.get(JAVA_INT, 4),
                    buf.get(JAVA_LONG, 48),
                    dio ? buf.get(JAVA_INT, 152) : 0,
                    dio ? buf.get(JAVA_INT, 156) : 0,
                    device(buf, 136),
                    buf.get(JAVA_LONG, 32),
                    device(buf, 128));
        }
    }

    /** statfs f_type of tmpfs (and of memfd_create files, which live on an internal tmpfs/shmem mount). */
    public static final long TMPFS_MAGIC = 0x01021994L;
    /** statfs f_type of hugetlbfs (and of MFD_HUGETLB memfds). */
    public static final long HUGETLBFS_MAGIC = 0x958458f6L;

    /** The file system type (statfs f_type, e.g. {@link #TMPFS_MAGIC}) of the file behind {@code fd}. */
    public static long filesystemType(Fd fd) throws LinuxException {
        int f = fd.get();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(256, 8); // struct statfs: 120 bytes on x86_64 and aarch64; f_type first
            Syscalls.check(Syscalls.fstatfs(f, buf), "fstatfs", "fd " + f);
            return buf.get(JAVA_LONG, 0) & 0xffff_ffffL;
        }
    }

    public static Stat stat(Path path) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(256, 8);
            Syscalls.check(
                    Syscalls.statx(AT_FDCWD, a.allocateFrom(path.toString()), 0, STATX_BASIC_STATS, buf),
                    "statx",
                    path);
            return new Stat(
                    Short.toUnsignedInt(buf.get(JAVA_SHORT, 28)),
                    buf.get(JAVA_LONG, 40),
                    buf.get(JAVA_INT, 4),
                    buf.get(JAVA_LONG, 48),
                    0,
                    0,
                    device(buf, 136),
                    buf.get(JAVA_LONG, 32),
                    device(buf, 128));
        }
    }

    /** A statx major/minor pair (two u32 at {@code off}): major in the high 32 bits, minor in the low. */
    private static long device(MemorySegment statx, long off) {
        return (Integer.toUnsignedLong(statx.get(JAVA_INT, off)) << 32)
                | Integer.toUnsignedLong(statx.get(JAVA_INT, off + 4));
    }

    /** Size in bytes of a regular file or a block device. */
    public static long size(Fd fd) throws LinuxException {
        Stat s = stat(fd);
        return s.isBlockDevice() ? blockDeviceSize(fd) : s.size();
    }

    /** BLKGETSIZE64. */
    public static long blockDeviceSize(Fd fd) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_LONG);
            Ioctl.call(fd, BLKGETSIZE64, out);
            return out.get(JAVA_LONG, 0);
        }
    }

    /** BLKSSZGET: the device's logical block size. */
    public static int logicalBlockSize(Fd fd) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(JAVA_INT);
            Ioctl.call(fd, BLKSSZGET, out);
            return out.get(JAVA_INT, 0);
        }
    }

    /** BLKDISCARD over [offset, offset+length). */
    public static void blockDiscard(Fd fd, long offset, long length) throws LinuxException {
        blockRange(fd, BLKDISCARD, offset, length);
    }

    /** BLKZEROOUT over [offset, offset+length). */
    public static void blockZeroOut(Fd fd, long offset, long length) throws LinuxException {
        blockRange(fd, BLKZEROOUT, offset, length);
    }

    private static void blockRange(Fd fd, long request, long offset, long length) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment range = a.allocate(JAVA_LONG, 2); // uint64_t range[2] = {start, length}
            range.setAtIndex(JAVA_LONG, 0, offset);
            range.setAtIndex(JAVA_LONG, 1, length);
            Ioctl.call(fd, request, range);
        }
    }

    /** A zeroed buffer aligned for O_DIRECT, freed with {@code arena}. */
    public static MemorySegment directBuffer(Arena arena, long size) {
        return arena.allocate(size, DIRECT_ALIGNMENT);
    }
}
