// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

/**
 * What the page cache holds of a file that is not on its disk yet: a write that was only copied into the cache — not
 * flushed — shows as dirty pages until writeback (by default some 30 s later) or an fsync. For tests of "a write
 * acknowledged before X is on disk after X". Asked with cachestat(2) (Linux 6.5: dirty pages and pages under
 * writeback); on a kernel without it (Debian 12's 6.1) or where a seccomp filter refuses it, from the dirty pages
 * /proc/self/smaps counts in a mapping of the file ({@link #dirtyMapped}). The file must be on a disk file system, not
 * a tmpfs.
 */
public final class PageCache {
    /** cachestat's number, the same on x86_64 and aarch64 (the generic table). */
    static final long NR_CACHESTAT = 451;

    private static final MethodHandle SYSCALL = Linker.nativeLinker()
            .downcallHandle(
                    Linker.nativeLinker().defaultLookup().find("syscall").orElseThrow(),
                    FunctionDescriptor.of(JAVA_LONG, JAVA_LONG, JAVA_LONG, ADDRESS, ADDRESS, JAVA_LONG),
                    Linker.Option.firstVariadicArg(1),
                    Linker.Option.captureCallState("errno"));

    private PageCache() {}

    /**
     * Pages of {@code file} dirty or under writeback: 0 when everything written to it is on its disk. Without
     * cachestat, the dirty ones only: none is under writeback once an fsync (or a close that flushed) has returned.
     */
    public static long notOnDisk(Path file) throws LinuxException {
        return notOnDisk(file, NR_CACHESTAT);
    }

    /** As {@link #notOnDisk(Path)}, calling {@code cachestat} as system call number {@code nr} (tests). */
    static long notOnDisk(Path file, long nr) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            int fd = Syscalls.check(
                    Syscalls.openat(-100, a.allocateFrom(file.toString()), FileIo.O_RDONLY | FileIo.O_CLOEXEC, 0),
                    "open",
                    file);
            try (Fd f = Fd.adopt(fd)) {
                if (FileIo.filesystemType(f) == FileIo.TMPFS_MAGIC) {
                    // its pages are never written back (cachestat counts none dirty, smaps all of them): a test
                    // would pass, or fail, whatever was flushed
                    throw new IllegalArgumentException(file + " is on a tmpfs, whose pages have no disk to be"
                            + " written to: put it on a disk file system (@TempDir(factory = DiskTempDir.class))");
                }
                MemorySegment range = a.allocate(16, 8); // whole file: offset 0, length 0
                MemorySegment stat = a.allocate(40, 8); // nr_cache, nr_dirty, nr_writeback, nr_evicted, ...
                MemorySegment state = a.allocate(Linker.Option.captureStateLayout());
                long r;
                try {
                    r = (long) SYSCALL.invokeExact(state, nr, (long) f.get(), range, stat, 0L);
                } catch (Throwable e) {
                    throw new IllegalStateException(e);
                }
                if (r < 0) {
                    int errno = state.get(
                            JAVA_INT,
                            Linker.Option.captureStateLayout()
                                    .byteOffset(java.lang.foreign.MemoryLayout.PathElement.groupElement("errno")));
                    if (errno == Errno.ENOSYS || errno == Errno.EPERM) { // before 6.5, or refused by seccomp
                        return dirtyMapped(f, file);
                    }
                    throw new LinuxException("cachestat", file.toString(), errno);
                }
                return stat.get(JAVA_LONG, 8) + stat.get(JAVA_LONG, 16);
            }
        }
    }

    /**
     * The pages of {@code file} the page cache holds dirty, as /proc/self/smaps tells them for a shared read-only
     * mapping of the whole file: each page is touched, so the mapping holds every cached page, and smaps counts a
     * mapped page as dirty when the page cache has it dirty (PageDirty), however it was written. Pages under
     * writeback are not dirty any more and are not counted.
     */
    static long dirtyMapped(Fd f, Path file) throws LinuxException {
        long size;
        try {
            size = Files.size(file);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        if (size == 0) {
            return 0;
        }
        long page = Mmap.pageSize();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment m = Mmap.map(f, 0, size, Mmap.PROT_READ, Mmap.MAP_SHARED, a);
            for (long off = 0; off < size; off += page) {
                m.get(JAVA_BYTE, off); // faults the page in: mapped, smaps sees it
            }
            return dirtyKib(m.address()) * 1024 / page;
        }
    }

    /** Shared_Dirty plus Private_Dirty, in KiB, of the mapping of ours that starts at {@code start}. */
    private static long dirtyKib(long start) {
        List<String> smaps;
        try {
            smaps = Files.readAllLines(Path.of("/proc/self/smaps"));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        String header = Long.toHexString(start) + "-";
        long kib = -1;
        for (String line : smaps) {
            if (kib < 0) {
                if (line.startsWith(header)) {
                    kib = 0;
                }
            } else if (line.matches("[0-9a-f]+-[0-9a-f]+ .*")) {
                return kib; // the next mapping
            } else if (line.startsWith("Shared_Dirty:") || line.startsWith("Private_Dirty:")) {
                kib += Long.parseLong(line.replaceAll("[^0-9]", ""));
            }
        }
        if (kib < 0) {
            throw new IllegalStateException("no mapping at 0x" + Long.toHexString(start) + " in /proc/self/smaps");
        }
        return kib;
    }
}
