// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
import java.nio.file.Path;

/**
 * What the page cache holds of a file that is not on its disk yet (cachestat(2), Linux 6.5): a write that was only
 * copied into the cache — not flushed — shows as dirty pages until writeback (by default some 30 s later) or an
 * fsync. For tests of "a write acknowledged before X is on disk after X".
 */
public final class PageCache {
    /** cachestat's number, the same on x86_64 and aarch64 (the generic table). */
    private static final long NR_CACHESTAT = 451;

    private static final MethodHandle SYSCALL = Linker.nativeLinker()
            .downcallHandle(
                    Linker.nativeLinker().defaultLookup().find("syscall").orElseThrow(),
                    FunctionDescriptor.of(JAVA_LONG, JAVA_LONG, JAVA_LONG, ADDRESS, ADDRESS, JAVA_LONG),
                    Linker.Option.firstVariadicArg(1),
                    Linker.Option.captureCallState("errno"));

    private PageCache() {}

    /** Pages of {@code file} dirty or under writeback: 0 when everything written to it is on its disk. */
    public static long notOnDisk(Path file) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            int fd = Syscalls.check(
                    Syscalls.openat(-100, a.allocateFrom(file.toString()), FileIo.O_RDONLY | FileIo.O_CLOEXEC, 0),
                    "open",
                    file);
            try (Fd f = Fd.adopt(fd)) {
                MemorySegment range = a.allocate(16, 8); // whole file: offset 0, length 0
                MemorySegment stat = a.allocate(40, 8); // nr_cache, nr_dirty, nr_writeback, nr_evicted, ...
                MemorySegment state = a.allocate(Linker.Option.captureStateLayout());
                long r;
                try {
                    r = (long) SYSCALL.invokeExact(state, NR_CACHESTAT, (long) f.get(), range, stat, 0L);
                } catch (Throwable e) {
                    throw new IllegalStateException(e);
                }
                if (r < 0) {
                    int errno = state.get(
                            JAVA_INT,
                            Linker.Option.captureStateLayout()
                                    .byteOffset(java.lang.foreign.MemoryLayout.PathElement.groupElement("errno")));
                    throw new LinuxException("cachestat", file + " (needs Linux 6.5 or later)", errno);
                }
                return stat.get(JAVA_LONG, 8) + stat.get(JAVA_LONG, 16);
            }
        }
    }
}
