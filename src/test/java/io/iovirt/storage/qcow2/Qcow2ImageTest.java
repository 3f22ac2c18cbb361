// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.ok;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageIo;
import io.iovirt.storage.Images;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** iovirt's qcow2 against images made, read and checked by qemu-img and qemu-io. */
@org.junit.jupiter.api.Tag("peer") // qemu-img / qemu-io / an iovirt server process: Failsafe
class Qcow2ImageTest {
    static final int MIB = 1 << 20;

    @TempDir
    Path dir;

    private Path create(String name, String size, String... opts) throws Exception {
        return QemuTools.createQcow2(dir, name, size, opts);
    }

    static byte[] read(DiskImage img, long off, int len) throws IOException {
        try (Arena a = Arena.ofConfined();
                ImageIo io = img.newContext(8, 0)) {
            MemorySegment b = a.allocate(len);
            io.add(b);
            io.read(off);
            return b.toArray(ValueLayout.JAVA_BYTE);
        }
    }

    static void write(DiskImage img, long off, byte[] data) throws IOException {
        try (Arena a = Arena.ofConfined();
                ImageIo io = img.newContext(8, 0)) {
            // two buffers, split at an odd place, to exercise scatter-gather across cluster boundaries
            int half = data.length / 3 & ~511;
            MemorySegment b = a.allocate(data.length);
            MemorySegment.copy(data, 0, b, ValueLayout.JAVA_BYTE, 0, data.length);
            io.add(b.asSlice(0, half));
            io.add(b.asSlice(half));
            io.write(off);
        }
    }

    /**
     * Queues a read of the allocated cluster at 2 MiB into {@code buf} on {@code ring} (user data 1), then discards
     * that cluster: its free waits for the read.
     */
    static void discardUnderARead(Qcow2Image q, Qcow2Image.Qcow2Io io, IoUring ring, MemorySegment buf)
            throws IOException {
        io.add(buf);
        assertTrue(io.submitRead(ring, 2 * MIB, 1), "queued: a read of an allocated cluster");
        q.discard(2 * MIB, 65536);
    }

    /**
     * After {@link #discardUnderARead} on a writable image: the discarded cluster at {@code host} is not handed out
     * while the read is in flight, and is the next allocation once the read completed and the image was handed over.
     */
    static void assertFreedOnlyOnceTheReadCompleted(Qcow2Image q, Qcow2Image.Qcow2Io io, IoUring ring, long host)
            throws IOException {
        write(q, 9 * MIB, fill(65536, 0x66));
        assertTrue(
                (q.l2Entry(9 * MIB) & Qcow2Image.OFFSET_MASK) != host,
                "the discarded cluster was handed out while a read of it was in flight");
        ring.submitAndWait(1);
        assertEquals(1, ring.reap((ud, res, f) -> assertEquals(65536, res)));
        io.completed(false, 2 * MIB, 65536);
        q.handOver(); // nothing in flight now: the discarded cluster is freed
        write(q, 10 * MIB, fill(65536, 0x77));
        assertEquals(host, q.l2Entry(10 * MIB) & Qcow2Image.OFFSET_MASK, "and taken by the next allocation");
    }

    static byte[] fill(int len, int value) {
        byte[] b = new byte[len];
        java.util.Arrays.fill(b, (byte) value);
        return b;
    }

    @ParameterizedTest
    @ValueSource(strings = {"65536", "2097152", "512"})
    void readsWhatQemuIoWroteAndQemuIoReadsWhatIovirtWrote(String clusterSize) throws Exception {
        Path img = create("a.qcow2", "64M", "cluster_size=" + clusterSize);
        qemuIoOk(img, "qcow2", "write -P 0xab 1M 192k", "write -z 8M 1M", "write -P 0x11 20M 4k");
        try (DiskImage q = Images.open(img, null, false, false)) {
            assertEquals("qcow2", q.format());
            assertEquals(64L * MIB, q.size());
            assertArrayEquals(fill(192 << 10, 0xab), read(q, MIB, 192 << 10));
            assertArrayEquals(new byte[MIB], read(q, 8 * MIB, MIB));
            assertArrayEquals(fill(4096, 0x11), read(q, 20 * MIB, 4096));
            assertArrayEquals(new byte[4096], read(q, 40 * MIB, 4096));
            // new clusters, partial clusters (COW over qemu's data), a run across cluster boundaries
            write(q, 30 * MIB + 512, fill(300 << 10, 0xcd));
            write(q, MIB + 4096, fill(8192, 0xee));
            write(q, 63 * MIB, fill(MIB, 0x5a));
            q.flush();
            assertArrayEquals(fill(300 << 10, 0xcd), read(q, 30 * MIB + 512, 300 << 10));
        }
        check(img, false);
        qemuIoOk(
                img,
                "qcow2",
                "read -P 0xcd " + (30 * MIB + 512) + " " + (300 << 10),
                "read -P 0xab 1M 4k",
                "read -P 0xee " + (MIB + 4096) + " 8k",
                "read -P 0xab " + (MIB + 12288) + " 4k",
                "read -P 0x5a 63M 1M",
                "read -P 0 " + (30 * MIB) + " 512",
                "read -P 0x11 20M 4k");
    }

    @Test
    void copyOnWriteFromARelativeRawBackingFileAndAQcow2Chain() throws Exception {
        Path sub = Files.createDirectories(dir.resolve("images"));
        Path base = sub.resolve("base.raw");
        byte[] baseData = new byte[8 * MIB];
        new Random(1).nextBytes(baseData);
        Files.write(base, baseData);
        // relative names, resolved against the overlay's directory as QEMU does (not the working directory)
        ok(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                sub.resolve("mid.qcow2").toString());
        qemuIoOk(sub.resolve("mid.qcow2"), "qcow2", "write -P 0x22 2M 64k");
        ok(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "mid.qcow2",
                "-F",
                "qcow2",
                sub.resolve("top.qcow2").toString(),
                "16M");
        Path top = sub.resolve("top.qcow2");
        try (DiskImage q = Images.open(top, null, false, false)) {
            assertEquals(16L * MIB, q.size());
            byte[] expected = java.util.Arrays.copyOf(baseData, 16 * MIB);
            java.util.Arrays.fill(expected, 2 * MIB, 2 * MIB + 65536, (byte) 0x22);
            assertArrayEquals(expected, read(q, 0, 16 * MIB));
            write(q, 4096, fill(4096, 0x77)); // COW: rest of the cluster from the raw base
            write(q, 2 * MIB + 1024, fill(512, 0x78)); // COW over the middle qcow2
            q.writeZeroes(5 * MIB, 64 << 10, false); // a zero cluster hides the backing data
            System.arraycopy(fill(4096, 0x77), 0, expected, 4096, 4096);
            System.arraycopy(fill(512, 0x78), 0, expected, 2 * MIB + 1024, 512);
            java.util.Arrays.fill(expected, 5 * MIB, 5 * MIB + 65536, (byte) 0);
            assertArrayEquals(expected, read(q, 0, 16 * MIB));
            Path want = dir.resolve("want.raw");
            Files.write(want, expected);
            q.flush();
            ok("qemu-img", "compare", "-f", "qcow2", "-F", "raw", top.toString(), want.toString());
        }
        check(top, false);
        assertArrayEquals(baseData, Files.readAllBytes(base), "the backing file changed");
    }

    /**
     * An overlay that does not record its backing file's format is refused: the backing file was a guest's raw disk,
     * and the guest wrote a qcow2 header naming a host file as its backing file. Before, the backing file's format
     * was detected: the overlay read as the host file's bytes. qemu-img 7.2 makes no such overlay (neither create
     * nor rebase without -F), so the backing format header extension of one it made is renamed to an unknown one.
     */
    @Test
    void anOverlayWithoutItsBackingFormatIsRefusedRatherThanProbed() throws Exception {
        byte[] secret = fill(64 << 10, 's');
        Path secretFile = dir.resolve("secret");
        Files.write(secretFile, secret);
        Path evil = QemuTools.createQcow2(
                dir, "evil.qcow2", "1M", "backing_file=" + secretFile.toAbsolutePath(), "backing_fmt=raw");
        byte[] guestDisk = java.util.Arrays.copyOf(Files.readAllBytes(evil), MIB); // what the guest wrote
        Path base = dir.resolve("base.raw");
        Files.write(base, guestDisk);
        Path overlay = dir.resolve("o.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay.toString());
        byte[] header = Files.readAllBytes(overlay);
        int ext = indexOf(header, new byte[] {(byte) 0xe2, 0x79, 0x2a, (byte) 0xca});
        assertTrue(ext >= 104 && ext < 4096, "the backing format header extension at " + ext);
        try (RandomAccessFile f = new RandomAccessFile(overlay.toFile(), "rw")) {
            f.seek(ext);
            f.writeInt(0x10ad0bad); // an extension QEMU and iovirt ignore
        }
        String info = ok("qemu-img", "info", "-U", overlay.toString());
        assertTrue(info.contains("backing file: base.raw") && !info.contains("backing file format"), info);

        IOException e = assertThrows(
                IOException.class, () -> Images.open(overlay, null, true, false).close());
        assertTrue(
                e.getMessage().contains("without its format")
                        && e.getMessage()
                                .contains("if the image is yours, record the format with 'qemu-img rebase"
                                        + " -u -b base.raw -F raw " + overlay)
                        && e.getMessage().contains("otherwise refuse it"),
                e.getMessage());
        assertThrows(
                IOException.class,
                () -> Images.open(overlay, null, false, false).close());

        ok("qemu-img", "rebase", "-u", "-b", "base.raw", "-F", "raw", overlay.toString()); // the remedy named
        try (DiskImage q = Images.open(overlay, null, true, false)) {
            assertArrayEquals(guestDisk, read(q, 0, MIB), "the guest's bytes, its qcow2 header only data");
        }
    }

    /**
     * A chain of images whose headers ask for the largest tables QEMU allows (a 32 MiB L1 table, an 8 MiB refcount
     * table) over sparse files: each one opens alone, but the chain's tables are bounded. Before, every image of a
     * chain (32 at most) took its tables and a 32 MiB L2 cache: about 3 GiB of one open.
     */
    @Test
    void theMemoryOfABackingChainsTablesIsBounded() throws Exception {
        List<Path> chain = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            Path p = dir.resolve("big" + i + ".qcow2");
            if (i == 0) {
                ok("qemu-img", "create", "-q", "-f", "qcow2", p.toString(), "1M");
            } else {
                ok(
                        "qemu-img",
                        "create",
                        "-q",
                        "-u",
                        "-f",
                        "qcow2",
                        "-b",
                        chain.get(i - 1).getFileName().toString(),
                        "-F",
                        "qcow2",
                        p.toString(),
                        "1M");
            }
            try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
                f.seek(36);
                f.writeInt(4 << 20); // l1_size: 4M entries, 32 MiB
                f.writeLong(64L << 20); // l1_table_offset
                f.writeLong(128L << 20); // refcount_table_offset
                f.writeInt(128); // refcount_table_clusters: 8 MiB
                f.setLength((128L + 8) << 20); // sparse: the tables read as zeros
            }
            chain.add(p);
        }
        try (DiskImage q = Images.open(chain.get(0), null, true, false)) {
            assertArrayEquals(new byte[4096], read(q, 0, 4096), "one image with the largest tables opens");
        }
        try (DiskImage q = Images.open(chain.get(1), null, true, false)) {
            assertArrayEquals(new byte[4096], read(q, 0, 4096), "and an overlay over it");
        }
        IOException e = assertThrows(
                IOException.class,
                () -> Images.open(chain.get(2), null, true, false).close());
        assertTrue(
                e.getMessage().contains("qcow2 image " + chain.get(0) + " needs up to")
                        && e.getMessage().contains("limit of 512 MiB for one backing chain")
                        && e.getMessage().contains("cannot open backing file of " + chain.get(1)),
                e.getMessage());
    }

    /**
     * A zero cluster that keeps its host cluster (qemu-io's write -z over data) but lacks the COPIED flag (a
     * damaged image: qemu-img check reports it) is written through a new cluster; its host cluster was referenced
     * by the entry and is freed. Before, its refcount stayed 1 with nothing referencing it: a leaked cluster.
     */
    @Test
    void aRewrittenZeroClusterNotWrittenInPlaceFreesItsHostCluster() throws Exception {
        Path img = create("z.qcow2", "4M");
        qemuIoOk(img, "qcow2", "write -P 0x11 0 128k", "write -z 0 64k");
        long host;
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(40);
            f.seek(f.readLong()); // L1 entry 0
            long l2 = f.readLong() & Qcow2Image.OFFSET_MASK;
            f.seek(l2);
            long e = f.readLong();
            host = e & Qcow2Image.OFFSET_MASK;
            assertTrue(
                    host != 0 && (e & Qcow2Image.OFLAG_ZERO) != 0 && (e & Qcow2Image.OFLAG_COPIED) != 0,
                    "a zero cluster with its host cluster: " + Long.toHexString(e));
            f.seek(l2);
            f.writeLong(e & ~Qcow2Image.OFLAG_COPIED);
        }
        QemuTools.Result damaged = QemuTools.run("qemu-img", "check", img.toString());
        assertTrue(damaged.output().contains("OFLAG_COPIED data cluster"), damaged.output());
        try (DiskImage q = Images.open(img, null, false, false)) {
            write(q, 4096, fill(4096, 0x22));
            q.flush();
            byte[] want = new byte[65536];
            System.arraycopy(fill(4096, 0x22), 0, want, 4096, 4096);
            assertArrayEquals(want, read(q, 0, 65536));
        }
        check(img, false); // neither the COPIED error nor a leaked cluster
        String map = ok("qemu-img", "map", "--output=json", img.toString());
        assertFalse(map.contains("\"offset\": " + host + "}"), "written through a new cluster:\n" + map);
    }

    /**
     * A data cluster without the COPIED flag whose refcount is 0 (a damaged image) is where the allocator puts the
     * copy of its own rewrite; the old cluster's deferred free then counted the new one down to 0 while the entry
     * referenced it, and the next allocation wrote another guest offset's data over it.
     */
    @Test
    void aCopiedOutClusterThatIsItsOwnCopyIsNotFreed() throws Exception {
        Path img = create("d.qcow2", "4M");
        qemuIoOk(img, "qcow2", "write -P 0x11 0 64k");
        long host;
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(40);
            f.seek(f.readLong()); // L1 entry 0
            long l2 = f.readLong() & Qcow2Image.OFFSET_MASK;
            f.seek(l2);
            long e = f.readLong();
            host = e & Qcow2Image.OFFSET_MASK;
            f.seek(l2);
            f.writeLong(e & ~Qcow2Image.OFLAG_COPIED);
        }
        zeroRefcountRewriteAndCompare(img, host);
    }

    /**
     * The compressed counterpart of {@link #aCopiedOutClusterThatIsItsOwnCopyIsNotFreed}: a compressed cluster whose
     * host cluster's refcount is 0 (a damaged image) is where the allocator puts the copy of its own rewrite; the
     * deferred free of the compressed data's host range must not count that new cluster down to 0 while the entry
     * references it, or the next allocation writes another guest offset's data over it.
     */
    @Test
    void aCompressedClusterRewrittenOverItsOwnHostClusterIsNotFreed() throws Exception {
        Path img = create("dc.qcow2", "4M");
        qemuIoOk(img, "qcow2", "write -c -P 0x11 0 64k");
        long host;
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(40);
            f.seek(f.readLong()); // L1 entry 0
            long l2 = f.readLong() & Qcow2Image.OFFSET_MASK;
            f.seek(l2);
            long e = f.readLong();
            assertTrue((e & Qcow2Image.OFLAG_COMPRESSED) != 0, "a compressed cluster: " + Long.toHexString(e));
            host = e & ((1L << 54) - 1); // 64 KiB clusters: the host offset is bits 0..53
        }
        zeroRefcountRewriteAndCompare(img, host);
    }

    /**
     * The fault both own-copy tests make and what they check after it: the refcount of {@code host} (the host
     * cluster of guest cluster 0, filled with 0x11 and 64 KiB clusters) is set to 0, a damage qemu-img check reports;
     * then 4 KiB of guest cluster 0 are rewritten (its copy lands on {@code host}) and a new cluster is written, and
     * both must read back as written and the image must check clean (the new cluster did not go over the copy).
     */
    private static void zeroRefcountRewriteAndCompare(Path img, long host) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(48);
            f.seek(f.readLong()); // refcount table entry 0
            long block = f.readLong();
            f.seek(block + (host >>> 16) * 2);
            f.writeShort(0);
        }
        QemuTools.Result damaged = QemuTools.run("qemu-img", "check", img.toString());
        assertTrue(damaged.exit() != 0, damaged.output());
        try (DiskImage q = Images.open(img, null, false, false)) {
            write(q, 4096, fill(4096, 0x22));
            q.flush();
            write(q, MIB, fill(65536, 0x33)); // a new cluster
            q.flush();
            byte[] want = fill(65536, 0x11);
            System.arraycopy(fill(4096, 0x22), 0, want, 4096, 4096);
            assertArrayEquals(want, read(q, 0, 65536), "the first cluster was not overwritten");
            assertArrayEquals(fill(65536, 0x33), read(q, MIB, 65536));
        }
        check(img, false);
    }

    private static int indexOf(byte[] hay, byte[] needle) {
        outer:
        for (int i = 0; i + needle.length <= hay.length; i++) {
            for (int j = 0; j < needle.length; j++) {
                if (hay[i + j] != needle[j]) {
                    continue outer;
                }
            }
            return i;
        }
        return -1;
    }

    /**
     * The backing file is locked as QEMU locks it for a reader while the overlay is open: a writer (qemu-io here; a
     * QEMU, a writable export) would change what the overlay's unallocated clusters show its guest. Before, nothing
     * locked it: qemu-io wrote the base under an open overlay, and an overlay opened over a base a writer held.
     */
    @Test
    void theBackingFileIsLockedAgainstWritersWhileTheOverlayIsOpen() throws Exception {
        Path base = dir.resolve("base.raw");
        Files.write(base, fill(4 * MIB, 0x11));
        ok(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.raw",
                "-F",
                "raw",
                dir.resolve("o.qcow2").toString());
        Path overlay = dir.resolve("o.qcow2");
        try (DiskImage q = Images.open(overlay, null, false, false)) {
            QemuTools.Result w = QemuTools.qemuIo(base, "raw", "write -P 0x22 0 4k");
            assertTrue(w.exit() != 0 && w.output().contains("Failed to get \"write\" lock"), w.output());
            ok("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x11 0 4k", base.toString()); // readers share it
            assertArrayEquals(fill(4096, 0x11), read(q, 0, 4096));
        }
        qemuIoOk(base, "raw", "write -P 0x22 0 4k"); // closed: the lock went with it
        Process writer = QemuTools.writerHolding(base);
        try {
            IOException e = assertThrows(IOException.class, () -> Images.open(overlay, null, true, false));
            assertTrue(e.getMessage().contains("backing file") && e.getMessage().contains("in use"), e.getMessage());
        } finally {
            writer.destroyForcibly().waitFor();
        }
    }

    @Test
    void compressedClustersWrittenByQemuImgConvertRead() throws Exception {
        Path raw = dir.resolve("src.raw");
        byte[] data = new byte[4 * MIB];
        Random r = new Random(3);
        for (int i = 0; i < data.length; i += 4096) { // compressible but not uniform
            java.util.Arrays.fill(data, i, i + 4096, (byte) r.nextInt(4));
            data[i + r.nextInt(4096)] = (byte) r.nextInt();
        }
        Files.write(raw, data);
        Path img = dir.resolve("c.qcow2");
        ok("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw.toString(), img.toString());
        assertTrue(Files.size(img) < data.length / 4, "qemu-img did not compress");
        try (DiskImage q = Images.open(img, null, false, false)) {
            assertArrayEquals(data, read(q, 0, data.length));
            write(q, 100_000, fill(1000, 0x99)); // a compressed cluster rewritten as a normal one
            System.arraycopy(fill(1000, 0x99), 0, data, 100_000, 1000);
            assertArrayEquals(data, read(q, 0, data.length));
        }
        check(img, false);
        Files.write(raw, data);
        ok("qemu-img", "compare", "-f", "qcow2", "-F", "raw", img.toString(), raw.toString());
    }

    /**
     * The hand-over to the next backend (a live migration's destination) leaves nothing in memory: a rewritten
     * compressed cluster is freed by a refcount decrement the first metadata flush defers to the next, and a
     * decrement left here would be written later over the refcount block the next owner has written meanwhile.
     * qemu-img check, while this image is still open, sees the file complete (no leaked cluster).
     */
    @Test
    void aHandOverWritesBackTheRefcountDecrementsItsFlushDeferred() throws Exception {
        Path raw = dir.resolve("src.raw");
        byte[] data = new byte[MIB];
        Random r = new Random(5);
        for (int i = 0; i < data.length; i += 4096) {
            java.util.Arrays.fill(data, i, i + 4096, (byte) r.nextInt(4));
        }
        Files.write(raw, data);
        Path img = dir.resolve("h.qcow2");
        ok("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw.toString(), img.toString());
        try (DiskImage q = Images.open(img, null, false, false)) {
            write(q, 100_000, fill(1000, 0x77)); // a compressed cluster rewritten: its old cluster is freed
            q.handOver();
            check(img, false); // the next owner reads the file: no leaked cluster, nothing left to write
        }
    }

    /**
     * A resize that grows the L1 table past what the image read at its open (4 KiB clusters: 512 entries for 1 GiB,
     * 1024 for 2 GiB) does not stop the next take-over: reading the image again (its queues restart) reads the
     * larger table, where it refused before — the disk was fenced until it was added again.
     */
    @Test
    void aTakeOverAfterTheL1TableGrewReadsTheLargerTable() throws Exception {
        Path img = create("g.qcow2", "1G", "cluster_size=4096");
        try (DiskImage q = Images.open(img, null, false, false)) {
            q.resize(2L << 30);
            write(q, (2L << 30) - 8192, fill(4096, 0x5a));
            q.handOver();
            q.refresh();
            assertArrayEquals(fill(4096, 0x5a), read(q, (2L << 30) - 8192, 4096));
        }
        check(img, false);
    }

    @Test
    void zeroAndDiscardBecomeZeroClustersThatQemuImgMapShows() throws Exception {
        Path img = create("z.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 4M");
        try (DiskImage q = Images.open(img, null, false, false)) {
            q.writeZeroes(MIB, MIB, true);
            q.discard(3 * MIB, MIB + 4096); // the partial tail is ignored
            q.writeZeroes(100, 1000, false); // partial: written as zeros
            assertArrayEquals(new byte[MIB], read(q, MIB, MIB));
            assertArrayEquals(new byte[1000], read(q, 100, 1000));
            assertEquals(
                    DiskImage.Extent.toString(DiskImage.Extent.of(MIB, true, true)),
                    DiskImage.Extent.toString(q.extent(MIB, 16 * MIB)));
            assertFalse(DiskImage.Extent.hole(q.extent(0, MIB)));
            assertTrue(DiskImage.Extent.hole(q.extent(5 * MIB, MIB)));
        }
        check(img, false);
        String map = ok("qemu-img", "map", "--output=json", "-f", "qcow2", img.toString());
        assertTrue(
                map.contains(
                                "\"start\": 1048576, \"length\": 1048576, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false")
                        || map.matches(
                                "(?s).*\"start\": 1048576, \"length\": 1048576,.*\"zero\": true, \"data\": false.*"),
                map);
        qemuIoOk(
                img,
                "qcow2",
                "read -P 0 1M 1M",
                "read -P 0 3M 1M",
                "read -P 0x33 2M 1M",
                "read -P 0 100 1000",
                "read -P 0x33 1100 4096");
    }

    /**
     * A discarded cluster gives up its host cluster, as QEMU's discard does: its entry becomes a zero cluster
     * without host cluster and, once that is durable, the host cluster's refcount is counted down, so a later
     * allocation takes it again and the file does not grow. qemu-img check finds no leak, map shows the zeros and
     * compare finds the guest's data. Before, the discarded host cluster stayed allocated to its zero cluster.
     */
    @Test
    void aDiscardedClusterIsFreedAndALaterAllocationTakesItAgain() throws Exception {
        Path img = create("disc.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 4M");
        long fileSize = Files.size(img);
        try (DiskImage q = Images.open(img, null, false, false)) {
            q.discard(MIB, MIB);
            q.handOver(); // the zero entries durable, then the refcounts counted down and written
            write(q, 8 * MIB, fill(MIB, 0x44));
            assertArrayEquals(new byte[MIB], read(q, MIB, MIB));
        }
        assertTrue(Files.size(img) <= fileSize, "the new clusters took the discarded ones: " + Files.size(img));
        check(img, false);
        String map = ok("qemu-img", "map", "--output=json", "-f", "qcow2", img.toString());
        assertTrue(
                map.matches("(?s).*\"start\": 1048576, \"length\": 1048576,.*\"zero\": true, \"data\": false.*"), map);
        Path raw = dir.resolve("disc.raw");
        ok("qemu-img", "create", "-q", "-f", "raw", raw.toString(), "16M");
        qemuIoOk(raw, "raw", "write -P 0x33 0 4M", "write -z 1M 1M", "write -P 0x44 8M 1M");
        ok("qemu-img", "compare", "-f", "qcow2", "-F", "raw", img.toString(), raw.toString());
    }

    /**
     * A cluster a discard freed is not handed out again while a write that found it before the discard is still in
     * flight (queued on an io_uring, not completed): the next allocation goes elsewhere, and that write cannot land
     * on another guest offset's data. Once it completed, the next flush frees the cluster and an allocation takes
     * it. Without the wait, the new cluster at 9 MiB was the discarded one and the late write overwrote its data.
     */
    @Test
    void aDiscardedClusterIsNotReusedWhileAWriteThatFoundItIsInFlight() throws Exception {
        aDiscardedClusterIsNotReusedWhileARequestIsInFlight("discfly.qcow2", true);
    }

    /**
     * A cluster a discard freed is not handed out again while a read that found it before the discard is in flight
     * (queued on an io_uring, not yet done): the read must return the cluster's data or zeros, never another guest
     * offset's data the next allocation wrote there. Before, reads were not counted: the new cluster at 9 MiB was
     * the discarded one and the read of 2 MiB returned its 0x66 bytes.
     */
    @Test
    void aDiscardedClusterIsNotReusedWhileAReadThatFoundItIsInFlight() throws Exception {
        aDiscardedClusterIsNotReusedWhileARequestIsInFlight("discread.qcow2", false);
    }

    /**
     * Queues a write of 0x55 bytes ({@code write}) or a read of guest cluster 2 MiB on an io_uring, discards the
     * cluster, hands the image over and allocates guest cluster 9 MiB while the request is in flight: the discarded
     * cluster must not be the new one. Once the request completed (a read returned the old data or zeros) and a
     * flush ran, the next allocation takes it.
     */
    private void aDiscardedClusterIsNotReusedWhileARequestIsInFlight(String name, boolean write) throws Exception {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        Path img = create(name, "16M");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 4M");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4);
                Qcow2Image.Qcow2Io io = q.newContext(8, 0)) {
            long host = q.l2Entry(2 * MIB) & Qcow2Image.OFFSET_MASK;
            MemorySegment buf = arena.allocate(65536, 4096);
            buf.fill((byte) 0x55);
            io.add(buf);
            String what = write ? "write to" : "read of";
            assertTrue(
                    write ? io.submitWrite(ring, 2 * MIB, 1) : io.submitRead(ring, 2 * MIB, 1),
                    "queued: a " + what + " an allocated cluster");
            q.discard(2 * MIB, 65536);
            q.handOver();
            write(q, 9 * MIB, fill(65536, 0x66));
            assertTrue(
                    (q.l2Entry(9 * MIB) & Qcow2Image.OFFSET_MASK) != host,
                    "the discarded cluster was handed out while a " + what + " it was in flight");
            ring.submitAndWait(1);
            assertEquals(1, ring.reap((ud, r, f) -> assertEquals(65536, r)));
            io.completed(write, 2 * MIB, 65536);
            if (!write) {
                byte[] got = buf.toArray(ValueLayout.JAVA_BYTE);
                assertTrue(
                        java.util.Arrays.equals(got, new byte[65536])
                                || java.util.Arrays.equals(got, fill(65536, 0x33)),
                        "the read returned the discarded cluster's data or zeros, not another offset's");
            }
            q.handOver(); // nothing in flight now: the discarded cluster is freed
            write(q, 10 * MIB, fill(65536, 0x77));
            assertEquals(host, q.l2Entry(10 * MIB) & Qcow2Image.OFFSET_MASK, "and taken by the next allocation");
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0 2M 64k", "read -P 0x66 9M 64k", "read -P 0x77 10M 64k");
    }

    /**
     * A write given up on in the kernel (its engine could not wait for its ring and closed it and its context) may
     * still land at any time: the cluster a discard freed under it must not be handed out again while the image is
     * open. Before, closing the context counted its request as over: the next hand-over freed the cluster, the next
     * allocation (9 MiB) took it, and the late write put its 0x55 bytes into guest cluster 9 MiB. Here the write
     * waits in a second ring's submission queue, and enters the kernel after the allocation.
     */
    @Test
    void aClusterAWriteGivenUpOnInTheKernelFoundIsNeverReusedWhileTheImageIsOpen() throws Exception {
        Path img = writtenForUring("abandoned.qcow2");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4)) {
            long host = discardedUnderAWriteGivenUpOn(q, ring, arena);
            q.handOver();
            q.handOver();
            assertTheNextAllocationMissesTheLateWrite(
                    q,
                    ring,
                    host,
                    "the discarded cluster was handed out while a write given up on may still land on it");
        }
    }

    /**
     * A request given up on in the kernel leaks its own host cluster at most, not every cluster freed after it: its
     * context quarantines the cluster and then goes as any other. Before, the context stayed counted in flight for
     * ever and every later free waited for it: each round of a guest's write, discard and FLUSH took a new cluster
     * at the end of the file and left it leaked, for as long as the image stayed open.
     */
    @Test
    void aRequestGivenUpOnInTheKernelLeaksOnlyItsOwnClusters() throws Exception {
        Path img = writtenForUring("bounded.qcow2");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4)) {
            writeGivenUpOn(q, ring, arena, 2 * MIB, 0x55);
            q.discard(2 * MIB, 65536); // the cluster the write may still land on is freed: it stays allocated
            write(q, 9 * MIB, fill(65536, 0x66));
            long cluster = q.l2Entry(9 * MIB) & Qcow2Image.OFFSET_MASK;
            long size = Files.size(img);
            for (int i = 0; i < 32; i++) {
                q.discard(9 * MIB, 65536);
                q.flush(); // the guest's FLUSH: nothing else is in flight, so the discard's free is applied
                write(q, 9 * MIB, fill(65536, i));
                assertEquals(
                        cluster,
                        q.l2Entry(9 * MIB) & Qcow2Image.OFFSET_MASK,
                        "round " + i + " did not take the cluster the round before freed");
            }
            assertEquals(size, Files.size(img), "the rounds grew the file");
            assertEquals(1, q.quarantinedClusters());
            assertEquals(1, q.quarantineLeaks(), "the discarded cluster the write may land on stays allocated");
            ring.submitAndWait(1); // the write lands late, on its quarantined cluster
            assertEquals(1, ring.reap((ud, r, f) -> assertEquals(65536, r)));
            assertArrayEquals(fill(65536, 31), read(q, 9 * MIB, 65536), "the late write left 9 MiB alone");
        }
        String out = check(img, true);
        assertTrue(out.contains("1 leaked clusters were found"), "the quarantined cluster alone:\n" + out);
        QemuTools.run("qemu-img", "check", "-r", "leaks", "-f", "qcow2", img.toString()); // once the process exited
        check(img, false);
        qemuIoOk(
                img,
                "qcow2",
                "read -P 0x33 0 2M",
                "read -P 0 2M 64k",
                "read -P 0x33 2112k 1984k",
                "read -P 0x1f 9M 64k");
    }

    /**
     * The clusters of requests given up on in the kernel are never handed out again while the image is open, whether
     * the discard that frees one came before the request was given up on (its free waited for the request) or after;
     * a free of another cluster in between is applied as usual, and that cluster is the next allocation. Before, the
     * requests' contexts stayed counted in flight for ever: the other cluster's free waited for them too, and the
     * next allocation grew the file.
     */
    @Test
    void theClustersOfRequestsGivenUpOnAreNeverReusedWhileOtherFreesAreApplied() throws Exception {
        Path img = writtenForUring("quarantine.qcow2");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4)) {
            long before = q.l2Entry(MIB) & Qcow2Image.OFFSET_MASK;
            long after = q.l2Entry(2 * MIB) & Qcow2Image.OFFSET_MASK;
            long other = q.l2Entry(3 * MIB) & Qcow2Image.OFFSET_MASK;
            assertTrue(before < other && after < other, "qemu-io allocated the clusters in guest order");
            Qcow2Image.Qcow2Io first = queuedWrite(q, ring, arena, MIB, 0x55);
            Qcow2Image.Qcow2Io second = queuedWrite(q, ring, arena, 2 * MIB, 0x56);
            q.discard(MIB, 65536);
            q.flush(); // its free waits for the requests in flight: the two writes
            first.abandon(); // the engine gives up on both
            second.abandon();
            first.close();
            second.close();
            q.discard(2 * MIB, 65536);
            q.discard(3 * MIB, 65536);
            q.flush(); // every free is due now: the two quarantined clusters' are held back
            for (int i = 0; i < 4; i++) {
                write(q, (9 + i) * MIB, fill(65536, 0x70 + i));
                long h = q.l2Entry((9 + i) * MIB) & Qcow2Image.OFFSET_MASK;
                assertTrue(h != before && h != after, "a quarantined cluster was handed out at round " + i);
                if (i == 0) {
                    assertEquals(other, h, "the free of the cluster no request holds was not applied");
                }
            }
            q.handOver();
            write(q, 13 * MIB, fill(65536, 0x74));
            long h = q.l2Entry(13 * MIB) & Qcow2Image.OFFSET_MASK;
            assertTrue(h != before && h != after, "a quarantined cluster was handed out after a hand-over");
            assertEquals(2, q.quarantinedClusters());
            assertEquals(2, q.quarantineLeaks());
            ring.submitAndWait(2); // the writes land late, on their quarantined clusters
            assertEquals(2, ring.reap((ud, r, f) -> assertEquals(65536, r)));
            for (int i = 0; i < 5; i++) {
                assertArrayEquals(fill(65536, 0x70 + i), read(q, (9 + i) * MIB, 65536), "the late writes hit " + i);
            }
        }
        String out = check(img, true);
        assertTrue(out.contains("2 leaked clusters were found"), "the quarantined clusters alone:\n" + out);
        qemuIoOk(img, "qcow2", "read -P 0 1M 64k", "read -P 0 2M 64k", "read -P 0 3M 64k", "read -P 0x70 9M 64k");
    }

    /**
     * A switch to read-only frees at once the clusters whose frees wait for requests in flight, to leave other
     * programs a file without leaks: but not a cluster a request given up on in the kernel may still write, which
     * another program could take (or this one, after a close). Before, the switch freed it. Switched back to writable
     * while a read the free waited for is still in flight, the free is taken back without counting the quarantined
     * cluster up: it was never counted down, and with 1-bit refcounts a count of 2 would fail the switch.
     */
    @Test
    void aSwitchToReadOnlyLeavesAQuarantinedClusterAllocated() throws Exception {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        Path img = create("roquarantine.qcow2", "16M", "refcount_bits=1");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 4M");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring late = IoUring.create(4);
                IoUring ring = IoUring.create(4);
                Qcow2Image.Qcow2Io reader = q.newContext(8, 0)) {
            long host = q.l2Entry(2 * MIB) & Qcow2Image.OFFSET_MASK;
            Qcow2Image.Qcow2Io w = queuedWrite(q, late, arena, 2 * MIB, 0x55);
            reader.add(arena.allocate(65536, 4096));
            assertTrue(reader.submitRead(ring, 3 * MIB, 1), "queued: a read, in flight, not given up on");
            w.abandon();
            w.close();
            q.discard(2 * MIB, 65536);
            q.setReadOnly(true);
            QemuTools.Result r = QemuTools.run("qemu-img", "check", "-U", "-f", "qcow2", img.toString());
            assertEquals(3, r.exit(), "qemu-img check of the image switched to read-only: " + r.output());
            assertTrue(r.output().contains("1 leaked clusters were found"), r.output());
            q.setReadOnly(false); // the read is still in flight: the free waits for it again
            ring.submitAndWait(1);
            assertEquals(1, ring.reap((ud, res, f) -> assertEquals(65536, res)));
            reader.completed(false, 3 * MIB, 65536);
            q.handOver();
            assertTheNextAllocationMissesTheLateWrite(
                    q, late, host, "the quarantined cluster was handed out after the switches");
        }
        String out = check(img, true);
        assertTrue(out.contains("1 leaked clusters were found"), "the quarantined cluster alone:\n" + out);
        qemuIoOk(img, "qcow2", "read -P 0 2M 64k", "read -P 0x33 3M 64k", "read -P 0x66 9M 64k");
    }

    /**
     * A switch to read-only frees at once a cluster whose free waits for a write in flight; when that write is given
     * up on in the kernel after the switch, the cluster is counted up again and written: the write may still land on
     * it after the close. Before, the quarantine found it free and held nothing: the image closed with the cluster
     * free on disk, the next program to open it took it for a new write, and the late write landed in that one.
     */
    @Test
    void aWriteGivenUpOnAfterASwitchToReadOnlyFreedItsClusterLeavesItAllocated() throws Exception {
        Path img = writtenForUring("roearly.qcow2");
        try (Arena arena = Arena.ofConfined();
                IoUring late = IoUring.create(4)) {
            long host;
            try (Qcow2Image q = Qcow2Image.open(img, false)) {
                host = q.l2Entry(2 * MIB) & Qcow2Image.OFFSET_MASK;
                Qcow2Image.Qcow2Io w = queuedWrite(q, late, arena, 2 * MIB, 0x55);
                q.discard(2 * MIB, 65536); // its free waits for the write
                q.setReadOnly(true); // freed early: nothing allocates while read-only
                w.abandon(); // then the engine gives the write up
                w.close();
                QemuTools.Result r = QemuTools.run("qemu-img", "check", "-U", "-f", "qcow2", img.toString());
                assertEquals(3, r.exit(), "the cluster the write may land on is not allocated on disk: " + r.output());
                assertTrue(r.output().contains("1 leaked clusters were found"), r.output());
                assertEquals(1, q.quarantineLeaks());
            }
            String out = check(img, true);
            assertTrue(out.contains("1 leaked clusters were found"), "the quarantined cluster alone:\n" + out);
            try (Qcow2Image next = Qcow2Image.open(img, false)) { // the next program to open the image
                write(next, 9 * MIB, fill(65536, 0x66));
                assertTrue(
                        (next.l2Entry(9 * MIB) & Qcow2Image.OFFSET_MASK) != host,
                        "the cluster a write given up on may still land on was handed out after the close");
                late.submitAndWait(1); // the write lands late
                assertEquals(1, late.reap((ud, res, f) -> assertEquals(65536, res)));
                assertArrayEquals(fill(65536, 0x66), read(next, 9 * MIB, 65536), "the late write left 9 MiB alone");
            }
        }
        qemuIoOk(img, "qcow2", "read -P 0 2M 64k", "read -P 0x33 3M 64k", "read -P 0x66 9M 64k");
    }

    /**
     * As above, with a read of the same cluster given up on first (another queue's, or the same stop's earlier slot):
     * the read quarantines the cluster without counting it up (a late read harms nothing), and the write given up on
     * after it must still count up the cluster the switch to read-only freed. Before, the write skipped a cluster
     * already quarantined, and the image closed with it free on disk under the write.
     */
    @Test
    void aWriteGivenUpOnAfterAReadOfItsClusterStillLeavesItAllocated() throws Exception {
        Path img = writtenForUring("roearly2.qcow2");
        try (Arena arena = Arena.ofConfined();
                IoUring late = IoUring.create(4)) {
            try (Qcow2Image q = Qcow2Image.open(img, false)) {
                Qcow2Image.Qcow2Io w = queuedWrite(q, late, arena, 2 * MIB, 0x55);
                Qcow2Image.Qcow2Io r = queuedRead(q, late, arena, 2 * MIB);
                q.discard(2 * MIB, 65536); // its free waits for both
                q.setReadOnly(true); // freed early
                r.abandon(); // the read is given up on first
                r.close();
                w.abandon();
                w.close();
                QemuTools.Result c = QemuTools.run("qemu-img", "check", "-U", "-f", "qcow2", img.toString());
                assertEquals(3, c.exit(), "the cluster the write may land on is not allocated on disk: " + c.output());
                assertTrue(c.output().contains("1 leaked clusters were found"), c.output());
            }
            String out = check(img, true);
            assertTrue(out.contains("1 leaked clusters were found"), "the quarantined cluster alone:\n" + out);
            late.submitAndWait(2); // the image's descriptor is closed by now: they end there (EBADF)
            assertEquals(2, late.reap((ud, res, f) -> {}));
        }
    }

    /**
     * Giving up on a request does not wait without end for the metadata lock (held by another thread in a metadata
     * write-back on a file system that does not answer): the stop that gives up may run on a loop other devices
     * share. After a bounded wait the context stays in flight for as long as the image is open, as before the
     * quarantine: no cluster freed since is handed out again. Before, the abandon waited for the lock for ever.
     */
    @Test
    void givingUpOnARequestDoesNotWaitForeverForTheMetadataLock() throws Exception {
        Path img = writtenForUring("busylock.qcow2");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4)) {
            long host = q.l2Entry(2 * MIB) & Qcow2Image.OFFSET_MASK;
            Qcow2Image.Qcow2Io io = queuedWrite(q, ring, arena, 2 * MIB, 0x55);
            java.util.concurrent.CountDownLatch held = new java.util.concurrent.CountDownLatch(1);
            java.util.concurrent.CountDownLatch release = new java.util.concurrent.CountDownLatch(1);
            Thread holder = Thread.ofPlatform().daemon().start(() -> {
                q.metadataLock().lock(); // a write-back that does not end
                try {
                    held.countDown();
                    release.await();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                } finally {
                    q.metadataLock().unlock();
                }
            });
            held.await();
            Qcow2Image.Qcow2Io second = queuedRead(q, ring, arena, 3 * MIB);
            Thread stop = Thread.ofPlatform().daemon().start(() -> {
                io.abandon();
                second.abandon(); // the same stop, its next request: the lock is still held
            });
            try {
                Await.until(
                        java.time.Duration.ofSeconds(60),
                        "the abandons end while the metadata lock is held",
                        () -> !stop.isAlive());
            } finally {
                release.countDown();
                holder.join();
                stop.join();
            }
            assertEquals(1, q.quarantineLockWaits(), "a stop waits for a stuck lock once, not once per request");
            second.close();
            io.close();
            assertEquals(0, q.quarantinedClusters(), "nothing quarantined: the context stays in flight instead");
            q.discard(2 * MIB, 65536);
            q.handOver();
            q.handOver();
            write(q, 9 * MIB, fill(65536, 0x66));
            assertTrue(
                    (q.l2Entry(9 * MIB) & Qcow2Image.OFFSET_MASK) != host,
                    "the discarded cluster was handed out while a write given up on may still land on it");
            ring.submitAndWait(2); // the write lands late, and the read
            assertEquals(2, ring.reap((ud, r, f) -> assertEquals(65536, r)));
            assertArrayEquals(fill(65536, 0x66), read(q, 9 * MIB, 65536), "the late write left 9 MiB alone");
        }
    }

    /**
     * The quarantine keeps runs, not clusters: with 512-byte clusters a request of 1022 segments of 1 MiB spans two
     * million clusters, and a queue of them given up on quarantines one run each. Before, it kept one entry per
     * cluster and copied them all at each request (64 such requests: gigabytes of copies), and a run of more than
     * 2^31 clusters overflowed the array. Runs that overlap or touch merge; a cluster next to a run is handed out.
     */
    @Test
    void theQuarantineKeepsRunsNotClusters() throws Exception {
        Path img = create("qruns.qcow2", "16M", "cluster_size=512");
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            long request = 1022L * MIB; // two million clusters
            long base = 1L << 40; // far past the file: nothing allocates there
            long huge = 1L << 41; // more clusters than an array has entries: one run all the same
            q.quarantine(base + (1L << 42), huge, true);
            assertEquals(huge / 512, q.quarantinedClusters());
            for (int i = 0; i < 64; i++) {
                q.quarantine(base + 2 * i * request, request, true);
            }
            assertEquals((huge + 64 * request) / 512, q.quarantinedClusters());
            q.quarantine(base + request - 512, 1024, true); // the last cluster of the first run and the next one
            q.quarantine(base + request + 512, request - 512, true); // the rest of the gap: the first two runs merge
            assertEquals((huge + 65 * request) / 512, q.quarantinedClusters());
            write(q, 0, fill(512, 0x41));
            long host = q.l2Entry(0) & Qcow2Image.OFFSET_MASK;
            q.quarantine(host + 512, 512, false); // the next cluster, which the next write would have taken
            write(q, 512, fill(512, 0x42));
            assertEquals(host + 1024, q.l2Entry(512) & Qcow2Image.OFFSET_MASK, "the quarantined cluster was skipped");
            write(q, 1024, fill(512, 0x43));
            assertEquals(host + 1536, q.l2Entry(1024) & Qcow2Image.OFFSET_MASK, "the one after the run was not");
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x41 0 512", "read -P 0x42 512 512", "read -P 0x43 1k 512");
    }

    /**
     * A quarantined cluster another program freed while this one had handed the image over ('qemu-img check -r leaks'
     * too early, a repair of the refcounts) is still not handed out once the image is read again: the quarantine is
     * this process's, not the file's. Without it, the refcount read again said free and the next allocation took it.
     */
    @Test
    void aQuarantinedClusterAnotherProgramFreedIsNotTakenAfterARefresh() throws Exception {
        Path img = writtenForUring("refreshquarantine.qcow2");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4)) {
            long host = discardedUnderAWriteGivenUpOn(q, ring, arena);
            q.handOver();
            check(img, true); // the quarantined cluster is leaked on disk
            QemuTools.run("qemu-img", "check", "-r", "leaks", "-f", "qcow2", img.toString());
            check(img, false);
            q.refresh(); // this process takes the image again
            assertTheNextAllocationMissesTheLateWrite(
                    q, ring, host, "the quarantined cluster was handed out after the image was read again");
        }
        check(img, false); // the cluster was free on disk, and nothing referenced it since
        qemuIoOk(img, "qcow2", "read -P 0 2M 64k", "read -P 0x66 9M 64k");
    }

    /**
     * A refcount block is never placed on a quarantined cluster, and a refcount rebuild (a dirty bit another program
     * left while this one had handed the image over) keeps a quarantined cluster that nothing references allocated,
     * as the quarantine left it. Here the quarantined cluster is the first of its refcount range (where a new block
     * of that range would go) and the only thing in the range. Before, the rebuild counted references only: the
     * cluster was free on disk (the next program to open the image would hand it out under the late write), its range
     * had no block, and the block the allocator then needed went on the range's first cluster, the quarantined one,
     * where the late write landed. 512-byte clusters with 64-bit refcounts: 64 clusters per refcount block.
     */
    @Test
    void aRefcountBlockIsNeverPlacedOnAQuarantinedCluster() throws Exception {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        Path img = create("qrefblock.qcow2", "1M", "cluster_size=512", "refcount_bits=64");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 29k"); // one L2 table, its guest range not full
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4)) {
            write(q, 29 * 1024, fill(512, 0x41));
            write(q, 29 * 1024 + 512, fill(512, 0x42)); // its refcount block goes on cluster 64, the range's first
            long keep = q.l2Entry(29 * 1024 + 512) & Qcow2Image.OFFSET_MASK;
            assertEquals(1, keep / 512 / 64, "the second write is in refcount range 1");
            rebuildOnRefresh(q, img, 128); // range 1's block moves past the file's end; cluster 64 is free
            long c = -1;
            long at = 30 * 1024 - 512;
            while (c != 64 * 512 && at < 34 * 1024) {
                at += 512;
                write(q, at, fill(512, 0x50));
                c = q.l2Entry(at) & Qcow2Image.OFFSET_MASK;
            }
            assertEquals(64 * 512, c, "a guest cluster was allocated on the first cluster of refcount range 1");
            MemorySegment buf = arena.allocate(512, 4096);
            buf.fill((byte) 0x55);
            Qcow2Image.Qcow2Io w = q.newContext(8, 0);
            w.add(buf);
            assertTrue(w.submitWrite(ring, at, 1), "queued: a write to an allocated cluster");
            w.abandon(); // the engine gives up on it: cluster 64 is quarantined
            w.close();
            q.discard(at, 512); // held back: cluster 64 stays allocated
            q.discard(29 * 1024 + 512, 512); // range 1 holds nothing referenced now
            q.flush();
            rebuildOnRefresh(q, img, 0); // cluster 64 is referenced by nothing, and still counted
            for (int i = 0; i < 4; i++) {
                write(q, 33 * 1024 + i * 512, fill(512, 0x60 + i)); // cluster 65 first: in range 1
            }
            q.flush(); // nothing left to write back at the close, after the late write
            ring.submitAndWait(1); // the write lands late, on cluster 64
            assertEquals(1, ring.reap((ud, r, f) -> assertEquals(512, r)));
            for (int i = 0; i < 4; i++) {
                assertArrayEquals(fill(512, 0x60 + i), read(q, 33 * 1024 + i * 512, 512), "the late write hit " + i);
            }
        }
        String out = check(img, true);
        assertTrue(out.contains("1 leaked clusters were found"), "cluster 64 stays allocated on disk:\n" + out);
        qemuIoOk(img, "qcow2", "read -P 0x41 29k 512", "read -P 0x60 33k 512", "read -P 0x63 34.5k 512");
    }

    /**
     * A refcount rebuild puts its new structures past every quarantined cluster, not only past the end of the file: a
     * write given up on in the kernel may be on a cluster allocated past the file's end, and landing late it would
     * overwrite a refcount block placed there; they stay allocated on disk, for the next program not to hand them out
     * under that write. Before, the new blocks and table went at the file's end.
     */
    @Test
    void aRefcountRebuildPlacesNothingOnAQuarantinedClusterPastTheFilesEnd() throws Exception {
        Path img = create("qpastend.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 1M");
        long end = Files.size(img);
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            q.quarantine(end, 4 * 65536, true); // a write given up on, on clusters allocated past the end
            rebuildOnRefresh(q, img, 0);
            q.flush();
            // the late write lands
            try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
                f.seek(end);
                f.write(fill(4 * 65536, 0x55));
            }
            write(q, 2 * MIB, fill(65536, 0x44));
            q.flush();
            assertArrayEquals(fill(65536, 0x33), read(q, 0, 65536));
        }
        String out = check(img, true);
        assertTrue(out.contains("4 leaked clusters were found"), "the quarantined clusters stay allocated:\n" + out);
        qemuIoOk(img, "qcow2", "read -P 0x33 0 1M", "read -P 0x44 2M 64k");
    }

    /**
     * A quarantined cluster a count-down was held back on stays allocated through a refcount rebuild, and the image
     * closes with it leaked on disk: the kernel may still carry out the request given up on after the close. Before,
     * the rebuild counted it 0 and the image closed with it free for the next program to hand out.
     */
    @Test
    void aHeldClusterStaysAllocatedThroughARefcountRebuild() throws Exception {
        Path img = writtenForUring("heldrebuild.qcow2");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4)) {
            long host = discardedUnderAWriteGivenUpOn(q, ring, arena);
            q.flush();
            q.flush(); // the count-down is due: held back
            assertEquals(1, q.quarantineLeaks());
            rebuildOnRefresh(q, img, 0);
            assertTheNextAllocationMissesTheLateWrite(
                    q, ring, host, "the quarantined cluster was handed out after a refcount rebuild");
        }
        String out = check(img, true);
        assertTrue(out.contains("1 leaked clusters were found"), "the held cluster alone:\n" + out);
    }

    /**
     * Hands {@code q} over, sets the dirty bit as a program with lazy refcounts would leave it and, when
     * {@code clusters} is above 0, makes the file that long, then reads the image again: the refresh rebuilds the
     * refcounts, with the new structures past the file's end.
     */
    private static void rebuildOnRefresh(Qcow2Image q, Path img, long clusters) throws IOException {
        q.handOver();
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(72);
            long inc = f.readLong();
            f.seek(72);
            f.writeLong(inc | 1);
            if (clusters * 512 > f.length()) {
                f.setLength(clusters * 512);
            }
        }
        q.refresh();
    }

    /**
     * A write of 64 KiB of {@code value} bytes at {@code offset} (an allocated cluster), queued on {@code ring} but not
     * entered: in flight for the image, in the kernel once the caller enters it, which may come after the caller gave
     * it up (abandon) and closed its context, as when an engine closed a ring it could not wait for. The buffer is
     * {@code arena}'s.
     */
    private static Qcow2Image.Qcow2Io queuedWrite(Qcow2Image q, IoUring ring, Arena arena, long offset, int value)
            throws IOException {
        MemorySegment buf = arena.allocate(65536, 4096);
        buf.fill((byte) value);
        Qcow2Image.Qcow2Io io = q.newContext(8, 0);
        io.add(buf);
        assertTrue(io.submitWrite(ring, offset, 1), "queued: a write to an allocated cluster");
        return io;
    }

    private static Qcow2Image.Qcow2Io queuedRead(Qcow2Image q, IoUring ring, Arena arena, long offset)
            throws IOException {
        Qcow2Image.Qcow2Io io = q.newContext(8, 0);
        io.add(arena.allocate(65536, 4096));
        assertTrue(io.submitRead(ring, offset, 2), "queued: a read of an allocated cluster");
        return io;
    }

    /**
     * {@link #queuedWrite}, then given up on and its context closed: what an engine does before it closes the ring it
     * could not wait for. The write enters the kernel once the caller enters {@code ring}.
     */
    private static void writeGivenUpOn(Qcow2Image q, IoUring ring, Arena arena, long offset, int value)
            throws IOException {
        Qcow2Image.Qcow2Io io = queuedWrite(q, ring, arena, offset, value);
        io.abandon();
        io.close();
    }

    /**
     * A write of guest cluster 2 MiB given up on ({@link #writeGivenUpOn}, queued on {@code ring}), then the cluster
     * discarded: its free is held back. Returns the host offset the cluster had, where the write may still land.
     */
    private static long discardedUnderAWriteGivenUpOn(Qcow2Image q, IoUring ring, Arena arena) throws IOException {
        long host = q.l2Entry(2 * MIB) & Qcow2Image.OFFSET_MASK;
        writeGivenUpOn(q, ring, arena, 2 * MIB, 0x55);
        q.discard(2 * MIB, 65536);
        return host;
    }

    /**
     * Allocates guest cluster 9 MiB (0x66 bytes), which must not take {@code host}, the cluster a write given up on
     * may still land on ({@code handedOut} says so otherwise); then that write, queued on {@code late}, lands, and
     * must leave 9 MiB alone.
     */
    private static void assertTheNextAllocationMissesTheLateWrite(
            Qcow2Image q, IoUring late, long host, String handedOut) throws IOException {
        write(q, 9 * MIB, fill(65536, 0x66));
        assertTrue((q.l2Entry(9 * MIB) & Qcow2Image.OFFSET_MASK) != host, handedOut);
        late.submitAndWait(1); // the write lands late
        assertEquals(1, late.reap((ud, r, f) -> assertEquals(65536, r)));
        assertArrayEquals(fill(65536, 0x66), read(q, 9 * MIB, 65536), "the late write left 9 MiB alone");
    }

    /**
     * The host range of a compressed cluster a write copied out is not handed out again while a read that found
     * the compressed entry is in flight: the read's lookup and its read of the compressed bytes are run apart, as on
     * a queue thread preempted between the two, and the rewrite, a hand-over and a new allocation come in between.
     * Before, the compressed range was freed by the flush alone: the new cluster at 9 MiB was its host cluster, and
     * the read inflated the 0x66 bytes written there (not deflate data: an error) instead of the 0x33 ones.
     */
    @Test
    void aCompressedClustersHostRangeIsNotReusedWhileAReadThatFoundItIsInFlight() throws Exception {
        Path img = create("cmpread.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -c -P 0x33 2M 64k");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                Qcow2Image.Qcow2Io io = q.newContext(8, 0)) {
            io.start(); // a read of guest cluster 2 MiB starts,
            long e = q.l2Entry(2 * MIB); // looks its entry up, and its thread is preempted here
            assertTrue((e & Qcow2Image.OFLAG_COMPRESSED) != 0, "qemu-io wrote a compressed cluster");
            write(q, 2 * MIB, fill(65536, 0x44)); // copied out: the compressed range is dereferenced
            q.handOver();
            write(q, 9 * MIB, fill(65536, 0x66)); // the first free cluster, unless the read still holds it
            MemorySegment dst = arena.allocate(65536);
            q.readPiece(e, 2 * MIB, dst); // the read resumes
            io.end();
            assertArrayEquals(fill(65536, 0x33), dst.toArray(ValueLayout.JAVA_BYTE), "the read of 2 MiB");
            q.handOver(); // the read is over: the compressed range is freed and its cluster taken again
            write(q, 10 * MIB, fill(65536, 0x77));
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x44 2M 64k", "read -P 0x66 9M 64k", "read -P 0x77 10M 64k");
    }

    /** A 16 MiB image {@code name} whose first 4 MiB qemu-io wrote (0x33); io_uring is required. */
    private Path writtenForUring(String name) throws Exception {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        Path img = create(name, "16M");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 4M");
        return img;
    }

    /** {@link #discardUnderARead} into a new buffer of {@code arena}: the host offset the cluster had. */
    private static long discardUnderARead(Qcow2Image q, Qcow2Image.Qcow2Io io, IoUring ring, Arena arena)
            throws IOException {
        long host = q.l2Entry(2 * MIB) & Qcow2Image.OFFSET_MASK;
        discardUnderARead(q, io, ring, arena.allocate(65536, 4096));
        return host;
    }

    /**
     * A switch to read-only with a read of a discarded cluster in flight leaves no leak: the discard's free, which
     * waits for the read, is applied at the switch (nothing allocates while read-only). Switched back to writable
     * while the read is still in flight, the cluster is taken again so the allocator does not hand it out under the
     * read; once the read completed and a flush ran, it is free. Before, the free kept waiting past the switch and
     * 'qemu-img check' of the switched image found the discarded cluster leaked.
     */
    @Test
    void aSwitchToReadOnlyWithARequestInFlightLeavesNoLeak() throws Exception {
        Path img = writtenForUring("roflight.qcow2");
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4);
                Qcow2Image.Qcow2Io io = q.newContext(8, 0)) {
            long host = discardUnderARead(q, io, ring, arena);
            q.setReadOnly(true);
            QemuTools.Result r = QemuTools.run("qemu-img", "check", "-U", "-f", "qcow2", img.toString());
            assertEquals(0, r.exit(), "qemu-img check of the image switched to read-only: " + r.output());
            q.setReadOnly(false); // the read is still in flight
            assertFreedOnlyOnceTheReadCompleted(q, io, ring, host);
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0 2M 64k", "read -P 0x66 9M 64k", "read -P 0x77 10M 64k");
    }

    /**
     * A resize that passed its read-only check just before a switch to read-only, and waited for the metadata lock
     * the switch held, is refused once it has the lock. The switch freed a discarded cluster a read still in flight
     * reads (nothing allocates while read-only): before, the resize went on, placed its new L1 table on that very
     * cluster (the read would return the table) and wrote the header of an image switched to read-only.
     */
    @Test
    void aResizeThatRacedASwitchToReadOnlyIsRefused() throws Exception {
        Path img = writtenForUring("roresize.qcow2");
        ExecutorService pool = Executors.newSingleThreadExecutor();
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4);
                Qcow2Image.Qcow2Io io = q.newContext(8, 0)) {
            long host = discardUnderARead(q, io, ring, arena);
            java.util.concurrent.locks.ReentrantLock lock = q.metadataLock();
            Future<Void> resize;
            lock.lock();
            try {
                resize = pool.submit(() -> {
                    q.resize(1L << 40); // a bigger L1 table: one new cluster
                    return null;
                });
                Await.until(
                        java.time.Duration.ofSeconds(30),
                        "the resize to wait for the metadata lock",
                        () -> lock.hasQueuedThreads());
                q.setReadOnly(true); // between the resize's check and its lock
            } finally {
                lock.unlock();
            }
            java.util.concurrent.ExecutionException e = assertThrows(
                    java.util.concurrent.ExecutionException.class,
                    () -> resize.get(30, java.util.concurrent.TimeUnit.SECONDS));
            assertTrue(
                    e.getCause() instanceof LinuxException le && le.errno() == Errno.EROFS,
                    "the resize of an image switched to read-only: " + e.getCause());
            assertEquals(16L * MIB, q.size());
            try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
                f.seek(40); // l1_table_offset
                assertTrue(f.readLong() != host, "the new L1 table went on the cluster the read in flight reads");
            }
            ring.submitAndWait(1);
            assertEquals(1, ring.reap((ud, res, f) -> assertEquals(65536, res)));
            io.completed(false, 2 * MIB, 65536);
        } finally {
            pool.shutdownNow();
        }
        check(img, false);
        assertTrue(ok("qemu-img", "info", "--output=json", img.toString()).contains("\"virtual-size\": 16777216"));
        qemuIoOk(img, "qcow2", "read -P 0 2M 64k", "read -P 0x33 0 2M");
    }

    /**
     * A discard of a preallocated zero cluster (zero flag and a host cluster, as qemu-io's write -z leaves it) gives
     * the host cluster up, as QEMU's discard does: the entry keeps no host offset and the next allocation takes the
     * cluster. Before, the discard saw a zero cluster and changed nothing: the host cluster stayed allocated. Its
     * space is punched out at once, as a normal cluster's is (qemu-io's write -z left the old bytes there): before,
     * the file kept those 64 KiB of blocks until the cluster was taken again.
     */
    @Test
    void aDiscardOfAPreallocatedZeroClusterFreesItsHostCluster() throws Exception {
        Path img = create("prezero.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 4M", "write -z 2M 64k");
        assertTheDropGivesTheHostClusterUp(img, true, q -> q.discard(2 * MIB, 65536));
    }

    /**
     * Write-zeroes with unmap gives a cluster's host cluster up as a discard does, and as QEMU's write-zeroes with
     * unmap does (qemu-io's write -z -u turns a preallocated zero cluster, and a normal one, into a zero cluster
     * without host cluster and punches it): a preallocated zero cluster (qemu-io's write -z over data leaves the old
     * bytes in its host cluster) and a normal one. Before, the preallocated zero cluster was taken as already zero
     * and kept its host cluster with the old bytes in the file, and the normal one was punched but kept as a
     * preallocated zero cluster.
     */
    @ParameterizedTest
    @ValueSource(booleans = {true, false})
    void aWriteZeroesWithUnmapFreesTheHostClusterOfAPreallocatedZeroOrANormalCluster(boolean preallocated)
            throws Exception {
        Path img = create("wzunmap.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 4M");
        if (preallocated) {
            qemuIoOk(img, "qcow2", "write -z 2M 64k");
        }
        assertTheDropGivesTheHostClusterUp(img, preallocated, q -> q.writeZeroes(2 * MIB, 65536, true));
    }

    /** A request on an open image, for the tests that run the same steps around different requests. */
    interface Request {
        void on(Qcow2Image q) throws IOException;
    }

    /**
     * {@code drop} (a discard, or a write-zeroes with unmap) of guest cluster 2 MiB of {@code img}, allocated (a
     * preallocated zero cluster, or a normal one) over 0x33 in 0-4 MiB, gives its host cluster up: the entry is a zero
     * cluster without host cluster, the host cluster is punched out (64 KiB of blocks given back) and the next
     * allocation takes it; the image is clean and reads as zeros there.
     */
    private static void assertTheDropGivesTheHostClusterUp(Path img, boolean preallocated, Request drop)
            throws Exception {
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Fd fd = FileIo.open(img, FileIo.O_RDONLY)) {
            long e = q.l2Entry(2 * MIB);
            long host = e & Qcow2Image.OFFSET_MASK;
            assertTrue(
                    host != 0 && ((e & Qcow2Image.OFLAG_ZERO) != 0) == preallocated,
                    "qemu-io left a " + (preallocated ? "preallocated zero" : "normal") + " cluster: "
                            + Long.toHexString(e));
            assertEquals(host, FileIo.seek(fd, host, FileIo.SEEK_DATA), "allocated");
            long blocks = FileIo.stat(fd).blocks();
            drop.on(q);
            assertEquals(Qcow2Image.OFLAG_ZERO, q.l2Entry(2 * MIB), "a zero cluster without host cluster");
            long data = FileIo.seek(fd, host, FileIo.SEEK_DATA);
            assertTrue(data < 0 || data >= host + 65536, "the host cluster was punched out: data at " + data);
            long after = FileIo.stat(fd).blocks();
            assertTrue(after <= blocks - 65536 / 512, "64 KiB of blocks given back: " + blocks + " -> " + after);
            q.handOver();
            write(q, 9 * MIB, fill(65536, 0x66));
            assertEquals(host, q.l2Entry(9 * MIB) & Qcow2Image.OFFSET_MASK, "the freed cluster is taken again");
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0 2M 64k", "read -P 0x33 0 2M", "read -P 0x66 9M 64k");
    }

    /**
     * Discarded clusters are freed on a busy disk too, where some write is in flight at every flush: two request
     * contexts take turns keeping an io_uring write to guest cluster 0 in flight, each completed after the next flush,
     * while guest cluster 2 MiB is discarded, the discard flushed and the cluster written again, 24 times. A discard
     * waits only for the writes in flight when its flush ran, so each freed cluster is taken by the next rewrite and
     * the file does not grow. Before, it waited for a flush with no write in flight anywhere, which never came: every
     * rewrite took a new cluster and the file grew by one per round (and would until the disk filled).
     */
    @Test
    void discardedClustersAreFreedWhileOtherWritesAreAlwaysInFlight() throws Exception {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        Path img = create("discbusy.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -P 0x33 0 4M");
        long fileSize = Files.size(img);
        try (Qcow2Image q = Qcow2Image.open(img, false);
                Arena arena = Arena.ofConfined();
                IoUring ring = IoUring.create(4);
                Qcow2Image.Qcow2Io a = q.newContext(8, 0);
                Qcow2Image.Qcow2Io b = q.newContext(8, 0)) {
            MemorySegment buf = arena.allocate(65536, 4096);
            buf.fill((byte) 0x55);
            a.add(buf);
            b.add(buf);
            Qcow2Image.Qcow2Io[] ios = {a, b};
            Qcow2Image.Qcow2Io inFlight = null;
            for (int round = 0; round < 24; round++) {
                Qcow2Image.Qcow2Io next = ios[round & 1];
                assertTrue(next.submitWrite(ring, 0, round & 1), "queued: a write to an allocated cluster");
                ring.submitAndWait(1); // its completion is handed to the context in the next round
                assertEquals(1, ring.reap((ud, r, f) -> assertEquals(65536, r)));
                if (inFlight != null) { // the previous round's write completes once the next one is in flight
                    inFlight.completed(true, 0, 65536);
                }
                inFlight = next;
                q.discard(2 * MIB, 65536);
                q.flush();
                write(q, 2 * MIB, fill(65536, 0x40 + round));
            }
            inFlight.completed(true, 0, 65536);
            assertTrue(
                    Files.size(img) <= fileSize + 2 * 65536,
                    "discarded clusters were freed and taken again: the file grew from " + fileSize + " to "
                            + Files.size(img));
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x55 0 64k", "read -P 0x33 64k 1984k", "read -P 0x57 2M 64k");
    }

    @Test
    void concurrentWritersOnManyThreadsStayConsistent() throws Exception {
        Path img = create("mt.qcow2", "64M");
        int threads = 4;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        try (DiskImage q = Images.open(img, null, false, false)) {
            List<Future<?>> fs = new ArrayList<>();
            for (int t = 0; t < threads; t++) {
                int id = t;
                fs.add(pool.submit((Callable<Void>) () -> {
                    // interleaved 4 KiB blocks: threads allocate neighbouring pieces of the same clusters
                    for (int i = 0; i < 512; i++) {
                        long off = ((long) i * threads + id) * 4096;
                        write(q, off, fill(4096, id + 1));
                        if (i % 64 == 0) {
                            q.flush();
                        }
                    }
                    return null;
                }));
            }
            for (Future<?> f : fs) {
                f.get();
            }
            for (int i = 0; i < 512 * threads; i++) {
                assertArrayEquals(fill(4096, i % threads + 1), read(q, (long) i * 4096, 4096), "block " + i);
            }
        } finally {
            pool.shutdownNow();
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 1 0 4k", "read -P 4 " + (4096 * 2047) + " 4k");
    }

    @Test
    void smallL2CacheEvictsAndWritesBackInOrder() throws Exception {
        Path img = create("ev.qcow2", "2G", "cluster_size=4096"); // 512 entries per L2 table: 2 MiB per table
        try (Qcow2Image q = Qcow2Image.open(img, false, 4 * 4096)) {
            assertEquals(4, q.l2CacheTables());
            for (int i = 0; i < 64; i++) {
                write(q, (long) i * 3 * MIB, fill(4096, i + 1));
            }
            for (int i = 0; i < 64; i++) {
                assertArrayEquals(fill(4096, i + 1), read(q, (long) i * 3 * MIB, 4096));
            }
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 1 0 4k", "read -P 64 " + (63L * 3 * MIB) + " 4k");
    }

    @Test
    void refcountTableGrowsWhenTheImageOutgrowsIt() throws Exception {
        // 512-byte clusters, 64-bit refcounts: a refcount block covers 64 clusters, the first table 64 blocks
        Path img = create("grow.qcow2", "8M", "cluster_size=512", "refcount_bits=64");
        try (DiskImage q = Images.open(img, null, false, false)) {
            write(q, 0, fill(4 * MIB, 0x42));
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x42 0 4M");
    }

    /**
     * An L1 table that grows after the open (a resize, a refresh after another program grew it) is charged to the
     * chain's memory bound as the tables read at the open are; the bound is lowered here to what the image took at
     * its open plus 1 MiB. Growing to 1 TiB (2048 L1 entries, and the L2 cache they let fill: about 32 MiB more) is
     * refused with the bound in the error and changes nothing; growing to 2 GiB goes through; a refresh after
     * qemu-img grew the image to 1 TiB is refused too; closing gives the charge back. Before, only the open was
     * charged: both grew past the bound.
     */
    @Test
    void anL1TableGrowingAfterTheOpenIsChargedToTheChainsMemoryBound() throws Exception {
        Path img = create("mem.qcow2", "1G"); // 64 KiB clusters: 2 L1 entries
        long atOpen;
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            atOpen = q.chainBytes();
        }
        Qcow2Image q = Qcow2Image.open(img, false, Qcow2Image.DEFAULT_L2_CACHE_BYTES, false, atOpen + MIB);
        try (q) {
            assertEquals(atOpen, q.chainBytes());
            write(q, 0, fill(65536, 0x11));
            IOException e = assertThrows(IOException.class, () -> q.resize(1L << 40));
            assertTrue(
                    e.getMessage().contains("growing its L1 table to 2048 entries (a resize)")
                            && e.getMessage().contains("limit of " + (atOpen + MIB) + " bytes for one backing chain"),
                    e.getMessage());
            assertEquals(1L << 30, q.size(), "the refused resize changed nothing");
            assertEquals(atOpen, q.chainBytes(), "and charged nothing");
            q.resize(2L << 30); // 4 L1 entries: within the bound
            assertTrue(q.chainBytes() > atOpen, "the grown table is charged: " + q.chainBytes());
            write(q, (2L << 30) - 65536, fill(65536, 0x22));
            q.handOver();
            ok("qemu-img", "resize", "-q", "-f", "qcow2", img.toString(), "1T");
            long before = q.chainBytes();
            e = assertThrows(IOException.class, q::refresh);
            assertTrue(e.getMessage().contains("reading it again"), e.getMessage());
            assertEquals(before, q.chainBytes(), "the refused refresh charged nothing");
        }
        assertEquals(0, q.chainBytes(), "closing gave the charge back");
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x11 0 64k", "read -P 0x22 " + ((2L << 30) - 65536) + " 64k");
    }

    /**
     * A resize whose new L1 table needs the refcount table to grow (512-byte clusters, 64-bit refcounts: the first
     * refcount table covers 2 MiB of file, which data fills to a few clusters short of it; a 126 MiB disk needs a
     * 63-cluster L1 table) charges both at their new sizes: the refcount table's growth, made while the L1 table is
     * being replaced, is charged with the new L1 size, so the chain's charge is what the two tables take after.
     */
    @Test
    void aResizeThatGrowsBothTablesChargesBothAtTheirNewSizes() throws Exception {
        Path img = create("both.qcow2", "4M", "cluster_size=512", "refcount_bits=64");
        long charged;
        long written = 0;
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            while (Files.size(img) < (2 * MIB) - 16 * 512) {
                write(q, written, fill(4096, 0x5a));
                written += 4096;
            }
            q.resize(126L * MIB);
            charged = q.chainBytes();
        }
        int refTableClusters = refTableClusters(img);
        assertTrue(refTableClusters > 1, "the refcount table grew: " + refTableClusters);
        assertEquals(
                Qcow2Image.memoryCost(9, 126 * 32, refTableClusters, Qcow2Image.DEFAULT_L2_CACHE_BYTES, false),
                charged);
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x5a 0 " + written);
    }

    /**
     * The refcount table growing as the image grows is charged to the chain's memory bound: with the bound lowered
     * to what the image took at its open plus 1 KiB (less than the 64 entries a second table cluster adds), the
     * write that needs the table to grow fails with the bound in the error, and what was written before reads
     * back; qemu-img check is clean; opened again with the default bound the table grows and the write goes
     * through. Before, the table grew past the bound.
     */
    @Test
    void theRefcountTableGrowingAfterTheOpenIsChargedToTheChainsMemoryBound() throws Exception {
        // 512-byte clusters, 64-bit refcounts: a refcount block covers 32 KiB, the first table 64 blocks (2 MiB)
        Path img = create("memref.qcow2", "8M", "cluster_size=512", "refcount_bits=64");
        long atOpen;
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            atOpen = q.chainBytes();
        }
        long written = 0;
        try (Qcow2Image q = Qcow2Image.open(img, false, Qcow2Image.DEFAULT_L2_CACHE_BYTES, false, atOpen + 1024)) {
            IOException e = null;
            for (; written < 4 * MIB && e == null; written += 65536) {
                try {
                    write(q, written, fill(65536, 0x42));
                } catch (IOException x) {
                    e = x;
                }
            }
            written -= 65536; // the refused chunk
            assertTrue(e != null, "the refcount table grew past the bound");
            assertTrue(
                    e.getMessage().contains("growing its refcount table to 2 clusters")
                            && e.getMessage().contains("the write was refused")
                            && e.getMessage().contains("limit of " + (atOpen + 1024) + " bytes"),
                    e.getMessage());
            assertTrue(written >= MIB, "the writes before it went through: " + written);
            assertEquals(atOpen, q.chainBytes(), "the refused growth charged nothing");
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x42 0 " + written);
        try (DiskImage q = Images.open(img, null, false, false)) {
            write(q, written, fill(65536, 0x43));
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x42 0 " + written, "read -P 0x43 " + written + " 64k");
    }

    /**
     * blk.resize on qcow2: growing within the L1 table's reach (64 KiB clusters), and past it with 512-byte clusters
     * (an L1 entry covers 32 KiB: 1 MiB -> 64 MiB needs 2048 entries in 32 new contiguous clusters) while data is
     * written before and after; qemu-img info shows the new size, qemu-img check is clean, qemu-io reads it all.
     */
    /**
     * The daemon's blk.set-readonly on a qcow2 image: switching to read-only makes the data and every metadata table
     * durable while the image stays open (qemu-img check, run with -U while iovirt holds it, finds it clean and
     * qemu-io reads the data), refuses further writes, zeroing and allocation with EROFS, and switching back
     * accepts them again. An image opened read-only cannot be made writable.
     */
    @Test
    void switchingToReadOnlyWhileServedFlushesEverythingAndRefusesWrites() throws Exception {
        Path img = create("ro.qcow2", "64M");
        try (DiskImage q = Images.open(img, null, false, false)) {
            write(q, 3 * MIB, fill(200 << 10, 0x61)); // allocates clusters and an L2 table: dirty metadata
            write(q, 40 * MIB + 512, fill(4096, 0x62));
            q.setReadOnly(true);
            assertTrue(q.readOnly());
            assertEquals(
                    0,
                    QemuTools.run("qemu-img", "check", "-U", "-f", "qcow2", img.toString())
                            .exit(),
                    "qemu-img check of the image switched to read-only, still open");
            QemuTools.Result r = QemuTools.run(
                    "qemu-io",
                    "-U",
                    "-r",
                    "-f",
                    "qcow2",
                    "-c",
                    "read -P 0x61 3M 200k",
                    "-c",
                    "read -P 0x62 " + (40 * MIB + 512) + " 4k",
                    img.toString());
            assertEquals(0, r.exit(), r.output());
            assertFalse(r.output().contains("Pattern verification failed"), r.output());
            LinuxException e = assertThrows(LinuxException.class, () -> write(q, 3 * MIB, fill(4096, 0x63)));
            assertEquals(Errno.EROFS, e.errno());
            assertThrows(LinuxException.class, () -> write(q, 50 * MIB, fill(4096, 0x63)), "a new cluster");
            assertThrows(LinuxException.class, () -> q.writeZeroes(3 * MIB, MIB, false));
            assertThrows(LinuxException.class, () -> q.discard(3 * MIB, MIB));
            q.flush(); // a guest FLUSH on a read-only disk is fine
            assertArrayEquals(fill(200 << 10, 0x61), read(q, 3 * MIB, 200 << 10));

            q.setReadOnly(false);
            assertFalse(q.readOnly());
            write(q, 50 * MIB, fill(4096, 0x64));
            write(q, 3 * MIB, fill(4096, 0x65));
            q.setReadOnly(true); // and once more: the new allocation is durable too
        }
        check(img, false);
        qemuIoOk(
                img,
                "qcow2",
                "read -P 0x65 3M 4k",
                "read -P 0x61 " + (3 * MIB + 4096) + " 196k",
                "read -P 0x64 50M 4k");
        try (DiskImage q = Images.open(img, null, true, false)) {
            IOException e = assertThrows(IOException.class, () -> q.setReadOnly(false));
            assertTrue(e.getMessage().contains("opened read-only"), e.getMessage());
            q.setReadOnly(true); // already read-only: nothing to do
        }
    }

    /**
     * A flush of an image switched to read-only while served still goes to the file: a data write that passed its
     * check before the switch may have completed after the switch's flush, and the guest's next FLUSH must make it
     * durable. Only an image opened read-only has nothing to flush. A sync cannot be seen without a power cut, so a
     * closed image is the probe: its flush now reports that it is closed; it used to return at once, like that of an
     * image opened read-only still does.
     */
    @Test
    void aFlushAfterSwitchingToReadOnlyStillGoesToTheFile() throws Exception {
        Path img = create("flush-ro.qcow2", "8M");
        DiskImage q = Images.open(img, null, false, false);
        write(q, 0, fill(4096, 0x11));
        q.setReadOnly(true);
        q.flush();
        q.close();
        IOException e = assertThrows(IOException.class, q::flush, "switched to read-only: the flush is not skipped");
        assertTrue(e.getMessage().contains("closed"), e.getMessage());
        DiskImage r = Images.open(img, null, true, false);
        r.close();
        r.flush(); // opened read-only: nothing to do, not even to look
        qemuIoOk(img, "qcow2", "read -P 0x11 0 4k");
    }

    /**
     * A resize of an image with 512-byte clusters and 16-bit refcounts (one refcount block covers 256 clusters) from
     * 1 MiB to 32 GiB, which qemu-img resize does: its L1 table of 2^20 entries is 16384 contiguous clusters, and the
     * refcount blocks describing them go past them. Before, the search for the run put a refcount block on the first
     * cluster of every block's range, so no run of more than 255 clusters was ever free: the search grew the refcount
     * table until it could not ("refcount table cannot grow") and the resize failed. 64-bit refcounts (64 clusters
     * per block) make the run cross the refcount table's reach several times.
     */
    @ParameterizedTest
    @ValueSource(ints = {16, 64})
    void aResizeOfA512ByteClusterImageGrowsItsL1TableAcrossManyRefcountBlocks(int refcountBits) throws Exception {
        Path img = create("rs512.qcow2", "1M", "cluster_size=512", "refcount_bits=" + refcountBits);
        qemuIoOk(img, "qcow2", "write -P 0x31 0 64k");
        try (DiskImage q = Images.open(img, null, false, false)) {
            q.resize(32L << 30);
            assertEquals(32L << 30, q.size());
            write(q, (32L << 30) - 65536, fill(65536, 0x32));
            write(q, 16L << 30, fill(4096, 0x33));
            q.flush();
        }
        assertTrue(ok("qemu-img", "info", "--output=json", img.toString()).contains("\"virtual-size\": 34359738368"));
        check(img, false);
        qemuIoOk(
                img,
                "qcow2",
                "read -P 0x31 0 64k",
                "read -P 0x32 " + ((32L << 30) - 65536) + " 64k",
                "read -P 0x33 16G 4k",
                "read -P 0 1G 64k");
    }

    /**
     * The refcount table grows past what one new refcount block can describe. With 512-byte clusters a refcount
     * block holds 64 refcounts at refcount_bits=64 (128 at 32), and a refcount table cluster names 64 blocks: the
     * table reached 63 (127) clusters, 126 MiB (508 MiB) of file, when its growth had to place the new table and the
     * block counting it in one block's range. qemu-img fills the image to 32 MiB short of that (convert: fast, where
     * qemu-io writes 512-byte clusters at a few MiB/s; its table may reach further already). iovirt resizes it to
     * 4 GiB, writes at 1 GiB until the file ends 1 MiB short of what the table covers, then resizes it to 32 GiB:
     * the new 8 MiB L1 table crosses that end, so the refcount table grows while the L1 table's run is reserved, and
     * its new table and blocks go past that run. Then 32 MiB more and the last 64 KiB. Before, the growth failed
     * ("refcount table cannot grow ... too large for cluster size 512"); QEMU handles such images up to its 8 MiB
     * refcount table (32 GiB of file). qemu-img check is clean (no leak, no corruption) and qemu-io reads back what
     * was written, also after a reopen.
     */
    @ParameterizedTest
    @ValueSource(ints = {64, 32})
    void theRefcountTableGrowsPastWhatOneNewRefcountBlockCanDescribe(int refcountBits) throws Exception {
        long perBlock = 512 * 8 / refcountBits;
        long oldReach = (perBlock - 1) * 64 * perBlock * 512;
        Path raw = dir.resolve("zero.raw");
        try (RandomAccessFile f = new RandomAccessFile(raw.toFile(), "rw")) {
            f.setLength(oldReach - 32 * MIB);
        }
        Path img = dir.resolve("wide.qcow2");
        String opts = "cluster_size=512,refcount_bits=" + refcountBits;
        ok("qemu-img", "convert", "-S", "0", "-f", "raw", "-O", "qcow2", "-o", opts, raw.toString(), img.toString());
        Files.delete(raw);
        int before = refTableClusters(img);
        long reach = before * 64 * perBlock * 512;
        long end = 32L << 30;
        int chunks = 0;
        try (DiskImage q = Images.open(img, null, false, false)) {
            q.resize(4L << 30);
            for (; Files.size(img) < reach - MIB; chunks++) {
                write(q, (1L << 30) + (long) chunks * MIB, fill(MIB, chunks % 250 + 1));
            }
            assertEquals(before, refTableClusters(img), "no growth yet");
            q.resize(end);
            for (int i = 0; i < 32; i++, chunks++) {
                write(q, (1L << 30) + (long) chunks * MIB, fill(MIB, chunks % 250 + 1));
            }
            write(q, end - 65536, fill(65536, 0xfe));
            q.flush();
        }
        assertTrue(Files.size(img) > oldReach, "the file outgrew the old reach: " + Files.size(img));
        int after = refTableClusters(img);
        assertTrue(
                after > before && after >= perBlock, "the table grew past the old reach: " + before + " -> " + after);
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
            f.seek(40);
            long l1 = f.readLong();
            long refTable = f.readLong();
            assertTrue(refTable > l1 + 8 * MIB, "the new refcount table " + refTable + " lies past the L1 table " + l1);
        }
        check(img, false);
        try (DiskImage q = Images.open(img, null, false, false)) {
            write(q, (2L << 30), fill(4 * MIB, 0xfd));
        }
        check(img, false);
        List<String> reads = new ArrayList<>();
        for (int i = 0; i < chunks; i += 7) {
            reads.add("read -P " + (i % 250 + 1) + " " + ((1L << 30) + (long) i * MIB) + " 1M");
        }
        reads.add("read -P " + ((chunks - 1) % 250 + 1) + " " + ((1L << 30) + (chunks - 1L) * MIB) + " 1M");
        reads.add("read -P 0xfe " + (end - 65536) + " 64k");
        reads.add("read -P 0xfd 2G 4M");
        reads.add("read -P 0 " + (oldReach - 33 * MIB) + " 1M");
        reads.add("read -P 0 16G 64k");
        qemuIoOk(img, "qcow2", reads.toArray(String[]::new));
    }

    /** The refcount table's size in clusters, as the header of {@code img} names it. */
    private static int refTableClusters(Path img) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
            f.seek(56);
            return f.readInt();
        }
    }

    @Test
    void resizeGrowsTheVirtualSizeAndTheL1TableAsTheFormatSpecifies() throws Exception {
        Path big = create("resize64k.qcow2", "64M");
        try (DiskImage q = Images.open(big, null, false, false)) {
            write(q, 60 * MIB, fill(MIB, 0x31));
            q.resize(3L << 30); // 3 GiB: 6 L1 entries of 512 MiB
            assertEquals(3L << 30, q.size());
            write(q, (3L << 30) - MIB, fill(MIB, 0x32));
            q.flush();
            assertThrows(IOException.class, () -> q.resize(MIB), "shrinking");
        }
        assertTrue(ok("qemu-img", "info", "--output=json", big.toString()).contains("\"virtual-size\": 3221225472"));
        check(big, false);
        qemuIoOk(big, "qcow2", "read -P 0x31 60M 1M", "read -P 0x32 3071M 1M", "read -P 0 1G 1M");

        Path small = create("resize512.qcow2", "1M", "cluster_size=512");
        qemuIoOk(small, "qcow2", "write -P 0x41 0 1M");
        try (DiskImage q = Images.open(small, null, false, false)) {
            write(q, 512 * 1024, fill(4096, 0x42)); // dirty L1/L2 state carried across the resize
            q.resize(64L * MIB);
            write(q, 63L * MIB, fill(MIB, 0x43));
            write(q, 32L * MIB, fill(64 * 1024, 0x44));
            q.resize(80L * MIB); // and once more, freeing the table just written
            write(q, 79L * MIB, fill(4096, 0x45));
        }
        String info = ok("qemu-img", "info", "--output=json", small.toString());
        assertTrue(info.contains("\"virtual-size\": 83886080"), info);
        check(small, false);
        qemuIoOk(
                small,
                "qcow2",
                "read -P 0x41 0 512k",
                "read -P 0x42 512k 4k",
                "read -P 0x41 516k 508k",
                "read -P 0 1M 31M",
                "read -P 0x44 32M 64k",
                "read -P 0x43 63M 1M",
                "read -P 0x45 79M 4k");
    }

    /**
     * O_DIRECT on qcow2 ({@code --direct}): guest data in whole blocks, metadata (header fields, L1 entries,
     * refcounts, heap-backed tables, compressed clusters) through aligned buffers. Copy-on-write over a backing
     * file, compressed clusters read, zeroing, a resize growing the L1 table; qemu-io reads it all and qemu-img
     * check is clean. Images whose clusters are smaller than the alignment are refused with the remedy.
     */
    @Test
    void directIoOnQcow2ReadsAndWritesThroughAlignedBuffersOnly() throws Exception {
        Path base = dir.resolve("dbase.raw");
        Files.write(base, fill(4 * MIB, 0x11));
        Path raw = dir.resolve("dsrc.raw");
        Files.write(raw, fill(2 * MIB, 0x22));
        Path comp = dir.resolve("dcomp.qcow2");
        ok("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw.toString(), comp.toString());
        try (DiskImage q = Images.open(comp, null, true, true)) {
            assertTrue(q.direct());
            assertArrayEquals(fill(64 * 1024, 0x22), read(q, MIB, 64 * 1024));
        }
        Path img = dir.resolve("direct.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", "-b", "dbase.raw", "-F", "raw", img.toString(), "8M");
        try (DiskImage q = Images.open(img, null, false, true)) {
            assertTrue(q.direct());
            assertTrue(q.blockSize() >= 512 && Integer.bitCount(q.blockSize()) == 1, "block size " + q.blockSize());
            write(q, 64 * 1024 + 4096, fill(8192, 0x33)); // copy-on-write of the backing cluster around it
            write(q, 6 * MIB, fill(MIB, 0x34));
            q.writeZeroes(2 * MIB, 128 * 1024, true);
            q.resize(2L << 30);
            write(q, (2L << 30) - 65536, fill(65536, 0x35));
            q.flush();
            assertArrayEquals(fill(4096, 0x11), read(q, 64 * 1024, 4096));
            assertArrayEquals(fill(8192, 0x33), read(q, 64 * 1024 + 4096, 8192));
        }
        check(img, false);
        qemuIoOk(
                img,
                "qcow2",
                "read -P 0x11 0 68k",
                "read -P 0x33 68k 8k",
                "read -P 0x11 76k 52k",
                "read -P 0x34 6M 1M",
                "read -P 0 2M 128k",
                "read -P 0x11 3M 1M",
                "read -P 0x35 2097088k 64k");
        // 512-byte clusters: served when the file system's O_DIRECT alignment is 512 (this ext4's), refused with the
        // remedy when it is larger (a 4 KiB-sector device)
        int align;
        try (DiskImage probe = Images.open(img, null, true, true)) {
            align = probe.blockSize();
        }
        Path tiny = create("tiny.qcow2", "1M", "cluster_size=512");
        if (align > 512) {
            IOException e = assertThrows(
                    IOException.class,
                    () -> Images.open(tiny, null, false, true).close());
            assertTrue(e.getMessage().contains("drop --direct"), e.getMessage());
        } else {
            try (DiskImage q = Images.open(tiny, null, false, true)) {
                write(q, 512, fill(8192, 0x36)); // refcount blocks and L2 tables of 512 bytes, header fields, L1
            }
            check(tiny, false);
            qemuIoOk(tiny, "qcow2", "read -P 0 0 512", "read -P 0x36 512 8k");
        }
    }

    @Test
    void refusesWhatItCannotWriteSafely() throws Exception {
        Path img = create("f.qcow2", "16M");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(72);
            f.writeLong(1L << 9); // an incompatible feature nobody knows
        }
        IOException e = assertThrows(IOException.class, () -> Images.open(img, null, true, false));
        assertTrue(
                e.getMessage().contains("incompatible features")
                        && e.getMessage().contains("bit 9"),
                e.getMessage());
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(72);
            f.writeLong(2L); // corrupt
        }
        e = assertThrows(IOException.class, () -> Images.open(img, null, false, false));
        assertTrue(e.getMessage().contains("marked corrupt"), e.getMessage());
        Images.open(img, null, true, false).close(); // read-only is fine
    }

    @Test
    void anImageIsOpenedForWritingOncePerProcess() throws Exception {
        Path img = create("once.qcow2", "16M");
        try (DiskImage a = Images.open(img, null, false, false)) {
            IOException e = assertThrows(
                    IOException.class, () -> Images.open(dir.resolve(".").resolve("once.qcow2"), null, false, false));
            assertTrue(e.getMessage().contains("already open for writing"), e.getMessage());
            Images.open(img, null, true, false).close(); // readers are fine (a shared backing file)
            write(a, 0, fill(4096, 1));
        }
        try (DiskImage again = Images.open(img, null, false, false)) {
            assertArrayEquals(fill(4096, 1), read(again, 0, 4096));
        }
    }

    @Test
    void aDataWriteIntoMetadataOfACraftedImageIsRefused() throws Exception {
        Path img = create("evil.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -P 1 0 64k");
        long l1Offset = storeClusterZeroOnTheL1Table(img, Qcow2Image.OFLAG_COPIED); // "stored" there
        byte[] before = Files.readAllBytes(img);
        try (DiskImage q = Images.open(img, null, false, false)) {
            IOException e = assertThrows(IOException.class, () -> write(q, 0, fill(4096, 0x66)));
            assertTrue(e.getMessage().contains(", inside the L1 table"), e.getMessage());
        }
        assertArrayEquals(
                java.util.Arrays.copyOfRange(before, (int) l1Offset, (int) l1Offset + 65536),
                java.util.Arrays.copyOfRange(Files.readAllBytes(img), (int) l1Offset, (int) l1Offset + 65536),
                "the L1 table was overwritten");
    }

    /**
     * A discard (or write-zeroes with unmap) of a cluster a crafted L2 entry "stores" on the L1 table: as a write
     * there is refused, so is the discard, and the table keeps its bytes. Before, the discard punched the host
     * cluster out (a normal entry's, and since the discard of a preallocated zero cluster punches too, that one's):
     * the L1 table on disk became zeros, and reopened, every guest cluster read as unallocated.
     */
    @ParameterizedTest
    @ValueSource(strings = {"normal", "preallocated zero"})
    void aDiscardOfAClusterStoredOnMetadataOfACraftedImageIsRefused(String kind) throws Exception {
        Path img = create("evil-discard.qcow2", "16M");
        qemuIoOk(img, "qcow2", "write -P 1 0 64k", "write -P 2 1M 64k");
        long flags = kind.equals("normal") ? Qcow2Image.OFLAG_COPIED : Qcow2Image.OFLAG_COPIED | Qcow2Image.OFLAG_ZERO;
        long l1Offset = storeClusterZeroOnTheL1Table(img, flags);
        byte[] before = Files.readAllBytes(img);
        try (DiskImage q = Images.open(img, null, false, false)) {
            IOException e = assertThrows(IOException.class, () -> q.discard(0, 65536));
            assertTrue(e.getMessage().contains(", inside the L1 table"), e.getMessage());
            // a write-zeroes with unmap gives the host cluster up as a discard does (a preallocated zero one's too)
            e = assertThrows(IOException.class, () -> q.writeZeroes(0, 65536, true));
            assertTrue(e.getMessage().contains(", inside the L1 table"), e.getMessage());
            q.flush();
        }
        assertArrayEquals(
                java.util.Arrays.copyOfRange(before, (int) l1Offset, (int) l1Offset + 65536),
                java.util.Arrays.copyOfRange(Files.readAllBytes(img), (int) l1Offset, (int) l1Offset + 65536),
                "the L1 table was punched out or changed");
        qemuIoOk(img, "qcow2", "read -P 2 1M 64k"); // the L1 table still names the L2 table
    }

    /**
     * Crafts the L2 entry of guest cluster 0 of {@code img} to name the L1 table's cluster, with {@code flags}; the
     * L1 table's offset.
     */
    private static long storeClusterZeroOnTheL1Table(Path img, long flags) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(40);
            long l1Offset = f.readLong();
            f.seek(l1Offset);
            long l2 = f.readLong() & Qcow2Image.OFFSET_MASK;
            f.seek(l2);
            f.writeLong(flags | l1Offset);
            return l1Offset;
        }
    }

    @Test
    void lazyRefcountImagesAreWrittenWithExactRefcountsAndStayClean() throws Exception {
        Path img = create("lazy.qcow2", "16M", "lazy_refcounts=on");
        try (DiskImage q = Images.open(img, null, false, false)) {
            write(q, 5 * MIB, fill(MIB, 0x21)); // iovirt keeps refcounts exact and never sets the dirty bit
        }
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
            f.seek(72);
            assertEquals(0, f.readLong() & 1, "dirty bit set");
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x21 5M 1M");
    }

    @Test
    void aDirtyLazyRefcountImageLeftByACrashedQemuIsRepairedOnWritableOpen() throws Exception {
        Path img = create("dirty.qcow2", "64M", "lazy_refcounts=on");
        // qemu-io writes with lazy refcounts, then abort()s: the dirty bit stays set, refcounts are stale
        QemuTools.qemuIo(img, "qcow2", "write -P 0x31 0 3M", "write -P 0x32 10M 100k", "abort");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
            f.seek(72);
            assertEquals(1, f.readLong() & 1, "qemu-io left no dirty bit: the test sets up nothing");
        }
        try (DiskImage q = Images.open(img, null, true, false)) { // read-only: no repair needed to read
            assertArrayEquals(fill(4096, 0x31), read(q, 0, 4096));
        }
        try (DiskImage q = Images.open(img, null, false, false)) {
            assertArrayEquals(fill(100 << 10, 0x32), read(q, 10 * MIB, 100 << 10));
            write(q, 20 * MIB, fill(MIB, 0x33)); // allocations after the repair must not reuse referenced clusters
        }
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
            f.seek(72);
            assertEquals(0, f.readLong() & 1, "dirty bit still set");
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x31 0 3M", "read -P 0x32 10M 100k", "read -P 0x33 20M 1M");
    }
}
