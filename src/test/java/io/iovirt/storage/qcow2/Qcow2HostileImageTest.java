// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.ImageIo;
import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * What each qcow2 finding of {@link Qcow2FuzzTest} was, asserted directly on its reproducer (the fuzz oracle only
 * sees an exception or a write that does not read back; these check the mechanism).
 */
class Qcow2HostileImageTest {
    @TempDir
    Path dir;

    private Path seed(String name) throws IOException {
        Path p = dir.resolve(name + ".qcow2");
        try (InputStream in = getClass().getResourceAsStream("Qcow2FuzzTestInputs/image/" + name)) {
            Files.copy(in, p);
        }
        return p;
    }

    @Test
    void aBackingNameThatIsNoPathIsRefusedWithAnIoException() throws Exception {
        Path p = seed("crash-backing-name-with-nul");
        IOException e =
                assertThrows(IOException.class, () -> Qcow2Image.open(p, true).close());
        assertTrue(e.getMessage().contains("not a valid path"), e.getMessage());
    }

    @Test
    void tablesLargerThanQemuAllowsAreRefusedBeforeAnythingIsAllocated() throws Exception {
        for (String s : new String[] {"refcount-table-8gib", "l1-table-128mib"}) {
            Path p = seed(s);
            IOException e = assertThrows(
                    IOException.class, () -> Qcow2Image.open(p, true).close(), s);
            assertTrue(e.getMessage().contains("is damaged"), e.getMessage());
        }
    }

    @Test
    void aMetadataClusterWithRefcountZeroIsNeverAllocated() throws Exception {
        // cluster 0 (the header) has refcount 0 in this image: the first write used to put its L2 table there
        Path p = seed("crash-header-refcount-zero-allocated");
        // Its refcount table also names blocks past the end of the file (text the fuzzer left there), for which
        // a writable open is refused now; without them, the allocator is what is tested.
        IOException e =
                assertThrows(IOException.class, () -> Qcow2Image.open(p, false).close());
        assertTrue(e.getMessage().contains("past the end of the file"), e.getMessage());
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(p.toFile(), "rw")) {
            for (int i = 1; i < 64; i++) { // the table's one 512-byte cluster at 512; entry 0 is the real block
                f.seek(512 + 8 * i);
                f.writeLong(0);
            }
        }
        try (Arena a = Arena.ofConfined();
                Qcow2Image q = Qcow2Image.open(p, false, 2048);
                ImageIo io = q.newContext(4, 0)) {
            MemorySegment w = a.allocate(512);
            w.fill((byte) 0x5a);
            io.add(w);
            io.write(0);
            long host = q.l2Entry(0) & Qcow2Image.OFFSET_MASK;
            assertNotEquals(0, host, "the data cluster");
            q.flush();
        }
        try (Qcow2Image q = Qcow2Image.open(p, true)) {
            assertEquals(65536, q.size(), "the header survived the write");
        }
    }

    @Test
    void aCompressedEntryWithBitZeroIsCopiedOutNotWrittenInPlace() throws Exception {
        // L2 entry 8 is all ones: COMPRESSED with a COPIED bit and bit 0 set, which is part of a compressed entry's
        // host offset, not the zero flag; it used to be taken for a preallocated zero cluster and written at the
        // offset its bits make (0xfffffffffffe00), where entry 9 (the same bits) pointed too
        Path p = seed("crash-compressed-entry-taken-for-preallocated-zero");
        try (Arena a = Arena.ofConfined();
                Qcow2Image q = Qcow2Image.open(p, false, 2048);
                ImageIo io = q.newContext(4, 0)) {
            assertEquals(-1L, q.l2Entry(8 * 512L));
            MemorySegment w = a.allocate(100);
            w.fill((byte) 1);
            io.add(w);
            io.write(8 * 512L);
            long host = q.l2Entry(8 * 512L) & Qcow2Image.OFFSET_MASK;
            assertNotEquals(0x00fffffffffffe00L, host);
            assertTrue(host < Files.size(p), "a newly allocated cluster inside the file, not " + host);
        }
    }
}
