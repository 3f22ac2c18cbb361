// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** Header fields a damaged or hostile file can hold: each is refused with an {@link IOException}, never a crash. */
class Qcow2HeaderTest {
    static final Path PATH = Path.of("hostile.qcow2");

    /** A valid version 3 header (64 KiB clusters, 1 MiB virtual size), {@code bytes} long. */
    static MemorySegment header(Arena a, int bytes) {
        MemorySegment h = a.allocate(bytes);
        h.set(Qcow2Header.BE32, 0, Qcow2Header.MAGIC);
        h.set(Qcow2Header.BE32, 4, 3);
        h.set(Qcow2Header.BE32, 20, 16); // cluster_bits
        h.set(Qcow2Header.BE64, 24, 1 << 20); // size
        h.set(Qcow2Header.BE32, 36, 1); // l1_size
        h.set(Qcow2Header.BE64, 40, 3 << 16); // l1_table_offset
        h.set(Qcow2Header.BE64, 48, 1 << 16); // refcount_table_offset
        h.set(Qcow2Header.BE32, 56, 1); // refcount_table_clusters
        if (bytes >= 104) {
            h.set(Qcow2Header.BE32, 96, 4); // refcount_order
            h.set(Qcow2Header.BE32, 100, 104); // header_length
        }
        return h;
    }

    @Test
    void theValidHeaderParses() throws Exception {
        try (Arena a = Arena.ofConfined()) {
            Qcow2Header h = Qcow2Header.parse(PATH, header(a, 104));
            assertEquals(3, h.version());
            assertEquals(104, h.headerLength());
        }
    }

    @Test
    void aVersion3FileThatEndsInsideItsHeaderIsRefused() throws Exception {
        // 72..103 bytes: the version 3 fields at 72..104 used to be read unchecked (IndexOutOfBoundsException)
        for (int n = 72; n < 104; n++) {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment h = header(a, n);
                IOException e = assertThrows(IOException.class, () -> Qcow2Header.parse(PATH, h), "length " + n);
                assertTrue(
                        e.getMessage().contains("is damaged") && e.getMessage().contains("ends at byte " + n),
                        e.getMessage());
            }
        }
    }

    @Test
    void aHeaderLengthPastTheEndOfTheFileIsRefused() throws Exception {
        // header_length 112 in a 104-byte file: the compression type byte at 104 lies past the end
        try (Arena a = Arena.ofConfined()) {
            MemorySegment h = header(a, 104);
            h.set(Qcow2Header.BE32, 100, 112);
            IOException e = assertThrows(IOException.class, () -> Qcow2Header.parse(PATH, h));
            assertTrue(e.getMessage().contains("header_length 112"), e.getMessage());
        }
    }

    @Test
    void aBackingFileNameOffsetNearLongMaxIsRefused() throws Exception {
        // backing_file_offset + backing_file_size used to wrap around to a negative number and pass the bound
        try (Arena a = Arena.ofConfined()) {
            MemorySegment h = header(a, 512);
            h.set(Qcow2Header.BE64, 8, Long.MAX_VALUE - 10);
            h.set(Qcow2Header.BE32, 16, 100);
            IOException e = assertThrows(IOException.class, () -> Qcow2Header.parse(PATH, h));
            assertTrue(e.getMessage().contains("backing file name at " + (Long.MAX_VALUE - 10)), e.getMessage());
        }
    }
}
