// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.Test;

class MemFdMmapTest {
    private static final int RW = Mmap.PROT_READ | Mmap.PROT_WRITE;

    @Test
    void twoSharedMappingsOfOneMemfdSeeEachOthersWrites() throws Exception {
        try (Fd mem = MemFd.allocate("guest-ram", 1 << 20);
                Mmap.Mapping a = Mmap.map(mem, 0, 1 << 20, RW, Mmap.MAP_SHARED);
                Mmap.Mapping b = Mmap.map(mem, 0, 1 << 20, RW, Mmap.MAP_SHARED)) {
            a.segment().set(JAVA_LONG, 4096, 0xfeed_face_cafe_beefL);
            assertEquals(0xfeed_face_cafe_beefL, b.segment().get(JAVA_LONG, 4096));
            b.segment().set(JAVA_LONG, (1 << 20) - 8, 99);
            assertEquals(99, a.segment().get(JAVA_LONG, (1 << 20) - 8));
            assertEquals(1 << 20, FileIo.stat(mem).size());
        }
    }

    @Test
    void unalignedOffsetMapsExactlyTheRequestedRange() throws Exception {
        try (Fd mem = MemFd.allocate("ram", 3 * 4096);
                Arena arena = Arena.ofConfined()) {
            MemorySegment whole = Mmap.map(mem, 0, 3 * 4096, RW, Mmap.MAP_SHARED, arena);
            whole.set(JAVA_LONG, 4096 + 24, 77);
            MemorySegment part = Mmap.map(mem, 4096 + 24, 100, RW, Mmap.MAP_SHARED, arena);
            assertEquals(100, part.byteSize());
            assertEquals(77, part.get(JAVA_LONG, 0));
        }
    }

    @Test
    void closedMappingRefusesAccessInsteadOfFaulting() throws Exception {
        Mmap.Mapping m;
        try (Fd mem = MemFd.allocate("ram", 8192)) {
            m = Mmap.map(mem, 0, 8192, RW, Mmap.MAP_SHARED);
        }
        MemorySegment seg = m.segment();
        seg.set(JAVA_LONG, 0, 1);
        for (int i = 0; i < 2; i++) { // idempotent
            try (Mmap.Mapping closing = m) {
                assertEquals(1, closing.segment().byteSize() / 8192);
            }
        }
        assertThrows(IllegalStateException.class, () -> seg.get(JAVA_LONG, 0));
    }

    @Test
    void mappingSurvivesClosingTheDescriptor() throws Exception {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment seg;
            try (Fd mem = MemFd.allocate("ram", 4096)) {
                seg = Mmap.map(mem, 0, 4096, RW, Mmap.MAP_SHARED, arena);
            }
            seg.set(JAVA_LONG, 8, 5);
            assertEquals(5, seg.get(JAVA_LONG, 8));
        }
    }

    @Test
    void sealsForbidGrowth() throws Exception {
        try (Fd mem = MemFd.allocate("sealed", 4096)) {
            MemFd.addSeals(mem, MemFd.F_SEAL_GROW | MemFd.F_SEAL_SHRINK);
            assertEquals(MemFd.F_SEAL_GROW | MemFd.F_SEAL_SHRINK, MemFd.seals(mem));
            LinuxException e = assertThrows(LinuxException.class, () -> MemFd.truncate(mem, 8192));
            assertEquals(Errno.EPERM, e.errno());
        }
    }

    @Test
    void badMappingArgumentsAreRefused() throws Exception {
        try (Fd mem = MemFd.allocate("ram", 4096)) {
            assertThrows(IllegalArgumentException.class, () -> Mmap.map(mem, 0, 0, RW, Mmap.MAP_SHARED));
            assertThrows(IllegalArgumentException.class, () -> Mmap.map(mem, -4096, 4096, RW, Mmap.MAP_SHARED));
            LinuxException e =
                    assertThrows(LinuxException.class, () -> Mmap.map(mem, 0, 4096, RW, 0)); // no SHARED/PRIVATE
            assertEquals(Errno.EINVAL, e.errno());
        }
    }

    @Test
    void anonymousMemoryIsZeroedAndPageAligned() throws Exception {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment s = Mmap.anonymous(2 * Mmap.pageSize(), arena);
            assertEquals(0, s.address() % Mmap.pageSize());
            assertEquals(0, s.get(JAVA_LONG, Mmap.pageSize()));
            Mmap.advise(s, Mmap.MADV_DONTNEED);
        }
    }

    @Test
    void physicalMemoryIsTheKernelsMemTotal() throws Exception {
        long memTotalKiB = java.nio.file.Files.readAllLines(java.nio.file.Path.of("/proc/meminfo")).stream()
                .filter(l -> l.startsWith("MemTotal:"))
                .mapToLong(l -> Long.parseLong(l.replaceAll("[^0-9]", "")))
                .findFirst()
                .orElseThrow();
        assertEquals(memTotalKiB * 1024, Mmap.physicalMemory());
    }
}
