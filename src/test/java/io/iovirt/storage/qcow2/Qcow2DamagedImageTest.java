// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.OpenFiles;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Damaged and hostile images, made by qemu-img and qemu-io and then patched: each is refused with a clear error or
 * handled in bounded time and memory, and a failed open leaves nothing open.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img / qemu-io: Failsafe
class Qcow2DamagedImageTest {
    static final int MIB = 1 << 20;

    @TempDir
    Path dir;

    private Path create(String name, String size, String... opts) throws Exception {
        return QemuTools.createQcow2(dir, name, size, opts);
    }

    static long readLong(Path p, long at) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "r")) {
            f.seek(at);
            return f.readLong();
        }
    }

    static void writeLong(Path p, long at, long v) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(at);
            f.writeLong(v);
        }
    }

    static void setDirty(Path p) throws IOException {
        writeLong(p, Qcow2Header.OFF_INCOMPATIBLE, readLong(p, Qcow2Header.OFF_INCOMPATIBLE) | 1);
    }

    static void setLength(Path p, long bytes) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(bytes); // a hole: nothing is written
        }
    }

    /** File offset of the L2 table of L1 entry {@code i}. */
    static long l2Table(Path p, int i) throws IOException {
        return readLong(p, readLong(p, 40) + 8L * i) & Qcow2Image.OFFSET_MASK;
    }

    /** Opens {@code img} for writing twice, expecting the same refusal; asserts no descriptor stays open. */
    static IOException refusedForWriting(Path img) throws IOException {
        OpenFiles.Snapshot fds = OpenFiles.snapshot();
        IOException e = assertThrows(
                IOException.class, () -> Qcow2Image.open(img, false).close());
        // the second open is refused for the same reason (not "already open"), and nothing was left open
        IOException again = assertThrows(
                IOException.class, () -> Qcow2Image.open(img, false).close());
        assertEquals(e.getMessage(), again.getMessage());
        assertEquals(List.of(), fds.openedSince(), "a failed open left descriptors open");
        return e;
    }

    @Test
    void aDirtyHeaderTruncatedTo900GibIsRefusedWithoutRunningOutOfMemory() throws Exception {
        // The repair used to size its counts by the file's apparent size: 1.9e9 ints (7.5 GiB) for 512-byte clusters,
        // an OutOfMemoryError that open() did not catch (the descriptor and the tables' memory leaked).
        Path img = create("sparse-tail.qcow2", "1M", "cluster_size=512");
        setDirty(img);
        setLength(img, 900L << 30);
        IOException e = refusedForWriting(img);
        assertTrue(e.getMessage().contains("qemu-img check -r all"), e.getMessage());
    }

    @Test
    void aDirtyImageReferencingAClusterAt900GibIsRefusedWithoutRunningOutOfMemory() throws Exception {
        // refcount_bits=1: the refcount table would fit, but counts up to cluster 1.9e9 would not
        Path img = create("far-ref.qcow2", "1M", "cluster_size=512", "refcount_bits=1");
        qemuIoOk(img, "qcow2", "write -P 0x11 0 512");
        long far = (900L << 30) - 512;
        writeLong(img, l2Table(img, 0) + 8, Qcow2Image.OFLAG_COPIED | far); // guest cluster 1 "stored" there
        setLength(img, 900L << 30);
        setDirty(img);
        IOException e = refusedForWriting(img);
        assertTrue(
                e.getMessage().contains("MiB of memory") && e.getMessage().contains("qemu-img check -r all"),
                e.getMessage());
    }

    @Test
    void aDirtyImageWithATerabyteHoleAtItsEndIsRepairedWithMemoryForItsReferencesOnly() throws Exception {
        Path img = create("dirty-hole.qcow2", "64M", "lazy_refcounts=on");
        QemuTools.qemuIo(img, "qcow2", "write -P 0x31 0 3M", "write -P 0x32 10M 100k", "abort");
        assertEquals(1, readLong(img, Qcow2Header.OFF_INCOMPATIBLE) & 1, "qemu-io left no dirty bit");
        setLength(img, 1L << 40);
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            Qcow2ImageTest.write(q, 20 * MIB, Qcow2ImageTest.fill(MIB, 0x33));
            assertArrayEquals(Qcow2ImageTest.fill(4096, 0x31), Qcow2ImageTest.read(q, 0, 4096));
        }
        assertEquals(0, readLong(img, Qcow2Header.OFF_INCOMPATIBLE) & 1, "dirty bit still set");
        check(img, false); // the refcount table's entries over the hole are 0: no block, refcount 0
        qemuIoOk(img, "qcow2", "read -P 0x31 0 3M", "read -P 0x32 10M 100k", "read -P 0x33 20M 1M");
    }

    @Test
    void aDirtyImageWithAClusterReferencedMoreThan65535TimesGetsItsExactRefcount() throws Exception {
        // refcount_order 6: 8 L2 tables of 8192 entries, every entry naming one data cluster (65536 references);
        // the repair counts in 16 bits and continues past them, so the refcount is exact, as qemu-img check sees
        Path img = create("shared.qcow2", "4G", "refcount_bits=64");
        List<String> writes = new ArrayList<>();
        for (int i = 0; i < 8; i++) {
            writes.add("write -P 0x4" + i + " " + (i * 512L * MIB) + " 64k");
        }
        qemuIoOk(img, "qcow2", writes.toArray(String[]::new));
        long data = readLong(img, l2Table(img, 0)) & Qcow2Image.OFFSET_MASK;
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            for (int i = 0; i < 8; i++) {
                java.nio.ByteBuffer table = java.nio.ByteBuffer.allocate(65536);
                for (int k = 0; k < 8192; k++) {
                    table.putLong(8 * k, data); // shared: no COPIED flag
                }
                f.seek(l2Table(img, i));
                f.write(table.array());
            }
        }
        setDirty(img);
        Qcow2Image.open(img, false).close();
        assertEquals(0, readLong(img, Qcow2Header.OFF_INCOMPATIBLE) & 1, "dirty bit still set");
        check(img, true); // the 7 data clusters no entry names any more are leaks; no refcount is wrong
        qemuIoOk(img, "qcow2", "read -P 0x40 0 64k", "read -P 0x40 3584M 64k", "read -P 0x40 1000M 64k");
    }

    /** A 64 MiB image of 64 KiB clusters, refcount_bits=1 (one refcount block covers 32 GiB): header, refcount
     * table at 64 KiB, its one block at 128 KiB, L1 table at 192 KiB. */
    private Path refcountImage(String name) throws Exception {
        return refcountImage(name, "64M");
    }

    private Path refcountImage(String name, String size) throws Exception {
        Path img = create(name, size, "refcount_bits=1");
        assertEquals(0x10000, readLong(img, Qcow2Header.OFF_REFTABLE), "qemu-img placed the refcount table elsewhere");
        assertEquals(0x20000, readLong(img, 0x10000), "qemu-img placed the refcount block elsewhere");
        return img;
    }

    @Test
    void refcountTableEntriesThatShareABlockOrPointAtTablesOrPastTheEndAreRefusedForWriting() throws Exception {
        // Every entry naming the one block: filled with 0xff, the first allocation used to scan 8192 blocks of
        // 524288 clusters each (4e9 refcounts) under the metadata lock before reaching a free cluster.
        long[][] cases = {
            {0x20000, 0x20000}, // entry 1 names entry 0's block
            {0x1000000}, // 16 MiB: past the end of the file
            {0x30000}, // the L1 table
            {0x10000}, // the refcount table
        };
        String[] says = {
            "same refcount block 131072", "past the end of the file", "inside the L1 table", "inside the refcount table"
        };
        for (int k = 0; k < cases.length; k++) {
            Path img = refcountImage("reftable-" + k + ".qcow2");
            for (int i = 0; i < cases[k].length; i++) {
                writeLong(img, 0x10000 + 8L * (i + 1), cases[k][i]);
            }
            IOException e = refusedForWriting(img);
            assertTrue(
                    e.getMessage().contains(says[k]) && e.getMessage().contains("qemu-img check -r all"),
                    e.getMessage());
            try (Qcow2Image q = Qcow2Image.open(img, true)) { // reading needs no refcounts
                assertArrayEquals(new byte[4096], Qcow2ImageTest.read(q, 0, 4096));
            }
        }
    }

    @Test
    void theAllocatorDoesNotScanRefcountsPastTheEndOfTheFile() throws Exception {
        // 1024 distinct refcount blocks inside the file, all 0xff: they claim 1024 * 524288 clusters in use, while
        // the file has 1028. The first allocation used to read 5e8 refcounts under the metadata lock (blocking
        // flushes and closes of the export) before it found a free cluster; past the end of the file every cluster
        // is free, so it now allocates there after reading at most 1028.
        Path img = refcountImage("ff-blocks.qcow2");
        int blocks = 1024;
        byte[] ff = new byte[65536];
        java.util.Arrays.fill(ff, (byte) 0xff);
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(0x20000);
            f.write(ff); // the real block too
            f.setLength(0x40000);
            for (int i = 1; i < blocks; i++) {
                f.seek(0x40000 + (i - 1) * 65536L);
                f.write(ff);
                f.seek(0x10000 + 8L * i);
                f.writeLong(0x40000 + (i - 1) * 65536L);
            }
        }
        long end = Files.size(img);
        byte[] data = Qcow2ImageTest.fill(4096, 0x5a);
        assertTimeoutPreemptively(Duration.ofSeconds(10), () -> {
            try (Qcow2Image q = Qcow2Image.open(img, false)) {
                Qcow2ImageTest.write(q, 0, data);
                q.flush();
                long host = q.l2Entry(0) & Qcow2Image.OFFSET_MASK;
                assertTrue(host >= end, "allocated at " + host + ", inside the file of " + end + " bytes");
            }
        });
        try (Qcow2Image q = Qcow2Image.open(img, true)) {
            assertArrayEquals(data, Qcow2ImageTest.read(q, 0, 4096));
        }
    }

    /**
     * An L2 entry naming the L1 table, the refcount table, the refcount block or its own L2 table, as a normal,
     * preallocated zero, shared (no COPIED) or compressed cluster: a discard or write-zeroes of that guest cluster is
     * refused, as a data write there is, and changes nothing. Before, the discard and the write-zeroes with unmap
     * punched the table out of the file (it read as zeros) and the shared and compressed entries' clusters were
     * counted down (a metadata cluster at refcount 0).
     */
    @Test
    void aDiscardOrZeroingOfAnL2EntryPointingAtMetadataIsRefusedAndChangesNothing() throws Exception {
        long[] flags = {
            Qcow2Image.OFLAG_COPIED,
            Qcow2Image.OFLAG_COPIED | Qcow2Image.OFLAG_ZERO,
            0,
            Qcow2Image.OFLAG_COMPRESSED // host offset in bits 0-53, no additional sectors: 512 bytes at the target
        };
        String[] requests = {"discard", "write-zeroes with unmap", "write-zeroes"};
        int n = 0;
        for (int target = 0; target < 4; target++) {
            for (long flag : flags) {
                for (String request : requests) {
                    if (flag == (Qcow2Image.OFLAG_COPIED | Qcow2Image.OFLAG_ZERO) && request.equals("write-zeroes")) {
                        continue; // already zero and kept as it is: neither punched nor freed
                    }
                    assertRefusedOnMetadataChangingNothing(
                            "punch-" + n++ + ".qcow2",
                            target,
                            flag,
                            request + " of",
                            img -> "repair it with 'qemu-img check -r all " + img + "'",
                            q -> {
                                switch (request) {
                                    case "discard" -> q.discard(65536, 65536);
                                    case "write-zeroes with unmap" -> q.writeZeroes(65536, 65536, true);
                                    default -> q.writeZeroes(65536, 65536, false);
                                }
                            });
                }
            }
        }
    }

    /**
     * A discarded (or zeroed with unmap) cluster whose refcount is already 0 (a damaged image: qemu-img check finds
     * 'refcount=0 reference=1') is dropped without a count-down. The allocator may hand it out as soon as the entry
     * dropped it; before, the count-down deferred to the flush then landed on the guest data written there, which
     * the next allocation overwrote (qemu-io: pattern verification failed at 1 MiB; 'refcount=1 reference=2').
     */
    @Test
    void aDroppedClusterWhoseRefcountIsZeroIsNotCountedDownOverItsNextUse() throws Exception {
        for (boolean discard : new boolean[] {true, false}) {
            Path img = create("refcount-zero-" + discard + ".qcow2", "64M");
            qemuIoOk(img, "qcow2", "write -P 0x61 0 128k");
            long host = readLong(img, l2Table(img, 0) + 8) & Qcow2Image.OFFSET_MASK; // guest cluster 1
            setRefcount(img, host, 0);
            QemuTools.Result damaged = QemuTools.run("qemu-img", "check", img.toString());
            assertTrue(damaged.output().contains("refcount=0 reference=1"), damaged.output());
            try (Qcow2Image q = Qcow2Image.open(img, false)) {
                if (discard) {
                    q.discard(65536, 65536);
                } else {
                    q.writeZeroes(65536, 65536, true);
                }
                Qcow2ImageTest.write(q, MIB, Qcow2ImageTest.fill(65536, 0x62));
                q.flush();
                q.flush(); // the deferred count-downs land
                Qcow2ImageTest.write(q, 2 * MIB, Qcow2ImageTest.fill(65536, 0x63));
            }
            check(img, false);
            qemuIoOk(
                    img,
                    "qcow2",
                    "read -P 0x61 0 64k",
                    "read -P 0 64k 64k",
                    "read -P 0x62 1M 64k",
                    "read -P 0x63 2M 64k");
        }
    }

    /**
     * A guest write into a cluster whose L2 entry is shared (no COPIED), compressed or a preallocated zero cluster
     * this image does not own, naming the L1 table, the refcount table, the refcount block or its own L2 table: the
     * write copies the cluster out and drops the old entry's host range, so it is refused before anything changes,
     * as a discard of that entry is. Before, one 4 KiB write counted the table down (refcount_bits=1: to 0) and
     * qemu-img check found it at 'refcount=0 reference=1', a table the allocator could hand out.
     */
    @Test
    void aWriteThatCopiesOutAnL2EntryPointingAtMetadataIsRefusedAndChangesNothing() throws Exception {
        long[] flags = {0, Qcow2Image.OFLAG_ZERO, Qcow2Image.OFLAG_COMPRESSED};
        int n = 0;
        for (int target = 0; target < 4; target++) {
            for (long flag : flags) {
                assertRefusedOnMetadataChangingNothing(
                        "copy-out-" + n++ + ".qcow2",
                        target,
                        flag,
                        "a write into",
                        img -> "the write was refused",
                        q -> {
                            Qcow2ImageTest.write(q, 65536 + 4096, Qcow2ImageTest.fill(4096, 0x62));
                            q.flush();
                            q.flush();
                        });
            }
        }
    }

    /**
     * The repair the refusals above advise works: 'qemu-img check -r all' turns an owned entry naming the L1 table
     * into a shared one (no COPIED; the table's refcount 2 counts both references), which QEMU copies out on a write
     * and counts down on a discard. iovirt does the same: the table keeps refcount 1 and the image stays clean.
     * Before, the write and the discard were refused with the same advice, whatever the repair had done.
     */
    @Test
    void aSharedEntryOnMetadataThatTheRefcountsCountIsDroppedAfterTheAdvisedRepair() throws Exception {
        String[] requests = {"write", "discard", "write-zeroes with unmap", "write-zeroes"};
        for (String request : requests) {
            Path img = create("repaired-" + request.replace(' ', '-') + ".qcow2", "64M"); // 16-bit refcounts
            qemuIoOk(img, "qcow2", "write -P 0x61 0 64k");
            long l1 = readLong(img, 40);
            writeLong(img, l2Table(img, 0) + 8, Qcow2Image.OFLAG_COPIED | l1); // guest cluster 1 on the L1 table
            QemuTools.Result repair = QemuTools.run("qemu-img", "check", "-r", "all", img.toString());
            assertEquals(0, repair.exit(), repair.output());
            assertEquals(l1, readLong(img, l2Table(img, 0) + 8), "the repair left the entry, shared");
            try (Qcow2Image q = Qcow2Image.open(img, false)) {
                switch (request) {
                    case "write" -> Qcow2ImageTest.write(q, 65536 + 4096, Qcow2ImageTest.fill(4096, 0x62));
                    case "discard" -> q.discard(65536, 65536);
                    case "write-zeroes with unmap" -> q.writeZeroes(65536, 65536, true);
                    default -> q.writeZeroes(65536, 65536, false);
                }
                q.flush();
                q.flush(); // the deferred count-down lands
            }
            check(img, false);
            qemuIoOk(
                    img,
                    "qcow2",
                    "read -P 0x61 0 64k",
                    request.equals("write") ? "read -P 0x62 68k 4k" : "read -P 0 64k 64k");
        }
    }

    /**
     * Two shared entries naming the L1 table whose refcount (2) counts only one of them besides the table's own: the
     * first discard counts the table down to 1, the second is refused, the count-down still deferred taken into
     * account. Before, both were dropped and the table reached refcount 0 (qemu-img check: 'refcount=0').
     */
    @Test
    void twoSharedEntriesOnMetadataCountTheTableDownOnlyAsFarAsItsRefcountCountsThem() throws Exception {
        Path img = create("two-on-l1.qcow2", "64M"); // 16-bit refcounts
        qemuIoOk(img, "qcow2", "write -P 0x61 0 64k");
        long l1 = readLong(img, 40);
        long l2 = l2Table(img, 0);
        writeLong(img, l2 + 8, l1); // guest clusters 1 and 2, shared, on the L1 table
        writeLong(img, l2 + 16, l1);
        setRefcount(img, l1, 2);
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            q.discard(65536, 65536);
            IOException e = assertThrows(IOException.class, () -> q.discard(2 * 65536, 65536));
            assertTrue(
                    e.getMessage().contains("guest offset 131072 points at " + inside(l1, 0))
                            && e.getMessage().contains("the discard was refused"),
                    e.getMessage());
            q.flush();
            q.flush(); // the deferred count-down lands
        }
        QemuTools.Result r = QemuTools.run("qemu-img", "check", img.toString());
        assertTrue(r.output().contains("ERROR cluster " + (l1 >>> 16) + " refcount=1 reference=2"), r.output());
        qemuIoOk(img, "qcow2", "read -P 0x61 0 64k", "read -P 0 64k 64k");
    }

    /**
     * A write into a shared cluster (no COPIED) whose refcount is already 0 (a damaged image) copies it out without
     * counting it down: the allocator may hand the old cluster out as soon as the entry dropped it, and the
     * count-down deferred to the flush then landed on the guest data written there, which the next allocation
     * overwrote (qemu-io: pattern verification failed at 1 MiB; qemu-img check 'refcount=1 reference=2').
     */
    @Test
    void aCopiedOutClusterWhoseRefcountIsZeroIsNotCountedDownOverItsNextUse() throws Exception {
        Path img = create("copy-out-refcount-zero.qcow2", "64M");
        qemuIoOk(img, "qcow2", "write -P 0x61 0 128k");
        long entry = l2Table(img, 0) + 8; // guest cluster 1
        long host = readLong(img, entry) & Qcow2Image.OFFSET_MASK;
        writeLong(img, entry, host); // shared: no COPIED
        setRefcount(img, host, 0);
        QemuTools.Result damaged = QemuTools.run("qemu-img", "check", img.toString());
        assertTrue(damaged.output().contains("refcount=0 reference=1"), damaged.output());
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            q.discard(0, 65536); // guest cluster 0's host cluster becomes the allocator's first free one
            q.flush();
            q.flush();
            Qcow2ImageTest.write(q, 65536, Qcow2ImageTest.fill(4096, 0x62)); // copied out to that cluster
            Qcow2ImageTest.write(q, MIB, Qcow2ImageTest.fill(65536, 0x63)); // given guest cluster 1's old one
            q.flush();
            q.flush(); // the deferred count-downs land
            Qcow2ImageTest.write(q, 2 * MIB, Qcow2ImageTest.fill(65536, 0x64));
        }
        check(img, false);
        qemuIoOk(
                img,
                "qcow2",
                "read -P 0 0 64k",
                "read -P 0x62 64k 4k",
                "read -P 0x61 68k 60k",
                "read -P 0x63 1M 64k",
                "read -P 0x64 2M 64k");
    }

    @Test
    void l1EntriesThatShareAnL2TableOrPointAtTablesOrPastTheEndAreRefusedForWriting() throws Exception {
        // An L1 entry naming the L1 table's own cluster: a write under it (guest offset 512 MiB + 128 KiB) used the L1
        // table as its L2 table and wrote the new data cluster's entry back over L1 entry 2, so that guest data
        // became the L2 table of the disk's third 512 MiB.
        String[] says = {
            "inside the L1 table",
            "inside the refcount table",
            "a refcount block",
            "same L2 table",
            "past the end of the file"
        };
        for (int k = 0; k < says.length; k++) {
            Path img = refcountImage("l1-" + k + ".qcow2", "2G"); // four L1 entries
            qemuIoOk(img, "qcow2", "write -P 0x61 0 64k");
            long l1 = readLong(img, 40);
            long[] targets = {l1, 0x10000, 0x20000, l2Table(img, 0), 1L << 30};
            writeLong(img, l1 + 8, Qcow2Image.OFLAG_COPIED | targets[k]); // L1 entry 1: guest 512 MiB to 1 GiB
            byte[] before = Files.readAllBytes(img);
            IOException e = assertThrows(IOException.class, () -> {
                try (Qcow2Image q = Qcow2Image.open(img, false)) {
                    Qcow2ImageTest.write(q, 512L * MIB + 128 * 1024, Qcow2ImageTest.fill(4096, 0x62));
                }
            });
            assertTrue(
                    e.getMessage().contains("L1 entry 1 points at " + targets[k] + ", ")
                            && e.getMessage().contains(says[k])
                            && e.getMessage().contains("qemu-img check -r all"),
                    e.getMessage());
            assertArrayEquals(before, Files.readAllBytes(img), "the refused image was written");
            try (Qcow2Image q = Qcow2Image.open(img, true)) {
                assertArrayEquals(Qcow2ImageTest.fill(4096, 0x61), Qcow2ImageTest.read(q, 0, 4096));
            }
        }
    }

    /**
     * An image whose guest cluster 1 (64 KiB) has an L2 entry {@code flag} "stored" on metadata (target 0-3 as {@link
     * #inside}): {@code request} on it is refused with an error naming the damage, the metadata and {@code refusal}
     * (of the image's path), and changes neither the file nor what qemu-img check finds.
     */
    private void assertRefusedOnMetadataChangingNothing(
            String name,
            int target,
            long flag,
            String request,
            java.util.function.Function<Path, String> refusal,
            Qcow2ImageTest.Request on)
            throws Exception {
        Path img = refcountImage(name);
        qemuIoOk(img, "qcow2", "write -P 0x61 0 64k");
        long l2 = l2Table(img, 0);
        long at = new long[] {readLong(img, 40), 0x10000, 0x20000, l2}[target];
        writeLong(img, l2 + 8, flag | at); // guest cluster 1 (64 KiB) "stored" on the table
        String what = request + " an entry " + Long.toHexString(flag | at);
        QemuTools.Result checkBefore = QemuTools.run("qemu-img", "check", "-f", "qcow2", img.toString());
        byte[] before = Files.readAllBytes(img);
        IOException e = assertThrows(
                IOException.class,
                () -> {
                    try (Qcow2Image q = Qcow2Image.open(img, false)) {
                        on.on(q);
                    }
                },
                what);
        assertTrue(
                e.getMessage().contains("qcow2 image " + img + " is damaged")
                        && e.getMessage().contains("guest offset 65536 points at " + inside(at, target))
                        && e.getMessage().contains(refusal.apply(img)),
                what + ": " + e.getMessage());
        assertArrayEquals(before, Files.readAllBytes(img), what + " changed the file");
        assertEquals(
                checkBefore,
                QemuTools.run("qemu-img", "check", "-f", "qcow2", img.toString()),
                what + " changed what qemu-img check finds");
    }

    /** Sets the 16-bit refcount of the cluster at {@code host} in the first refcount block. */
    private static void setRefcount(Path img, long host, int refcount) throws IOException {
        long block = readLong(img, readLong(img, Qcow2Header.OFF_REFTABLE)); // 16-bit refcounts
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(block + 2 * (host >>> 16));
            f.writeShort(refcount);
        }
    }

    /** How a refused request names the metadata at {@code at}: target 0-3 as the tests' {L1, refcount table, block, L2}. */
    private static String inside(long at, int target) {
        String[] names = {
            "the L1 table",
            "the refcount table",
            "a refcount block (refcount table entry 0)",
            "an L2 table (L1 entry 0)"
        };
        return "host offset 0x" + Long.toHexString(at) + ", inside " + names[target];
    }
}
