// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.BackingPolicy;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.ImageIo;
import io.iovirt.storage.ImageLock;
import io.iovirt.storage.Images;
import io.iovirt.storage.RawImage;
import io.iovirt.util.Printable;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.concurrent.locks.ReentrantLock;

/**
 * A qcow2 image (version 3; version 2 read-only): L1/L2 tables, refcounts, cluster allocation, copy-on-write from
 * a backing chain, zero clusters, compressed clusters (read; a write turns the cluster into a normal one).
 *
 * <h2>Concurrency</h2>
 * Reads and overwrites of allocated clusters take no lock: the L1 table is an atomic array, L2 tables are found in
 * a lock-free {@link MetaCache} and their entries read with volatile semantics, and the data I/O goes straight to
 * the file (through the caller's io_uring when the request is one host extent). Anything that changes metadata —
 * allocating a cluster (copy-on-write), zeroing, discarding, loading or evicting a table, flushing — runs under one
 * metadata lock, {@link #meta}: the same lock guards {@link Refcounts} (every method of it requires the lock).
 *
 * <h2>Crash consistency</h2>
 * Metadata is written back, in the order that keeps the image consistent at every instant (a crash leaks clusters
 * at worst, never leaves a reference to a cluster whose refcount is 0 or to unwritten data):
 * <ol>
 * <li>cluster data is written before any L2 entry points at it (data writes happen at allocation);</li>
 * <li>a flush writes the dirty refcount blocks, fdatasync (which also makes the data durable), then the dirty L2
 * tables, fdatasync, then the dirty L1 entries, fdatasync;</li>
 * <li>a refcount decrement (a compressed or shared cluster rewritten, a cluster discarded) is applied only after the
 * flush that made the dereference durable, and only once every lock-free read or write in flight when that flush ran
 * has completed ({@link #requestsNow}), since the allocator may hand the cluster out again; a request given up on in
 * the kernel never completes: its host clusters are quarantined instead, never handed out or freed while the image
 * is open ({@link #quarantine});</li>
 * <li>a new refcount block or refcount table is written and synced before the pointer to it.</li>
 * </ol>
 * A failed fdatasync fails that flush and every later flush and write until the image is opened again: what it
 * could not write back may be lost, and a later fdatasync would not say so. So does a failed write of a pointer
 * that publishes new metadata (rule 4's pointer, the header switched to a new table: {@link #publish}).
 * Evicting a dirty table runs the same flush first. Lazy refcounts are never used (so the dirty bit is never set by
 * iovirt); an image another program left dirty is repaired when opened for writing
 * ({@link Refcounts#rebuildRefcounts}).
 *
 * <h2>Where it is implemented</h2>
 * This class is the image's public face and everything that maps the guest's disk: opening the backing chain, the
 * L1 and L2 tables (lookup, allocation of L2 tables, growing the L1 on resize), the read, write, zero and discard
 * paths, the metadata I/O (cache loading, the staging buffer, fdatasync and its failure) and the flush, whose order
 * above is {@link #flushMetadata}. The rest, in the order QEMU splits qcow2.c:
 * <ul>
 * <li>{@link Refcounts} (QEMU's qcow2-refcount.c): the refcount table and blocks, the cluster allocator, the
 * deferred decrements of rule 3, the new refcount blocks and tables of rule 4, and the repair of a dirty image;</li>
 * <li>{@link MetadataLayout}: where the image's own metadata lies: the checks an image passes before it is opened
 * for writing, and the functions of the index of metadata clusters a data write must not land on (the index itself
 * is {@link #metadataClusters}, read lock-free by the data path);</li>
 * <li>{@link CompressedClusters}: where a compressed cluster's data lies and its inflation (lock-free);</li>
 * <li>{@link MetaCache} (QEMU's qcow2-cache.c): the cache of L2 tables and of refcount blocks.</li>
 * </ul>
 */
public final class Qcow2Image implements DiskImage {
    /** Default metadata cache: L2 tables covering 32 MiB of table data (256 GiB of disk at 64 KiB clusters). */
    public static final long DEFAULT_L2_CACHE_BYTES = 32L << 20;

    /**
     * L2 cache of a backing file: 4 MiB covers 32 GiB of its disk at 64 KiB clusters; a miss re-reads the table
     * from the page cache (backing files are opened buffered). The 32 MiB of {@link #DEFAULT_L2_CACHE_BYTES} for
     * each of a chain's 32 images would be 1 GiB.
     */
    static final long BACKING_L2_CACHE_BYTES = 4L << 20;

    private static final int MAX_CHAIN = 32;

    /**
     * Bound on the memory one chain's tables and caches take ({@link #memoryCost}, summed over the image and its
     * backing files), at the open and whenever a table grows after it ({@link #chargeTables}). Any one image within
     * QEMU's table limits fits (under 240 MiB); without the bound, 32 crafted images with 32 MiB L1 tables over
     * sparse files took about 3 GiB of one open.
     */
    static final long MAX_CHAIN_MEMORY = 512L << 20;

    /**
     * The memory bound one backing chain shares: the {@link #memoryCost} of each of its images, charged while the
     * chain opens (before anything of an image is allocated) and again whenever an image's tables change size after
     * ({@link #chargeTables}); an image gives its charge back when it closes. While the chain opens, {@link #depth}
     * is the depth of the image being opened.
     */
    static final class Chain {
        final long limit;
        /** Where the chain's backing files may be: every level below the top is checked. */
        final BackingPolicy backing;

        int depth;
        /** While a backing file opens ({@link #depth} > 0): the image naming it, for the policy's check. */
        Path parent;

        private long bytes;

        Chain(long limit, BackingPolicy backing) {
            this.limit = limit;
            this.backing = backing;
        }

        /** Replaces a charge of {@code old} bytes by {@code cost}; false, changing nothing, past the limit. */
        synchronized boolean recharge(long old, long cost) {
            if (cost > old && cost - old > limit - bytes) {
                return false;
            }
            bytes += cost - old;
            return true;
        }

        /** Replaces a charge of {@code old} bytes by {@code cost} whatever the limit: to undo, or to give back. */
        synchronized void adjust(long old, long cost) {
            bytes += cost - old;
        }

        synchronized long bytes() {
            return bytes;
        }
    }

    /** Tests only: run between a backing file's check by path and its open (to swap the path there). */
    static volatile Runnable beforeBackingOpen;

    /** The chain being opened on this thread (its top image's open set it), or null. */
    private static final ThreadLocal<Chain> OPENING = new ThreadLocal<>();

    static final long OFLAG_COPIED = 1L << 63;
    static final long OFLAG_COMPRESSED = 1L << 62;
    static final long OFLAG_ZERO = 1L;
    static final long OFFSET_MASK = 0x00fffffffffffe00L;

    private final Path path;
    private final RawImage file;
    private final Fd fd;
    /** O_DIRECT: every file access is aligned to {@link #align} (offset, length and memory); otherwise 1. */
    private final boolean direct;

    private final int align;
    /** Opened read-only: can never take writes (its header was not checked for writing). */
    private final boolean openedReadOnly;
    /** Writes refused now: opened read-only, or switched with {@link #setReadOnly} (changes under the lock). */
    private volatile boolean readOnly;
    /**
     * The header a {@link #refresh} read while the image was switched read-only, whose checks and repairs for writing
     * (a dirty bit's refcount rebuild, the autoclear bits' clearing) it left undone: no write while read-only, since
     * its image lock may be shared with readers. Done by the switch to writable, under the exclusive lock, before
     * the first write; null when none is due, and forgotten when the image is handed over ({@link #handOver}: the
     * next start reads it again). Metadata lock held.
     */
    private Qcow2Header writeChecksDue;

    private final int clusterBits;
    private final long clusterSize;
    private final int l2Bits;
    /** Grows only through {@link #resize} (metadata lock held), after the L1 arrays that cover the new size. */
    private volatile long size;
    /** Replaced (never shrunk) by {@link #resize} when the L1 table grows; entries change under the metadata lock. */
    private volatile AtomicLongArray l1;
    /** File offset of the L1 table; changes with {@link #l1} (metadata lock held). */
    private long l1Offset;

    private int l1DirtyLo = Integer.MAX_VALUE;
    private int l1DirtyHi;
    private final DiskImage backing;
    /**
     * A reader's lock on the backing file (QEMU's scheme, shared with other readers), held while the image is open:
     * a writer elsewhere (a QEMU, qemu-io, a writable export of this process) would change the data this image's
     * unallocated clusters show the guest. Null without a backing file, or on a file system without OFD locks.
     */
    private ImageLock backingLock;

    private final long backingSize;

    private final ReentrantLock meta = new ReentrantLock();
    /** The memory bound this image shares with the rest of its backing chain. */
    private final Chain chain;
    /** What this image's tables and caches are charged to {@link #chain} now (metadata lock held, or opening). */
    private long charged;
    /** The L1 entries and refcount table clusters {@link #charged} was computed for. */
    private long chargedL1;

    private long chargedRef;
    /** The L2 cache's bound it was opened with, for {@link #memoryCost}. */
    private final long l2CacheBytes;

    private final MetaCache l2Cache;
    /**
     * The cached L2 table of each L1 entry: the lock-free lookup of the data path (an array index, no boxing or
     * hashing per request). Set when a table is cached, cleared when it is evicted.
     */
    private volatile java.util.concurrent.atomic.AtomicReferenceArray<MetaCache.Table> l2ByL1;

    /** The refcount table and blocks, the cluster allocator and the deferred decrements (metadata lock held). */
    private final Refcounts refcounts;
    /** Where compressed clusters lie and their inflation (lock-free, per-thread buffers). */
    private final CompressedClusters compressed;

    private final Arena arena = Arena.ofShared();
    /**
     * Native staging for metadata I/O; used under the metadata lock only. Holds the L1 and refcount tables whole, so
     * {@link #refresh} replaces it when another program (or this one, through a resize) changed their sizes; it has
     * an arena of its own, so the one it replaces is freed (and it stays what {@link #memoryCost} counts).
     */
    private MemorySegment staging;

    private Arena stagingArena = Arena.ofShared();

    private final MemorySegment cowBuffer;
    private final MemorySegment zeroCluster;

    private volatile boolean closed;
    /**
     * The fdatasync of the image's file that failed, or null. The kernel reports a failed writeback once and may
     * drop the pages it could not write, and the tables written before it were marked clean: a later flush that
     * found nothing dirty, or synced again, would report a success that is not true (fsyncgate). Once set, every
     * flush and write fails, as in QEMU after a failed flush, until the image is opened again.
     */
    private volatile IOException syncFailure;
    /**
     * Sorted cluster indices of every metadata cluster (header, L1 table, refcount table and blocks, L2 tables): a
     * data write whose L2 entry points into one of them is refused, so a crafted or damaged image cannot make a
     * guest write overwrite the image's own metadata. Copy-on-write under the metadata lock; read lock-free. Built
     * and changed by {@link MetadataLayout}'s functions, but kept here: every write to an allocated cluster reads it.
     */
    private volatile long[] metadataClusters = new long[0];

    /**
     * Every open request context, so that a cluster a discard freed is not handed out again while a lock-free write
     * that found it before the discard may still land on it, or a read still read it ({@link #requestsNow}).
     */
    private final java.util.concurrent.CopyOnWriteArrayList<Qcow2Io> contexts =
            new java.util.concurrent.CopyOnWriteArrayList<>();

    private Qcow2Image(
            Path path,
            RawImage file,
            boolean readOnly,
            Qcow2Header h,
            DiskImage backing,
            long l2CacheBytes,
            Chain chain,
            long charged)
            throws IOException {
        this.chain = chain;
        this.charged = charged; // given back by a failed open's closeQuietlyKeepingFile, or by close
        this.chargedL1 = Integer.toUnsignedLong(h.l1Size());
        this.chargedRef = h.refTableClusters();
        this.l2CacheBytes = l2CacheBytes;
        this.path = path;
        this.file = file;
        this.fd = file.fd();
        this.direct = file.direct();
        this.align = direct ? file.blockSize() : 1;
        this.openedReadOnly = readOnly;
        this.readOnly = readOnly;
        this.clusterBits = h.clusterBits();
        this.clusterSize = 1L << clusterBits;
        this.l2Bits = clusterBits - 3;
        this.size = h.size();
        this.backing = backing;
        this.backingSize = backing == null ? 0 : backing.size();
        this.l2ByL1 = new java.util.concurrent.atomic.AtomicReferenceArray<>(h.l1Size());
        this.l2Cache = new MetaCache((int) Math.max(4, l2CacheBytes / clusterSize), this::l2Evicted);
        this.refcounts = new Refcounts(this, path, fd, align, h);
        this.compressed = new CompressedClusters(path, fd, align, clusterBits);
        // L1 and refcount tables are read whole and kept in memory.
        try {
            long tableBytes = Math.max(clusterSize, (long) h.refTableClusters() * clusterSize);
            this.staging = stagingArena.allocate(
                    Math.max(tableBytes, ((long) h.l1Size() * 8 + clusterSize - 1) & -clusterSize), 4096);
            this.cowBuffer = arena.allocate(clusterSize, 4096);
            this.zeroCluster = arena.allocate(clusterSize, 4096);
            this.l1 = new AtomicLongArray(h.l1Size());
            this.l1Offset = h.l1Offset();
            MemorySegment buf = staging.asSlice(0, (long) h.l1Size() * 8);
            readMeta(buf, h.l1Offset());
            for (int i = 0; i < h.l1Size(); i++) {
                long e = buf.get(Qcow2Header.BE64, (long) i * 8);
                MetadataLayout.checkClusterBoundary(path, clusterSize, e & OFFSET_MASK, "L1 entry " + i);
                l1.set(i, e);
            }
            refcounts.load();
            indexMetadata();
        } catch (Throwable e) { // an OutOfMemoryError too: the arena's native memory is freed only by its close
            closeQuietlyKeepingFile();
            throw e;
        }
    }

    // ---- metadata layout and index (see MetadataLayout) -------------------------------------------------------

    /**
     * The tables' positions now, to check them or to index them. While opening, or with the metadata lock held.
     */
    private MetadataLayout layout() {
        return new MetadataLayout(
                path, clusterBits, l1, l1Offset, refcounts.table(), refcounts.tableOffset(), refcounts.tableClusters());
    }

    /** (Re)builds {@link #metadataClusters} from the header, L1 and refcount tables (as {@link #layout}). */
    void indexMetadata() {
        metadataClusters = layout().clusters();
    }

    /** Records a new metadata cluster at file offset {@code offset} (metadata lock held). */
    void addMetadataCluster(long offset) {
        metadataClusters = MetadataLayout.with(metadataClusters, offset >>> clusterBits);
    }

    /** Records the {@code clusters} new metadata clusters at file offset {@code offset} (metadata lock held). */
    void addMetadataClusters(long offset, long clusters) {
        metadataClusters = MetadataLayout.withRange(metadataClusters, offset >>> clusterBits, clusters);
    }

    /**
     * Forgets the {@code clusters} clusters at {@code offset} of a table the header no longer names: free data
     * clusters from now on (metadata lock held).
     */
    void dropMetadataClusters(long offset, long clusters) {
        metadataClusters = MetadataLayout.without(metadataClusters, offset >>> clusterBits, clusters);
    }

    /** Whether [host, host+len) touches a metadata cluster. Lock-free. */
    boolean overlapsMetadata(long host, long len) {
        return MetadataLayout.firstIn(metadataClusters, host, len, clusterBits) >= 0;
    }

    /** Refuses a data write to [host, host+len) when it touches a metadata cluster. Lock-free. */
    private void checkDataWrite(long guestOffset, long host, long len) throws IOException {
        checkNotMetadata(guestOffset, host, len, "write");
    }

    /**
     * Refuses {@code what} (a data write, or a zeroing or discard that would punch or free the host range) when the
     * L2 entry of {@code guestOffset} names host bytes [host, host+len) that touch a metadata cluster: only a damaged
     * or crafted image has such an entry, and the request would overwrite, punch out or count down the image's own
     * metadata. Lock-free.
     */
    private void checkNotMetadata(long guestOffset, long host, long len, String what) throws IOException {
        long c = MetadataLayout.firstIn(metadataClusters, host, len, clusterBits);
        if (c >= 0) {
            throw new IOException("qcow2 image " + path + " is damaged: the L2 entry of guest offset " + guestOffset
                    + " points at host offset 0x" + Long.toHexString(c << clusterBits) + ", inside "
                    + layout().describe(c << clusterBits) + "; the " + what + " was refused (repair"
                    + " it with 'qemu-img check -r all " + path + "')");
        }
    }

    /**
     * Checks the host range L2 entry {@code e} of {@code guestOffset} names (the compressed data's span, or the
     * cluster) before {@code what} changes the entry and punches the range, counts it down or writes it in place.
     * One on metadata refuses the request before anything changes when the image's own tables would be punched out
     * or overwritten (an owned entry: COPIED, not compressed) or counted down to 0 (a shared or compressed entry whose
     * metadata cluster's refcount does not also count this reference, {@link Refcounts#countedBeyondMetadata}). A
     * shared entry whose reference the refcount counts (what 'qemu-img check -r all' makes of such an entry) is
     * dropped and counted down as QEMU does. The answer is whether the refcounts count the whole range in use
     * ({@link Refcounts#counted}); only then may a count-down follow: in a damaged image a cluster at refcount 0 may
     * be handed out by the allocator before the deferred count-down lands, which would then count down its new user.
     * An entry that names no host range is neither checked nor counted. Metadata lock held.
     */
    private boolean checkDrop(long guestOffset, long e, String what) throws IOException {
        boolean compressedEntry = (e & OFLAG_COMPRESSED) != 0;
        long lo = compressedEntry ? compressed.host(e) : e & OFFSET_MASK;
        if (!compressedEntry && lo == 0) {
            return false;
        }
        long bytes = compressedEntry ? compressed.bytes(e) : clusterSize;
        boolean owned = !compressedEntry && (e & OFLAG_COPIED) != 0;
        if (owned || !refcounts.countedBeyondMetadata(lo, bytes)) {
            checkNotMetadata(guestOffset, lo, bytes, what);
        }
        return refcounts.counted(lo, bytes);
    }

    /** Opens {@code path} as qcow2 with the default metadata cache; its backing chain opens read-only. */
    public static Qcow2Image open(Path path, boolean readOnly) throws IOException {
        return open(path, readOnly, DEFAULT_L2_CACHE_BYTES, false);
    }

    /**
     * @param direct O_DIRECT for this image's data and metadata (the guest then addresses it in units of the file
     *               system's direct I/O alignment); its backing chain is opened buffered, since a base image shared
     *               by many VMs is what the page cache is for
     */
    public static Qcow2Image open(Path path, boolean readOnly, boolean direct) throws IOException {
        return open(path, readOnly, DEFAULT_L2_CACHE_BYTES, direct);
    }

    /**
     * As {@link #open(Path, boolean, boolean)}, with every backing file of the chain checked against {@code backing}
     * before it is locked or opened, and again on the descriptor it was opened as. An image opened as a backing file
     * (within a chain's open) takes the policy of its chain.
     */
    public static Qcow2Image open(Path path, boolean readOnly, boolean direct, BackingPolicy backing)
            throws IOException {
        return open(path, readOnly, DEFAULT_L2_CACHE_BYTES, direct, MAX_CHAIN_MEMORY, backing);
    }

    /** @param l2CacheBytes bound on the L2 table cache (at least 4 tables are kept) */
    public static Qcow2Image open(Path path, boolean readOnly, long l2CacheBytes) throws IOException {
        return open(path, readOnly, l2CacheBytes, false);
    }

    private static Qcow2Image open(Path path, boolean readOnly, long l2CacheBytes, boolean direct) throws IOException {
        return open(path, readOnly, l2CacheBytes, direct, MAX_CHAIN_MEMORY);
    }

    /**
     * @param chainMemory the memory bound of the chain this image is the top of ({@link #MAX_CHAIN_MEMORY}; tests
     *                    lower it); an image opened as a backing file shares the bound of the chain it is part of
     */
    static Qcow2Image open(Path path, boolean readOnly, long l2CacheBytes, boolean direct, long chainMemory)
            throws IOException {
        return open(path, readOnly, l2CacheBytes, direct, chainMemory, BackingPolicy.UNRESTRICTED);
    }

    private static Qcow2Image open(
            Path path, boolean readOnly, long l2CacheBytes, boolean direct, long chainMemory, BackingPolicy backing)
            throws IOException {
        Chain opening = OPENING.get();
        if (opening != null) {
            return openIn(opening, path, readOnly, l2CacheBytes, direct);
        }
        Chain chain = new Chain(chainMemory, backing); // the top image: a new chain
        OPENING.set(chain);
        try {
            return openIn(chain, path, readOnly, l2CacheBytes, direct);
        } finally {
            OPENING.remove();
        }
    }

    private static Qcow2Image openIn(Chain chain, Path path, boolean readOnly, long l2CacheBytes, boolean direct)
            throws IOException {
        if (chain.depth >= MAX_CHAIN) {
            throw new IOException("backing chain of " + Printable.of(path) + " is deeper than " + MAX_CHAIN
                    + " images (a loop?): check it with 'qemu-img info --backing-chain'");
        }
        RawImage file = RawImage.openContainerFile(path, readOnly, direct);
        if (chain.depth > 0) {
            // a backing file is checked as opened before anything of it is read: one swapped in since its path was
            // checked (a file the tenant may not read) must not be parsed, its backing files opened, nor described
            try {
                chain.backing.checkOpened(chain.parent, path, file.fd());
            } catch (Throwable e) {
                file.close();
                throw e;
            }
        }
        int align = direct ? file.blockSize() : 1;
        DiskImage backing = null;
        ImageLock backingLock = null;
        long unowned = 0; // charged to the chain and not yet handed to an image (which gives it back when closed)
        try {
            Qcow2Header h;
            try (Arena a = Arena.ofConfined()) {
                MemorySegment first = a.allocate(65536);
                long n = readFile(file.fd(), first, 0, align);
                h = Qcow2Header.parse(path, first.asSlice(0, n));
            }
            if (direct && (1L << h.clusterBits()) < align) {
                throw new IOException(
                        "qcow2 image " + path + " has " + (1L << h.clusterBits()) + "-byte clusters, smaller"
                                + " than the " + align
                                + "-byte O_DIRECT alignment of its file system: drop --direct, or convert it"
                                + " with 'qemu-img convert -O qcow2 -o cluster_size=65536'");
            }
            checkFeatures(path, h, readOnly);
            long cacheBytes = chain.depth == 0 ? l2CacheBytes : Math.min(l2CacheBytes, BACKING_L2_CACHE_BYTES);
            unowned = chargeChain(chain, path, h, cacheBytes, readOnly);
            if (h.backingFile() != null) {
                Path bp = resolveBacking(path, h.backingFile());
                // the policy by path before the open touches the file (and before the format's remedy, which names
                // it), then on the descriptor opened (a path swapped meanwhile is caught before anything of it is
                // read); the lock is taken last, through that descriptor, so it is on the very file checked and
                // served (a second open by path could lock, and fence the writers of, whatever the path named by
                // then)
                chain.backing.checkPath(path, bp);
                ImageFormat bf = backingFormat(path, h, bp);
                Path parent = chain.parent;
                chain.parent = path;
                chain.depth++;
                try {
                    Runnable hook = beforeBackingOpen;
                    if (hook != null) {
                        hook.run();
                    }
                    backing = Images.open(bp, bf, true, false);
                    try (Fd opened = backing.dupFile()) {
                        chain.backing.checkOpened(path, bp, opened);
                    }
                    backingLock = ImageLock.holdForExport(bp, backing.dupFile(), true, "backing file of " + path);
                } catch (IOException e) {
                    throw new IOException(
                            "cannot open backing file of " + Printable.of(path) + ": " + e.getMessage(), e);
                } finally {
                    chain.depth--;
                    chain.parent = parent;
                }
            }
            long cost = unowned;
            unowned = 0;
            Qcow2Image img = new Qcow2Image(path, file, readOnly, h, backing, cacheBytes, chain, cost);
            img.backingLock = backingLock;
            try {
                if (!readOnly) {
                    img.layout().checkForWriting(FileIo.size(file.fd()));
                }
                if (!readOnly && (h.incompatible() & Qcow2Header.INCOMPAT_DIRTY) != 0) {
                    // the spec: repair refcounts from the L1/L2 tables before accessing it
                    img.refcounts.rebuildRefcounts();
                }
                if (!readOnly && h.autoclear() != 0) {
                    img.clearAutoclear();
                }
            } catch (Throwable e) {
                img.closeQuietlyKeepingFile();
                throw e;
            }
            return img;
        } catch (Throwable e) { // whatever failed (an OutOfMemoryError too), the file and the chain are closed
            chain.adjust(unowned, 0);
            if (backing != null) {
                backing.close();
            }
            if (backingLock != null) {
                backingLock.close();
            }
            file.close();
            throw e;
        }
    }

    /**
     * The format the header records for its backing file {@code bp}. An overlay without one (no backing format
     * header extension: made by a qemu-img before 6.1 without {@code -F}) is refused rather than detected: a backing
     * file that was a guest's raw disk holds whatever the guest wrote, a qcow2 header naming a host file (another
     * tenant's disk, /etc/shadow) as its own backing file too, and detection would take it for qcow2 and serve that
     * file to the guest. QEMU's qemu-img refuses to create such overlays since 6.1 for this reason.
     */
    private static ImageFormat backingFormat(Path path, Qcow2Header h, Path bp) throws IOException {
        if (h.backingFormat() == null) {
            throw new IOException("qcow2 image " + Printable.of(path) + " names backing file " + Printable.of(bp)
                    + " without its format"
                    + " (no backing format header extension): iovirt does not detect a backing file's format (a raw"
                    + " backing file may hold a qcow2 header its guest wrote, naming any host file as its backing"
                    + " file); if the image is yours, record the format with 'qemu-img rebase -u -b "
                    + Printable.of(h.backingFile()) + " -F raw " + Printable.of(path)
                    + "' (or -F qcow2 if the backing file is a qcow2 image"
                    + " you made); otherwise refuse it");
        }
        try {
            return ImageFormat.parse(h.backingFormat());
        } catch (IllegalArgumentException e) {
            throw new IOException("backing file " + Printable.of(bp) + " of " + Printable.of(path) + " has format '"
                    + Printable.of(h.backingFormat()) + "': iovirt reads raw and qcow2 backing files");
        }
    }

    /**
     * What opening an image with header {@code h} takes in memory, at most: per L1 entry the table (8 bytes), its
     * cached-table slot (a reference, 8 bytes at most) and its place in the metadata index (16 while it is built);
     * per refcount table entry the table and the index (24); the staging buffer (the larger table); the L2 cache's
     * bound (no more tables than L1 entries); and, when writable, the refcount block cache's (a reader never fills
     * it). A backing file's tables count in full: all of them are read when it opens.
     */
    static long memoryCost(Qcow2Header h, long l2CacheBytes, boolean readOnly) {
        return memoryCost(
                h.clusterBits(), Integer.toUnsignedLong(h.l1Size()), h.refTableClusters(), l2CacheBytes, readOnly);
    }

    /** {@link #memoryCost(Qcow2Header, long, boolean)} of an image whose tables have these sizes. */
    static long memoryCost(
            int clusterBits, long l1Entries, long refTableClusters, long l2CacheBytes, boolean readOnly) {
        long cs = 1L << clusterBits;
        long refEntries = refTableClusters * cs / 8;
        long staging = Math.max(Math.max(cs, refEntries * 8), (l1Entries * 8 + cs - 1) & -cs);
        long l2Cache = Math.min(Math.max(l1Entries, 1), Math.max(4, l2CacheBytes / cs)) * cs;
        long refCache = readOnly ? 0 : Math.max(4, Refcounts.DEFAULT_REFCOUNT_CACHE_BYTES / cs) * cs;
        return l1Entries * 32 + refEntries * 24 + staging + 2 * cs + l2Cache + refCache;
    }

    /**
     * Counts the image's {@link #memoryCost} against its chain's bound ({@link #MAX_CHAIN_MEMORY}), before anything
     * of it is allocated; refuses the image that would cross it. Returns what it charged.
     */
    private static long chargeChain(Chain chain, Path path, Qcow2Header h, long l2CacheBytes, boolean readOnly)
            throws IOException {
        long cost = memoryCost(h, l2CacheBytes, readOnly);
        long above = chain.bytes();
        if (!chain.recharge(0, cost)) {
            throw new IOException("qcow2 image " + path + " needs up to " + (cost >> 20) + " MiB of memory for its"
                    + " tables and caches (L1 table of " + Integer.toUnsignedString(h.l1Size()) + " entries, refcount"
                    + " table of " + h.refTableClusters() + " clusters of " + (1L << h.clusterBits()) + " bytes)"
                    + (chain.depth == 0 ? "" : ", the images above it in its backing chain " + (above >> 20) + " MiB")
                    + ": more than iovirt's limit of " + mib(chain.limit) + " for one backing chain"
                    + " (a damaged or crafted image?); check the chain with 'qemu-img info --backing-chain' and"
                    + " 'qemu-img check', or make it shorter with 'qemu-img commit' or 'qemu-img convert -O qcow2'");
        }
        return cost;
    }

    /** A bound for a message: in MiB when it is a whole number of them (it is, but where a test lowers it). */
    private static String mib(long bytes) {
        return (bytes & ((1 << 20) - 1)) == 0 ? (bytes >> 20) + " MiB" : bytes + " bytes";
    }

    /**
     * Charges this image's tables at new sizes (an L1 table of {@code l1Entries} entries, a refcount table of
     * {@code refTableClusters} clusters) to its chain's bound in place of its charge now, before they are allocated:
     * tables that grow after the open (a resize, the refcount table as the image grows, a refresh, a refcount
     * rebuild) are bounded as the tables read at the open are. Smaller tables give memory back. A change that fails
     * before it takes effect puts the sizes it replaced back with {@link #setCharge}. Metadata lock held, or opening.
     *
     * @param what the change and what is refused with it, for the error ("growing its refcount table ...")
     */
    void chargeTables(long l1Entries, long refTableClusters, String what) throws IOException {
        long cost = memoryCost(clusterBits, l1Entries, refTableClusters, l2CacheBytes, openedReadOnly);
        if (!chain.recharge(charged, cost)) {
            throw new IOException("qcow2 image " + path + ": " + what + " would make its tables and caches (an L1"
                    + " table of " + l1Entries + " entries, a refcount table of " + refTableClusters + " clusters of "
                    + clusterSize + " bytes) take up to " + ((cost + (1 << 20) - 1) >> 20)
                    + " MiB, and its backing chain more than iovirt's"
                    + " limit of " + mib(chain.limit) + " for one backing chain: refused (make the chain shorter"
                    + " with 'qemu-img commit', or convert the image to larger clusters with 'qemu-img convert -O"
                    + " qcow2 -o cluster_size=2M')");
        }
        charged = cost;
        chargedL1 = l1Entries;
        chargedRef = refTableClusters;
    }

    /** {@link #chargeTables} of a new refcount table size, the L1 table's charged size unchanged. */
    void chargeRefTable(long refTableClusters, String what) throws IOException {
        chargeTables(chargedL1, refTableClusters, what);
    }

    /** Charges the tables at these sizes whatever the bound: they are in use (a change that failed kept them). */
    void setCharge(long l1Entries, long refTableClusters) {
        long cost = memoryCost(clusterBits, l1Entries, refTableClusters, l2CacheBytes, openedReadOnly);
        chain.adjust(charged, cost);
        charged = cost;
        chargedL1 = l1Entries;
        chargedRef = refTableClusters;
    }

    /** {@link #setCharge} of a refcount table size, the L1 table's charged size unchanged. */
    void chargeRefTableAnyway(long refTableClusters) {
        setCharge(chargedL1, refTableClusters);
    }

    /** The refcount table clusters the charge is for now. */
    long chargedRefTable() {
        return chargedRef;
    }

    /** The metadata lock, for the tests (to hold an operation between its checks and its lock). */
    ReentrantLock metadataLock() {
        return meta;
    }

    /** What this image's chain is charged now, for the tests. */
    long chainBytes() {
        return chain.bytes();
    }

    private static void checkFeatures(Path path, Qcow2Header h, boolean readOnly) throws IOException {
        long known = Qcow2Header.INCOMPAT_DIRTY | Qcow2Header.INCOMPAT_CORRUPT | Qcow2Header.INCOMPAT_COMPRESSION;
        List<String> unknown = h.unknownIncompatible(known);
        if (!unknown.isEmpty()) {
            throw new IOException("qcow2 image " + path + " uses incompatible features iovirt does not implement: "
                    + String.join(", ", unknown)
                    + "; convert it with 'qemu-img convert -O qcow2' to a plain qcow2 image");
        }
        if ((h.incompatible() & Qcow2Header.INCOMPAT_COMPRESSION) != 0 && h.compressionType() != 0) {
            throw new IOException(
                    "qcow2 image " + path + " uses compression type " + h.compressionType()
                            + " (zstd): iovirt reads zlib/deflate only; convert with 'qemu-img convert -O qcow2 -o compression_type=zlib'");
        }
        if (readOnly) {
            return; // reading needs neither consistent refcounts nor a clean image
        }
        if (h.version() == 2) {
            throw new IOException("qcow2 image " + path + " is version 2 (compat=0.10): iovirt writes version 3 only; "
                    + "upgrade it with 'qemu-img amend -o compat=1.1 " + path + "' or open it read-only");
        }
        if ((h.incompatible() & Qcow2Header.INCOMPAT_CORRUPT) != 0) {
            throw new IOException("qcow2 image " + path + " is marked corrupt; repair it with 'qemu-img check -r all "
                    + path + "' or open it read-only");
        }
        if (h.nbSnapshots() != 0) {
            throw new IOException("qcow2 image " + path + " has " + h.nbSnapshots() + " internal snapshots: iovirt "
                    + "serves such images read-only (writes would need copy-on-write of shared clusters); "
                    + "use --readonly, or delete the snapshots with 'qemu-img snapshot -d'");
        }
    }

    /** QEMU's rule: a relative backing file name is relative to the directory of the image naming it. */
    static Path resolveBacking(Path overlay, String name) throws IOException {
        if (name.startsWith("json:") || name.matches("^[a-zA-Z][a-zA-Z0-9+.-]*://.*")) {
            throw new IOException("backing file '" + Printable.of(name) + "' of " + Printable.of(overlay)
                    + " is a protocol or json: name: iovirt opens local files only");
        }
        Path p;
        try {
            p = Path.of(name);
        } catch (java.nio.file.InvalidPathException e) {
            // the header's bytes name no file (a NUL, say): a damaged or hostile image, not a crash
            throw new IOException("backing file name of " + Printable.of(overlay) + " is not a valid path ("
                    + Printable.of(e.getReason()) + " at byte " + e.getIndex()
                    + "): check the image with 'qemu-img info " + Printable.of(overlay) + "'");
        }
        if (p.isAbsolute()) {
            return p;
        }
        Path dir = overlay.toAbsolutePath().getParent();
        return dir.resolve(p).normalize();
    }

    /**
     * Refuses (true) or accepts again (false) writes from now on, while the image is served (the daemon's
     * blk.set-readonly, a config reload). Switching to read-only flushes the data and every dirty metadata table in
     * the consistency order, then again so that refcount decrements deferred by the first flush land too — also
     * those still waiting for a request in flight, freed early since nothing allocates while read-only (taken again
     * when the image becomes writable before the request completed): the file is then a clean, complete qcow2 image
     * without leaks another program may open, but for the clusters a request given up on in the kernel may still
     * write, which a free leaves allocated ({@link #quarantine}). iovirt never sets the dirty bit (no lazy
     * refcounts) and repairs an image left dirty when it opens it for writing, so there is no dirty bit to clear
     * here. A write that passed its checks before the switch may still complete (as for a raw image); allocations
     * and zeroing re-check under the metadata lock and are refused. An image opened read-only cannot be made
     * writable. A failed first flush leaves the image writable; a later one leaves it read-only (the early frees need
     * it), as a raw image is after a failed write-back.
     */
    @Override
    public void setReadOnly(boolean ro) throws IOException {
        meta.lock();
        try {
            checkOpen();
            if (!ro && openedReadOnly) {
                throw new IOException("qcow2 image " + path
                        + " was opened read-only; remove the export and add it again without readonly");
            }
            if (ro && !readOnly) {
                // Ordering: the first flush makes every dereference durable and queues its free behind the requests
                // in flight; those still waiting are then freed at once (nothing allocates once read-only, and the
                // lock is held until readOnly is set, so no allocation comes in between); the second flush counts
                // them down and the third writes the blocks: the file is left without leaks for other programs.
                flushMetadata();
                refcounts.freeForReadOnly();
                // From here on the early frees need the image read-only: when a write-back below fails, it stays
                // read-only (as a raw image does), else the allocator would hand out a cluster a request is still on.
                readOnly = true;
                flushMetadata();
                flushMetadata();
            } else if (!ro && readOnly) {
                // before readOnly is cleared (under the same lock): a cluster freed early by the switch to read-only
                // whose request is still in flight is taken again before the allocator can run
                refcounts.retakeForWrites();
                if (writeChecksDue != null) { // a refresh while read-only left them (see refresh): before any write
                    prepareForWriting(writeChecksDue); // refused: stays read-only, with the reason
                    writeChecksDue = null;
                }
            }
            readOnly = ro;
        } finally {
            meta.unlock();
        }
    }

    /**
     * Reads the header, the L1 table and the refcount table again and forgets every cached table: another process
     * (a live migration's source) wrote the image since it was opened, and serving from what was read then would
     * lose that process's clusters and allocate over them. What this image still had to write back is written
     * first (nothing, when it wrote back when it last let go of the image). No request may be in flight.
     */
    @Override
    public void refresh() throws IOException {
        meta.lock();
        try {
            checkOpen();
            // Writes only while writable: an image switched read-only (blk.set-readonly) may be under a shared lock,
            // with readers of other programs let in. Then, as QEMU does for an image opened read-only, a dirty bit
            // and autoclear bits another program left stay as they are (reading needs neither consistent refcounts
            // nor a clean header) until the switch to writable (writeChecksDue).
            boolean writes = !openedReadOnly && !readOnly;
            if (writes) {
                flushMetadata();
                flushMetadata(); // the refcount decrements the first one deferred
            } else if (!openedReadOnly && metadataUnwritten()) {
                throw new IOException("qcow2 image " + path + " has table changes not written back yet (an earlier"
                        + " write-back failed), and reading it again would drop them; they are written only while"
                        + " the disk is writable: switch it writable (blk.set-readonly false) so that a flush writes"
                        + " them back, or remove the export and check the image with 'qemu-img check'");
            }
            Qcow2Header h;
            try (Arena a = Arena.ofConfined()) {
                MemorySegment first = a.allocate(65536, 4096);
                long n = readFile(fd, first, 0, align);
                h = Qcow2Header.parse(path, first.asSlice(0, n));
            }
            long l1Bytes = (long) h.l1Size() * 8;
            if (h.clusterBits() != clusterBits || h.refcountOrder() != refcounts.order() || h.size() < size) {
                throw new IOException("qcow2 image " + path + " was changed by another program since it was opened"
                        + " (its cluster size or refcount width changed, or it shrank): open it again (remove the"
                        + " export and add it again)");
            }
            // what open checks and repairs, for what the other program left (a dirty bit, internal snapshots...)
            checkFeatures(path, h, !writes);
            long oldL1 = chargedL1;
            long oldRef = chargedRef;
            chargeTables(
                    Integer.toUnsignedLong(h.l1Size()),
                    h.refTableClusters(),
                    "reading it again (another program changed its tables to these sizes)");
            boolean switched = false;
            try {
                refreshTables(h, l1Bytes);
                switched = true;
            } finally {
                if (!switched) { // the old tables stay in use
                    setCharge(oldL1, oldRef);
                }
            }
            refcounts.reload(h);
            indexMetadata();
            if (writes) {
                prepareForWriting(h);
                writeChecksDue = null;
            } else if (!openedReadOnly) {
                writeChecksDue = h;
            }
            size = Math.max(size, h.size());
        } finally {
            meta.unlock();
        }
    }

    /**
     * What a writable image needs of the header {@code h} (read by {@link #refresh}) before its first write: the
     * checks for writing, the repair of a dirty image and the clearing of autoclear bits. Metadata lock held, the
     * tables of {@code h} loaded; under an exclusive image lock (the image is writable).
     */
    private void prepareForWriting(Qcow2Header h) throws IOException {
        checkFeatures(path, h, false);
        layout().checkForWriting(FileIo.size(fd));
        if ((h.incompatible() & Qcow2Header.INCOMPAT_DIRTY) != 0) {
            refcounts.rebuildRefcounts(); // as at open: the spec's repair before any access
        }
        if (h.autoclear() != 0) {
            clearAutoclear(); // bitmaps another program keeps would miss this process's writes
        }
    }

    /** Whether tables changed in memory are still to be written back (metadata lock held). */
    private boolean metadataUnwritten() {
        if (l1DirtyLo < l1DirtyHi) {
            return true;
        }
        for (MetaCache.Table b : refcounts.blocks()) {
            if (b.dirty()) {
                return true;
            }
        }
        for (MetaCache.Table t : l2Cache.all()) {
            if (t.dirty()) {
                return true;
            }
        }
        return false;
    }

    /**
     * {@link #refresh}'s new staging buffer and L1 table, from header {@code h} (metadata lock held, the new sizes
     * charged). The staging buffer holds the tables whole, as at open; the one it replaces is freed.
     */
    private void refreshTables(Qcow2Header h, long l1Bytes) throws IOException {
        long need = Math.max(((l1Bytes + clusterSize - 1) & -clusterSize), (long) h.refTableClusters() * clusterSize);
        if (need != staging.byteSize()) {
            Arena a = Arena.ofShared();
            try {
                staging = a.allocate(need, 4096);
            } catch (Throwable e) {
                a.close();
                throw e;
            }
            stagingArena.close(); // used under the metadata lock only: nothing reads the old one now
            stagingArena = a;
        }
        MemorySegment buf = staging.asSlice(0, l1Bytes);
        readMeta(buf, h.l1Offset());
        AtomicLongArray fresh = new AtomicLongArray(h.l1Size());
        for (int i = 0; i < h.l1Size(); i++) {
            long e = buf.get(Qcow2Header.BE64, (long) i * 8);
            MetadataLayout.checkClusterBoundary(path, clusterSize, e & OFFSET_MASK, "L1 entry " + i);
            fresh.set(i, e);
        }
        l2Cache.clearAll();
        l2ByL1 = new java.util.concurrent.atomic.AtomicReferenceArray<>(h.l1Size());
        l1 = fresh;
        l1Offset = h.l1Offset();
        l1DirtyLo = Integer.MAX_VALUE;
        l1DirtyHi = 0;
    }

    /**
     * Writes back the tables (the metadata flush) for the process that takes the image next — twice, as
     * {@link #setReadOnly} does: the first flush defers the refcount decrements of freed clusters (a rewritten
     * compressed or shared cluster) to the next one, and a decrement left in memory here would be written later,
     * over the refcount block the next owner has written meanwhile.
     *
     * <p>Also forgets the repairs a {@link #refresh} while read-only left due ({@link #writeChecksDue}): from now on
     * the image lock is not held, and another program may change the image (repair it itself, allocate past the end
     * of the file read then). Done by a switch to writable meanwhile, they would write the refcounts rebuilt from the
     * tables read before, past the end of the file known then, with no lock: a corrupt image. The next user's start
     * reads the image again (refresh) and repairs what it finds then.
     */
    @Override
    public void handOver() throws IOException {
        meta.lock();
        try {
            writeChecksDue = null;
        } finally {
            meta.unlock();
        }
        flush();
        flush();
    }

    // ---- accessors ---------------------------------------------------------------------------------------------

    @Override
    public Path path() {
        return path;
    }

    @Override
    public Fd dupFile() throws LinuxException {
        return fd.dup();
    }

    @Override
    public String format() {
        return "qcow2";
    }

    @Override
    public long size() {
        return size;
    }

    @Override
    public boolean readOnly() {
        return readOnly;
    }

    @Override
    public boolean direct() {
        return direct;
    }

    @Override
    public int blockSize() {
        return Math.max(512, align);
    }

    @Override
    public int zeroGranularity() {
        return (int) clusterSize;
    }

    public long clusterSize() {
        return clusterSize;
    }

    /** The backing image, or null. */
    public DiskImage backing() {
        return backing;
    }

    /** L2 tables the metadata cache holds at most. */
    public int l2CacheTables() {
        return l2Cache.capacity();
    }

    @Override
    public Qcow2Io newContext(int maxSegments, int bounceBytes) {
        return new Qcow2Io(file.newContext(maxSegments, bounceBytes));
    }

    @Override
    public Qcow2Io newContext(IoVec iov, MemorySegment bounce) {
        return new Qcow2Io(file.newContext(iov, bounce));
    }

    // ---- lookup --------------------------------------------------------------------------------------------------

    /** The L2 entry for {@code guestOffset} (0 when its L2 table is not allocated). Lock-free on a cache hit. */
    long l2Entry(long guestOffset) throws IOException {
        int l1i = (int) (guestOffset >>> (clusterBits + l2Bits));
        AtomicLongArray l1 = this.l1;
        if (l1i >= l1.length()) {
            return 0; // a request checked against a size that grew since: not allocated yet
        }
        long l2Offset = l1.get(l1i) & OFFSET_MASK;
        if (l2Offset == 0) {
            return 0;
        }
        MetaCache.Table t = this.l2ByL1.get(l1i);
        if (t == null || t.offset != l2Offset) {
            meta.lock();
            try {
                t = l2Table(l2Offset);
                t.slot = l1i;
                l2ByL1.set(l1i, t);
            } finally {
                meta.unlock();
            }
        } else if (!t.referenced) {
            t.referenced = true;
        }
        return t.entry(l2Index(guestOffset));
    }

    /** Called by the L2 cache (metadata lock held) when it drops a table. */
    private void l2Evicted(MetaCache.Table t) {
        if (t.slot >= 0) {
            l2ByL1.compareAndSet(t.slot, t, null);
        }
    }

    private int l2Index(long guestOffset) {
        return (int) ((guestOffset >>> clusterBits) & ((1L << l2Bits) - 1));
    }

    /** The cached L2 table at {@code offset}, loading it. Caller holds the lock. */
    private MetaCache.Table l2Table(long offset) throws IOException {
        return table(l2Cache, offset);
    }

    /**
     * The cached table at {@code offset} in {@code cache} (L2 tables or refcount blocks), loading it; making room may
     * flush all metadata first. Caller holds the lock.
     */
    MetaCache.Table table(MetaCache cache, long offset) throws IOException {
        MetaCache.Table t = cache.get(offset);
        if (t != null) {
            return t;
        }
        makeRoom(cache);
        MemorySegment data = MetaCache.allocate(clusterSize);
        MemorySegment s = staging.asSlice(0, clusterSize);
        readMeta(s, offset);
        MemorySegment.copy(s, 0, data, 0, clusterSize);
        return cache.put(offset, data);
    }

    /** Evicts from a full {@code cache}, flushing all metadata first when every table is dirty (lock held). */
    void makeRoom(MetaCache cache) throws IOException {
        while (cache.full()) {
            if (!cache.evictOne()) {
                flushMetadata(); // every table is dirty: write them in order, then they can go
                if (!cache.evictOne()) {
                    throw new IllegalStateException("metadata cache cannot evict after a flush");
                }
            }
        }
    }

    /** Host offset of a normal, exclusively owned cluster entry, or -1. */
    private static long ownedHost(long e) {
        if ((e & (OFLAG_COMPRESSED | OFLAG_ZERO)) != 0 || (e & OFLAG_COPIED) == 0) {
            return -1;
        }
        long h = e & OFFSET_MASK;
        return h == 0 ? -1 : h;
    }

    /**
     * Host offset of a preallocated zero cluster this image owns (zero flag, COPIED and a host cluster), or -1. In a
     * compressed entry bit 0 belongs to the host offset, not the zero flag: such an entry is never one.
     */
    private static long preallocatedZeroHost(long e) {
        if ((e & OFLAG_COMPRESSED) != 0 || (e & OFLAG_ZERO) == 0 || (e & OFLAG_COPIED) == 0) {
            return -1;
        }
        long h = e & OFFSET_MASK;
        return h == 0 ? -1 : h;
    }

    /**
     * The host offset where [offset, offset+len) is stored as one contiguous run of allocated data clusters, or -1
     * (some cluster is unallocated, zero, compressed, or the run is not contiguous). For writes the clusters must
     * also be exclusively owned (COPIED).
     */
    long contiguousHost(long offset, long len) throws IOException {
        if (len == 0) {
            return -1;
        }
        long base = offset & -clusterSize;
        long first = -1;
        for (long c = base; c < offset + len; c += clusterSize) {
            long h = ownedHost(l2Entry(c));
            if (h < 0 || (c != base && h != first + (c - base))) {
                return -1;
            }
            if (c == base) {
                first = h;
            }
        }
        return first + (offset - base);
    }

    // ---- reads -----------------------------------------------------------------------------------------------

    /** Reads guest bytes [guestOffset, +dst.byteSize()) — within one cluster — into {@code dst}. */
    private void readPiece(long guestOffset, MemorySegment dst) throws IOException {
        readPiece(l2Entry(guestOffset), guestOffset, dst);
    }

    /**
     * Reads guest bytes [guestOffset, +dst.byteSize()) — within one cluster — into {@code dst}, as L2 entry {@code e}
     * looked up for it (before, maybe long before: a lock-free read may be preempted between the two).
     */
    void readPiece(long e, long guestOffset, MemorySegment dst) throws IOException {
        long in = guestOffset & (clusterSize - 1);
        if ((e & OFLAG_COMPRESSED) != 0) {
            byte[] c = compressed.inflate(e);
            MemorySegment.copy(MemorySegment.ofArray(c), in, dst, 0, dst.byteSize());
        } else if ((e & OFLAG_ZERO) != 0) {
            dst.fill((byte) 0);
        } else if ((e & OFFSET_MASK) != 0) {
            long got = readFile(fd, dst, (e & OFFSET_MASK) + in, align);
            if (got < dst.byteSize()) {
                dst.asSlice(got).fill((byte) 0);
            }
        } else {
            readBacking(guestOffset, dst);
        }
    }

    /** The backing chain's bytes (zeros where there is no backing file or past its end). */
    private void readBacking(long guestOffset, MemorySegment dst) throws IOException {
        long n = dst.byteSize();
        long fromBacking = backing == null ? 0 : Math.max(0, Math.min(n, backingSize - guestOffset));
        if (fromBacking > 0) {
            backing.readAt(guestOffset, dst.asSlice(0, fromBacking));
        }
        if (fromBacking < n) {
            dst.asSlice(fromBacking).fill((byte) 0);
        }
    }

    @Override
    public void readAt(long offset, MemorySegment dst) throws IOException {
        checkRange(offset, dst.byteSize(), false);
        long pos = 0;
        while (pos < dst.byteSize()) {
            long g = offset + pos;
            long n = Math.min(dst.byteSize() - pos, clusterSize - (g & (clusterSize - 1)));
            readPiece(g, dst.asSlice(pos, n));
            pos += n;
        }
    }

    // ---- writes ----------------------------------------------------------------------------------------------

    /** Writes one piece (within one cluster) whose bytes come from {@code src}, allocating as needed. */
    private void writePiece(long guestOffset, Source src, long srcPos, long n) throws IOException {
        long in = guestOffset & (clusterSize - 1);
        long h = ownedHost(l2Entry(guestOffset));
        if (h >= 0) {
            checkDataWrite(guestOffset, h + in, n);
            src.writeTo(fd, srcPos, n, h + in);
            return;
        }
        meta.lock();
        try {
            checkOpen();
            checkWritable();
            long cluster = guestOffset & -clusterSize;
            MetaCache.Table t = l2ForWrite(cluster);
            int idx = l2Index(cluster);
            long e = t.entry(idx);
            h = ownedHost(e);
            if (h >= 0) { // another queue allocated it meanwhile
                checkDataWrite(guestOffset, h + in, n);
                src.writeTo(fd, srcPos, n, h + in);
                return;
            }
            // The host range the old entry names (a shared or compressed cluster copied out below and counted down,
            // or a preallocated zero cluster written in place): on metadata the write is refused before anything
            // changes, and one the refcounts count free is not counted down (see checkDrop).
            boolean counted = checkDrop(cluster, e, "write");
            // A new cluster under which everything reads as zeros (unallocated with no backing data there, or a
            // zero cluster without a host cluster): zero the new cluster with one fallocate and write only the new
            // bytes, as QEMU does, instead of writing a whole cluster of mostly zeros from the queue thread.
            // Ordering is unchanged: the zeroing and the data are in the file before the L2 entry points there.
            boolean zerosBelow = (e & OFLAG_COMPRESSED) == 0
                    && (e & OFFSET_MASK) == 0
                    && ((e & OFLAG_ZERO) != 0 || backing == null || cluster >= backingSize);
            if (zerosBelow && n < clusterSize && !zeroFallocateUnsupported && ((in | n) & (align - 1)) == 0) {
                long target = refcounts.allocateCluster();
                checkDataWrite(cluster, target, clusterSize);
                if (zeroFill(target)) {
                    src.writeTo(fd, srcPos, n, target + in);
                    t.setEntry(idx, target | OFLAG_COPIED);
                    return;
                }
                refcounts.unallocate(target); // not used after all: the whole-cluster write below takes it again
            }
            // Copy-on-write: the cluster's current content, overlaid with the new bytes, goes to a cluster we own.
            MemorySegment buf = cowBuffer;
            if (n < clusterSize) {
                if ((e & OFLAG_COMPRESSED) != 0) {
                    MemorySegment.copy(MemorySegment.ofArray(compressed.inflate(e)), 0, buf, 0, clusterSize);
                } else if ((e & OFLAG_ZERO) != 0) {
                    buf.fill((byte) 0);
                } else if ((e & OFFSET_MASK) != 0) {
                    long got = readFile(fd, buf, e & OFFSET_MASK, align);
                    buf.asSlice(got).fill((byte) 0);
                } else {
                    readBacking(cluster, buf);
                }
            }
            src.copyTo(srcPos, buf, in, n);
            // A preallocated zero cluster is written in place. In a compressed entry bit 0 belongs to the host
            // offset, not the zero flag: such an entry (with a COPIED bit a damaged image may carry) is copied out.
            long prealloc = preallocatedZeroHost(e);
            long target = prealloc >= 0 ? prealloc : refcounts.allocateCluster();
            checkDataWrite(cluster, target, clusterSize);
            writeFile(fd, buf, target, align);
            t.setEntry(idx, target | OFLAG_COPIED);
            // Only a range counted in use is counted down (checkDrop): in a damaged image one at refcount 0 may be
            // the allocator's next cluster, and is left alone
            if (counted && (e & OFLAG_COMPRESSED) != 0) {
                // the host clusters the compressed data spans, but never the new one: in a damaged image with fewer
                // refcounts than references, a count-down a flush applied during the allocation may have brought the
                // data's cluster to 0 and the allocator given it as the target (as below)
                long lo = compressed.host(e);
                long hi = lo + compressed.bytes(e);
                if (target >= hi || target + clusterSize <= lo) {
                    refcounts.freeAfterFlush(lo, hi - lo);
                } else {
                    if (lo < target) {
                        refcounts.freeAfterFlush(lo, target - lo);
                    }
                    if (target + clusterSize < hi) {
                        refcounts.freeAfterFlush(target + clusterSize, hi - target - clusterSize);
                    }
                }
            } else if (counted && target != (e & OFFSET_MASK)) {
                // a shared cluster we copied, or a zero cluster's host cluster not written in place (no COPIED
                // flag): either way the entry referenced it and no longer does. (The old entry's cluster is never
                // the target in a consistent image; in a damaged one, as above, it may be.)
                refcounts.freeAfterFlush(e & OFFSET_MASK, clusterSize);
            }
        } finally {
            meta.unlock();
        }
    }

    /** The L2 table covering {@code cluster}, allocating it (zeroed) when absent. Caller holds the lock. */
    private MetaCache.Table l2ForWrite(long cluster) throws IOException {
        int l1i = (int) (cluster >>> (clusterBits + l2Bits));
        long l1e = l1.get(l1i);
        long off = l1e & OFFSET_MASK;
        if (off != 0) {
            if ((l1e & OFLAG_COPIED) == 0) {
                throw new IOException("qcow2 image " + path + ": L2 table " + off + " is shared (internal snapshot); "
                        + "iovirt does not copy shared tables");
            }
            return l2Table(off);
        }
        long newOff = refcounts.allocateCluster();
        makeRoom(l2Cache);
        MetaCache.Table t = l2Cache.put(newOff, MetaCache.allocate(clusterSize));
        t.markDirty(0, (int) clusterSize); // written whole at the next flush, before the L1 entry
        t.slot = l1i;
        l2ByL1.set(l1i, t);
        addMetadataCluster(newOff);
        l1.set(l1i, newOff | OFLAG_COPIED);
        l1DirtyLo = Math.min(l1DirtyLo, l1i);
        l1DirtyHi = Math.max(l1DirtyHi, l1i + 1);
        return t;
    }

    // ---- zeroes and discard --------------------------------------------------------------------------------

    @Override
    public void writeZeroes(long offset, long len, boolean unmap) throws IOException {
        zeroRange(offset, len, unmap, true);
    }

    @Override
    public void discard(long offset, long len) throws IOException {
        zeroRange(offset, len, true, false);
    }

    /**
     * Whole clusters become zero clusters (metadata only). Write-zeroes without {@code unmap} keeps a cluster's host
     * cluster: the cluster stays preallocated. Discard and write-zeroes with {@code unmap} give it up, as QEMU's do
     * (without its discard-no-unref option): the zero entry has no host cluster and the host cluster's refcount is
     * counted down once the entry is durable and no lock-free write that found the cluster before the discard can
     * still be in flight ({@link Refcounts#freeAfterFlush}); its space is punched out at once. A preallocated zero
     * cluster (zero flag and a host cluster) gives its host cluster up the same way: what it held before it was
     * zeroed does not stay in the file. Partial clusters are written with zeros (write-zeroes) or left alone
     * (discard is advisory).
     */
    private void zeroRange(long offset, long len, boolean unmap, boolean mustZero) throws IOException {
        checkRange(offset, len, true);
        checkSynced();
        long end = offset + len;
        long pos = offset;
        while (pos < end) {
            long cluster = pos & -clusterSize;
            long n = Math.min(end, cluster + clusterSize) - pos;
            if (n == clusterSize) {
                zeroCluster(cluster, unmap, mustZero ? "zeroing" : "discard");
            } else if (mustZero && !readsZero(pos, n)) {
                // Under the metadata lock, lookup and write both: no context's request count covers this write, and
                // a discard (which takes the lock) cannot free the cluster it finds before its zeros landed.
                meta.lock();
                try {
                    writePiece(pos, Source.zeroes(zeroCluster, align), 0, n);
                } finally {
                    meta.unlock();
                }
            }
            pos += n;
        }
    }

    private boolean readsZero(long pos, long n) throws IOException {
        long e = l2Entry(pos);
        if ((e & OFLAG_COMPRESSED) != 0) {
            return false;
        }
        return (e & OFLAG_ZERO) != 0 || ((e & OFFSET_MASK) == 0 && (backing == null || pos >= backingSize));
    }

    /** @param what the request, for its error: "discard" or "zeroing" */
    private void zeroCluster(long cluster, boolean unmap, String what) throws IOException {
        meta.lock();
        try {
            checkOpen();
            checkWritable();
            long e = l2Entry(cluster);
            if ((e & OFLAG_COMPRESSED) == 0 && (e & OFLAG_ZERO) != 0 && (!unmap || (e & OFFSET_MASK) == 0)) {
                return; // already zero (with unmap a preallocated one still gives its host cluster up, below)
            }
            if (e == 0 && (backing == null || cluster >= backingSize)) {
                return; // unallocated with nothing underneath reads as zeros
            }
            MetaCache.Table t = l2ForWrite(cluster);
            int idx = l2Index(cluster);
            e = t.entry(idx);
            // The host range the entry names (the compressed data's span, or the cluster) is punched out or counted
            // down below, or kept as a preallocated zero cluster a later write lands on. Damage is found first,
            // before anything changes: a range on metadata refuses the request, and one the refcounts already count
            // free (refcount 0) is dropped without a count-down, which would land on what the allocator put there.
            boolean counted = checkDrop(cluster, e, what);
            boolean compressedEntry = (e & OFLAG_COMPRESSED) != 0;
            long lo = compressedEntry ? compressed.host(e) : e & OFFSET_MASK;
            long bytes = compressedEntry ? compressed.bytes(e) : clusterSize;
            long host = ownedHost(e);
            long prealloc = preallocatedZeroHost(e);
            if (unmap && (host >= 0 || prealloc >= 0)) {
                // a normal cluster, or a preallocated zero cluster (its host cluster holds whatever was there
                // before the zeroing): this image owns it (COPIED), so nothing else reads it and it is punched out
                t.setEntry(idx, OFLAG_ZERO); // zeros, as before the free (a backing file stays hidden)
                punch(lo);
                if (counted) {
                    refcounts.freeAfterFlush(lo, clusterSize);
                }
            } else if (host >= 0) {
                t.setEntry(idx, host | OFLAG_COPIED | OFLAG_ZERO); // write-zeroes without unmap: preallocated
            } else {
                t.setEntry(idx, OFLAG_ZERO);
                if (counted) {
                    // a compressed cluster's data, a shared cluster, or the host cluster of a preallocated zero
                    // cluster without COPIED an unmap gives up: another reference may still read it, so it is not
                    // punched (a write-zeroes without unmap returned above: it keeps a zero cluster as it is)
                    refcounts.freeAfterFlush(lo, bytes);
                }
            }
        } finally {
            meta.unlock();
        }
    }

    /** Set when the file system refused FALLOC_FL_ZERO_RANGE: new clusters are then written whole. */
    private boolean zeroFallocateUnsupported;

    /** Zeroes (and allocates) the host cluster at {@code host}, extending the file; false if not supported here. */
    private boolean zeroFill(long host) throws LinuxException {
        try {
            FileIo.fallocate(fd, FileIo.FALLOC_FL_ZERO_RANGE, host, clusterSize);
            return true;
        } catch (LinuxException e) {
            if (e.errno() == Errno.EOPNOTSUPP || e.errno() == Errno.EINVAL) {
                zeroFallocateUnsupported = true;
                return false;
            }
            throw e;
        }
    }

    private void punch(long host) {
        try {
            FileIo.fallocate(fd, FileIo.FALLOC_FL_PUNCH_HOLE | FileIo.FALLOC_FL_KEEP_SIZE, host, clusterSize);
        } catch (LinuxException e) {
            // EOPNOTSUPP: the file system cannot punch; the cluster still reads as zeros through its L2 entry.
        }
    }

    // ---- allocation status ---------------------------------------------------------------------------------------

    @Override
    public long extent(long offset, long len) throws IOException {
        if (offset < 0 || len <= 0 || offset >= size) {
            throw new LinuxException(
                    "extent", offset + "+" + len + " outside the " + size + "-byte image", Errno.EINVAL);
        }
        long max = Math.min(len, size - offset);
        long e0 = l2Entry(offset);
        int kind = kind(e0);
        if (kind == 0 && backing != null && offset < backingSize) {
            long n = Math.min(max, clusterSize - (offset & (clusterSize - 1)));
            n = Math.min(n, backingSize - offset);
            return backing.extent(offset, n);
        }
        long pos = (offset & -clusterSize) + clusterSize;
        while (pos < offset + max && pos - offset < (1L << 30)) {
            long e = l2Entry(pos);
            int k = kind(e);
            if (k != kind || (k == 0 && backing != null && pos < backingSize)) {
                break;
            }
            pos += clusterSize;
        }
        long n = Math.min(pos - offset, max);
        return switch (kind) {
            case 0, 1 -> Extent.of(n, true, true); // unallocated (nothing beneath) or a zero cluster
            default -> Extent.of(n, false, false);
        };
    }

    /** 0 unallocated, 1 zero, 2 data (normal or compressed). */
    private static int kind(long e) {
        if ((e & OFLAG_COMPRESSED) != 0) {
            return 2;
        }
        if ((e & OFLAG_ZERO) != 0) {
            return 1;
        }
        return (e & OFFSET_MASK) != 0 ? 2 : 0;
    }

    // ---- file access (O_DIRECT-aware) ------------------------------------------------------------------------

    private static boolean aligned(MemorySegment s, long off, int align) {
        return align <= 1
                || (s.isNative()
                        && (s.address() & (align - 1)) == 0
                        && (off & (align - 1)) == 0
                        && (s.byteSize() & (align - 1)) == 0);
    }

    /**
     * Reads {@code dst} at {@code off}; returns the bytes read (fewer at the end of the file). With O_DIRECT an
     * unaligned request (a header field, a compressed cluster, a heap-backed table) is read through an aligned
     * buffer covering it.
     */
    static long readFile(Fd fd, MemorySegment dst, long off, int align) throws LinuxException {
        if (aligned(dst, off, align)) {
            return FileIo.readFully(fd, dst, off);
        }
        long lo = off & -align;
        long hi = (off + dst.byteSize() + align - 1) & -align;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment b = a.allocate(hi - lo, Math.max(align, FileIo.DIRECT_ALIGNMENT));
            long n = FileIo.readFully(fd, b, lo);
            long got = Math.max(0, Math.min(dst.byteSize(), n - (off - lo)));
            MemorySegment.copy(b, off - lo, dst, 0, got);
            return got;
        }
    }

    /**
     * Writes {@code src} at {@code off}. With O_DIRECT an unaligned request goes through an aligned buffer; partial
     * blocks at its ends are read first (read-modify-write). That happens only for metadata — under the metadata
     * lock or while opening — since the guest addresses an O_DIRECT image in whole blocks ({@link #blockSize()})
     * and clusters are at least one block: two writers never share a block.
     */
    static void writeFile(Fd fd, MemorySegment src, long off, int align) throws LinuxException {
        if (aligned(src, off, align)) {
            FileIo.writeFully(fd, src, off);
            return;
        }
        long len = src.byteSize();
        long lo = off & -align;
        long hi = (off + len + align - 1) & -align;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment b = a.allocate(hi - lo, Math.max(align, FileIo.DIRECT_ALIGNMENT));
            if (lo != off || hi != off + len) {
                FileIo.readFully(fd, b, lo); // past the end of the file it stays zero
            }
            MemorySegment.copy(src, 0, b, off - lo, len);
            FileIo.writeFully(fd, b, lo);
        }
    }

    // ---- resize --------------------------------------------------------------------------------------------

    /** Largest L1 table iovirt writes (QEMU's limit: 32 MiB of entries). */
    private static final int MAX_L1_ENTRIES = (32 << 20) / 8;

    /**
     * Grows the virtual size (the daemon's blk.resize) while the image is served. When the L1 table no longer covers
     * the new size, a new one is written the way the format asks: new contiguous clusters, the old entries copied
     * and the rest zero, refcounts durable, then the header switched to it (l1_size and l1_table_offset in one
     * sector write) and synced; the old table's clusters are freed afterwards. The size field is written last, so a
     * crash leaves either the old size or the new one, both consistent (at worst a leaked cluster).
     */
    @Override
    public void resize(long newSize) throws IOException {
        if (readOnly) {
            throw new LinuxException("resize", path + " is open read-only", Errno.EROFS);
        }
        meta.lock();
        try {
            checkOpen();
            if (readOnly) {
                // again under the lock: a switch to read-only may have run since the check above, and it freed the
                // clusters of requests still in flight at once (nothing may allocate while read-only)
                throw new LinuxException("resize", path + " is read-only now", Errno.EROFS);
            }
            if (newSize < size) {
                throw new IOException("shrinking qcow2 image " + path + " from " + size + " to " + newSize
                        + " bytes is not supported (the guest may have data there)");
            }
            if ((newSize & 511) != 0) {
                throw new IOException("new size " + newSize + " of " + path + " is not a multiple of 512 bytes");
            }
            if (newSize == size) {
                return;
            }
            long perEntry = clusterSize << l2Bits;
            long entries = (newSize + perEntry - 1) / perEntry;
            if (entries > MAX_L1_ENTRIES) {
                throw new IOException(
                        "qcow2 image " + path + " cannot grow to " + newSize + " bytes: its L1 table would" + " need "
                                + entries + " entries, more than " + MAX_L1_ENTRIES + " (use larger clusters)");
            }
            flushMetadata(); // dirty L1 entries reach the old table before it is copied
            if (entries > l1.length()) {
                growL1((int) entries);
            }
            writeMeta64(Qcow2Header.OFF_SIZE, newSize);
            sync();
            size = newSize;
        } finally {
            meta.unlock();
        }
    }

    /** Replaces the L1 table by one of {@code entries} entries (metadata lock held, metadata flushed). */
    private void growL1(int entries) throws IOException {
        long oldL1 = chargedL1;
        chargeTables(entries, chargedRef, "growing its L1 table to " + entries + " entries (a resize)");
        try {
            growL1Charged(entries); // may grow the refcount table too, charged with the new L1 size
        } finally {
            if (l1.length() != entries) { // failed before the switch: the old table stays in use
                setCharge(oldL1, chargedRef);
            }
        }
    }

    /** {@link #growL1} once the new table is charged. */
    private void growL1Charged(int entries) throws IOException {
        AtomicLongArray old = l1;
        long oldOff = l1Offset;
        long oldClusters = ((long) old.length() * 8 + clusterSize - 1) >>> clusterBits;
        long bytes = ((long) entries * 8 + clusterSize - 1) & -clusterSize;
        int clusters = (int) (bytes >>> clusterBits);
        long newOff = refcounts.allocateContiguous(clusters);
        AtomicLongArray grown = new AtomicLongArray(entries);
        var grownCache = new java.util.concurrent.atomic.AtomicReferenceArray<MetaCache.Table>(entries);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment t = a.allocate(bytes, 4096);
            for (int i = 0; i < old.length(); i++) {
                long e = old.get(i);
                grown.set(i, e);
                grownCache.set(i, l2ByL1.get(i));
                t.set(Qcow2Header.BE64, (long) i * 8, e);
            }
            writeFile(fd, t, newOff, align);
        }
        flushMetadata(); // the new table's refcounts, and the table itself, durable before the header names it
        try (Arena a = Arena.ofConfined()) {
            MemorySegment h = a.allocate(12);
            h.set(Qcow2Header.BE32, 0, entries);
            h.set(Qcow2Header.BE64, 4, newOff);
            publish(h, Qcow2Header.OFF_L1_SIZE);
        }
        addMetadataClusters(newOff, clusters);
        l2ByL1 = grownCache;
        l1 = grown;
        l1Offset = newOff;
        dropMetadataClusters(oldOff, oldClusters); // the old table's clusters become free
        refcounts.releaseOldTable(oldOff, oldClusters); // the header no longer names them (synced above)
    }

    // ---- flush ---------------------------------------------------------------------------------------------

    /**
     * Writes dirty metadata and syncs; nothing to do when opened read-only. An image switched to read-only still
     * syncs: a data write that passed its checks before the switch may have completed after the switch's flush (see
     * {@link DiskImage#flush}).
     */
    @Override
    public void flush() throws IOException {
        if (openedReadOnly) {
            return;
        }
        meta.lock();
        try {
            checkOpen();
            flushMetadata();
        } finally {
            meta.unlock();
        }
    }

    /** Writes dirty metadata in the consistency order; see the class comment. Caller holds the lock. */
    private void flushMetadata() throws IOException {
        checkSynced();
        for (MetaCache.Table b : refcounts.blocks()) {
            writeDirty(b);
        }
        sync(); // data and refcounts before the tables that reference them
        boolean l2 = false;
        for (MetaCache.Table t : l2Cache.all()) {
            l2 |= writeDirty(t);
        }
        if (l2) {
            sync();
        }
        if (l1DirtyLo < l1DirtyHi) {
            int chunk = (int) (staging.byteSize() / 8); // the L1 table may have grown past the staging buffer
            for (int lo = l1DirtyLo; lo < l1DirtyHi; lo += chunk) {
                int hi = Math.min(l1DirtyHi, lo + chunk);
                MemorySegment s = staging.asSlice(0, (long) (hi - lo) * 8);
                for (int i = lo; i < hi; i++) {
                    s.set(Qcow2Header.BE64, (long) (i - lo) * 8, l1.get(i));
                }
                writeFile(fd, s, l1Offset + (long) lo * 8, align);
            }
            l1DirtyLo = Integer.MAX_VALUE;
            l1DirtyHi = 0;
            sync();
        }
        // The dereferences are durable now: their clusters may be counted down (written at the next flush).
        refcounts.applyDeferredFrees();
    }

    /**
     * fdatasync of the image's file. A failure is kept ({@link #syncFailure}): this and every later flush or write
     * fails with it.
     */
    void sync() throws IOException {
        checkSynced();
        try {
            FileIo.fdatasync(fd);
        } catch (IOException e) {
            throw writeBackFailed(e);
        }
    }

    /**
     * Writes {@code src} at {@code fileOffset}, then syncs: a pointer that publishes metadata written and synced
     * before it (a refcount table entry naming a new refcount block, the header naming a new refcount or L1 table).
     * A failed write is kept as a failed fdatasync is ({@link #syncFailure}): the pointer on disk may be the old one
     * or the new one (a partial block written under O_DIRECT), so every later write and flush is refused until the
     * image is opened again and reads whichever the disk has. The caller changes its in-memory state only after.
     */
    void publish(MemorySegment src, long fileOffset) throws IOException {
        checkSynced();
        try {
            writeFile(fd, src, fileOffset, align);
        } catch (IOException e) {
            throw writeBackFailed(e);
        }
        sync();
    }

    /** Keeps {@code e}, a failed write-back, in {@link #syncFailure} and returns what it became. */
    private IOException writeBackFailed(IOException e) {
        syncFailure = new IOException(
                "qcow2 image " + path + ": writing back to its file failed (" + e.getMessage() + "): data and"
                        + " metadata written since its last successful flush may be lost and its tables may be"
                        + " inconsistent, so every write and flush is refused until it is opened again; check"
                        + " it with 'qemu-img check -r all " + path + "' before using it",
                e);
        return syncFailure;
    }

    /** Fails when an fdatasync of the image's file failed since it was opened. */
    private void checkSynced() throws IOException {
        IOException e = syncFailure;
        if (e != null) {
            throw new IOException(e.getMessage(), e);
        }
    }

    private boolean writeDirty(MetaCache.Table t) throws IOException {
        if (!t.dirty()) {
            return false;
        }
        int lo = t.dirtyLo & ~511;
        int hi = (int) Math.min(clusterSize, (t.dirtyHi + 511L) & ~511L);
        writeMeta(t.data, lo, hi - lo, t.offset + lo);
        t.clean();
        return true;
    }

    /** Writes {@code heap}'s bytes [from, from+len) at {@code fileOffset}, through the staging buffer (lock held). */
    void writeMeta(MemorySegment heap, long from, long len, long fileOffset) throws IOException {
        MemorySegment s = staging.asSlice(0, len);
        MemorySegment.copy(heap, from, s, 0, len);
        writeFile(fd, s, fileOffset, align);
    }

    /** Writes the big-endian 64-bit {@code value} at {@code fileOffset}: a header field, a table entry (lock held). */
    void writeMeta64(long fileOffset, long value) throws IOException {
        MemorySegment s = staging.asSlice(0, 8);
        s.set(Qcow2Header.BE64, 0, value);
        writeFile(fd, s, fileOffset, align);
    }

    /** The first {@code bytes} of the native staging buffer for metadata I/O (lock held, or while opening). */
    MemorySegment staging(long bytes) {
        return staging.asSlice(0, bytes);
    }

    /** Reads {@code dst} whole at {@code fileOffset}; metadata past the end of the file is damage. */
    void readMeta(MemorySegment dst, long fileOffset) throws IOException {
        long got = readFile(fd, dst, fileOffset, align);
        if (got < dst.byteSize()) {
            throw new IOException("qcow2 image " + path + " is truncated: metadata at " + fileOffset + "+"
                    + dst.byteSize() + " lies past the end of the file ('qemu-img check " + path + "')");
        }
    }

    /** Releases what the constructor made, for a failed open (the caller closes the file and the backing chain). */
    private void closeQuietlyKeepingFile() {
        closed = true;
        l2Cache.close();
        refcounts.close();
        arena.close();
        stagingArena.close();
        chain.adjust(charged, 0);
        charged = 0;
    }

    /** What {@link #forEachReference} calls per reference. */
    interface ClusterVisitor {
        void visit(long cluster) throws IOException;
    }

    /** Calls {@code c} once per reference to a cluster: header, L1, L2 tables, data (compressed: each cluster touched). */
    void forEachReference(ClusterVisitor c) throws IOException {
        c.visit(0);
        for (long x = l1Offset >>> clusterBits; x <= (l1Offset + (long) l1.length() * 8 - 1) >>> clusterBits; x++) {
            c.visit(x);
        }
        MemorySegment s = staging.asSlice(0, clusterSize);
        for (int i = 0; i < l1.length(); i++) {
            long l2 = l1.get(i) & OFFSET_MASK;
            if (l2 == 0) {
                continue;
            }
            c.visit(l2 >>> clusterBits);
            MetaCache.Table cached = l2Cache.get(l2);
            if (cached != null) {
                MemorySegment.copy(cached.data, 0, s, 0, clusterSize);
            } else {
                readMeta(s, l2);
            }
            for (long k = 0; k < clusterSize / 8; k++) {
                long e = s.get(Qcow2Header.BE64, k * 8);
                if ((e & OFLAG_COMPRESSED) != 0) {
                    long host = compressed.host(e);
                    for (long x = host >>> clusterBits; x <= (host + compressed.bytes(e) - 1) >>> clusterBits; x++) {
                        c.visit(x);
                    }
                } else if ((e & OFFSET_MASK) != 0) {
                    c.visit((e & OFFSET_MASK) >>> clusterBits);
                }
            }
        }
    }

    /**
     * The lock-free data reads and writes in flight now: each context between the lookup of a request's host
     * clusters and its completion (its request count odd), with its count. A request counts up before its lookup
     * and the discard changed the L2 entry before this is asked (both volatile): a request not seen here looks up the
     * entry after the change and never finds the discarded cluster, and one seen here is over once its context's
     * count moved on ({@link InFlight#over}). Per request, not a moment with none anywhere, which a busy disk never
     * has. Metadata lock held.
     */
    InFlight requestsNow() {
        Qcow2Io[] busy = new Qcow2Io[4];
        long[] counts = new long[4];
        int n = 0;
        for (Qcow2Io c : contexts) {
            long w = c.requests;
            if ((w & 1) != 0) {
                if (n == busy.length) {
                    busy = Arrays.copyOf(busy, n * 2);
                    counts = Arrays.copyOf(counts, n * 2);
                }
                busy[n] = c;
                counts[n++] = w;
            }
        }
        return new InFlight(Arrays.copyOf(busy, n), Arrays.copyOf(counts, n));
    }

    /** The requests {@link #requestsNow} found in flight: each context's, while its count is still this one. */
    record InFlight(Qcow2Io[] contexts, long[] counts) {
        /** Whether every one of these requests completed (its context counted on, or was closed). */
        boolean over() {
            for (int i = 0; i < contexts.length; i++) {
                if (contexts[i].requests == counts[i]) {
                    return false;
                }
            }
            return true;
        }
    }

    /**
     * Quarantines host bytes [host, host+bytes), which a request given up on in the kernel (its ring closed before
     * its completion came) may still write or read at any time: while the image is open the allocator never hands
     * their clusters out again and a free of one is held back, so the cluster stays allocated with nothing
     * referencing it, a leak (for a read too: it would read another guest offset's data or a table into guest
     * memory). Neither is undone at close: the kernel may carry the request out after it, and the next program to
     * open the image would hand the cluster out; 'qemu-img check -r leaks' reclaims the leak once this process has
     * exited. Called before the request's context is closed, so before its count moves on: a free waiting for the
     * request is applied only after, and held back; a {@code write}'s free a switch to read-only applied early is
     * taken back and written at once ({@link Refcounts#quarantine}). Takes the metadata lock; nothing to do once the
     * image is closed. Throws when a refcount cannot be read, or when the lock is not free within
     * {@link #QUARANTINE_LOCK_WAIT_SECONDS} (another thread holds it in a write-back on a file system that does not
     * answer, and this one may be a loop other devices share): nothing is quarantined then.
     */
    void quarantine(long host, long bytes, boolean write) throws IOException {
        boolean locked;
        // a wait that timed out makes the next ones in its window only try: one stop giving up on a queue of requests
        // waits once, and a later stop (another stall, or ordinary contention) waits again
        boolean waits = System.nanoTime() - quarantineLockStuckUntil >= 0;
        try {
            if (waits) {
                quarantineLockWaits.incrementAndGet();
                locked = meta.tryLock(QUARANTINE_LOCK_WAIT_SECONDS, java.util.concurrent.TimeUnit.SECONDS);
                if (!locked) {
                    quarantineLockStuckUntil = System.nanoTime()
                            + java.util.concurrent.TimeUnit.SECONDS.toNanos(QUARANTINE_LOCK_WAIT_SECONDS);
                }
            } else {
                locked = meta.tryLock();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            locked = false;
        }
        if (!locked) {
            throw new IOException("its metadata lock stayed busy"
                    + (waits ? " for " + QUARANTINE_LOCK_WAIT_SECONDS + " seconds" : ", as at an earlier give-up")
                    + " (a metadata write-back that does not end?)");
        }
        try {
            if (closed) {
                return;
            }
            if (refcounts.quarantine(host, bytes, write) > 0) {
                // A switch to read-only freed a cluster the write may still land on (its free waited for the
                // request): counted up again, and written at once in the consistency order, so that neither another
                // program opening the file now nor the next one after the close hands it out.
                try {
                    flushMetadata();
                } catch (IOException e) {
                    System.getLogger(Qcow2Image.class.getName())
                            .log(
                                    System.Logger.Level.ERROR,
                                    "qcow2 image " + path + ": cannot write the refcounts of clusters a request"
                                            + " given up on in the kernel may still write: " + e.getMessage()
                                            + " (the close tries again)");
                }
            }
            System.getLogger(Qcow2Image.class.getName())
                    .log(
                            System.Logger.Level.WARNING,
                            "qcow2 image " + path + ": the " + bytes + " bytes at host offset 0x"
                                    + Long.toHexString(host) + " a request given up on in the kernel may still write"
                                    + " are quarantined: never handed out again, and left allocated (leaked) if freed,"
                                    + " while the image is open (" + refcounts.quarantinedClusters()
                                    + " clusters quarantined in all)");
        } finally {
            meta.unlock();
        }
    }

    /**
     * How long {@link #quarantine} waits for the metadata lock, on a queue's stop: a few seconds, more than a
     * write-back on a file system that answers takes, and not long enough to stall the other devices a shared loop
     * serves for long.
     */
    static final long QUARANTINE_LOCK_WAIT_SECONDS = 5;

    /**
     * Until when (System.nanoTime) a {@link #quarantine} only tries the metadata lock, since one's wait for it timed
     * out: a stop giving up on a whole queue of requests waits once, not once per request (a queue of 128: over ten
     * minutes of a loop other devices may share). A wait's length later, the next give-up waits again.
     */
    private volatile long quarantineLockStuckUntil = System.nanoTime();

    /** How many {@link #quarantine}s waited for the metadata lock (tests). */
    private final java.util.concurrent.atomic.AtomicInteger quarantineLockWaits =
            new java.util.concurrent.atomic.AtomicInteger();

    int quarantineLockWaits() {
        return quarantineLockWaits.get();
    }

    /** How many clusters are quarantined ({@link #quarantine}). */
    long quarantinedClusters() {
        meta.lock();
        try {
            return refcounts.quarantinedClusters();
        } finally {
            meta.unlock();
        }
    }

    /** How many quarantined clusters were freed and stay allocated, referenced by nothing: leaked on purpose. */
    long quarantineLeaks() {
        meta.lock();
        try {
            return refcounts.leaked();
        } finally {
            meta.unlock();
        }
    }

    private void clearAutoclear() throws IOException {
        writeMeta64(Qcow2Header.OFF_AUTOCLEAR, 0L);
        sync();
    }

    @Override
    public Fd[] ringFiles() {
        return file.ringFiles(); // data reads and writes go through the raw file's contexts
    }

    @Override
    public boolean submitFlush(IoUring ring, long userData) {
        return false; // the metadata flush is several ordered steps: the caller runs flush()
    }

    @Override
    public void flushCompleted(int result) throws IOException {
        throw new IllegalStateException("qcow2 flushes are synchronous");
    }

    private void checkRange(long offset, long len, boolean write) throws LinuxException {
        DiskImage.checkRange(path, size, readOnly, offset, len, write);
    }

    /** Refuses a metadata change once the image was switched to read-only (metadata lock held). */
    private void checkWritable() throws LinuxException {
        if (readOnly) {
            throw new LinuxException("pwrite", path + " is read-only now", Errno.EROFS);
        }
    }

    private void checkOpen() throws IOException {
        if (closed) {
            throw new IOException("qcow2 image " + path + " is closed");
        }
    }

    /** Flushes (twice, so refcount decrements land too) and closes the chain. */
    @Override
    public void close() {
        meta.lock();
        try {
            if (closed) {
                return;
            }
            if (!openedReadOnly) { // switched to read-only: writes may have completed since its flush
                try {
                    flushMetadata();
                    flushMetadata();
                } catch (IOException e) {
                    System.getLogger(Qcow2Image.class.getName())
                            .log(
                                    System.Logger.Level.ERROR,
                                    "qcow2 image " + path + ": metadata flush at close failed: " + e.getMessage()
                                            + " (data written since the last guest flush may be lost; run 'qemu-img check')");
                }
            }
            if (refcounts.leaked() > 0) {
                System.getLogger(Qcow2Image.class.getName())
                        .log(
                                System.Logger.Level.WARNING,
                                "qcow2 image " + path + ": " + refcounts.leaked() + " freed clusters stay allocated"
                                        + " (leaked): a request given up on in the kernel may still write them;"
                                        + " reclaim them with 'qemu-img check -r leaks' once this process has exited");
            }
            closed = true;
        } finally {
            meta.unlock();
        }
        l2Cache.close();
        refcounts.close();
        file.close();
        if (backing != null) {
            backing.close();
        }
        if (backingLock != null) {
            backingLock.close();
        }
        arena.close();
        stagingArena.close();
        chain.adjust(charged, 0); // closed: no table of it is used any more
        charged = 0;
    }

    // ---- sources of written bytes ----------------------------------------------------------------------------

    /** Bytes a write takes from its caller: a context's scattered buffers, or zeros. */
    private interface Source {
        /** Writes source bytes [pos, pos+n) at file offset {@code at}. */
        void writeTo(Fd fd, long pos, long n, long at) throws IOException;

        /** Copies source bytes [pos, pos+n) into {@code dst} at {@code dstOffset}. */
        void copyTo(long pos, MemorySegment dst, long dstOffset, long n);

        static Source zeroes(MemorySegment zeroCluster, int align) {
            return new Source() {
                @Override
                public void writeTo(Fd fd, long pos, long n, long at) throws IOException {
                    writeFile(fd, zeroCluster.asSlice(0, n), at, align);
                }

                @Override
                public void copyTo(long pos, MemorySegment dst, long dstOffset, long n) {
                    dst.asSlice(dstOffset, n).fill((byte) 0);
                }
            };
        }
    }

    /**
     * A qcow2 request context. A request that is one run of allocated clusters goes straight to the file through
     * the wrapped raw context (and the caller's io_uring); anything else is split at cluster boundaries.
     */
    public final class Qcow2Io implements ImageIo, Source {
        private final RawImage.IoContext raw;
        /** The buffers as (mapping, offset, length), as the raw context keeps them: adding one allocates nothing. */
        private MemorySegment[] maps = new MemorySegment[8];

        private long[] offs = new long[8];
        private long[] lens = new long[8];
        private int count;
        private long bytes;
        /** Host offset of the transfer queued by submitRead/submitWrite. */
        private long submittedHost;
        /** Its length: the host bytes [submittedHost, +submittedBytes) the kernel reads or writes for it. */
        private long submittedBytes;
        /** Whether that transfer writes: given up on in the kernel, it may still change the file. */
        private boolean submittedWrite;
        /**
         * Counts up when a read or write starts (before it looks up its host clusters) and when it completed: odd
         * while one is in flight. A cluster a discard freed is not handed out again while a write that may have found
         * it before the discard can still land on it, or a read still read it (another guest offset's data once
         * the cluster is written again) ({@link #requestsNow}). Written by the context's own thread only.
         */
        private volatile long requests;

        /**
         * Its request in flight was given up on in the kernel ({@link #abandon}) and its host clusters could not be
         * quarantined: it counts in flight for ever.
         */
        private boolean abandoned;

        private Qcow2Io(RawImage.IoContext raw) {
            this.raw = raw;
            contexts.add(this);
        }

        @Override
        public void clear() {
            raw.clear();
            Arrays.fill(maps, 0, count, null);
            count = 0;
            bytes = 0;
        }

        @Override
        public boolean add(MemorySegment memory, long offset, long length) {
            if (!raw.add(memory, offset, length)) { // checks the range
                return false;
            }
            if (length == 0) {
                return true;
            }
            if (count == maps.length) {
                maps = Arrays.copyOf(maps, count * 2);
                offs = Arrays.copyOf(offs, count * 2);
                lens = Arrays.copyOf(lens, count * 2);
            }
            maps[count] = memory;
            offs[count] = offset;
            lens[count] = length;
            count++;
            bytes += length;
            return true;
        }

        @Override
        public long bytes() {
            return bytes;
        }

        @Override
        public void read(long offset) throws IOException {
            checkRange(offset, bytes, false);
            start();
            try {
                readPieces(offset);
            } finally {
                end();
            }
        }

        private void readPieces(long offset) throws IOException {
            long host = contiguousHost(offset, bytes);
            if (host >= 0) {
                raw.read(host);
                return;
            }
            // Not one allocated host run (unallocated, zero or compressed clusters, or a run broken on the host):
            // cluster by cluster, a slice per piece.
            long pos = 0;
            for (int i = 0; i < count; i++) {
                long done = 0;
                while (done < lens[i]) {
                    long g = offset + pos + done;
                    long n = Math.min(lens[i] - done, clusterSize - (g & (clusterSize - 1)));
                    readPiece(g, maps[i].asSlice(offs[i] + done, n));
                    done += n;
                }
                pos += lens[i];
            }
        }

        @Override
        public void write(long offset) throws IOException {
            checkRange(offset, bytes, true);
            checkSynced();
            start();
            try {
                long host = contiguousHost(offset, bytes);
                if (host >= 0) {
                    checkDataWrite(offset, host, bytes);
                    raw.write(host);
                    return;
                }
                long pos = 0;
                while (pos < bytes) {
                    long g = offset + pos;
                    long n = Math.min(bytes - pos, clusterSize - (g & (clusterSize - 1)));
                    writePiece(g, this, pos, n);
                    pos += n;
                }
            } finally {
                end();
            }
        }

        /** A request starts: before it looks up its host clusters (a volatile write, then the lookup's reads). */
        void start() {
            requests = requests + 1; // odd; only this context's thread writes it
        }

        /** The request started last is over (nothing if none is in flight: the count stays even). */
        void end() {
            long w = requests;
            if ((w & 1) != 0) {
                requests = w + 1;
            }
        }

        @Override
        public boolean submitRead(IoUring ring, long offset, long userData) throws LinuxException {
            checkRange(offset, bytes, false);
            return submit(ring, offset, userData, false);
        }

        @Override
        public boolean submitWrite(IoUring ring, long offset, long userData) throws LinuxException {
            checkRange(offset, bytes, true);
            if (syncFailure != null) {
                return false; // the synchronous path reports it
            }
            return submit(ring, offset, userData, true);
        }

        /**
         * Queues the request on {@code ring} when it maps to one host run, counted in flight from before its lookup
         * until {@link #completed} (the lookup must follow the count: a discard's free waits only for requests
         * counted when its flush ran); false, the count back to even, when it is not queued: the synchronous path
         * then reads, writes, or reports the damaged entry (a write onto metadata).
         */
        private boolean submit(IoUring ring, long offset, long userData, boolean write) throws LinuxException {
            start(); // until completed(): the request is in flight on the host clusters it finds
            boolean queued = false;
            int before = ring.unsubmitted();
            try {
                long host = submittableHost(offset);
                if (host < 0 || (write && overlapsMetadata(host, bytes))) {
                    return false;
                }
                submittedHost = host; // meaningful while the count is odd: for abandon()
                submittedBytes = bytes;
                submittedWrite = write;
                queued = write ? raw.submitWrite(ring, host, userData) : raw.submitRead(ring, host, userData);
                return queued;
            } finally {
                // an entry prepared is in flight even when something threw after its preparation (the engine counts
                // it in its ring too): its clusters stay counted, and quarantined if it is given up on
                if (!queued && ring.unsubmitted() == before) {
                    end();
                }
            }
        }

        /**
         * The host run the request at {@code offset} maps to as {@link #contiguousHost} finds it, or -1: none, or an
         * error other than a {@link LinuxException}, which the synchronous path reports.
         */
        private long submittableHost(long offset) throws LinuxException {
            try {
                return contiguousHost(offset, bytes);
            } catch (LinuxException e) {
                throw e;
            } catch (IOException e) {
                return -1;
            }
        }

        @Override
        public void completed(boolean write, long offset, int result) throws IOException {
            try {
                raw.completed(write, submittedHost, result);
            } finally {
                end();
            }
        }

        @Override
        public void writeTo(Fd fd, long pos, long n, long at) throws IOException {
            long p = 0;
            for (int i = 0; i < count && n > 0; i++) {
                long bEnd = p + lens[i];
                if (bEnd > pos) {
                    long from = Math.max(0, pos - p);
                    long k = Math.min(lens[i] - from, n);
                    writeFile(fd, maps[i].asSlice(offs[i] + from, k), at, align);
                    at += k;
                    pos += k;
                    n -= k;
                }
                p = bEnd;
            }
        }

        @Override
        public void copyTo(long pos, MemorySegment dst, long dstOffset, long n) {
            long p = 0;
            for (int i = 0; i < count && n > 0; i++) {
                long bEnd = p + lens[i];
                if (bEnd > pos) {
                    long from = Math.max(0, pos - p);
                    long k = Math.min(lens[i] - from, n);
                    MemorySegment.copy(maps[i], offs[i] + from, dst, dstOffset, k);
                    dstOffset += k;
                    pos += k;
                    n -= k;
                }
                p = bEnd;
            }
        }

        /**
         * The request queued last is given up on in the kernel: the host clusters it found, where a write may land (or
         * a read still read) at any time, are quarantined while the image is open ({@link Qcow2Image#quarantine}):
         * never handed out again, never freed. Then the context goes as any other at its {@link #close}, and the
         * frees that wait for the requests in flight no longer wait for this one, which never completes: before,
         * every later free waited for it, and a guest that wrote, discarded and flushed in a loop grew the file and
         * its leaked clusters for as long as the image stayed open. The leak is now these clusters: at most the
         * requests in flight of the queue given up on (queue size × request size). Nothing to do when no request is
         * in flight (the count is even) or none was queued. A request a failed queue dropped once its I/O ended keeps
         * its count odd until the close, but is out of the kernel: the engine does not give it up (its slot is free).
         */
        @Override
        public void abandon() {
            if ((requests & 1) == 0 || submittedBytes == 0) {
                return;
            }
            abandoned = true; // stays in flight for ever if the quarantine fails (out of memory): a leak at worst
            try {
                quarantine(submittedHost, submittedBytes, submittedWrite);
            } catch (IOException e) {
                System.getLogger(Qcow2Image.class.getName())
                        .log(
                                System.Logger.Level.ERROR,
                                "qcow2 image " + path + ": cannot quarantine the host clusters of a request given up"
                                        + " on in the kernel (" + e.getMessage() + "): it counts in flight for as"
                                        + " long as the image is open, and no cluster freed since is handed out again");
                return;
            }
            abandoned = false;
        }

        @Override
        public void close() {
            if (!abandoned) {
                contexts.remove(this);
                end(); // closed: its requests are over (a discard that saw one in flight may free its clusters)
            }
            // Abandoned and not quarantined: a write the kernel still holds may land on the host clusters it found at
            // any time, so the context stays registered with its count odd, and no cluster freed since is handed out
            // again while the image is open (each later batch of frees waits for it: a leak, not a corruption).
            clear();
            raw.close();
        }
    }
}
