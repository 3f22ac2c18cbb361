// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * mmap(2) of file descriptors (guest RAM regions, device BARs) as MemorySegments. A mapping's lifetime is an arena:
 * closing the arena unmaps it, and any later access through the segment fails with IllegalStateException instead of
 * touching unmapped memory. Downcalls that take the segment keep the arena open while they run.
 *
 * <p>Offsets need not be page aligned: the mapping starts at the page holding {@code offset} and the returned segment
 * covers exactly {@code [offset, offset + length)}.
 */
@SuppressWarnings("restricted") // the linux package is where native access is meant to happen
public final class Mmap {
    public static final int PROT_NONE = 0x0;
    public static final int PROT_READ = 0x1;
    public static final int PROT_WRITE = 0x2;

    public static final int MAP_SHARED = 0x01;
    public static final int MAP_PRIVATE = 0x02;
    public static final int MAP_ANONYMOUS = 0x20;
    public static final int MAP_NORESERVE = 0x4000;
    public static final int MAP_POPULATE = 0x8000;

    public static final int MADV_NORMAL = 0;
    public static final int MADV_RANDOM = 1;
    public static final int MADV_SEQUENTIAL = 2;
    public static final int MADV_WILLNEED = 3;
    public static final int MADV_DONTNEED = 4;
    public static final int MADV_REMOVE = 9;
    public static final int MADV_DONTFORK = 10;
    public static final int MADV_HUGEPAGE = 14;

    private static final int SC_PAGESIZE = 30;
    private static final int SC_PHYS_PAGES = 85;
    private static volatile long pageSize;

    /**
     * A libc function that does nothing harmful (abs): its only use is the return from native code, where HotSpot
     * delivers a pending asynchronous exception. Not {@code critical}: a critical call skips that transition.
     */
    private static final java.lang.invoke.MethodHandle NOP = Syscalls.LINKER.downcallHandle(
            Syscalls.LINKER.defaultLookup().find("abs").orElseThrow(() -> new UnsatisfiedLinkError("libc has no abs")),
            java.lang.foreign.FunctionDescriptor.of(
                    java.lang.foreign.ValueLayout.JAVA_INT, java.lang.foreign.ValueLayout.JAVA_INT));

    private Mmap() {}

    /**
     * Throws here, on the calling thread, the {@link InternalError} that HotSpot holds pending for a SIGBUS in an
     * earlier access to a mapping (a frontend truncated the memory file it shared). HotSpot does not raise that error
     * at the faulting access: it is delivered asynchronously, at the thread's next safepoint poll — in C2-compiled
     * code usually after the enclosing try block has ended (measured: 960 of 1000 faults surfaced outside it), so
     * the fault in one guest's memory would be blamed on whatever the thread did next, e.g. another guest's queue.
     * A return from a non-critical native call is such a poll, so calling this at the end of the try block that
     * touched a guest's memory attributes the fault to that guest (1000 of 1000). Cost: one downcall, ~5 ns.
     *
     * <p>The faulting load itself returns garbage, and the code may act on it (a bad index, an exception) before it
     * reaches this call; the fault then surfaces at the first poll of the catch block — outside the try. So a thread
     * that serves several guests calls this at the end of the try block and again first thing in its catch block,
     * inside an outer try that catches the InternalError:
     *
     * <pre>{@code
     * try {
     *     try { ...guest A's memory...; Mmap.surfaceFaults(); }
     *     catch (Throwable t) { Mmap.surfaceFaults(); failA(t); }
     * } catch (InternalError fault) { failA(fault); }
     * }</pre>
     *
     * (WorkerGroupTest: without the second call 2 of 4 runs lost the whole thread to one guest's fault.)
     */
    public static void surfaceFaults() {
        try {
            int ignored = (int) NOP.invokeExact(0);
        } catch (Error | RuntimeException e) {
            throw e; // the pending InternalError arrives here
        } catch (Throwable t) {
            throw Syscalls.unexpected(t);
        }
    }

    public static long pageSize() {
        long p = pageSize;
        if (p == 0) {
            p = Syscalls.sysconf(SC_PAGESIZE);
            if (p <= 0) {
                p = 4096;
            }
            pageSize = p;
        }
        return p;
    }

    /**
     * The host's RAM in bytes (sysconf(_SC_PHYS_PAGES) pages), or 0 when the kernel does not say. A backend reads it
     * once; java.lang.management's OperatingSystemMXBean would load ~50 classes (the AOT cache holds each one, ~8 KiB
     * of resident memory apiece) for this one number (docs/benchmarks.md, "Footprint").
     */
    public static long physicalMemory() {
        long pages = Syscalls.sysconf(SC_PHYS_PAGES);
        return pages > 0 ? pages * pageSize() : 0;
    }

    /**
     * Maps {@code length} bytes of {@code fd} at {@code offset}; the mapping is removed when {@code arena} closes.
     * The descriptor may be closed right after: the mapping keeps the file alive.
     */
    public static MemorySegment map(Fd fd, long offset, long length, int prot, int flags, Arena arena)
            throws LinuxException {
        if (length <= 0 || offset < 0) {
            throw new IllegalArgumentException("bad mapping: offset " + offset + ", length " + length);
        }
        long page = pageSize();
        long delta = offset & (page - 1);
        long base = offset - delta;
        if (length > Long.MAX_VALUE - delta) {
            throw new IllegalArgumentException("mapping length overflows: " + length);
        }
        long total = length + delta;
        int f = fd.get();
        long addr = Syscalls.check(
                Syscalls.mmap(total, prot, flags, f, base),
                "mmap",
                "fd " + f + ", offset " + offset + ", length " + length);
        try {
            MemorySegment whole =
                    MemorySegment.ofAddress(addr).reinterpret(total, arena, s -> Syscalls.munmap(addr, total));
            return whole.asSlice(delta, length);
        } catch (RuntimeException e) { // arena already closed: do not leak the mapping
            Syscalls.munmap(addr, total);
            throw e;
        }
    }

    /** Anonymous private memory (page aligned, zero-filled) bound to {@code arena}. */
    public static MemorySegment anonymous(long length, Arena arena) throws LinuxException {
        if (length <= 0) {
            throw new IllegalArgumentException("bad length: " + length);
        }
        long addr = Syscalls.check(
                Syscalls.mmap(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                "mmap",
                "anonymous, length " + length);
        return MemorySegment.ofAddress(addr).reinterpret(length, arena, s -> Syscalls.munmap(addr, length));
    }

    /**
     * A mapping with its own shared arena: {@link Mapping#close()} unmaps it. Use when the mapping's lifetime is
     * not tied to anything else (one guest memory region).
     */
    public static Mapping map(Fd fd, long offset, long length, int prot, int flags) throws LinuxException {
        Arena arena = Arena.ofShared();
        try {
            return new Mapping(map(fd, offset, length, prot, flags, arena), arena);
        } catch (LinuxException | RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    /** madvise(2) over a page-aligned segment. */
    public static void advise(MemorySegment segment, int advice) throws LinuxException {
        Syscalls.check(Syscalls.madvise(segment, segment.byteSize(), advice), "madvise", advice);
    }

    /** A mapping that owns its arena. Closing it unmaps the memory; the segment then refuses access. */
    public static final class Mapping implements AutoCloseable {
        private final MemorySegment segment;
        private final Arena arena;

        private Mapping(MemorySegment segment, Arena arena) {
            this.segment = segment;
            this.arena = arena;
        }

        public MemorySegment segment() {
            return segment;
        }

        /**
         * Unmaps. Throws IllegalStateException while a downcall on another thread is still using the segment
         * (the JDK's guarantee that memory is never unmapped under a running access).
         */
        @Override
        public synchronized void close() {
            if (arena.scope().isAlive()) {
                arena.close();
            }
        }
    }
}
