// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.linux.LinuxException;
import io.iovirt.util.Printable;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Objects;

/**
 * A raw disk image: a regular file (sparse allowed) or a block device, opened buffered or with O_DIRECT.
 *
 * <p>Thread-safe for concurrent positional I/O (one {@link IoContext} per queue thread, or per request in flight
 * when I/O goes through an {@link IoUring}); the descriptor is shared and nothing here locks. Flush is fdatasync:
 * once {@link #flush()} returns, every write completed before it is on stable storage, with the metadata needed to
 * read it back (block allocation, size); timestamps are not worth a journal commit per guest flush.
 */
public final class RawImage implements DiskImage {
    private final Path path;
    private final Fd fd;
    /** Opened O_RDONLY: can never take writes. */
    private final boolean openedReadOnly;
    /** Writes refused now: opened read-only, or switched with {@link #setReadOnly}. */
    private volatile boolean readOnly;

    private final boolean direct;
    private final boolean blockDevice;
    /** Changes only through {@link #resize}; queue threads check every request against the current value. */
    private volatile long size;
    /** Alignment O_DIRECT needs for file offsets and lengths (and, conservatively, memory). 1 when buffered. */
    private final int directAlign;
    /**
     * A container format's file (qcow2) grows as clusters are allocated: I/O is not bounded by the size at open,
     * the format checks its own ranges.
     */
    private boolean growable;
    /**
     * The format was detected from the header ({@link Images}), not named: a write may not give the first sector
     * another format's signature. Otherwise a guest could write, say, a qcow2 header naming any host file as its
     * backing file into its raw disk, and the next open (a restart re-detects) would serve that file to it.
     * QEMU refuses the same writes to a probed raw image.
     */
    private volatile boolean probed;
    /**
     * The failed fdatasync of a buffered image, or null. The kernel reports a failed writeback once and may drop the
     * pages it could not write: a later fdatasync would succeed for data that never reached the disk. Once set,
     * every flush fails, as in QEMU (file-posix), until the image is opened again. O_DIRECT writes bypass the page
     * cache, so a later flush of such an image means what it says.
     */
    private volatile LinuxException syncFailure;

    private RawImage(
            Path path, Fd fd, boolean readOnly, boolean direct, boolean blockDevice, long size, int directAlign) {
        this.path = path;
        this.fd = fd;
        this.openedReadOnly = readOnly;
        this.readOnly = readOnly;
        this.direct = direct;
        this.blockDevice = blockDevice;
        this.size = size;
        this.directAlign = directAlign;
    }

    /**
     * Opens {@code path}.
     *
     * @throws IOException with the reason and what to do when the image is missing, not a file/device, not
     *                     accessible, or does not support O_DIRECT
     */
    public static RawImage open(Path path, boolean readOnly, boolean direct) throws IOException {
        int flags = (readOnly ? FileIo.O_RDONLY : FileIo.O_RDWR) | (direct ? FileIo.O_DIRECT : 0);
        Fd fd;
        try {
            fd = openFileOrDevice(path, flags);
        } catch (LinuxException e) {
            String hint = openHint(e, path, readOnly, direct);
            throw new IOException(
                    "cannot open image " + Printable.of(path) + ": " + e.errnoName() + " (" + hint + ")", e);
        }
        try {
            FileIo.Stat st = FileIo.stat(fd);
            long size = st.isBlockDevice() ? FileIo.blockDeviceSize(fd) : st.size();
            int align = 1;
            if (direct) {
                int logical = st.isBlockDevice() ? FileIo.logicalBlockSize(fd) : 512;
                align = Math.max(512, Math.max(logical, Math.max(st.directIoOffsetAlign(), st.directIoMemoryAlign())));
            }
            if (size < 512) {
                throw new IOException("image " + Printable.of(path) + " is " + size
                        + " bytes: a disk needs at least one 512-byte sector");
            }
            return new RawImage(path, fd, readOnly, direct, st.isBlockDevice(), size, align);
        } catch (IOException | RuntimeException e) {
            fd.close();
            throw e;
        }
    }

    /**
     * What to do about a failed open of image {@code path}, worded for the command line and the daemon alike (each
     * has its own way to ask for read-only or O_DIRECT). The packaged systemd units sandbox the daemon: outside its
     * ReadWritePaths= every file system is read-only to it (ProtectSystem=strict: EROFS), and PrivateDevices=yes
     * leaves no block device in its /dev (ENOENT), PrivateTmp=yes gives it a /tmp of its own (ENOENT) and
     * ProtectHome=yes makes /home, /root and /run/user inaccessible (EACCES) — so none of these errnos means what it
     * would in a shell.
     */
    private static String openHint(LinuxException e, Path path, boolean readOnly, boolean direct) {
        Path abs = path.toAbsolutePath().normalize();
        boolean device = abs.startsWith("/dev");
        String unit = abs.startsWith("/tmp") || abs.startsWith("/var/tmp")
                ? "; under the packaged systemd unit, PrivateTmp=yes gives the daemon a /tmp and /var/tmp of its"
                        + " own: keep images in its ReadWritePaths= (/var/lib/iovirt)"
                : abs.startsWith("/home") || abs.startsWith("/root") || abs.startsWith("/run/user")
                        ? "; under the packaged systemd unit, ProtectHome=yes makes this directory inaccessible: keep"
                                + " images in its ReadWritePaths= (/var/lib/iovirt)"
                        : "";
        return switch (e.errnoName()) {
            case "ENOENT" ->
                device
                        ? "the device does not exist here: check the path; under the packaged systemd unit,"
                                + " PrivateDevices=yes hides block devices: give the unit PrivateDevices=no and"
                                + " DeviceAllow=" + Printable.of(path) + " rw"
                        : "create it first, e.g. 'truncate -s 1G " + Printable.of(path) + "'" + unit;
            case "EROFS" ->
                "its file system is read-only to this process: open the image read-only, or make it writable;"
                        + " under the packaged systemd unit (ProtectSystem=strict), add its directory to"
                        + " ReadWritePaths=";
            case "EACCES", "EPERM" ->
                (readOnly ? "check its permissions" : "check its permissions or open it read-only") + unit;
            case "EINVAL" ->
                direct ? "the file system does not support O_DIRECT: open it without direct I/O" : "check the path";
            default -> "check the path";
        };
    }

    /**
     * Opens {@code path} (with {@code flags}, e.g. O_RDWR) as an image's file: a regular file or a block device, and
     * nothing else. The path is looked up once, by an O_PATH open, which neither reaches a device's driver (opening
     * some character devices acts: /dev/watchdog arms the host's watchdog) nor waits (a FIFO's open(2) waits for a
     * writer); that descriptor's fstat decides, and anything but a regular file or a block device is refused, naming
     * what it is and what to do. Only then is the very file it names opened for I/O, through /proc/self/fd (no second
     * look-up of the path, which another process may have changed meanwhile), O_NONBLOCK|O_NOCTTY; O_NONBLOCK is then
     * cleared: it means nothing to the I/O of a file or a disk, except to io_uring, which would fail a read with
     * EAGAIN where it should wait. (An open on a file system that does not answer, a stopped FUSE daemon or an
     * unreachable NFS server, waits all the same: nothing makes that open return.)
     *
     * @throws LinuxException the open failed (the caller names the remedy for its errno)
     * @throws IOException    the path is not a regular file nor a block device
     */
    static Fd openFileOrDevice(Path path, int flags) throws IOException {
        try (Fd named = FileIo.open(path, FileIo.O_PATH)) {
            FileIo.Stat st = FileIo.stat(named);
            if (!st.isRegularFile() && !st.isBlockDevice()) {
                throw notFileOrDevice(path, st, null);
            }
            Path same = Path.of("/proc/self/fd/" + named.get());
            Fd fd;
            try {
                try {
                    fd = FileIo.open(same, flags | FileIo.O_NONBLOCK | FileIo.O_NOCTTY);
                } catch (LinuxException e) {
                    if (e.errno() != Errno.EAGAIN || !st.isRegularFile()) {
                        throw e;
                    }
                    // a lease on the file, which a non-blocking open does not wait to break: open as any other user
                    // would, and wait for its holder to give it up (bounded by the kernel's lease-break-time). The
                    // same inode, known to be a regular file: not a FIFO's open, which could wait forever
                    fd = FileIo.open(same, flags | FileIo.O_NOCTTY);
                }
            } catch (LinuxException e) {
                if (e.errno() == Errno.ENOENT && !java.nio.file.Files.isDirectory(Path.of("/proc/self/fd"))) {
                    throw new IOException(
                            "cannot open image " + Printable.of(path) + " through /proc/self/fd (iovirt opens the"
                                    + " file it checked by its descriptor, not by its path again): mount /proc",
                            e);
                }
                LinuxException byPath =
                        new LinuxException("open", path.toString(), e.errno()); // the path, not the fd's
                byPath.initCause(e);
                throw byPath;
            }
            try {
                FileIo.Stat opened = FileIo.stat(fd);
                if (!opened.sameFile(st)) { // cannot be: the descriptor named this file; checked all the same
                    throw new IOException(
                            "image " + Printable.of(path) + " changed while it was opened: open it again");
                }
                fd.setNonBlocking(false);
                return fd;
            } catch (IOException | RuntimeException e) {
                fd.close();
                throw e;
            }
        }
    }

    private static IOException notFileOrDevice(Path path, FileIo.Stat st, Throwable cause) {
        if (st.isDirectory()) {
            return new IOException("image " + Printable.of(path) + " is a directory: name the image file", cause);
        }
        return new IOException(
                "image " + Printable.of(path) + " is " + st.kind()
                        + ", not a regular file or a block device (an image is one of"
                        + " those" + (st.isFifo() ? "; opening a FIFO would wait for a writer" : "")
                        + "): name the image file or the disk's block device itself",
                cause);
    }

    /**
     * Opens the file of a container format (qcow2) for its data and metadata I/O: buffered, and not bounded by the
     * file's size at open, since the format grows it.
     */
    public static RawImage openContainerFile(Path path, boolean readOnly) throws IOException {
        return openContainerFile(path, readOnly, false);
    }

    /** As {@link #openContainerFile(Path, boolean)}, with O_DIRECT when {@code direct}. */
    public static RawImage openContainerFile(Path path, boolean readOnly, boolean direct) throws IOException {
        RawImage f = open(path, readOnly, direct);
        f.growable = true;
        return f;
    }

    /** The format was detected, not named ({@link #probed}): writes that would change what it is detected as fail. */
    void probed() {
        probed = true;
    }

    /**
     * Refuses a write of {@code bytes} bytes from {@code src} at {@code offset} that would make the first
     * {@value ImageFormat#HEADER_BYTES} bytes of a {@link #probed} image read as another format than raw. Cold: only
     * writes into that range of a probed image come here.
     */
    private void checkHeaderWrite(long offset, long bytes, IoContext src) throws IOException {
        int n = ImageFormat.HEADER_BYTES;
        byte[] header = new byte[n];
        try (Arena a = Arena.ofConfined()) {
            if (offset > 0 || bytes < n) { // the bytes the write leaves as they are
                MemorySegment now = direct ? FileIo.directBuffer(a, Math.max(n, directAlign)) : a.allocate(n);
                long got = FileIo.readFully(fd, now, 0);
                MemorySegment.copy(now, ValueLayout.JAVA_BYTE, 0, header, 0, (int) Math.min(n, got));
            }
        }
        src.gather(0, header, (int) offset, (int) Math.min(bytes, n - offset));
        ImageFormat f = ImageFormat.detect(header);
        if (f != ImageFormat.RAW) {
            throw new LinuxException(
                    "pwrite",
                    "a write to the first sector of " + path + " would make it " + f.description() + "; refused"
                            + " because its format was detected, not named (its next open would take it for that"
                            + " format). Serve it with the format named raw (--format raw, format=raw) to allow"
                            + " such writes",
                    Errno.EPERM);
        }
    }

    /** The descriptor, for a container format's metadata I/O. */
    public Fd fd() {
        return fd;
    }

    @Override
    public Fd dupFile() throws LinuxException {
        return fd.dup();
    }

    @Override
    public Fd[] ringFiles() {
        return new Fd[] {fd};
    }

    @Override
    public Path path() {
        return path;
    }

    @Override
    public String format() {
        return "raw";
    }

    @Override
    public int zeroGranularity() {
        return 1;
    }

    @Override
    public long size() {
        return size;
    }

    @Override
    public boolean readOnly() {
        return readOnly;
    }

    /**
     * Refuses (or accepts again) writes from now on. Switching to read-only first makes every completed write
     * durable; an image opened read-only cannot be made writable.
     */
    @Override
    public synchronized void setReadOnly(boolean ro) throws IOException {
        if (!ro && openedReadOnly) {
            throw new IOException(
                    "image " + path + " was opened read-only; remove the export and add it again without readonly");
        }
        if (ro && !readOnly) {
            readOnly = true; // first: after a failed writeback, stopping the guest's writes is what is wanted most
            sync();
        }
        readOnly = ro;
    }

    /**
     * Grows a regular-file image to {@code newSize} bytes (the new part reads as zeros). Shrinking is refused: a
     * guest may have data there, and so is growing an image switched read-only (as a qcow2 image refuses it). A block
     * device cannot be resized here: grow the device, then it is re-read.
     */
    @Override
    public synchronized void resize(long newSize) throws IOException {
        if (blockDevice) {
            long now = FileIo.blockDeviceSize(fd);
            if (now != newSize) {
                throw new IOException("image " + path + " is a block device of " + now
                        + " bytes; resize the device itself" + " (e.g. lvextend) and ask for its new size");
            }
            size = now;
            return;
        }
        if (newSize < size) {
            throw new IOException("cannot shrink image " + path + " from " + size + " to " + newSize
                    + " bytes: the guest may have data there");
        }
        if (newSize % blockSize() != 0) {
            throw new IOException(
                    "new size " + newSize + " is not a multiple of the disk's " + blockSize() + "-byte blocks");
        }
        if (openedReadOnly) {
            throw new IOException("image " + path + " was opened read-only and cannot be grown");
        }
        if (readOnly) {
            // switched read-only (blk.set-readonly): its lock may be shared by now, with readers that let nobody
            // resize the image; under this monitor, so a switch cannot come between the check and the truncate
            throw new IOException("image " + path
                    + " is read-only now (blk.set-readonly) and cannot be grown; switch it" + " writable first");
        }
        checkSynced(); // a writeback failed already: refused before the file grows (it could not be told safely)
        FileIo.ftruncate(fd, newSize);
        // The new size survives a crash before the guest is told about it. A failure is kept as a flush's is: the
        // kernel reports a failed writeback once per open file, and this fsync may be the one that hears of the
        // guest's writes lost, so without it the guest's next FLUSH would be answered OK (see syncFailure).
        try {
            FileIo.fsync(fd);
        } catch (LinuxException e) {
            throw syncFailed(e);
        }
        size = newSize;
    }

    @Override
    public boolean direct() {
        return direct;
    }

    /** Smallest block the guest should address: the O_DIRECT alignment, else 512. */
    @Override
    public int blockSize() {
        return Math.max(512, directAlign);
    }

    /** Per-thread I/O state: a preallocated iovec array and, in O_DIRECT mode, an aligned bounce buffer. */
    @Override
    public IoContext newContext(int maxSegments, int bounceBytes) {
        return new IoContext(maxSegments, bounceBytes);
    }

    /**
     * I/O state over caller-owned memory, for one request in flight among many: {@code iov} holds its iovec array,
     * and {@code bounce} (O_DIRECT only; aligned to {@link #blockSize()}, a multiple of it) serves unaligned guest
     * buffers. Contexts used by one thread may share one bounce buffer: the bounce path is synchronous. The caller
     * frees the memory after closing the contexts.
     */
    @Override
    public IoContext newContext(IoVec iov, MemorySegment bounce) {
        if (direct) {
            if (bounce == null || (bounce.address() & (directAlign - 1)) != 0 || bounce.byteSize() < directAlign) {
                throw new IllegalArgumentException("O_DIRECT needs a bounce buffer of at least " + directAlign
                        + " bytes aligned to " + directAlign);
            }
        }
        return new IoContext(iov, bounce);
    }

    /**
     * Makes every completed write durable (fdatasync); nothing to do when opened read-only. An image switched to
     * read-only still syncs (see {@link DiskImage#flush}).
     */
    @Override
    public void flush() throws LinuxException {
        if (!openedReadOnly) {
            sync();
        }
    }

    /** fdatasync, failing for good once one has failed ({@link #syncFailure}). */
    private void sync() throws LinuxException {
        checkSynced();
        try {
            FileIo.fdatasync(fd);
        } catch (LinuxException e) {
            throw syncFailed(e);
        }
    }

    private void checkSynced() throws LinuxException {
        LinuxException e = syncFailure;
        if (e != null) {
            throw failedSync(e.errno());
        }
    }

    /** Keeps the failure of a buffered image's fdatasync (see {@link #syncFailure}); returns what to throw. */
    private LinuxException syncFailed(LinuxException e) {
        if (direct) {
            return e;
        }
        syncFailure = e;
        return failedSync(e.errno());
    }

    private LinuxException failedSync(int errno) {
        return new LinuxException(
                "fdatasync",
                path + ": writing back to the file failed; data written since the last successful flush may be"
                        + " lost, so every flush fails until the image is opened again",
                errno);
    }

    /**
     * Queues the asynchronous equivalent of {@link #flush()} on {@code ring}; pass its result to
     * {@link #flushCompleted}. It covers the writes completed before it is submitted, not those still in flight.
     */
    @Override
    public boolean submitFlush(IoUring ring, long userData) {
        if (openedReadOnly || syncFailure != null) {
            return false; // nothing was ever written through it, or a sync failed: flush() says so
        }
        ring.fsync(fd, IoUring.FSYNC_DATASYNC, userData);
        return true;
    }

    /** Checks the result of a flush queued with {@link #submitFlush}. */
    @Override
    public void flushCompleted(int result) throws LinuxException {
        if (result < 0) {
            throw syncFailed(IoUring.error(IoUring.OP_FSYNC, result, path.toString()));
        }
    }

    /** Deallocates [offset, offset+len): the range then reads as zeros. */
    @Override
    public void discard(long offset, long len) throws LinuxException {
        checkWritable();
        if (len == 0) {
            return; // nothing asked for (a guest's segment of no sectors); fallocate and BLKDISCARD refuse a length 0
        }
        if (blockDevice) {
            FileIo.blockDiscard(fd, offset, len);
        } else {
            FileIo.fallocate(fd, FileIo.FALLOC_FL_PUNCH_HOLE | FileIo.FALLOC_FL_KEEP_SIZE, offset, len);
        }
    }

    /** Makes [offset, offset+len) read as zeros; with {@code unmap} the space may be deallocated. */
    @Override
    public void writeZeroes(long offset, long len, boolean unmap) throws LinuxException {
        checkWritable();
        if (len == 0) {
            return; // as discard
        }
        if (blockDevice) {
            FileIo.blockZeroOut(fd, offset, len);
            return;
        }
        int mode = unmap
                ? FileIo.FALLOC_FL_PUNCH_HOLE | FileIo.FALLOC_FL_KEEP_SIZE
                : FileIo.FALLOC_FL_ZERO_RANGE | FileIo.FALLOC_FL_KEEP_SIZE;
        try {
            FileIo.fallocate(fd, mode, offset, len);
        } catch (LinuxException e) {
            if (e.errno() != Errno.EOPNOTSUPP) {
                throw e;
            }
            // No FALLOC_FL_ZERO_RANGE (tmpfs, NFS): a punched hole reads as zeros. Without unmap the caller asked the
            // range to stay provisioned (NBD's NO_HOLE: "MUST be fully provisioned"; virtio-blk WRITE_ZEROES without
            // UNMAP), so it is allocated again — zeroed blocks, as QEMU's file driver does.
            FileIo.fallocate(fd, FileIo.FALLOC_FL_PUNCH_HOLE | FileIo.FALLOC_FL_KEEP_SIZE, offset, len);
            if (!unmap) {
                try {
                    FileIo.fallocate(fd, FileIo.FALLOC_FL_KEEP_SIZE, offset, len);
                } catch (LinuxException e2) {
                    if (e2.errno() != Errno.EOPNOTSUPP) {
                        throw e2;
                    }
                    // a file system that cannot allocate ahead cannot keep a range provisioned: the zeros stand
                }
            }
        }
    }

    /**
     * SEEK_DATA/SEEK_HOLE on a regular file: a hole reads as zeros. A block device reports everything as data
     * (the kernel has no allocation map for it).
     */
    @Override
    public long extent(long offset, long len) throws IOException {
        if (offset < 0 || len <= 0 || offset >= size) {
            throw new LinuxException(
                    "lseek", "extent " + offset + "+" + len + " outside the " + size + "-byte image", Errno.EINVAL);
        }
        long max = Math.min(len, size - offset);
        if (blockDevice) {
            return Extent.of(max, false, false);
        }
        long data = FileIo.seek(fd, offset, FileIo.SEEK_DATA);
        if (data < 0 || data >= offset + max) {
            return Extent.of(max, true, true); // a hole to the end of the range (or of the file)
        }
        if (data > offset) {
            return Extent.of(data - offset, true, true);
        }
        long hole = FileIo.seek(fd, offset, FileIo.SEEK_HOLE);
        long end = hole < 0 ? offset + max : Math.min(hole, offset + max);
        return Extent.of(Math.max(1, end - offset), false, false);
    }

    /**
     * {@link DiskImage#checkRange}; a container file is bounded by nothing but the largest file offset (the format
     * grows it).
     */
    private void checkRange(long offset, long len, boolean write) throws LinuxException {
        DiskImage.checkRange(path, growable ? Long.MAX_VALUE : size, readOnly, offset, len, write);
    }

    /** Positional read; past the file's end (it shrank) reads as zeros. O_DIRECT images need an aligned {@code dst}. */
    @Override
    public void readAt(long offset, MemorySegment dst) throws IOException {
        checkRange(offset, dst.byteSize(), false);
        long got = FileIo.readFully(fd, dst, offset);
        if (got < dst.byteSize()) {
            dst.asSlice(got).fill((byte) 0);
        }
    }

    private void checkWritable() throws LinuxException {
        if (readOnly) {
            throw new LinuxException("write", path.toString(), Errno.EROFS);
        }
    }

    @Override
    public void close() {
        fd.close();
    }

    /**
     * Scatter-gather I/O between the image and guest buffers for one thread. Add buffers with {@link #add}, then
     * {@link #read} or {@link #write} them at an offset; the context is reused for the next request.
     */
    public final class IoContext implements ImageIo {
        /** Owns the memory of a context made by {@link #newContext(int, int)}; null for caller-owned memory. */
        private final Arena arena;

        private final IoVec iov;
        /**
         * The buffers as (mapping, offset, length): no slice per buffer. Grow up to the iovec capacity as requests
         * need them, so thousands of idle contexts stay small.
         */
        private MemorySegment[] maps;

        private long[] offs;
        private long[] lens;

        private final MemorySegment bounce;
        private int count;
        private long bytes;
        private boolean aligned = true;

        private IoContext(int maxSegments, int bounceBytes) {
            this.arena = Arena.ofShared();
            this.iov = IoVec.allocate(arena, Math.min(maxSegments, IoVec.IOV_MAX));
            this.maps = new MemorySegment[iov.capacity()];
            this.offs = new long[iov.capacity()];
            this.lens = new long[iov.capacity()];
            this.bounce = direct ? FileIo.directBuffer(arena, Math.max(bounceBytes, directAlign)) : null;
        }

        private IoContext(IoVec iov, MemorySegment bounce) {
            this.arena = null;
            this.iov = iov;
            int cap = Math.min(8, iov.capacity());
            this.maps = new MemorySegment[cap];
            this.offs = new long[cap];
            this.lens = new long[cap];
            this.bounce = direct ? bounce : null;
        }

        /** Starts a new request. */
        @Override
        public void clear() {
            for (int i = 0; i < count; i++) {
                maps[i] = null;
            }
            count = 0;
            bytes = 0;
            aligned = true;
        }

        /** Adds a guest buffer; returns false when the request has more segments than this context takes. */
        @Override
        public boolean add(MemorySegment memory, long offset, long length) {
            Objects.checkFromIndexSize(offset, length, memory.byteSize());
            if (length == 0) {
                return true;
            }
            if (!memory.isNative()) {
                throw new IllegalArgumentException("I/O buffers must be native memory");
            }
            if (count == maps.length) {
                if (count == iov.capacity()) {
                    return false;
                }
                int cap = Math.min(iov.capacity(), count * 2);
                maps = Arrays.copyOf(maps, cap);
                offs = Arrays.copyOf(offs, cap);
                lens = Arrays.copyOf(lens, cap);
            }
            long address = memory.address() + offset;
            maps[count] = memory;
            offs[count] = offset;
            lens[count] = length;
            iov.set(count, address, length);
            count++;
            bytes += length;
            if (direct && ((address | length) & (directAlign - 1)) != 0) {
                aligned = false;
            }
            return true;
        }

        @Override
        public long bytes() {
            return bytes;
        }

        /** Reads {@link #bytes()} at {@code offset} into the buffers; the range must lie inside the image. */
        @Override
        public void read(long offset) throws IOException {
            checkRange(offset, bytes, false);
            if (count == 0) {
                return;
            }
            if (!aligned) {
                bounced(offset, false);
                return;
            }
            long n = FileIo.preadv(fd, iov, count, offset);
            if (n < bytes) {
                finishShort(offset, n, false);
            }
        }

        /** Writes the buffers at {@code offset}; the range must lie inside the image. */
        @Override
        public void write(long offset) throws IOException {
            checkRange(offset, bytes, true);
            if (count == 0) {
                return;
            }
            if (probed && offset < ImageFormat.HEADER_BYTES) {
                checkHeaderWrite(offset, bytes, this);
            }
            if (!aligned) {
                bounced(offset, true);
                return;
            }
            long n = FileIo.pwritev(fd, iov, count, offset);
            if (n < bytes) {
                finishShort(offset, n, true);
            }
        }

        /**
         * Queues the read of {@link #bytes()} at {@code offset} on {@code ring} with {@code userData}, straight into
         * the buffers, and returns true; pass the completion's result to {@link #completed}. Returns false, queueing
         * nothing, when the request must run synchronously with {@link #read}: nothing to read, or O_DIRECT with
         * buffers that need the bounce path. The buffers must stay mapped until the completion is reaped.
         */
        @Override
        public boolean submitRead(IoUring ring, long offset, long userData) throws LinuxException {
            checkRange(offset, bytes, false);
            if (count == 0 || !aligned) {
                return false;
            }
            if (count == 1) {
                ring.read(fd, maps[0], offs[0], lens[0], offset, userData);
            } else {
                ring.readv(fd, iov, count, offset, userData);
            }
            return true;
        }

        /** The write counterpart of {@link #submitRead}. */
        @Override
        public boolean submitWrite(IoUring ring, long offset, long userData) throws LinuxException {
            checkRange(offset, bytes, true);
            if (count == 0 || !aligned || (probed && offset < ImageFormat.HEADER_BYTES)) {
                return false; // the synchronous write checks what a write to the first sector of a probed image does
            }
            if (count == 1) {
                ring.write(fd, maps[0], offs[0], lens[0], offset, userData);
            } else {
                ring.writev(fd, iov, count, offset, userData);
            }
            return true;
        }

        /**
         * Finishes a read or write queued with {@link #submitRead}/{@link #submitWrite} from its completion result:
         * an error becomes an exception naming the operation; a short transfer is completed synchronously, like a
         * short preadv/pwritev.
         */
        @Override
        public void completed(boolean write, long offset, int result) throws IOException {
            if (result == -Errno.EAGAIN) {
                finishShort(offset, 0, write); // the kernel would not block for us: do it ourselves
                return;
            }
            if (result < 0) {
                int op = count == 1
                        ? (write ? IoUring.OP_WRITE : IoUring.OP_READ)
                        : (write ? IoUring.OP_WRITEV : IoUring.OP_READV);
                throw IoUring.error(op, result, path + ", " + bytes + " bytes at " + offset);
            }
            if (result < bytes) {
                finishShort(offset, result, write);
            }
        }

        /** Copies the first {@code len} bytes of the buffers, from {@code pos} into them, to {@code dst[at..]}. */
        private void gather(long pos, byte[] dst, int at, int len) {
            long p = 0;
            for (int i = 0; i < count && len > 0; i++) {
                long end = p + lens[i];
                if (end > pos) {
                    long skip = Math.max(0, pos - p);
                    int k = (int) Math.min(lens[i] - skip, len);
                    MemorySegment.copy(maps[i], ValueLayout.JAVA_BYTE, offs[i] + skip, dst, at, k);
                    at += k;
                    pos += k;
                    len -= k;
                }
                p = end;
            }
        }

        /**
         * Completes a short preadv/pwritev buffer by buffer (a signal, or a read across a hole's end). Rare, so it
         * slices.
         */
        private void finishShort(long offset, long done, boolean write) throws IOException {
            long pos = 0;
            for (int i = 0; i < count; i++) {
                long end = pos + lens[i];
                if (end > done) {
                    long skip = Math.max(0, done - pos);
                    MemorySegment rest = maps[i].asSlice(offs[i] + skip, lens[i] - skip);
                    if (write) {
                        FileIo.writeFully(fd, rest, offset + pos + skip);
                    } else {
                        long got = FileIo.readFully(fd, rest, offset + pos + skip);
                        if (got < rest.byteSize()) {
                            rest.asSlice(got).fill((byte) 0); // the file shrank under us: past its end reads as zeros
                        }
                    }
                }
                pos = end;
            }
        }

        /** O_DIRECT with guest buffers that are not aligned: go through the aligned bounce buffer in chunks. */
        private void bounced(long offset, boolean write) throws IOException {
            if ((offset & (directAlign - 1)) != 0 || (bytes & (directAlign - 1)) != 0) {
                throw new LinuxException(
                        write ? "pwrite" : "pread",
                        "O_DIRECT request at " + offset + "+" + bytes + " is not " + directAlign + "-byte aligned",
                        Errno.EINVAL);
            }
            long chunkMax = bounce.byteSize() - bounce.byteSize() % directAlign;
            int seg = 0;
            long segOff = 0;
            for (long done = 0; done < bytes; ) {
                long chunk = Math.min(chunkMax, bytes - done);
                MemorySegment b = bounce.asSlice(0, chunk);
                if (!write) {
                    long got = FileIo.readFully(fd, b, offset + done);
                    if (got < chunk) {
                        b.asSlice(got).fill((byte) 0);
                    }
                }
                for (long c = 0; c < chunk; ) { // scatter/gather between the bounce chunk and the guest buffers
                    long n = Math.min(chunk - c, lens[seg] - segOff);
                    if (write) {
                        MemorySegment.copy(maps[seg], offs[seg] + segOff, b, c, n);
                    } else {
                        MemorySegment.copy(b, c, maps[seg], offs[seg] + segOff, n);
                    }
                    c += n;
                    segOff += n;
                    if (segOff == lens[seg]) {
                        seg++;
                        segOff = 0;
                    }
                }
                if (write) {
                    FileIo.writeFully(fd, b, offset + done);
                }
                done += chunk;
            }
        }

        @Override
        public void close() {
            clear();
            if (arena != null) {
                arena.close();
            }
        }
    }
}
