// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import java.io.IOException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * Where a qcow2 image's own metadata lies — the header cluster, the L1 table, the refcount table, the refcount
 * blocks and the L2 tables — and the checks that keep a damaged or crafted image from making a write land on it.
 *
 * <p>An instance is a view of where the tables are at one moment (the live L1 array and refcount table, not
 * copies), made while the image is opened or under its metadata lock and used at once. It does two things:
 * {@link #checkForWriting} refuses, before an image is opened for writing, a table pointer that would make the
 * first write overwrite a table or count one refcount block for many ranges; {@link #clusters} builds the index of
 * every metadata cluster.
 *
 * <p>That index (sorted cluster numbers) is kept by {@link Qcow2Image} in a field of its own, which the data path
 * reads lock-free on every write to an allocated cluster: one load, with no hop through another object. It is
 * replaced copy-on-write under the metadata lock with {@link #with} and {@link #without} (a new L2 table, refcount
 * block, L1 or refcount table, and an old table freed) and searched with {@link #firstIn}. These static functions
 * take no lock and allocate only when they return a new index.
 */
final class MetadataLayout {
    private final Path path;
    private final int clusterBits;
    private final long clusterSize;
    private final AtomicLongArray l1;
    private final long l1Offset;
    private final long[] refTable;
    private final long refTableOffset;
    private final int refTableClusters;

    /**
     * @param l1       the L1 table's entries (flags included), at file offset {@code l1Offset}
     * @param refTable the refcount table's entries (block offsets, 0 for none), {@code refTableClusters} clusters
     *                 at file offset {@code refTableOffset}
     */
    MetadataLayout(
            Path path,
            int clusterBits,
            AtomicLongArray l1,
            long l1Offset,
            long[] refTable,
            long refTableOffset,
            int refTableClusters) {
        this.path = path;
        this.clusterBits = clusterBits;
        this.clusterSize = 1L << clusterBits;
        this.l1 = l1;
        this.l1Offset = l1Offset;
        this.refTable = refTable;
        this.refTableOffset = refTableOffset;
        this.refTableClusters = refTableClusters;
    }

    // ---- the index of metadata clusters ---------------------------------------------------------------------------

    /** Sorted cluster numbers of every metadata cluster: header, L1 table, refcount table and blocks, L2 tables. */
    long[] clusters() {
        // one long per cluster, sorted and deduplicated in place: a boxed set took about 56 bytes per entry, some
        // 300 MiB while a crafted image's 4M-entry L1 table was indexed
        long l1Bytes = (long) l1.length() * 8;
        long refBytes = (long) refTableClusters * clusterSize;
        long[] c = new long
                [Math.toIntExact(1
                        + rangeClusters(l1Offset, l1Bytes)
                        + rangeClusters(refTableOffset, refBytes)
                        + refTable.length
                        + l1.length())];
        int n = 0;
        c[n++] = 0;
        n = addRange(c, n, l1Offset, l1Bytes);
        n = addRange(c, n, refTableOffset, refBytes);
        for (long r : refTable) {
            if (r != 0) {
                c[n++] = r >>> clusterBits;
            }
        }
        for (int i = 0; i < l1.length(); i++) {
            long o = l1.get(i) & Qcow2Image.OFFSET_MASK;
            if (o != 0) {
                c[n++] = o >>> clusterBits;
            }
        }
        Arrays.sort(c, 0, n);
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (m == 0 || c[i] != c[m - 1]) {
                c[m++] = c[i];
            }
        }
        return Arrays.copyOf(c, m);
    }

    private long rangeClusters(long offset, long bytes) {
        return ((offset + Math.max(1, bytes) - 1) >>> clusterBits) - (offset >>> clusterBits) + 1;
    }

    private int addRange(long[] c, int n, long offset, long bytes) {
        for (long x = offset >>> clusterBits; x <= (offset + Math.max(1, bytes) - 1) >>> clusterBits; x++) {
            c[n++] = x;
        }
        return n;
    }

    /**
     * The first cluster of {@code index} that [host, host+len) touches, or -1. Lock-free and allocation-free: the
     * data path calls it for every write to an allocated cluster.
     */
    static long firstIn(long[] index, long host, long len, int clusterBits) {
        for (long c = host >>> clusterBits; c <= (host + len - 1) >>> clusterBits; c++) {
            if (Arrays.binarySearch(index, c) >= 0) {
                return c;
            }
        }
        return -1;
    }

    /** {@code index} with {@code cluster} added: a new array, or {@code index} itself when it is there already. */
    static long[] with(long[] index, long cluster) {
        int i = Arrays.binarySearch(index, cluster);
        if (i >= 0) {
            return index;
        }
        int at = -i - 1;
        long[] n = new long[index.length + 1];
        System.arraycopy(index, 0, n, 0, at);
        n[at] = cluster;
        System.arraycopy(index, at, n, at + 1, index.length - at);
        return n;
    }

    /**
     * A new array: {@code index} with clusters [first, first+n) added (a new table or a run of refcount blocks), in
     * one pass: adding them one by one copied the whole index once per cluster.
     */
    static long[] withRange(long[] index, long first, long n) {
        int lo = Arrays.binarySearch(index, first);
        lo = lo < 0 ? -lo - 1 : lo;
        int hi = Arrays.binarySearch(index, first + n);
        hi = hi < 0 ? -hi - 1 : hi; // [lo, hi): those already there, replaced by the range
        long[] m = new long[Math.toIntExact(lo + n + index.length - hi)];
        System.arraycopy(index, 0, m, 0, lo);
        for (int i = 0; i < n; i++) {
            m[lo + i] = first + i;
        }
        System.arraycopy(index, hi, m, (int) (lo + n), index.length - hi);
        return m;
    }

    /** A new array: {@code index} without clusters [first, first+n) (an old table's, free data clusters now). */
    static long[] without(long[] index, long first, long n) {
        long[] m = index.clone();
        for (long i = 0; i < n; i++) {
            int k = Arrays.binarySearch(m, first + i);
            if (k >= 0) {
                m[k] = -1;
            }
        }
        return Arrays.stream(m).filter(c -> c >= 0).toArray();
    }

    // ---- checks before writing ----------------------------------------------------------------------------------

    /**
     * Refuses a table entry (while reading the L1 or refcount table) that does not point at a cluster boundary:
     * {@code what} names the entry.
     */
    static void checkClusterBoundary(Path path, long clusterSize, long off, String what) throws IOException {
        if ((off & (clusterSize - 1)) != 0) {
            throw new IOException("qcow2 image " + path + " is damaged: " + what + " points at " + off
                    + ", not a cluster boundary ('qemu-img check " + path + "')");
        }
    }

    /**
     * Refuses, before an image of {@code fileBytes} bytes is opened for writing, a refcount table or an L1 table a
     * write through which would overwrite the image's own tables (see {@link #checkRefcountLayout} and
     * {@link #checkL1Layout}). Reading needs no refcounts and updates no table: a read-only open does not check.
     */
    void checkForWriting(long fileBytes) throws IOException {
        checkRefcountLayout(fileBytes);
        checkL1Layout(fileBytes); // relies on the refcount blocks lying inside the file, checked first
    }

    /**
     * Refuses a refcount table that names a refcount block past the end of the file, the same block twice, or a
     * block on the L1 table or the refcount table itself. Writing through such a table would count one block for
     * many ranges of clusters, or write refcounts over the image's own tables; a table of entries all naming one
     * block full of 0xff would make the first allocation scan up to ten billion clusters under the metadata lock.
     */
    private void checkRefcountLayout(long fileBytes) throws IOException {
        long[] blocks = new long[refTable.length];
        int n = 0;
        for (int i = 0; i < refTable.length; i++) {
            long off = refTable[i];
            if (off == 0) {
                continue;
            }
            checkTablePointer("refcount table entry " + i + " points at " + off, off, fileBytes);
            blocks[n++] = off;
        }
        long twice = sortAndFindRepeat(blocks, n);
        if (twice >= 0) {
            throw damaged("two refcount table entries point at the same refcount block " + twice);
        }
    }

    /**
     * Refuses an L1 table that names an L2 table past the end of the file, the same L2 table twice, or an L2 table
     * on the L1 table, the refcount table or a refcount block. Such an "L2 table" would be updated and written back
     * by the first write under it, over the L1 table or the refcounts (or, shared, map two ranges of the disk to one
     * set of clusters). Internal snapshots, whose L1 tables may share L2 tables, are refused for writing anyway.
     */
    private void checkL1Layout(long fileBytes) throws IOException {
        long[] blocks = Arrays.stream(refTable).filter(o -> o != 0).sorted().toArray();
        long[] tables = new long[l1.length()];
        int n = 0;
        for (int i = 0; i < l1.length(); i++) {
            long off = l1.get(i) & Qcow2Image.OFFSET_MASK;
            if (off == 0) {
                continue;
            }
            String what = "L1 entry " + i + " points at " + off;
            // (a refcount block is inside the file: checkRefcountLayout has run, so the order of these is free)
            checkTablePointer(what, off, fileBytes);
            if (Arrays.binarySearch(blocks, off) >= 0) {
                throw damaged(what + ", a refcount block");
            }
            tables[n++] = off;
        }
        long twice = sortAndFindRepeat(tables, n);
        if (twice >= 0) {
            int first = -1;
            for (int k = 0; ; k++) { // which two (the error path only)
                if ((l1.get(k) & Qcow2Image.OFFSET_MASK) == twice) {
                    if (first >= 0) {
                        throw damaged(
                                "L1 entry " + k + " points at " + twice + ", the same L2 table as L1 entry " + first);
                    }
                    first = k;
                }
            }
        }
    }

    /**
     * Refuses a table's pointer to a cluster of its own ({@code what} names the entry and {@code off}): one inside
     * the L1 table or the refcount table, or past the end of the {@code fileBytes}-byte file.
     */
    private void checkTablePointer(String what, long off, long fileBytes) throws IOException {
        String on = metadataAt(off);
        if (on != null) {
            throw damaged(what + ", inside the " + on);
        }
        if (off > fileBytes - clusterSize) {
            throw damaged(what + ", past the end of the file (" + fileBytes + " bytes)");
        }
    }

    /** Sorts the first {@code n} offsets (all positive) and returns the smallest that appears twice, or -1. */
    private static long sortAndFindRepeat(long[] offsets, int n) {
        Arrays.sort(offsets, 0, n);
        for (int i = 1; i < n; i++) {
            if (offsets[i] == offsets[i - 1]) {
                return offsets[i];
            }
        }
        return -1;
    }

    /**
     * Which of the L1 table and the refcount table the cluster at {@code off} lies in, or null. (The header's cluster
     * cannot be named: a table entry of 0 means none.)
     */
    private String metadataAt(long off) {
        long c = off >>> clusterBits;
        if (c >= l1Offset >>> clusterBits
                && c <= (l1Offset + Math.max(1, (long) l1.length() * 8) - 1) >>> clusterBits) {
            return "L1 table";
        }
        if (c >= refTableOffset >>> clusterBits && c < (refTableOffset >>> clusterBits) + refTableClusters) {
            return "refcount table";
        }
        return null;
    }

    /**
     * What the metadata cluster at host offset {@code off} is, for an error: the image header, the L1 table, the
     * refcount table, a refcount block (its table entry), an L2 table (its L1 entry), or "metadata" when none of those
     * names it now (a table another thread just replaced: the error path reads the tables without the lock).
     */
    String describe(long off) {
        long c = off >>> clusterBits;
        if (c == 0) {
            return "the image header";
        }
        String on = metadataAt(off);
        if (on != null) {
            return "the " + on;
        }
        for (int i = 0; i < refTable.length; i++) {
            if (refTable[i] != 0 && refTable[i] >>> clusterBits == c) {
                return "a refcount block (refcount table entry " + i + ")";
            }
        }
        for (int i = 0; i < l1.length(); i++) {
            long t = l1.get(i) & Qcow2Image.OFFSET_MASK;
            if (t != 0 && t >>> clusterBits == c) {
                return "an L2 table (L1 entry " + i + ")";
            }
        }
        return "metadata";
    }

    /** The refusal of a damaged image for writing. */
    private IOException damaged(String what) {
        return new IOException("qcow2 image " + path + " is damaged: " + what + "; repair it with 'qemu-img check"
                + " -r all " + path + "' or open it read-only");
    }
}
