// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.code_intelligence.jazzer.junit.FuzzTest;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageIo;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;

/**
 * Fuzzes the qcow2 parser: header, header extensions, L1 and refcount tables, L2 entries (normal, zero, compressed),
 * refcount blocks and the dirty-bit repair — everything an image file a tenant uploaded can hold. The fuzzer's
 * bytes are the whole image file. It is opened read-only and read (data and allocation status); then opened for
 * writing, written, zeroed, discarded and flushed. A hostile image may be refused with an {@link IOException}
 * (naming the image and what is wrong) at any step; anything else thrown is a bug, as is a write inside one cluster
 * that does not read back. Seeds (made with qemu-img and qemu-io, 512-byte clusters so they stay small):
 * src/test/resources/io/iovirt/storage/qcow2/Qcow2FuzzTestInputs/.
 */
class Qcow2FuzzTest {
    /** Bytes read and written per image at most: the parser, not the copying, is what is fuzzed. */
    static final long SPAN = 256 << 10;

    static Path dir;
    static Arena arena;
    static MemorySegment buf;
    static MemorySegment back;

    @BeforeAll
    static void setUp() throws IOException {
        // tmpfs where there is one: every flush is three fdatasyncs, which on a disk would bound the fuzzer at a few
        // inputs a second
        Path shm = Path.of("/dev/shm");
        dir = Files.isDirectory(shm) && Files.isWritable(shm)
                ? Files.createTempDirectory(shm, "qcow2fuzz")
                : Files.createTempDirectory("qcow2fuzz");
        arena = Arena.ofShared();
        buf = arena.allocate(64 << 10, 4096);
        back = arena.allocate(64 << 10, 4096);
    }

    @AfterAll
    static void tearDown() throws IOException {
        arena.close();
        try (var s = Files.walk(dir)) {
            s.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
    }

    @FuzzTest(maxDuration = "10s")
    void image(byte[] data) throws Exception {
        Path img = dir.resolve("fuzz.qcow2");
        Files.write(img, data);
        try {
            readOnly(img);
        } catch (IOException refused) {
            // a damaged or hostile image: refused with a reason
        }
        try {
            readWrite(img);
        } catch (IOException refused) {
            // refused for writing, or a write refused (e.g. an L2 entry pointing at metadata)
        }
        Files.deleteIfExists(img);
    }

    private static void readOnly(Path img) throws IOException {
        try (Qcow2Image q = Qcow2Image.open(img, true, 4 * 512);
                ImageIo io = q.newContext(4, 0)) {
            long end = Math.min(q.size(), SPAN);
            long chunk = 4096 + 512 + 1; // crosses cluster and table boundaries at odd places
            for (long off = 0; off < end; off += chunk) {
                long n = Math.min(chunk, end - off);
                io.clear();
                io.add(buf.asSlice(0, n));
                io.read(off);
            }
            for (long off = 0; off < end; ) {
                long e = DiskImage.Extent.length(q.extent(off, end - off));
                assertTrue(e >= 1 && e <= end - off, "extent length " + e);
                off += e;
            }
            if (q.size() > 0) {
                q.readAt(q.size() - 1, buf.asSlice(0, 1));
            }
        }
    }

    private static void readWrite(Path img) throws IOException {
        try (Qcow2Image q = Qcow2Image.open(img, false, 4 * 512);
                ImageIo io = q.newContext(4, 0)) {
            long size = q.size();
            if (size == 0) {
                return;
            }
            long[] offsets = {0, size / 2 + 7, Math.max(0, size - 1000), Math.min(size - 1, SPAN / 3)};
            byte fill = 1;
            for (long off : offsets) {
                if (off >= size) {
                    continue; // a tiny image: size / 2 + 7 lies past its end
                }
                // A write across several clusters: allocation, copy-on-write of partial clusters, compressed and
                // zero clusters. It is not read back: a damaged image may map two guest clusters to one host cluster
                // (QEMU writes through such aliases too), and then the later piece wins.
                long n = Math.min(1000 + 4096, size - off);
                MemorySegment w = buf.asSlice(0, n);
                w.fill(fill++);
                io.clear();
                io.add(w);
                try {
                    io.write(off);
                } catch (IOException refused) {
                    // e.g. an L2 entry pointing at metadata
                }
                // A write inside one cluster must read back whatever the image says.
                long inCluster = Math.min(Math.min(700, q.clusterSize() - off % q.clusterSize()), size - off);
                MemorySegment one = buf.asSlice(0, inCluster);
                one.fill(fill);
                one.set(ValueLayout.JAVA_BYTE, 0, (byte) ~fill);
                fill++;
                io.clear();
                io.add(one);
                try {
                    io.write(off);
                } catch (IOException refused) {
                    continue;
                }
                MemorySegment r = back.asSlice(0, inCluster);
                io.clear();
                io.add(r);
                io.read(off);
                assertArrayEquals(
                        one.toArray(ValueLayout.JAVA_BYTE),
                        r.toArray(ValueLayout.JAVA_BYTE),
                        "a write at " + off + " did not read back");
            }
            q.writeZeroes(Math.min(size - 1, 512), Math.min(size - Math.min(size - 1, 512), 3000), true);
            q.discard(0, Math.min(size, 8192));
            q.writeZeroes(size / 3, Math.min(size - size / 3, 700), false);
            q.flush();
        }
    }
}
