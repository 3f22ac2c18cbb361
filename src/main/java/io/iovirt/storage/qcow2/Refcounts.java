// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.memory.AddressRanges;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The refcounts of one {@link Qcow2Image} and the cluster allocator built on them (QEMU's qcow2-refcount.c): the
 * refcount table (kept whole in memory), the refcount blocks (in their own {@link MetaCache}), the allocation
 * cursor, the refcount decrements deferred to the next flush, the quarantine of the clusters a request given up on
 * in the kernel may still write ({@link #quarantine}), and the rebuild of an image left dirty.
 *
 * <p>It keeps two rules of the image's crash-consistency contract (rules 3 and 4 in {@link Qcow2Image}): a refcount
 * decrement is applied only after the flush that made the dereference durable, and once the requests in flight
 * then completed ({@link #freeAfterFlush},
 * {@link #applyDeferredFrees}); a new refcount block or refcount table is written and synced before the pointer to
 * it ({@link #ensureRefBlock}, {@link #growRefTable}, {@link #switchRefTable}). Changed refcounts stay in memory
 * until the image's flush writes the dirty blocks ({@link #blocks}) first, before the tables that reference what
 * they count (rule 2; the order itself is {@link Qcow2Image}'s flushMetadata).
 *
 * <h2>Locking</h2>
 * Every method requires the image's metadata lock, or runs while the image is opened (one thread, before it is
 * shared); {@link #close} runs once the image is marked closed, when nothing calls in any more. Nothing here is read
 * lock-free: the data path reads neither refcounts nor the refcount table. Loading a refcount block may flush the
 * whole image to make room in the cache ({@link Qcow2Image#makeRoom}), which comes back here through
 * {@link #applyDeferredFrees}.
 */
final class Refcounts {
    static final long DEFAULT_REFCOUNT_CACHE_BYTES = 4L << 20;

    /**
     * Memory the dirty-image repair may take for its counts (2 bytes per cluster up to the highest one referenced):
     * 1 GiB covers 32 TiB of referenced clusters at 64 KiB clusters. A bigger image (or a smaller heap) is sent to
     * 'qemu-img check -r all' instead of an OutOfMemoryError.
     */
    private static final long MAX_REBUILD_COUNT_BYTES = 1L << 30;

    private final Qcow2Image img;
    private final Path path;
    private final Fd fd;
    private final int align;
    private final Qcow2Header header;
    private final int clusterBits;
    private final long clusterSize;
    private final int refcountOrder;
    /** Refcounts per refcount block. */
    private final long refBlockEntries;

    private final long maxRefcount;
    private final MetaCache refCache;
    private long[] refTable;
    private long refTableOffset;
    private int refTableClusters;
    /** No cluster below it is free, as far as the allocator knows (a lower bound for its scan). */
    private long freeHint;
    /**
     * Every cluster from here on is free, whatever a refcount block says: it lies past the end of the file and past
     * every cluster this image allocated. The allocator never reads a refcount there, so a refcount structure
     * claiming clusters the file does not have cannot make it scan beyond what exists.
     */
    private long allocEnd;
    /** Host ranges (offset, bytes) whose decrement is due now: applied by the next {@link #applyDeferredFrees}. */
    private final List<long[]> pendingFree = new ArrayList<>();
    /**
     * Host ranges (offset, bytes) an L2 entry stopped referencing since the last flush (a discard, a compressed or
     * shared cluster copied out): freed as {@link #pendingFree}'s, once the lock-free reads and writes in flight at
     * the flush that made the dereference durable completed ({@link #waiting}).
     */
    private final List<long[]> dereferenced = new ArrayList<>();
    /** Dereferenced ranges whose dereference is durable, each batch with the requests it waits for. */
    private final java.util.ArrayDeque<Dereferenced> waiting = new java.util.ArrayDeque<>();
    /**
     * Batches {@link #freeForReadOnly} freed before their requests completed: taken again by {@link #retakeForWrites}
     * if the image becomes writable while one of them is still in flight.
     */
    private final List<Dereferenced> freedEarly = new ArrayList<>();

    /** Dereferenced host ranges (offset, bytes) and the requests in flight when their flush ran. */
    private record Dereferenced(List<long[]> ranges, Qcow2Image.InFlight inFlight) {}

    /**
     * The clusters a request given up on in the kernel may still write or read at any time ({@link #quarantine}):
     * never handed out by the allocator while the image is open, and never counted down to 0 ({@link #held}). Sorted,
     * merged runs: run {@code i} is clusters [quarantinedFirst[i], quarantinedLast[i]], with a gap between runs; one
     * request's run is one entry, whatever its length (with 512-byte clusters a request of 1022 segments of 1 MiB
     * spans two million clusters). Only grows; kept across a {@link #reload}, since the kernel may still carry the
     * request out.
     */
    private long[] quarantinedFirst = new long[0];

    private long[] quarantinedLast = new long[0];

    /** How many clusters the runs hold. */
    private long quarantinedCount;

    /**
     * The count-downs to 0 of quarantined clusters that were due, per cluster, held back: each such cluster stays
     * allocated with nothing referencing it, a leak on purpose ({@link #leaked}). Not applied at close either: the
     * kernel may carry the request out after the image closed, and the next program to open it would hand the
     * cluster out. 'qemu-img check -r leaks' reclaims them once this process has exited.
     */
    private final Map<Long, Long> held = new HashMap<>();

    /** The refcounts of {@code img}, as its header {@code h} describes them; {@link #load} reads the table. */
    Refcounts(Qcow2Image img, Path path, Fd fd, int align, Qcow2Header h) {
        this.img = img;
        this.path = path;
        this.fd = fd;
        this.align = align;
        this.header = h;
        this.clusterBits = h.clusterBits();
        this.clusterSize = 1L << clusterBits;
        this.refcountOrder = h.refcountOrder();
        this.refBlockEntries = clusterSize * 8 >> refcountOrder;
        this.maxRefcount = refcountOrder == 6 ? Long.MAX_VALUE : (1L << (1 << refcountOrder)) - 1;
        this.refCache = new MetaCache((int) Math.max(4, DEFAULT_REFCOUNT_CACHE_BYTES / clusterSize), t -> {});
        this.refTableOffset = h.refTableOffset();
        this.refTableClusters = h.refTableClusters();
    }

    /** Reads the refcount table, checking each entry, and places the allocator at the end of the file. */
    void load() throws IOException {
        refTable = new long[(int) ((long) refTableClusters * clusterSize / 8)];
        MemorySegment buf = img.staging((long) refTable.length * 8);
        img.readMeta(buf, refTableOffset);
        for (int i = 0; i < refTable.length; i++) {
            refTable[i] = buf.get(Qcow2Header.BE64, (long) i * 8) & ~511L;
            MetadataLayout.checkClusterBoundary(path, clusterSize, refTable[i], "refcount table entry " + i);
        }
        allocEnd = (FileIo.size(fd) + clusterSize - 1) >>> clusterBits;
    }

    /**
     * Forgets what it read and cached, and reads the refcount table {@code h} names (another process changed the
     * image; metadata lock held, nothing dirty).
     */
    void reload(Qcow2Header h) throws IOException {
        refCache.clearAll();
        pendingFree.clear();
        dereferenced.clear();
        waiting.clear();
        freedEarly.clear(); // no request is in flight at a refresh
        held.clear(); // the refcounts are read again: what this image held back is on disk as it was (allocated)
        refTableOffset = h.refTableOffset();
        refTableClusters = h.refTableClusters();
        freeHint = 0;
        load();
    }

    /** The refcount table's entries (read-only for the caller: it changes here only). */
    long[] table() {
        return refTable;
    }

    /** refcount_order: refcounts are 2^order bits wide. */
    int order() {
        return refcountOrder;
    }

    long tableOffset() {
        return refTableOffset;
    }

    int tableClusters() {
        return refTableClusters;
    }

    /** The cached refcount blocks: a flush writes the dirty ones first, then syncs. */
    Iterable<MetaCache.Table> blocks() {
        return refCache.all();
    }

    /** Drops the cached blocks: the image is closed (its last flush has run) or its open failed. */
    void close() {
        refCache.close();
    }

    // ---- refcounts ---------------------------------------------------------------------------------------------

    private long refcount(long cluster) throws IOException {
        long bi = cluster / refBlockEntries;
        if (bi >= refTable.length || refTable[(int) bi] == 0) {
            return 0;
        }
        MetaCache.Table b = img.table(refCache, refTable[(int) bi]);
        return getRef(b.data, cluster % refBlockEntries);
    }

    private void setRefcount(long cluster, long value) throws IOException {
        if (value < 0 || value > maxRefcount) {
            throw new IOException("qcow2 image " + path + ": refcount of cluster " + cluster + " would be " + value);
        }
        long bi = cluster / refBlockEntries;
        ensureRefBlock(bi);
        MetaCache.Table b = img.table(refCache, refTable[(int) bi]);
        long i = cluster % refBlockEntries;
        setRef(b.data, i, value);
        int byteLo = (int) ((i << refcountOrder) >>> 3);
        b.markDirty(byteLo, byteLo + Math.max(1, (1 << refcountOrder) >>> 3));
    }

    /** Refcount {@code i} of block {@code d}, 1 to 64 bits wide (refcount_order 0 to 6). */
    private long getRef(MemorySegment d, long i) {
        return switch (refcountOrder) {
            case 6 -> d.get(Qcow2Header.BE64, i * 8);
            case 5 -> Integer.toUnsignedLong(d.get(Qcow2Header.BE32, i * 4));
            case 4 -> Short.toUnsignedLong(d.get(Qcow2Header.BE16, i * 2));
            case 3 -> Byte.toUnsignedLong(d.get(ValueLayout.JAVA_BYTE, i));
            default -> {
                int bits = 1 << refcountOrder;
                long bit = i * bits;
                int b = Byte.toUnsignedInt(d.get(ValueLayout.JAVA_BYTE, bit >>> 3));
                yield (b >>> (bit & 7)) & ((1 << bits) - 1);
            }
        };
    }

    private void setRef(MemorySegment d, long i, long v) {
        switch (refcountOrder) {
            case 6 -> d.set(Qcow2Header.BE64, i * 8, v);
            case 5 -> d.set(Qcow2Header.BE32, i * 4, (int) v);
            case 4 -> d.set(Qcow2Header.BE16, i * 2, (short) v);
            case 3 -> d.set(ValueLayout.JAVA_BYTE, i, (byte) v);
            default -> {
                int bits = 1 << refcountOrder;
                long bit = i * bits;
                int mask = ((1 << bits) - 1) << (bit & 7);
                int b = Byte.toUnsignedInt(d.get(ValueLayout.JAVA_BYTE, bit >>> 3));
                d.set(ValueLayout.JAVA_BYTE, bit >>> 3, (byte) ((b & ~mask) | ((int) v << (bit & 7))));
            }
        }
    }

    // ---- allocation --------------------------------------------------------------------------------------------

    /**
     * The file offset of a free cluster, its refcount set to 1 (in memory; written at the next flush, before any
     * reference to it).
     */
    long allocateCluster() throws IOException {
        long c = freeHint;
        while (!isFree(c)) {
            c++; // ends at allocEnd at the latest: past it only metadata this image placed there is not free
        }
        setRefcount(c, 1);
        freeHint = c + 1;
        allocEnd = Math.max(allocEnd, c + 1);
        return c << clusterBits;
    }

    /**
     * The file offset of {@code k} contiguous free clusters, their refcounts set to 1 (in memory). The run is found
     * first, without making refcount blocks (a cluster no block describes has refcount 0), then reserved while its
     * refcounts are set: a refcount block or table those need goes past it ({@link #reservedLo}), as in QEMU. Making
     * the blocks while searching, as {@link #allocateCluster} does, put a block on the first cluster of each block's
     * range, inside any run longer than that range: with 512-byte clusters and 16-bit refcounts (256 clusters per
     * block) no L1 table of more than 255 clusters could be placed, and the search grew the refcount table until it
     * could not grow ("refcount table cannot grow") on a resize to 32 GiB.
     */
    long allocateContiguous(int k) throws IOException {
        long c = freeHint;
        search:
        while (true) {
            for (int i = 0; i < k; i++) {
                if (!isFreeNow(c + i)) { // ends past allocEnd, where every cluster but metadata is free
                    c += i + 1;
                    continue search;
                }
            }
            break;
        }
        reservedLo = c;
        reservedHi = c + k;
        try {
            for (int i = 0; i < k; i++) {
                setRefcount(c + i, 1); // may make blocks (and a bigger table): past reservedHi
            }
        } finally {
            reservedLo = 0;
            reservedHi = 0;
        }
        allocEnd = Math.max(allocEnd, c + k);
        return c << clusterBits;
    }

    /**
     * Clusters [reservedLo, reservedHi): a run {@link #allocateContiguous} is counting, where no refcount block or
     * table may go. Empty (0, 0) otherwise. Grows past the run as blocks are placed after it, so that each lands on a
     * cluster of its own.
     */
    private long reservedLo;

    private long reservedHi;

    /** Whether cluster {@code c} is free as the refcounts are now, making no refcount block. */
    private boolean isFreeNow(long c) throws IOException {
        return !img.overlapsMetadata(c << clusterBits, 1) && !isQuarantined(c) && (c >= allocEnd || refcount(c) == 0);
    }

    /** Whether a refcount block describes cluster {@code c}. */
    private boolean hasBlock(long c) {
        long bi = c / refBlockEntries;
        return bi < refTable.length && refTable[(int) bi] != 0;
    }

    /** Whether {@code c} lies in the run {@link #allocateContiguous} is counting. */
    private boolean isReserved(long c) {
        return c >= reservedLo && c < reservedHi;
    }

    /**
     * Takes back the cluster at {@code host} that {@link #allocateCluster} handed out and nothing references yet:
     * its refcount is 0 again at once, and the next allocation may take it.
     */
    void unallocate(long host) throws IOException {
        long c = host >>> clusterBits;
        setRefcount(c, 0);
        freeHint = Math.min(freeHint, c);
    }

    /**
     * Whether cluster {@code c} may be handed out, its refcount block made to exist. A metadata cluster whose
     * refcount says 0 is damage (or a crafted image): handing it out would write an L2 table or guest data over the
     * header, the L1 or a refcount structure, so it is never free. Past {@link #allocEnd} every other cluster is.
     */
    private boolean isFree(long c) throws IOException {
        if (img.overlapsMetadata(c << clusterBits, 1) || isQuarantined(c) || (c < allocEnd && refcount(c) != 0)) {
            return false;
        }
        ensureRefBlock(c / refBlockEntries); // may place a new refcount block (or table) on c itself
        return !img.overlapsMetadata(c << clusterBits, 1) && (c >= allocEnd || refcount(c) == 0);
    }

    // ---- freeing -----------------------------------------------------------------------------------------------

    /**
     * Whether every cluster [host, host+bytes) touches is counted in use (refcount above 0, inside the file), so that
     * an L2 entry that stops referencing it may count it down ({@link #freeAfterFlush}). In a damaged image a
     * referenced cluster may have refcount 0: the allocator may hand it out at any time, and a decrement deferred to
     * a later flush would then count down whatever it was given to (another guest offset's data or a table), which
     * the next allocation would overwrite. There is nothing to count down: QEMU leaves such a refcount at 0 too.
     */
    boolean counted(long host, long bytes) throws IOException {
        long last = (host + bytes - 1) >>> clusterBits;
        for (long c = host >>> clusterBits; c <= last; c++) {
            if (c >= allocEnd || refcount(c) == 0) {
                return false;
            }
        }
        return true;
    }

    /**
     * Whether every metadata cluster (header, L1, L2 or refcount table or block) [host, host+bytes) touches has a
     * refcount above 1, so that an L2 entry naming it as data may stop referencing it and count it down without the
     * table reaching refcount 0. That is a damaged image 'qemu-img check -r all' repaired: it counts the entry's
     * reference as a second one (and clears COPIED), and QEMU then copies such a cluster out and counts it down.
     * The count-downs still deferred are taken off first: two entries naming a table whose refcount counts only one
     * of them would bring it to 0 together. Only a range on metadata pays for that scan: a damaged image's.
     */
    boolean countedBeyondMetadata(long host, long bytes) throws IOException {
        long last = (host + bytes - 1) >>> clusterBits;
        for (long c = host >>> clusterBits; c <= last; c++) {
            if (img.overlapsMetadata(c << clusterBits, 1)
                    && (c >= allocEnd || refcount(c) - deferredCountDowns(c) < 2)) {
                return false;
            }
        }
        return true;
    }

    /** How many count-downs of cluster {@code c} are deferred (not yet applied to its refcount). */
    private long deferredCountDowns(long c) {
        long n = covering(dereferenced, c) + covering(pendingFree, c);
        for (Dereferenced d : waiting) {
            n += covering(d.ranges(), c);
        }
        return n;
    }

    private long covering(List<long[]> ranges, long c) {
        long n = 0;
        for (long[] r : ranges) {
            if (c >= r[0] >>> clusterBits && c <= (r[0] + r[1] - 1) >>> clusterBits) {
                n++;
            }
        }
        return n;
    }

    /**
     * Counts down each cluster [host, host+bytes) touches, which an L2 entry stopped referencing in memory (a
     * cluster discarded, a compressed or shared cluster copied out): after the flush that makes that entry durable
     * (until then the old one on disk still references them), and not while a lock-free data read or write that
     * looked the entry up before the change may still be in flight. Such a request would read or write the clusters
     * once the allocator handed them out again: a read would return another guest offset's data (or a table), a
     * write would land on it. One mechanism for every such free: the decrement waits for a later flush
     * ({@link #applyDeferredFrees}).
     */
    void freeAfterFlush(long host, long bytes) {
        dereferenced.add(new long[] {host, bytes});
    }

    /**
     * Applies the decrements {@link #freeAfterFlush} deferred whose requests are over. The flush calls it once the
     * dereferences are durable (its last sync); the changed blocks are written at the next flush.
     */
    void applyDeferredFrees() throws IOException {
        // Ordering: every entry in dereferenced was changed (volatile) before this flush began, so a request that
        // starts after requestsNow() looks the new entry up and never finds these clusters; requestsNow() is taken
        // after the flush's syncs, so the batch also waits for every request that could have found the old entry.
        if (!dereferenced.isEmpty()) {
            waiting.add(new Dereferenced(new ArrayList<>(dereferenced), img.requestsNow()));
            dereferenced.clear();
        }
        for (java.util.Iterator<Dereferenced> it = waiting.iterator(); it.hasNext(); ) {
            Dereferenced d = it.next();
            if (d.inFlight().over()) {
                pendingFree.addAll(d.ranges());
                it.remove();
            }
        }
        decrement();
    }

    /**
     * The image becomes read-only (its flush made every dereference durable and moved it to {@link #waiting}): the
     * batches still waiting for requests in flight are freed now, so that the file the switch leaves for other
     * programs has no leaked clusters but the quarantined ones ({@link #hold}). Freeing them early is safe while the
     * image is read-only: nothing allocates (every allocation re-checks writability under the metadata lock), so no
     * cluster is handed out while a request is still on it. The decrements land at the next flush (the switch runs
     * two). Metadata lock held.
     */
    void freeForReadOnly() {
        for (Dereferenced d : waiting) {
            pendingFree.addAll(d.ranges());
            freedEarly.add(d);
        }
        waiting.clear();
    }

    /**
     * The image becomes writable again: a batch {@link #freeForReadOnly} freed while requests were in flight, whose
     * requests still are, is counted up again and waits as before, since the allocator runs again. Free ones are
     * forgotten. A batch not counted down yet (the switch's write-back failed before it) is taken out of
     * {@link #pendingFree} instead. Metadata lock held; the increments are written at the next flush (a crash before
     * leaves the clusters free, which nothing references).
     */
    void retakeForWrites() throws IOException {
        for (Dereferenced d : freedEarly) {
            if (d.inFlight().over()) {
                continue;
            }
            // the same arrays freeForReadOnly added: equals is identity, and decrement takes them all at once
            if (pendingFree.removeAll(d.ranges())) {
                waiting.add(d);
                continue;
            }
            for (long[] r : d.ranges()) {
                long last = (r[0] + r[1] - 1) >>> clusterBits;
                for (long c = r[0] >>> clusterBits; c <= last; c++) {
                    // a count-down held back (hold) was never applied: nothing to take back (with 1-bit
                    // refcounts, refcount_order 0, an increment to 2 would fail the switch)
                    if (!unhold(c)) {
                        setRefcount(c, refcount(c) + 1);
                    }
                }
            }
            waiting.add(d);
        }
        freedEarly.clear();
    }

    /** Counts down the clusters of {@link #pendingFree} (in memory; the next flush writes them). */
    private void decrement() throws IOException {
        List<long[]> frees = new ArrayList<>(pendingFree);
        pendingFree.clear();
        for (long[] r : frees) {
            long first = r[0] >>> clusterBits;
            long last = (r[0] + r[1] - 1) >>> clusterBits;
            for (long c = first; c <= last; c++) {
                long rc = refcount(c);
                if (rc > 0 && !hold(c, rc)) {
                    setRefcount(c, rc - 1);
                    if (rc == 1) {
                        freeHint = Math.min(freeHint, c);
                    }
                }
            }
        }
    }

    /**
     * Counts down the {@code clusters} clusters at {@code offset} of a table the header no longer names (synced):
     * an old L1 or refcount table, replaced by a bigger one.
     */
    void releaseOldTable(long offset, long clusters) throws IOException {
        for (long i = 0; i < clusters; i++) {
            long c = (offset >>> clusterBits) + i;
            long rc = refcount(c);
            if (!hold(c, rc)) { // a damaged image's L2 entry may have named the table as data a request read
                setRefcount(c, rc - 1);
                freeHint = Math.min(freeHint, c);
            }
        }
    }

    // ---- quarantine --------------------------------------------------------------------------------------------

    /**
     * Quarantines the clusters host bytes [host, host+bytes) touch: a request given up on in the kernel may still
     * write (or read) them at any time. From now on the allocator never hands them out, and a count-down that would
     * free one is held back ({@link #hold}), while the image is open. A {@code write}'s cluster that a switch to
     * read-only freed already ({@link #freeForReadOnly}: its free waited for this request) is counted up to 1
     * again, held as if its count-down had come now (so {@link #retakeForWrites} does not count it up twice): left
     * free, it would be free on disk after the close while the write may still land on it, for the next program to
     * hand out. Returns how many such clusters were counted up: their refcounts are to be written. Nothing is
     * recorded when reading a refcount fails.
     */
    int quarantine(long host, long bytes, boolean write) throws IOException {
        long first = host >>> clusterBits;
        long last = (host + bytes - 1) >>> clusterBits;
        List<Long> retake = new ArrayList<>();
        if (write && !freedEarly.isEmpty()) {
            // Also a cluster a read given up on quarantined already: a later free is held back, so one at 0 that a
            // switch to read-only freed was freed before any quarantine, and the write may land on it.
            for (long c = first; c <= last; c++) {
                if (c < allocEnd && hasBlock(c) && refcount(c) == 0 && freedEarly(c)) {
                    retake.add(c);
                }
            }
        }
        addQuarantined(first, last);
        for (long c : retake) {
            setRefcount(c, 1); // its block is cached: refcount(c) just read it
            held.merge(c, 1L, Long::sum);
        }
        return retake.size();
    }

    /** Whether cluster {@code c} lies in a batch {@link #freeForReadOnly} freed early. */
    private boolean freedEarly(long c) {
        for (Dereferenced d : freedEarly) {
            for (long[] r : d.ranges()) {
                if (c >= r[0] >>> clusterBits && c <= (r[0] + r[1] - 1) >>> clusterBits) {
                    return true;
                }
            }
        }
        return false;
    }

    /**
     * Adds clusters [first, last] to the quarantined runs, merged with those they overlap or touch: a copy of the
     * run arrays (as many entries as runs), not of the clusters.
     */
    private void addQuarantined(long first, long last) {
        int n = quarantinedFirst.length;
        int lo = AddressRanges.floor(quarantinedFirst, first); // the last run starting at or below first
        if (lo < 0 || quarantinedLast[lo] < first - 1) {
            lo++; // that one ends before, with a gap: not merged
        }
        int hi = AddressRanges.floor(quarantinedFirst, last + 1) + 1; // runs [lo, hi) overlap or touch
        long f = first;
        long l = last;
        long merged = 0;
        if (lo < hi) {
            f = Math.min(first, quarantinedFirst[lo]);
            l = Math.max(last, quarantinedLast[hi - 1]);
            for (int i = lo; i < hi; i++) {
                merged += quarantinedLast[i] - quarantinedFirst[i] + 1;
            }
        }
        long[] nf = new long[n - (hi - lo) + 1];
        long[] nl = new long[nf.length];
        System.arraycopy(quarantinedFirst, 0, nf, 0, lo);
        System.arraycopy(quarantinedLast, 0, nl, 0, lo);
        nf[lo] = f;
        nl[lo] = l;
        System.arraycopy(quarantinedFirst, hi, nf, lo + 1, n - hi);
        System.arraycopy(quarantinedLast, hi, nl, lo + 1, n - hi);
        quarantinedFirst = nf;
        quarantinedLast = nl;
        quarantinedCount += l - f + 1 - merged;
    }

    private boolean isQuarantined(long c) {
        int i = AddressRanges.floor(quarantinedFirst, c);
        return i >= 0 && quarantinedLast[i] >= c;
    }

    /**
     * The end (exclusive) of the last quarantined cluster in clusters [lo, hi), or -1 when none of them is
     * quarantined.
     */
    private long quarantinedEnd(long lo, long hi) {
        int i = AddressRanges.floor(quarantinedFirst, hi - 1); // the last run starting at or below hi - 1
        return i >= 0 && quarantinedLast[i] >= lo ? Math.min(quarantinedLast[i], hi - 1) + 1 : -1;
    }

    /**
     * Whether the count-down of cluster {@code c} from refcount {@code rc} is held back: it would free a quarantined
     * cluster, which then stays allocated (counted in {@link #held}).
     */
    private boolean hold(long c, long rc) {
        if (rc != 1 || !isQuarantined(c)) {
            return false;
        }
        held.merge(c, 1L, Long::sum);
        return true;
    }

    /** Forgets one count-down of {@code c} {@link #hold} held back, if there is one: true then. */
    private boolean unhold(long c) {
        Long n = held.get(c);
        if (n == null) {
            return false;
        }
        if (n == 1) {
            held.remove(c);
        } else {
            held.put(c, n - 1);
        }
        return true;
    }

    /** How many clusters are quarantined ({@link #quarantine}). */
    long quarantinedClusters() {
        return quarantinedCount;
    }

    /** How many quarantined clusters stay allocated with nothing referencing them: leaked on purpose. */
    long leaked() {
        return held.size();
    }

    // ---- refcount structures -----------------------------------------------------------------------------------

    /**
     * Makes refcount block {@code bi} exist. A new block is placed on the first cluster it describes (free: no
     * block described it, so its refcount was 0) and counts itself; it is written and synced before the refcount
     * table points to it. Past that cluster when it is reserved or quarantined ({@link #placeRefBlockAfterReserved}).
     */
    private void ensureRefBlock(long bi) throws IOException {
        if (bi >= refTable.length) {
            growRefTable(bi);
        }
        if (refTable[(int) bi] != 0) {
            return;
        }
        long cluster = bi * refBlockEntries;
        if (isReserved(cluster)) {
            placeRefBlockAfterReserved(bi);
            return;
        }
        if (isQuarantined(cluster)) {
            // A request given up on in the kernel may still write it (a refcount rebuild left its range without a
            // block): the block goes past it, as past a reserved run, where that late write cannot land.
            if (reservedHi > reservedLo) {
                placeRefBlockAfterReserved(bi); // allocateContiguous's run is reserved: past it too
                return;
            }
            reservedLo = cluster;
            reservedHi = cluster + 1;
            try {
                placeRefBlockAfterReserved(bi);
            } finally {
                reservedLo = 0;
                reservedHi = 0;
            }
            return;
        }
        long off = cluster << clusterBits;
        if (img.overlapsMetadata(off, clusterSize)) {
            // the block would go over the header or a table: the refcount table lacks a block a consistent image has
            throw new IOException("qcow2 image " + path + " is damaged: no refcount block covers metadata cluster "
                    + cluster + "; the write was refused (repair it with 'qemu-img check -r all " + path + "')");
        }
        MemorySegment data = MetaCache.allocate(clusterSize);
        setRef(data, 0, 1);
        publishRefBlock(bi, off, data);
    }

    /**
     * Makes refcount block {@code bi}, whose first cluster lies in the run {@link #allocateContiguous} is counting,
     * on the first free cluster past the run (as QEMU places a new block anywhere free). When that cluster lies in
     * the block's own range the block counts itself; otherwise the block that describes it counts it, and is written
     * and synced first. Either way the block's own refcount is durable before the table points at it (rule 4).
     */
    private void placeRefBlockAfterReserved(long bi) throws IOException {
        long q = reservedHi;
        // not the first cluster of a range without a block (other than bi's): that block would be placed there
        while (!isFreeNow(q) || (q / refBlockEntries != bi && q % refBlockEntries == 0 && !hasBlock(q))) {
            q++;
        }
        reservedHi = q + 1; // a block the one describing q needs goes past q too
        long off = q << clusterBits;
        MemorySegment data = MetaCache.allocate(clusterSize);
        if (q / refBlockEntries == bi) {
            setRef(data, q % refBlockEntries, 1);
        } else {
            // Ordering: the describing block (made first if need be, after the run too) holds q's refcount before
            // this block is written; it is written now, so q's refcount is on disk before the table names q.
            setRefcount(q, 1);
            MetaCache.Table b = img.table(refCache, refTable[(int) (q / refBlockEntries)]);
            img.writeMeta(b.data, 0, clusterSize, b.offset);
            b.clean(); // what else it held is safe early: increments leak at worst, decrements are due already
        }
        publishRefBlock(bi, off, data);
    }

    /**
     * The tail {@link #ensureRefBlock} and {@link #placeRefBlockAfterReserved} share: writes the new refcount block
     * {@code data} at {@code off} and syncs it (with whatever block counting it was written before), then points
     * refcount table entry {@code bi} at it and syncs again (rule 4), then caches it and indexes it as metadata.
     * The in-memory entry names the block only once the disk's does: when the entry's write fails, the image refuses
     * every later write ({@link Qcow2Image#publish}), and before that nothing may be counted in a block the table on
     * disk does not name (or the block's cluster, not indexed as metadata yet, taken for data).
     */
    private void publishRefBlock(long bi, long off, MemorySegment data) throws IOException {
        img.makeRoom(refCache);
        img.writeMeta(data, 0, clusterSize, off);
        img.sync(); // the block (and the one counting it) before the table points at it
        MemorySegment entry = img.staging(8);
        entry.set(Qcow2Header.BE64, 0, off);
        img.publish(entry, refTableOffset + bi * 8);
        refTable[(int) bi] = off;
        refCache.put(off, data);
        img.addMetadataCluster(off);
        allocEnd = Math.max(allocEnd, (off >>> clusterBits) + 1);
    }

    /**
     * Grows the refcount table to cover block {@code bi}. The new table and the new refcount blocks that count it go
     * in one run of free clusters past every cluster the old table covers (or past the run {@link #allocateContiguous}
     * is counting, {@link #newRefStructures}): first the blocks, one for each block range the run touches, then the
     * table. The run describes itself (each of its clusters is counted by the new block of its range), as qcow2
     * allows a refcount block anywhere, so nothing the old table names changes before the switch and no size of the
     * table is too big for the blocks that count it. The blocks and the table are written and synced, then the header
     * is switched to the new table in one sector write and synced; the old table's clusters are freed. A crash before
     * the switch leaves the run where no block of the old table counts it: not referenced, not counted.
     */
    private void growRefTable(long bi) throws IOException {
        long entriesPerCluster = clusterSize / 8;
        long doubled = Math.min(2L * refTableClusters, Qcow2Header.MAX_REFTABLE_BYTES / clusterSize); // not past it
        long tableClusters = Math.max(doubled, (bi + 2 + entriesPerCluster - 1) / entriesPerCluster);
        long blocks = 1;
        long p = newRefStructures(blocks + tableClusters);
        // A fixpoint: the blocks count the run, the table names the blocks, the run avoids the reserved one. Each
        // value only grows (a spare block counts a range past the run, all 0), so it settles within a few rounds.
        for (int round = 0; ; round++) {
            if (tableClusters * clusterSize > Qcow2Header.MAX_REFTABLE_BYTES || round == 64) {
                throw new IOException("qcow2 image " + path + ": refcount table cannot grow to " + tableClusters
                        + " clusters (more than " + (Qcow2Header.MAX_REFTABLE_BYTES >> 20) + " MiB, QEMU's limit"
                        + " too); the image is too large for cluster size " + clusterSize + " and refcount_bits "
                        + (1 << refcountOrder) + " (convert it with a bigger cluster_size or a smaller"
                        + " refcount_bits)");
            }
            long b = Math.max(blocks, (p + blocks + tableClusters - 1) / refBlockEntries - p / refBlockEntries + 1);
            long t = Math.max(tableClusters, (p / refBlockEntries + b + entriesPerCluster - 1) / entriesPerCluster);
            long q = Math.max(p, newRefStructures(b + t));
            if (b == blocks && t == tableClusters && q == p) {
                break;
            }
            blocks = b;
            tableClusters = t;
            p = q;
        }
        long oldCharged = img.chargedRefTable();
        img.chargeRefTable(
                tableClusters,
                "growing its refcount table to " + tableClusters + " clusters (for a cluster a write allocates; the"
                        + " write was refused)");
        long[] old = refTable;
        try {
            growRefTableCharged(tableClusters, blocks, p);
        } finally {
            if (refTable == old) { // failed before the switch: the old table stays in use
                img.chargeRefTableAnyway(oldCharged);
            }
        }
    }

    /**
     * Where {@link #growRefTable} places its run of {@code clusters} clusters (new refcount blocks, then the new
     * table): the first cluster the old table does not cover (all free: no block counts them), or past the run
     * {@link #allocateContiguous} is counting when the two would overlap.
     */
    private long newRefStructures(long clusters) {
        long p = (long) refTable.length * refBlockEntries; // first cluster the old table does not cover
        while (true) {
            if (reservedHi > p && reservedLo < p + clusters) {
                p = reservedHi;
                continue;
            }
            // nor over a quarantined cluster (one a refcount rebuild left past what its table covers)
            long q = quarantinedEnd(p, p + clusters);
            if (q < 0) {
                return p;
            }
            p = q;
        }
    }

    /**
     * {@link #growRefTable} to {@code tableClusters} clusters, charged already: {@code blocks} refcount blocks at
     * cluster {@code p}, the table after them. Block {@code j} describes block range {@code p / refBlockEntries + j}.
     */
    private void growRefTableCharged(long tableClusters, long blocks, long p) throws IOException {
        long entriesPerCluster = clusterSize / 8;
        long end = p + blocks + tableClusters; // exclusive
        long firstRange = p / refBlockEntries;
        long tableOff = (p + blocks) << clusterBits;
        for (long c = p; c < end; c++) {
            if (img.overlapsMetadata(c << clusterBits, 1)) {
                // a table or block past what the refcount table covers: its refcount was never counted
                throw new IOException("qcow2 image " + path + " is damaged: metadata cluster " + c + " lies past"
                        + " what its refcount table covers; the write was refused (repair it with 'qemu-img check"
                        + " -r all " + path + "')");
            }
        }
        MemorySegment[] made = new MemorySegment[(int) blocks];
        long[] table = Arrays.copyOf(refTable, (int) (tableClusters * entriesPerCluster));
        for (int j = 0; j < blocks; j++) {
            MemorySegment block = MetaCache.allocate(clusterSize);
            long lo = (firstRange + j) * refBlockEntries;
            for (long c = Math.max(p, lo); c < Math.min(end, lo + refBlockEntries); c++) {
                setRef(block, c - lo, 1); // the run's clusters in this block's range: blocks and table
            }
            long off = (p + j) << clusterBits;
            img.writeMeta(block, 0, clusterSize, off);
            table[(int) (firstRange + j)] = off;
            made[j] = block;
        }
        switchRefTable(table, tableOff, tableClusters); // syncs the blocks and the table before the header names it
        long oldOff = refTableOffset;
        int oldClusters = refTableClusters;
        refTable = table;
        refTableOffset = tableOff;
        refTableClusters = (int) tableClusters;
        for (int j = 0; j < blocks && !refCache.full(); j++) {
            refCache.put((p + j) << clusterBits, made[j]); // others are read when needed (none is cached already)
        }
        img.addMetadataClusters(p << clusterBits, end - p); // the blocks and the table
        allocEnd = Math.max(allocEnd, end);
        if (reservedHi > reservedLo) {
            reservedHi = Math.max(reservedHi, end); // later blocks go past these too
        }
        img.dropMetadataClusters(oldOff, oldClusters); // the old table's clusters become free data clusters
        releaseOldTable(oldOff, oldClusters);
    }

    /**
     * Writes {@code table} as the refcount table at {@code tableOff} ({@code clusters} clusters), syncs it, then
     * points the header at it in one write and syncs again: a crash leaves the header naming the old table or the
     * complete new one. When the header's write fails, the caller keeps the old table in memory and the image
     * refuses every later write ({@link Qcow2Image#publish}): the header on disk may name either table, and a table
     * entry or a growth written next to the old one would be missing from, or written over, the new one.
     */
    private void switchRefTable(long[] table, long tableOff, long clusters) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment t = a.allocate(clusters * clusterSize, 4096);
            for (int i = 0; i < table.length; i++) {
                t.set(Qcow2Header.BE64, (long) i * 8, table[i]);
            }
            Qcow2Image.writeFile(fd, t, tableOff, align);
            img.sync();
            MemorySegment h = a.allocate(12);
            h.set(Qcow2Header.BE64, 0, tableOff);
            h.set(Qcow2Header.BE32, 8, (int) clusters);
            img.publish(h, Qcow2Header.OFF_REFTABLE); // a failure: no later write (the header may name either)
        }
    }

    // ---- repair ------------------------------------------------------------------------------------------------

    /**
     * Rebuilds the refcounts of an image whose dirty bit is set (written with lazy refcounts, not closed cleanly):
     * every cluster the header, the tables and the L2 entries reference is counted; a new refcount table and
     * blocks describing exactly those (and themselves) are written past the end of the file and synced; then the
     * header is switched to them in one sector write and synced; then the dirty bit is cleared and synced. A
     * crash in between leaves the dirty bit set and the old tables in use, so the repair simply runs again. The
     * old refcount structures become free clusters.
     *
     * <p>What it takes is sized by what the metadata references, never by the file's apparent size (a hostile
     * image can be a 1 KiB header truncated to a terabyte): counts up to the highest referenced cluster, and
     * refcount blocks only for those and for the new structures (the table's entries for the unreferenced clusters
     * between them stay 0: no block, refcount 0). Both are bounded, with a clear error beyond the bound.
     */
    void rebuildRefcounts() throws IOException {
        long fileClusters = Math.max(1, (FileIo.size(fd) + clusterSize - 1) >>> clusterBits);
        // First pass: the highest referenced cluster, so the counts cover every reference.
        long[] max = {1}; // the header
        img.forEachReference(c -> max[0] = Math.max(max[0], c + 1));
        if (max[0] > fileClusters) {
            // A table entry past the end of the file is damage, not a lazy-refcount leftover (data and tables are
            // written before anything points at them); counting up to it would size the counts by a hostile number.
            throw new IOException("qcow2 image " + path + " is damaged: a table entry points at cluster "
                    + (max[0] - 1) + ", past the end of the file (" + fileClusters
                    + " clusters); its refcounts cannot be rebuilt here: run "
                    + "'qemu-img check -r all " + path + "'");
        }
        // A quarantined cluster stays allocated even when nothing references it (see hold): a request given up on
        // in the kernel may still write it. The rebuild counts it 1 then, or it would be free on disk, for the next
        // program to hand out under that late write (what hold held back was on disk as allocated, and the refresh
        // before the rebuild forgot it). Quarantined clusters past the end of the file (allocated, their write
        // given up on before it extended the file) are counted too, so the new structures go past them: landing
        // late, the write would overwrite a refcount block placed there.
        int runs = quarantinedLast.length;
        long refEnd = Math.max(max[0], runs == 0 ? 0 : quarantinedLast[runs - 1] + 1);
        // The new blocks, then the new table, go past the end of the file: nothing the old header names, and
        // nothing a crash before the switch would need, is overwritten. Blocks: those covering [0, refEnd), and
        // those covering the new structures themselves (a fixpoint: the structures must describe themselves too).
        long place = Math.max(fileClusters, refEnd);
        long lowBlocks = (refEnd + refBlockEntries - 1) / refBlockEntries;
        long blocks = lowBlocks;
        long tableClusters = 0;
        long firstHigh = 0;
        long lastHigh = -1;
        boolean settled = false;
        for (int i = 0; i < 64 && !settled; i++) {
            long newEnd = place + blocks + tableClusters; // exclusive
            long fh = Math.max(place / refBlockEntries, lowBlocks);
            long lh = (newEnd - 1) / refBlockEntries;
            long b = lowBlocks + Math.max(0, lh - fh + 1);
            long t = ((Math.max(lowBlocks, lh + 1)) * 8 + clusterSize - 1) / clusterSize;
            settled = b == blocks && t == tableClusters && fh == firstHigh && lh == lastHigh;
            blocks = b;
            tableClusters = t;
            firstHigh = fh;
            lastHigh = lh;
        }
        if (!settled || tableClusters * clusterSize > Qcow2Header.MAX_REFTABLE_BYTES) {
            throw new IOException("qcow2 image " + path + " was not closed cleanly (dirty bit) and is too large to"
                    + " rebuild its refcounts here: its " + fileClusters + " clusters of " + clusterSize
                    + " bytes would need a refcount table of more than " + (Qcow2Header.MAX_REFTABLE_BYTES >> 20)
                    + " MiB; run 'qemu-img check -r all " + path + "'");
        }
        if (refEnd * 2 > Math.min(MAX_REBUILD_COUNT_BYTES, Runtime.getRuntime().maxMemory() / 4)) {
            throw new IOException("qcow2 image " + path + " was not closed cleanly (dirty bit) and references "
                    + refEnd + " clusters; rebuilding its refcounts here would take " + (refEnd * 2 >> 20)
                    + " MiB of memory: run 'qemu-img check -r all " + path + "'");
        }
        long oldCharged = img.chargedRefTable();
        img.chargeRefTable(
                tableClusters,
                "rebuilding its refcounts (it was not closed cleanly: dirty bit) into a refcount table of "
                        + tableClusters + " clusters (or run 'qemu-img check -r all " + path + "')");
        long[] old = refTable;
        try {
            rebuildRefcountsCharged(refEnd, place, lowBlocks, blocks, tableClusters, firstHigh, lastHigh);
        } finally {
            if (refTable == old) {
                img.chargeRefTableAnyway(oldCharged); // failed before the switch: the old table stays in use
            }
        }
    }

    /** {@link #rebuildRefcounts} once the new refcount table is sized and charged. */
    private void rebuildRefcountsCharged(
            long refEnd, long place, long lowBlocks, long blocks, long tableClusters, long firstHigh, long lastHigh)
            throws IOException {
        // Counts up to 65535 in a char each; the rare cluster referenced more often (compressed clusters sharing a
        // host cluster) continues in a map, so no refcount_order (up to 64 bits) is cut short or wraps around.
        char[] counts;
        try {
            counts = new char[(int) refEnd];
        } catch (OutOfMemoryError e) {
            throw new IOException("qcow2 image " + path + " was not closed cleanly (dirty bit); rebuilding its "
                    + "refcounts needs " + (refEnd * 2 >> 20) + " MiB of memory, which this process does not have"
                    + " now: run 'qemu-img check -r all " + path + "'");
        }
        Map<Long, Long> many = new HashMap<>();
        img.forEachReference(c -> {
            int i = (int) c;
            long n = counts[i] < Character.MAX_VALUE ? ++counts[i] : many.merge(c, 1L, Long::sum) + Character.MAX_VALUE;
            if (n > maxRefcount) {
                throw new IOException("qcow2 image " + path + " is damaged: cluster " + c + " is referenced more"
                        + " than " + maxRefcount + " times (refcount_order " + refcountOrder + "); run"
                        + " 'qemu-img check -r all " + path + "'");
            }
        });
        for (int r = 0; r < quarantinedFirst.length; r++) {
            for (long c = quarantinedFirst[r]; c <= quarantinedLast[r]; c++) {
                if (counts[(int) c] == 0) {
                    counts[(int) c] = 1; // allocated, referenced by nothing: leaked on purpose, as hold leaves it
                }
            }
        }
        long newEnd = place + blocks + tableClusters;
        long[] table = new long[(int) (tableClusters * clusterSize / 8)];
        MemorySegment block = MetaCache.allocate(clusterSize);
        long at = place;
        for (long b = 0; b <= Math.max(lowBlocks - 1, lastHigh); b++) {
            if (b >= lowBlocks && b < firstHigh) {
                continue; // no cluster it describes is referenced or new: no block, every refcount 0
            }
            block.fill((byte) 0);
            long first = b * refBlockEntries;
            for (long c = first; c < first + refBlockEntries && c < refEnd; c++) {
                char n = counts[(int) c];
                if (n != 0) {
                    setRef(block, c - first, n < Character.MAX_VALUE ? n : n + many.getOrDefault(c, 0L));
                }
            }
            for (long c = Math.max(first, place); c < Math.min(first + refBlockEntries, newEnd); c++) {
                setRef(block, c - first, 1); // the new blocks and table
            }
            long off = at++ << clusterBits;
            img.writeMeta(block, 0, clusterSize, off);
            table[(int) b] = off;
        }
        long tableOff = at << clusterBits;
        switchRefTable(table, tableOff, tableClusters);
        // The header names the new table now: memory follows at once, before anything else can fail, so that memory
        // and disk never name different tables (a later allocation counted in the old one would be lost).
        refCache.clearAll();
        refTable = table;
        refTableOffset = tableOff;
        refTableClusters = (int) tableClusters;
        freeHint = 0;
        allocEnd = Math.max(allocEnd, newEnd);
        img.indexMetadata(); // the old refcount table and blocks are free data clusters now
        try (Arena a = Arena.ofConfined()) {
            MemorySegment inc = a.allocate(8);
            inc.set(Qcow2Header.BE64, 0, header.incompatible() & ~Qcow2Header.INCOMPAT_DIRTY);
            // a failure: no later write (the dirty bit may be set or clear on disk; a reopen repairs again if set)
            img.publish(inc, Qcow2Header.OFF_INCOMPATIBLE);
        }
        System.getLogger(Qcow2Image.class.getName())
                .log(
                        System.Logger.Level.WARNING,
                        "qcow2 image " + path
                                + " was not closed cleanly (dirty bit, lazy refcounts): refcounts rebuilt from its L1/L2 tables");
    }
}
