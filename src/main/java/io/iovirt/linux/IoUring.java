// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.MemoryLayout.PathElement.groupElement;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Objects;

/**
 * An io_uring instance: asynchronous file I/O through two rings shared with the kernel. The owner prepares
 * submission queue entries (SQEs) with the {@code readv}/{@code writev}/{@code read}/{@code write}/{@code fsync}
 * methods, hands them to the kernel with {@link #submit}, and collects completions (CQEs: the caller's
 * {@code userData} and the operation's result) with {@link #reap}, possibly woken by an eventfd registered with
 * {@link #registerEventFd}.
 *
 * <p>One thread owns an instance (nothing here locks); preparing, submitting and reaping allocate nothing. At most
 * {@link #capacity()} operations may be outstanding (prepared and not yet completed), which is the CQ size, and the
 * prepare methods refuse more, so single-shot operations never overflow the CQ. A multishot poll may post more
 * completions than that between two reaps; the kernel (FEAT_NODROP, 5.5) then keeps them aside rather than drop
 * them, and ends the multishot operation, which its owner re-arms. The CQ head moving does not bring them in: only
 * an io_uring_enter with GETEVENTS does, which {@link #reap} makes when the SQ ring's flags say some wait
 * (IORING_SQ_CQ_OVERFLOW), as liburing's peek does.
 *
 * <p>Memory given to an operation (the iovec array and the buffers it points at, or a plain buffer) holds raw
 * addresses in the SQE: the caller keeps it mapped until the operation's completion has been reaped.
 *
 * <p>Ordering: the kernel reads an SQE after it sees the SQ tail move (we store the tail with release semantics
 * after writing the entry) and we read a CQE after loading the CQ tail with acquire semantics, then return the
 * slot by storing the CQ head with release semantics. Needs Linux 5.6 (IORING_OP_READ/WRITE); tested on 6.1.
 */
public final class IoUring implements AutoCloseable {
    // Opcodes (include/uapi/linux/io_uring.h, enum io_uring_op)
    public static final int OP_NOP = 0;
    public static final int OP_READV = 1;
    public static final int OP_WRITEV = 2;
    public static final int OP_FSYNC = 3;
    public static final int OP_POLL_ADD = 6;
    public static final int OP_ASYNC_CANCEL = 14;
    public static final int OP_READ = 22;
    public static final int OP_WRITE = 23;

    // SQE flags (sqe->flags)
    /** Start this operation only after every earlier one completed, and later ones only after it. */
    public static final int SQE_IO_DRAIN = 1 << 1;
    /** The next SQE starts only after this one completed successfully (a failure cancels it: -ECANCELED). */
    public static final int SQE_IO_LINK = 1 << 2;
    /** Always run in a kernel worker thread instead of trying the non-blocking path first. */
    public static final int SQE_ASYNC = 1 << 4;
    /** sqe->fd is an index into the ring's registered files (set by this class, see {@link #registerFiles}). */
    static final int SQE_FIXED_FILE = 1;

    /** fsync_flags: fdatasync(2) semantics. */
    public static final int FSYNC_DATASYNC = 1;

    /** CQE flag: the operation (a multishot poll) stays armed and posts more completions. */
    public static final int CQE_F_MORE = 1 << 1;

    static final int POLL_ADD_MULTI = 1;

    // io_uring_params.features
    public static final int FEAT_SINGLE_MMAP = 1;
    public static final int FEAT_NODROP = 1 << 1;
    public static final int FEAT_SUBMIT_STABLE = 1 << 2;

    /** Largest SQ the kernel allows (IORING_MAX_ENTRIES), and largest CQ (IORING_MAX_CQ_ENTRIES). */
    public static final int MAX_ENTRIES = 32768;

    public static final int MAX_CQ_ENTRIES = 2 * MAX_ENTRIES;

    static final int SETUP_CQSIZE = 1 << 3;
    static final int SETUP_CLAMP = 1 << 4;
    static final int SETUP_COOP_TASKRUN = 1 << 8;
    static final int SETUP_TASKRUN_FLAG = 1 << 9;
    /** sq_ring->flags: completions the CQ had no room for wait in the kernel for an enter with GETEVENTS. */
    static final int SQ_CQ_OVERFLOW = 1 << 1;
    /** sq_ring->flags: completions wait as task work for the ring's thread to enter the kernel (TASKRUN_FLAG). */
    static final int SQ_TASKRUN = 1 << 2;

    static final int ENTER_GETEVENTS = 1;
    static final int REGISTER_FILES = 2;
    static final int UNREGISTER_FILES = 3;
    static final int REGISTER_EVENTFD = 4;
    static final int UNREGISTER_EVENTFD = 5;
    static final long OFF_SQ_RING = 0;
    static final long OFF_CQ_RING = 0x8000000L;
    static final long OFF_SQES = 0x10000000L;
    /** Largest single read/write the kernel performs (MAX_RW_COUNT): results must fit the CQE's int. */
    static final long MAX_RW_BYTES = 0x7ffff000L;

    /** struct io_uring_sqe (64 bytes): the fields this class sets; unions are named by the member we use. */
    static final StructLayout SQE_LAYOUT = MemoryLayout.structLayout(
            JAVA_BYTE.withName("opcode"),
            JAVA_BYTE.withName("flags"),
            JAVA_SHORT.withName("ioprio"),
            JAVA_INT.withName("fd"),
            JAVA_LONG.withName("off"),
            JAVA_LONG.withName("addr"),
            JAVA_INT.withName("len"),
            JAVA_INT.withName("op_flags"), // rw_flags, fsync_flags, ...
            JAVA_LONG.withName("user_data"),
            JAVA_SHORT.withName("buf_index"),
            JAVA_SHORT.withName("personality"),
            JAVA_INT.withName("splice_fd_in"),
            JAVA_LONG.withName("addr3"),
            JAVA_LONG.withName("pad2"));

    /** struct io_uring_cqe (16 bytes; rings set up without IORING_SETUP_CQE32). */
    static final StructLayout CQE_LAYOUT = MemoryLayout.structLayout(
            JAVA_LONG.withName("user_data"), JAVA_INT.withName("res"), JAVA_INT.withName("flags"));

    /** struct io_sqring_offsets (40 bytes). */
    static final StructLayout SQ_OFFSETS_LAYOUT = MemoryLayout.structLayout(
            JAVA_INT.withName("head"),
            JAVA_INT.withName("tail"),
            JAVA_INT.withName("ring_mask"),
            JAVA_INT.withName("ring_entries"),
            JAVA_INT.withName("flags"),
            JAVA_INT.withName("dropped"),
            JAVA_INT.withName("array"),
            JAVA_INT.withName("resv1"),
            JAVA_LONG.withName("user_addr"));

    /** struct io_cqring_offsets (40 bytes). */
    static final StructLayout CQ_OFFSETS_LAYOUT = MemoryLayout.structLayout(
            JAVA_INT.withName("head"),
            JAVA_INT.withName("tail"),
            JAVA_INT.withName("ring_mask"),
            JAVA_INT.withName("ring_entries"),
            JAVA_INT.withName("overflow"),
            JAVA_INT.withName("cqes"),
            JAVA_INT.withName("flags"),
            JAVA_INT.withName("resv1"),
            JAVA_LONG.withName("user_addr"));

    /** struct io_uring_params (120 bytes). */
    static final StructLayout PARAMS_LAYOUT = MemoryLayout.structLayout(
            JAVA_INT.withName("sq_entries"),
            JAVA_INT.withName("cq_entries"),
            JAVA_INT.withName("flags"),
            JAVA_INT.withName("sq_thread_cpu"),
            JAVA_INT.withName("sq_thread_idle"),
            JAVA_INT.withName("features"),
            JAVA_INT.withName("wq_fd"),
            MemoryLayout.sequenceLayout(3, JAVA_INT).withName("resv"),
            SQ_OFFSETS_LAYOUT.withName("sq_off"),
            CQ_OFFSETS_LAYOUT.withName("cq_off"));

    static final long SQE_BYTES = SQE_LAYOUT.byteSize();
    static final long CQE_BYTES = CQE_LAYOUT.byteSize();
    private static final long SQE_OPCODE = off(SQE_LAYOUT, "opcode");
    private static final long SQE_FLAGS = off(SQE_LAYOUT, "flags");
    private static final long SQE_IOPRIO = off(SQE_LAYOUT, "ioprio");
    private static final long SQE_FD = off(SQE_LAYOUT, "fd");
    private static final long SQE_OFF = off(SQE_LAYOUT, "off");
    private static final long SQE_ADDR = off(SQE_LAYOUT, "addr");
    private static final long SQE_LEN = off(SQE_LAYOUT, "len");
    private static final long SQE_OP_FLAGS = off(SQE_LAYOUT, "op_flags");
    private static final long SQE_USER_DATA = off(SQE_LAYOUT, "user_data");
    private static final long SQE_BUF_INDEX = off(SQE_LAYOUT, "buf_index"); // 8 bytes: buf_index..splice_fd_in
    private static final long SQE_ADDR3 = off(SQE_LAYOUT, "addr3");
    private static final long SQE_PAD2 = off(SQE_LAYOUT, "pad2");
    private static final long CQE_USER_DATA = off(CQE_LAYOUT, "user_data");
    private static final long CQE_RES = off(CQE_LAYOUT, "res");
    private static final long CQE_FLAGS = off(CQE_LAYOUT, "flags");

    private static final VarHandle U32 = ValueLayout.JAVA_INT.varHandle();

    /** Receives completions from {@link #reap}. */
    @FunctionalInterface
    public interface CompletionHandler<E extends Exception> {
        /**
         * @param result the operation's result: bytes transferred, 0, or a negative errno (see {@link #check})
         * @param flags  the CQE's flags (IORING_CQE_F_*)
         */
        void complete(long userData, int result, int flags) throws E;
    }

    private final Fd fd;
    private final Arena arena;
    private final MemorySegment sqRing;
    private final MemorySegment cqRing;
    private final MemorySegment sqes;
    private final long sqHead;
    /** Offset of the SQ ring's flags word. */
    private final long sqFlags;
    /** Set up with COOP_TASKRUN | TASKRUN_FLAG (see {@link #create(int, int, boolean)}). */
    private final boolean cooperative;

    private final long sqTail;
    private final long cqHead;
    private final long cqTail;
    private final long cqes;
    private final int sqMask;
    private final int cqMask;
    private final int sqEntries;
    private final int cqEntries;
    private final int features;
    /** Our SQ tail: entries up to here are prepared; the kernel sees them once {@link #publish} stores it. */
    private int localSqTail;

    private int localCqHead;
    /** Prepared and not yet reaped: never more than cqEntries, so the CQ cannot overflow. */
    private int outstanding;

    private boolean eventFdRegistered;
    /**
     * A multishot operation was prepared: only such an operation posts more completions than are outstanding, so
     * only then can the CQ overflow and {@link #reap} has to look at the SQ flags (a ring without one pays nothing).
     */
    private boolean multishot;
    /** Files registered with {@link #registerFiles}, by index; compared by identity, never by descriptor number. */
    private Fd[] fixedFiles = new Fd[0];

    private static volatile String unavailable;
    private static volatile boolean probed;

    private IoUring(Fd fd, MemorySegment params, Arena arena, boolean cooperative) throws LinuxException {
        this.fd = fd;
        this.cooperative = cooperative;
        this.arena = arena;
        this.sqEntries = params.get(JAVA_INT, off(PARAMS_LAYOUT, "sq_entries"));
        this.cqEntries = params.get(JAVA_INT, off(PARAMS_LAYOUT, "cq_entries"));
        this.features = params.get(JAVA_INT, off(PARAMS_LAYOUT, "features"));
        long sq = off(PARAMS_LAYOUT, "sq_off");
        long cq = off(PARAMS_LAYOUT, "cq_off");
        int sqArray = params.get(JAVA_INT, sq + off(SQ_OFFSETS_LAYOUT, "array"));
        int cqesOff = params.get(JAVA_INT, cq + off(CQ_OFFSETS_LAYOUT, "cqes"));
        long sqRingBytes = sqArray + 4L * sqEntries;
        long cqRingBytes = cqesOff + CQE_BYTES * cqEntries;
        int prot = Mmap.PROT_READ | Mmap.PROT_WRITE;
        int flags = Mmap.MAP_SHARED | Mmap.MAP_POPULATE;
        if ((features & FEAT_SINGLE_MMAP) != 0) { // since 5.4: both rings live in one mapping
            this.sqRing = Mmap.map(fd, OFF_SQ_RING, Math.max(sqRingBytes, cqRingBytes), prot, flags, arena);
            this.cqRing = sqRing;
        } else {
            this.sqRing = Mmap.map(fd, OFF_SQ_RING, sqRingBytes, prot, flags, arena);
            this.cqRing = Mmap.map(fd, OFF_CQ_RING, cqRingBytes, prot, flags, arena);
        }
        this.sqes = Mmap.map(fd, OFF_SQES, SQE_BYTES * sqEntries, prot, flags, arena);
        this.sqHead = params.get(JAVA_INT, sq + off(SQ_OFFSETS_LAYOUT, "head"));
        this.sqFlags = params.get(JAVA_INT, sq + off(SQ_OFFSETS_LAYOUT, "flags"));
        this.sqTail = params.get(JAVA_INT, sq + off(SQ_OFFSETS_LAYOUT, "tail"));
        this.sqMask = sqRing.get(JAVA_INT, params.get(JAVA_INT, sq + off(SQ_OFFSETS_LAYOUT, "ring_mask")));
        this.cqHead = params.get(JAVA_INT, cq + off(CQ_OFFSETS_LAYOUT, "head"));
        this.cqTail = params.get(JAVA_INT, cq + off(CQ_OFFSETS_LAYOUT, "tail"));
        this.cqMask = cqRing.get(JAVA_INT, params.get(JAVA_INT, cq + off(CQ_OFFSETS_LAYOUT, "ring_mask")));
        this.cqes = cqesOff;
        // The SQ array maps ring slots to SQE indices; an identity map set once lets slot i always use SQE i.
        for (int i = 0; i < sqEntries; i++) {
            sqRing.set(JAVA_INT, sqArray + 4L * i, i);
        }
        this.localSqTail = (int) U32.getAcquire(sqRing, sqTail);
        this.localCqHead = (int) U32.getAcquire(cqRing, cqHead);
    }

    /** A ring with {@code entries} SQEs (rounded up to a power of two by the kernel) and twice as many CQEs. */
    public static IoUring create(int entries) throws LinuxException {
        return create(entries, 0);
    }

    /**
     * A ring with {@code entries} SQEs and {@code cqEntries} CQEs (0: the kernel's default, twice the SQ). Both are
     * rounded up to powers of two and clamped to the kernel's maxima (IORING_SETUP_CLAMP).
     *
     * @throws LinuxException from io_uring_setup: ENOSYS or EPERM when io_uring is not available to this process
     *                        (see {@link #unavailableReason()}), ENOMEM when the rings cannot be allocated
     */
    public static IoUring create(int entries, int cqEntries) throws LinuxException {
        return create(entries, cqEntries, false);
    }

    /**
     * A ring like {@link #create(int, int)}; {@code cooperative} sets it up with IORING_SETUP_COOP_TASKRUN and
     * IORING_SETUP_TASKRUN_FLAG where the kernel has them (5.19+; an older kernel gets a plain ring, see
     * {@link #cooperative()}). A completion that finishes in interrupt context (an O_DIRECT read or write) becomes
     * task work of the thread that submitted it; on a plain ring the kernel interrupts that thread at once (an IPI
     * when it runs on another CPU: on a VM, an exit on each side), on a cooperative one it waits for the thread's
     * next system call and says so in the SQ flags ({@link #taskWorkPending}) — for a thread that polls its ring and
     * enters the kernel often anyway. A thread asleep in a system call is still woken.
     */
    public static IoUring create(int entries, int cqEntries, boolean cooperative) throws LinuxException {
        if (cooperative) {
            try {
                return create(entries, cqEntries, SETUP_COOP_TASKRUN | SETUP_TASKRUN_FLAG);
            } catch (LinuxException e) {
                if (e.errno() != Errno.EINVAL) {
                    throw e;
                }
                // a kernel before 5.19: the flags are unknown to it
            }
        }
        return create(entries, cqEntries, 0);
    }

    private static IoUring create(int entries, int cqEntries, int setupFlags) throws LinuxException {
        if (entries < 1 || entries > MAX_ENTRIES) {
            throw new IllegalArgumentException("io_uring entries must be 1.." + MAX_ENTRIES + ": " + entries);
        }
        if (cqEntries != 0 && (cqEntries < entries || cqEntries > MAX_CQ_ENTRIES)) {
            throw new IllegalArgumentException(
                    "io_uring CQ entries must be " + entries + ".." + MAX_CQ_ENTRIES + ": " + cqEntries);
        }
        Arena arena = Arena.ofShared(); // the rings may be set up on one thread and driven by another
        Fd fd = null;
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment params = tmp.allocate(PARAMS_LAYOUT); // zeroed: the kernel rejects non-zero reserved fields
            int flags = SETUP_CLAMP | setupFlags;
            if (cqEntries != 0) {
                flags |= SETUP_CQSIZE;
                params.set(JAVA_INT, off(PARAMS_LAYOUT, "cq_entries"), cqEntries);
            }
            params.set(JAVA_INT, off(PARAMS_LAYOUT, "flags"), flags);
            fd = Fd.adopt(
                    Syscalls.check(Syscalls.ioUringSetup(entries, params), "io_uring_setup", entries + " entries"));
            return new IoUring(fd, params, arena, (setupFlags & SETUP_COOP_TASKRUN) != 0);
        } catch (LinuxException | RuntimeException e) {
            arena.close();
            if (fd != null) {
                fd.close();
            }
            throw e;
        }
    }

    /**
     * Why this process cannot use io_uring, or null when it can. Probed once (by setting up a small ring); the
     * answer names the cause (kernel without io_uring, sysctl kernel.io_uring_disabled, a seccomp filter, memory
     * limits) so a caller can log it once and fall back to synchronous I/O.
     */
    public static String unavailableReason() {
        if (!probed) {
            synchronized (IoUring.class) {
                if (!probed) {
                    String why = null;
                    try (IoUring ring = create(2)) {
                        // set up and torn down: usable
                    } catch (LinuxException e) {
                        why = explain(e);
                    }
                    unavailable = why;
                    probed = true;
                }
            }
        }
        return unavailable;
    }

    public static boolean available() {
        return unavailableReason() == null;
    }

    /** A sentence saying why io_uring_setup failed, for logs and error messages. */
    public static String explain(LinuxException e) {
        String base = "io_uring is not available: " + e.getMessage();
        return switch (e.errno()) {
            case Errno.ENOSYS -> base + " (the kernel was built without io_uring, or a seccomp filter hides it)";
            case Errno.EPERM -> base + " (" + permissionCause() + ")";
            case Errno.ENOMEM ->
                base + " (the rings could not be allocated; kernels before 5.12 charge them to "
                        + "RLIMIT_MEMLOCK: raise 'ulimit -l')";
            default -> base;
        };
    }

    private static String permissionCause() {
        String v;
        try {
            v = Files.readString(Path.of("/proc/sys/kernel/io_uring_disabled")).strip();
        } catch (IOException | RuntimeException e) {
            v = null; // before Linux 6.6 the sysctl does not exist
        }
        if ("2".equals(v)) {
            return "disabled for every process by sysctl kernel.io_uring_disabled=2";
        }
        if ("1".equals(v)) {
            return "sysctl kernel.io_uring_disabled=1 allows it only to members of the group in kernel.io_uring_group";
        }
        return "a seccomp filter forbids it, as container runtimes' default profiles do";
    }

    /** SQ entries (a power of two, possibly more than asked). */
    public int sqEntries() {
        return sqEntries;
    }

    public int cqEntries() {
        return cqEntries;
    }

    /** IORING_FEAT_* bits the kernel reported. */
    public int features() {
        return features;
    }

    /** How many operations may be outstanding at once (prepared and not yet reaped). */
    public int capacity() {
        return cqEntries;
    }

    /** Operations prepared and not yet reaped. */
    public int outstanding() {
        return outstanding;
    }

    /** Prepared SQEs the kernel has not consumed yet (submit them with {@link #submit}). */
    public int unsubmitted() {
        return localSqTail - (int) U32.getAcquire(sqRing, sqHead);
    }

    /** How many operations can be prepared right now: limited by free SQ slots and by {@link #capacity()}. */
    public int free() {
        return Math.min(sqEntries - unsubmitted(), cqEntries - outstanding);
    }

    /** Ring descriptor, e.g. for diagnostics. */
    public Fd fd() {
        return fd;
    }

    // ---- preparing operations ------------------------------------------------------------------------------------

    /** preadv of the first {@code count} entries of {@code iov} at {@code offset}. */
    public void readv(Fd file, IoVec iov, int count, long offset, long userData) {
        readv(file, iov, count, offset, userData, 0);
    }

    public void readv(Fd file, IoVec iov, int count, long offset, long userData, int sqeFlags) {
        checkIov(iov, count);
        prep(OP_READV, sqeFlags, file, offset, iov.segment().address(), count, 0, userData);
    }

    /** pwritev from the first {@code count} entries of {@code iov} at {@code offset}. */
    public void writev(Fd file, IoVec iov, int count, long offset, long userData) {
        writev(file, iov, count, offset, userData, 0);
    }

    public void writev(Fd file, IoVec iov, int count, long offset, long userData, int sqeFlags) {
        checkIov(iov, count);
        prep(OP_WRITEV, sqeFlags, file, offset, iov.segment().address(), count, 0, userData);
    }

    /** pread into {@code buffer} (native memory, at most {@value #MAX_RW_BYTES} bytes). */
    public void read(Fd file, MemorySegment buffer, long offset, long userData) {
        read(file, buffer, 0, buffer.byteSize(), offset, userData);
    }

    /** pwrite from {@code buffer} (native memory, at most {@value #MAX_RW_BYTES} bytes). */
    public void write(Fd file, MemorySegment buffer, long offset, long userData) {
        write(file, buffer, 0, buffer.byteSize(), offset, userData);
    }

    /**
     * pread into {@code length} bytes of {@code memory} from {@code memoryOffset} (native memory, at most
     * {@value #MAX_RW_BYTES} bytes): a guest buffer as (region mapping, offset, length), without a slice.
     */
    public void read(Fd file, MemorySegment memory, long memoryOffset, long length, long offset, long userData) {
        checkBuffer(memory, memoryOffset, length);
        prep(OP_READ, 0, file, offset, memory.address() + memoryOffset, (int) length, 0, userData);
    }

    /** pwrite from {@code length} bytes of {@code memory} from {@code memoryOffset} (see {@link #read}). */
    public void write(Fd file, MemorySegment memory, long memoryOffset, long length, long offset, long userData) {
        checkBuffer(memory, memoryOffset, length);
        prep(OP_WRITE, 0, file, offset, memory.address() + memoryOffset, (int) length, 0, userData);
    }

    /** fsync, or fdatasync when {@code fsyncFlags} has {@link #FSYNC_DATASYNC}, of the whole file. */
    public void fsync(Fd file, int fsyncFlags, long userData) {
        fsync(file, fsyncFlags, userData, 0);
    }

    public void fsync(Fd file, int fsyncFlags, long userData, int sqeFlags) {
        if ((fsyncFlags & ~FSYNC_DATASYNC) != 0) {
            throw new IllegalArgumentException("unknown fsync flags 0x" + Integer.toHexString(fsyncFlags));
        }
        prep(OP_FSYNC, sqeFlags, file, 0, 0, 0, fsyncFlags, userData);
    }

    /**
     * Completes once when {@code file} is ready for {@code events} (poll(2) bits, e.g. {@link Epoll#EPOLLIN}); the
     * result is the ready mask. Reads nothing: the caller consumes the readiness itself.
     */
    public void poll(Fd file, int events, long userData) {
        prep(OP_POLL_ADD, 0, file.get(), 0, 0, 0, events, userData);
    }

    /**
     * Like {@link #poll} but stays armed (Linux 5.13): each wake-up of {@code file}'s wait queue while it is ready
     * posts a completion flagged {@link #CQE_F_MORE}; a completion without that flag (an error, or -ECANCELED after
     * {@link #cancel}) ends it. Wake-ups that come together may be reported once.
     */
    public void pollMultishot(Fd file, int events, long userData) {
        prep(OP_POLL_ADD, 0, file.get(), 0, 0, POLL_ADD_MULTI, events, userData);
        multishot = true;
    }

    /**
     * Asks the kernel to cancel the outstanding operation queued with {@code targetUserData}. This operation
     * completes with 0 (cancelled: the target then completes with -ECANCELED), -ENOENT (the target already
     * completed or does not exist) or -EALREADY (it is running and will complete by itself).
     */
    public void cancel(long targetUserData, long userData) {
        prep(OP_ASYNC_CANCEL, 0, -1, 0, targetUserData, 0, 0, userData);
    }

    /** An operation that does nothing and completes with 0 (tests, wake-ups). */
    public void nop(long userData) {
        prep(OP_NOP, 0, -1, 0, 0, 0, 0, userData);
    }

    private static void checkIov(IoVec iov, int count) {
        if (count < 1 || count > iov.capacity()) {
            throw new IllegalArgumentException("iovec count " + count + " outside 1.." + iov.capacity());
        }
    }

    private static void checkBuffer(MemorySegment memory, long offset, long length) {
        if (!memory.isNative()) {
            throw new IllegalArgumentException("I/O buffers must be native memory");
        }
        Objects.checkFromIndexSize(offset, length, memory.byteSize());
        if (length > MAX_RW_BYTES) {
            throw new IllegalArgumentException("one read/write moves at most " + MAX_RW_BYTES + " bytes: " + length);
        }
    }

    /** An operation on {@code file}: by its registered index when it has one (see {@link #registerFiles}). */
    private void prep(int op, int sqeFlags, Fd file, long off, long addr, int len, int opFlags, long userData) {
        Fd[] fixed = fixedFiles;
        for (int i = 0; i < fixed.length; i++) {
            if (fixed[i] == file) {
                prep(op, sqeFlags | SQE_FIXED_FILE, i, off, addr, len, opFlags, userData);
                return;
            }
        }
        prep(op, sqeFlags, file.get(), off, addr, len, opFlags, userData);
    }

    private void prep(int op, int sqeFlags, int file, long off, long addr, int len, int opFlags, long userData) {
        if (outstanding >= cqEntries || localSqTail - (int) U32.getAcquire(sqRing, sqHead) >= sqEntries) {
            throw new IllegalStateException("io_uring full: " + outstanding + " of " + cqEntries + " outstanding, "
                    + unsubmitted() + " of " + sqEntries + " unsubmitted; submit or reap first");
        }
        // Every field is written: the entry is reused and the kernel rejects stale non-zero fields.
        long e = (localSqTail & sqMask) * SQE_BYTES;
        sqes.set(JAVA_BYTE, e + SQE_OPCODE, (byte) op);
        sqes.set(JAVA_BYTE, e + SQE_FLAGS, (byte) sqeFlags);
        sqes.set(JAVA_SHORT, e + SQE_IOPRIO, (short) 0);
        sqes.set(JAVA_INT, e + SQE_FD, file);
        sqes.set(JAVA_LONG, e + SQE_OFF, off);
        sqes.set(JAVA_LONG, e + SQE_ADDR, addr);
        sqes.set(JAVA_INT, e + SQE_LEN, len);
        sqes.set(JAVA_INT, e + SQE_OP_FLAGS, opFlags);
        sqes.set(JAVA_LONG, e + SQE_USER_DATA, userData);
        sqes.set(JAVA_LONG, e + SQE_BUF_INDEX, 0L);
        sqes.set(JAVA_LONG, e + SQE_ADDR3, 0L);
        sqes.set(JAVA_LONG, e + SQE_PAD2, 0L);
        localSqTail++;
        outstanding++;
    }

    // ---- submitting and waiting ----------------------------------------------------------------------------------

    /**
     * Hands every prepared SQE to the kernel without waiting. Returns how many it consumed; when the kernel is short
     * of resources (EAGAIN, EBUSY) that may be fewer, and the rest stay queued for the next call.
     *
     * @throws LinuxException when io_uring_enter fails otherwise
     */
    public int submit() throws LinuxException {
        return enter(0);
    }

    /**
     * Submits what is prepared, then waits until at least {@code minComplete} completions are ready to reap
     * (counting those already waiting).
     *
     * @throws IllegalArgumentException when more completions are awaited than operations are outstanding
     */
    public int submitAndWait(int minComplete) throws LinuxException {
        if (minComplete < 1 || minComplete > outstanding) {
            throw new IllegalArgumentException(
                    "cannot wait for " + minComplete + " completions with " + outstanding + " operations outstanding");
        }
        return enter(minComplete);
    }

    private int enter(int minComplete) throws LinuxException {
        U32.setRelease(sqRing, sqTail, localSqTail); // the entries' contents before the tail that publishes them
        int consumed = 0;
        for (; ; ) {
            int toSubmit = unsubmitted();
            if (toSubmit == 0 && (minComplete == 0 || ready() >= minComplete)) {
                return consumed;
            }
            // Waiting only once everything is in: the kernel does not wait after a partial submission anyway.
            int r = Syscalls.ioUringEnter(fd.get(), toSubmit, minComplete, minComplete > 0 ? ENTER_GETEVENTS : 0);
            if (r > 0) {
                consumed += r;
                if (minComplete == 0 && r == toSubmit) {
                    return consumed;
                }
            } else if (r == 0) {
                if (toSubmit > 0) {
                    return consumed; // no progress: the kernel keeps the rest for later
                }
            } else if (r == -Errno.EAGAIN || r == -Errno.EBUSY) {
                return consumed;
            } else if (r != -Errno.EINTR) {
                throw new LinuxException("io_uring_enter", "ring " + fd + ", " + toSubmit + " to submit", -r);
            }
        }
    }

    /** True when the ring was set up cooperatively (see {@link #create(int, int, boolean)}). */
    public boolean cooperative() {
        return cooperative;
    }

    /**
     * A cooperative ring: completions are waiting as task work of this ring's thread, to be posted by its next
     * system call ({@link #runTaskWork}). Always false on a plain ring.
     */
    public boolean taskWorkPending() {
        return cooperative && ((int) U32.getAcquire(sqRing, sqFlags) & SQ_TASKRUN) != 0;
    }

    /** Enters the kernel without submitting or waiting, so that pending task work posts its completions. */
    public void runTaskWork() throws LinuxException {
        int r = Syscalls.ioUringEnter(fd.get(), 0, 0, ENTER_GETEVENTS);
        if (r < 0 && r != -Errno.EINTR) {
            throw new LinuxException("io_uring_enter", "ring " + fd + ", running task work", -r);
        }
    }

    /** Completions waiting in the CQ. */
    public int ready() {
        return (int) U32.getAcquire(cqRing, cqTail) - localCqHead;
    }

    // ---- completions -----------------------------------------------------------------------------------------

    /**
     * Passes every completion now in the CQ to {@code handler}, oldest first, without entering the kernel — unless a
     * multishot operation overflowed the CQ: then the completions the kernel kept aside are brought in too (one
     * io_uring_enter). Each CQ slot is returned to the kernel before its handler call, so a handler that throws loses
     * nothing else: the remaining completions wait for the next call.
     *
     * @return completions handled
     */
    public <E extends Exception> int reap(CompletionHandler<E> handler) throws E {
        int n = 0;
        for (; ; ) {
            int tail = (int) U32.getAcquire(cqRing, cqTail);
            while (localCqHead != tail) {
                long e = cqes + (localCqHead & cqMask) * CQE_BYTES;
                long userData = cqRing.get(JAVA_LONG, e + CQE_USER_DATA);
                int res = cqRing.get(JAVA_INT, e + CQE_RES);
                int flags = cqRing.get(JAVA_INT, e + CQE_FLAGS);
                localCqHead++;
                U32.setRelease(cqRing, cqHead, localCqHead);
                if ((flags & CQE_F_MORE) == 0) { // a multishot operation stays outstanding until its last completion
                    outstanding--;
                }
                n++;
                handler.complete(userData, res, flags);
            }
            if (!multishot || !flushOverflow()) {
                return n;
            }
        }
    }

    /**
     * Completions the CQ had no room for (a multishot operation's, its last one among them) wait in the kernel's
     * overflow list until an io_uring_enter with GETEVENTS moves them into the CQ: the CQ head moving does not. Makes
     * that call when the SQ flags say some wait; true when completions came in.
     */
    private boolean flushOverflow() {
        if (((int) U32.getAcquire(sqRing, sqFlags) & SQ_CQ_OVERFLOW) == 0) {
            return false;
        }
        int r;
        do {
            r = Syscalls.ioUringEnter(fd.get(), 0, 0, ENTER_GETEVENTS); // waits for nothing: min_complete 0
        } while (r == -Errno.EINTR);
        if (r == -Errno.EAGAIN || r == -Errno.EBUSY) {
            return false; // short of memory: they stay in the list, the flags set, for the next reap
        }
        if (r < 0) {
            throw new UncheckedIOException(
                    new LinuxException("io_uring_enter", "ring " + fd + ", flushing overflowed completions", -r));
        }
        return (int) U32.getAcquire(cqRing, cqTail) != localCqHead;
    }

    /**
     * Has the kernel signal {@code eventFd} whenever it posts a completion, so the owner can sleep in epoll next to
     * its other descriptors. The eventfd stays owned by the caller and must outlive the registration.
     */
    public void registerEventFd(EventFd eventFd) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment arg = a.allocate(JAVA_INT);
            arg.set(JAVA_INT, 0, eventFd.fd().get());
            Syscalls.check(
                    Syscalls.ioUringRegister(fd.get(), REGISTER_EVENTFD, arg, 1),
                    "io_uring_register",
                    "IORING_REGISTER_EVENTFD " + eventFd);
        }
        eventFdRegistered = true;
    }

    /**
     * Registers {@code files} with the ring (IORING_REGISTER_FILES): later operations on them name them by index, so
     * the kernel takes no reference on the file per operation. The ring holds its own reference until
     * {@link #unregisterFiles} or {@link #close}; the Fd objects are matched by identity, so a descriptor number
     * reused after a close never reaches the registered file. Replaces an earlier registration; call it with no
     * operation outstanding on the files it replaces.
     */
    public void registerFiles(Fd... files) throws LinuxException {
        if (fixedFiles.length > 0) {
            unregisterFiles();
        }
        if (files.length == 0) {
            return;
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment arg = a.allocate(JAVA_INT, files.length);
            for (int i = 0; i < files.length; i++) {
                arg.setAtIndex(JAVA_INT, i, files[i].get());
            }
            Syscalls.check(
                    Syscalls.ioUringRegister(fd.get(), REGISTER_FILES, arg, files.length),
                    "io_uring_register",
                    "IORING_REGISTER_FILES " + Arrays.toString(files));
        }
        fixedFiles = files.clone();
    }

    /** Drops the registered files; later operations name them by descriptor again. */
    public void unregisterFiles() throws LinuxException {
        fixedFiles = new Fd[0];
        Syscalls.check(
                Syscalls.ioUringRegister(fd.get(), UNREGISTER_FILES, MemorySegment.NULL, 0),
                "io_uring_register",
                "IORING_UNREGISTER_FILES");
    }

    /** How many files {@link #registerFiles} registered. */
    public int registeredFiles() {
        return fixedFiles.length;
    }

    public void unregisterEventFd() throws LinuxException {
        Syscalls.check(
                Syscalls.ioUringRegister(fd.get(), UNREGISTER_EVENTFD, MemorySegment.NULL, 0),
                "io_uring_register",
                "IORING_UNREGISTER_EVENTFD");
        eventFdRegistered = false;
    }

    public boolean eventFdRegistered() {
        return eventFdRegistered;
    }

    // ---- results -----------------------------------------------------------------------------------------------

    /**
     * Returns a non-negative {@code result}; a negative one (an errno) becomes a LinuxException naming the operation,
     * e.g. {@code "io_uring READV(fd 7, 4096 bytes at 8192) failed: EBADF (Bad file descriptor)"}.
     */
    public static int check(int opcode, int result, String what) throws LinuxException {
        if (result < 0) {
            throw error(opcode, result, what);
        }
        return result;
    }

    /** The exception for a failed operation's negative {@code result}. */
    public static LinuxException error(int opcode, int result, String what) {
        return new LinuxException("io_uring " + opName(opcode), what, -result);
    }

    public static String opName(int opcode) {
        return switch (opcode) {
            case OP_NOP -> "NOP";
            case OP_READV -> "READV";
            case OP_WRITEV -> "WRITEV";
            case OP_FSYNC -> "FSYNC";
            case OP_POLL_ADD -> "POLL_ADD";
            case OP_ASYNC_CANCEL -> "ASYNC_CANCEL";
            case OP_READ -> "READ";
            case OP_WRITE -> "WRITE";
            default -> "op " + opcode;
        };
    }

    /**
     * Unmaps the rings and closes the descriptor. Operations still in flight are cancelled or finish in the
     * background (the kernel holds their pages): owners drain first when the buffers' fate matters.
     */
    @Override
    public void close() {
        if (fd.isOpen()) {
            arena.close();
            fd.close();
        }
    }

    @Override
    public String toString() {
        return "io_uring(" + fd + ", sq " + sqEntries + ", cq " + cqEntries + ", outstanding " + outstanding + ")";
    }

    static long off(StructLayout layout, String field) {
        return layout.byteOffset(groupElement(field));
    }
}
