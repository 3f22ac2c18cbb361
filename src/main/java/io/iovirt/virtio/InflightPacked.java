// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.util.Arrays;

/**
 * One packed queue's in-flight record in the frontend-kept shared memory of vhost-user
 * {@code VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD} (docs/interop/vhost-user.rst, "Inflight I/O tracking", packed
 * virtqueue): the descriptors of every buffer the device has taken and not yet returned, copied out of the
 * descriptor ring (the device's used descriptors overwrite ring slots of buffers still in flight when requests
 * complete out of order, so the ring itself cannot tell them after a crash), and the used side's position.
 *
 * <p>Layout ({@code QueueRegionPacked}): {@code u64 features; u16 version, desc_num, free_head, old_free_head,
 * used_idx, old_used_idx; u8 used_wrap_counter, old_used_wrap_counter, padding[7];} then from offset 32 a 32-byte
 * {@code DescStatePacked} per entry: {@code u8 inflight, padding; u16 next, last, num; u64 counter; u16 id, flags;
 * u32 len; u64 addr}. Entries form a free list through {@code next}; a buffer taken from the ring occupies as many
 * entries as it has descriptors, its head entry carrying {@code inflight}, {@code num}, {@code last} and the
 * {@code counter} that orders resubmission. The {@code old_*} fields are the committed state: an update a crash
 * interrupts is rolled back to them, or committed when the used descriptor already reached the ring.
 *
 * <p>Everything read back from the region is checked (it is shared with the frontend, and a previous process may have
 * died in the middle of an update): an index beyond the queue, a list that does not end where its head says, more
 * descriptors in flight than the ring holds or a buffer ID twice make the whole record invalid, and then nothing is
 * resubmitted (the {@link RecoveryException} names why).
 */
public final class InflightPacked {
    /** Bytes of the packed header and of each descriptor state. */
    public static final int HEADER = 32;

    public static final int DESC = 32;
    static final short VERSION = 1;

    private static final ValueLayout.OfByte U8 = ValueLayout.JAVA_BYTE;
    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED;
    private static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED;
    private static final VarHandle U16_RELEASE = ValueLayout.JAVA_SHORT.varHandle();

    private static final long VERSION_OFF = 8;
    private static final long DESC_NUM_OFF = 10;
    private static final long FREE_HEAD_OFF = 12;
    private static final long OLD_FREE_HEAD_OFF = 14;
    private static final long USED_IDX_OFF = 16;
    private static final long OLD_USED_IDX_OFF = 18;
    private static final long USED_WRAP_OFF = 20;
    private static final long OLD_USED_WRAP_OFF = 21;

    private static final long D_INFLIGHT = 0;
    private static final long D_NEXT = 2;
    private static final long D_LAST = 4;
    private static final long D_NUM = 6;
    private static final long D_COUNTER = 8;
    private static final long D_ID = 16;
    private static final long D_FLAGS = 18;
    private static final long D_LEN = 20;
    private static final long D_ADDR = 24;

    /** A record that cannot be a state this protocol leaves behind: nothing in it can be trusted. */
    public static final class RecoveryException extends Exception {
        RecoveryException(String message) {
            super(message);
        }
    }

    private final MemorySegment region;
    private final int size;
    // The running state. The region is written, never read, while the queue runs (only this thread writes it); these
    // mirror what matters, so a frontend scribbling on the shared memory cannot steer an index here.
    private final int[] next;
    private final int[] headById;
    private final int[] lastById;
    private long counter;
    private int freeHead;
    private int oldFreeHead;
    private int usedIdx;
    private boolean usedWrap;
    /** Head entry of the buffer being recorded and its descriptors so far. */
    private int recording;

    private int recorded;
    // What attach found to resubmit, copied out of the region (validated once, immune to later changes): buffer k
    // has descriptors resubmitStart[k] .. resubmitStart[k + 1] - 1 of the flat arrays.
    private int[] resubmitStart = new int[1];
    private long[] rAddr = new long[0];
    private long[] rLen = new long[0];
    private int[] rFlags = new int[0];
    private int[] rId = new int[0];

    /**
     * @param region at least {@link #bytes(int)} bytes of the frontend's inflight memory for this queue, 8-byte
     *               aligned
     * @param size   the queue size
     */
    public InflightPacked(MemorySegment region, int size) {
        InflightQueue.checkRegion(region, bytes(size), size);
        this.region = region.asSlice(0, bytes(size));
        this.size = size;
        this.next = new int[size];
        this.headById = new int[size];
        this.lastById = new int[size];
    }

    /** Bytes one packed queue of {@code size} needs. */
    public static long bytes(int size) {
        return HEADER + (long) DESC * size;
    }

    private static long desc(int i) {
        return HEADER + (long) DESC * i;
    }

    /**
     * How many buffers a packed record shows in flight right now: head entries flagged {@code inflight} that are
     * not on the committed free list (from {@code old_free_head}, as {@link #attach} counts them; a buffer still
     * being recorded is not committed and would be rolled back). Read-only, for an observer outside the device (a
     * test that maps the region to kill a backend while requests are in flight); the device never reads its record
     * while it runs. A snapshot of memory another process writes concurrently: a count, not a recovery; 0 for an
     * uninitialised region; entries beyond the region are not read and a looping list is cut off.
     */
    public static int inFlight(MemorySegment queueRegion) {
        if (queueRegion.byteSize() < HEADER || queueRegion.get(U16, VERSION_OFF) == 0) {
            return 0;
        }
        int n = (int) Math.min(
                Short.toUnsignedInt(queueRegion.get(U16, DESC_NUM_OFF)), (queueRegion.byteSize() - HEADER) / DESC);
        boolean[] free = new boolean[n];
        int i = Short.toUnsignedInt((short) U16_RELEASE.getAcquire(queueRegion, OLD_FREE_HEAD_OFF));
        for (int steps = 0; i < n && !free[i] && steps < n; steps++) {
            free[i] = true;
            i = Short.toUnsignedInt(queueRegion.get(U16, desc(i) + D_NEXT));
        }
        int count = 0;
        for (int e = 0; e < n; e++) {
            if (!free[e] && queueRegion.get(U8, desc(e) + D_INFLIGHT) != 0) {
                count++;
            }
        }
        return count;
    }

    /** Where a restarted queue resumes: used and available positions with their wrap counters. */
    record Resume(int usedIdx, boolean usedWrap, int availIdx, boolean availWrap, int slots) {}

    /**
     * Attaches to the ring at start. A fresh region (version 0, or one for another queue size) is initialised at
     * the frontend's used position and nothing is resubmitted. A region a previous backend wrote is recovered as
     * the spec says: an update interrupted after the used descriptor reached the ring is committed, any other
     * rolled back; entries on the free list are not in flight; the rest are resubmitted in the order they were
     * taken ({@link #buffers}). The available side resumes right after them: every slot from the used position on
     * belongs to a buffer in flight, each took as many slots as it has descriptors.
     *
     * @param ring     the descriptor ring (read at {@code old_used_idx} only, to settle an interrupted update)
     * @param baseUsed the frontend's used position and wrap counter (used for a fresh region only: after a crash
     *                 QEMU's value for a packed ring is stale, it has no used index in shared memory to restore from)
     * @throws RecoveryException the record is inconsistent; the region is left as it was
     */
    Resume attach(MemorySegment ring, int baseUsed, boolean baseUsedWrap) throws RecoveryException {
        short version = region.get(U16, VERSION_OFF);
        if (version == 0 || Short.toUnsignedInt(region.get(U16, DESC_NUM_OFF)) != size) {
            initialise(baseUsed, baseUsedWrap);
            return new Resume(baseUsed, baseUsedWrap, baseUsed, baseUsedWrap, 0);
        }
        int free = u16(FREE_HEAD_OFF);
        int oldFree = u16(OLD_FREE_HEAD_OFF);
        int used = u16(USED_IDX_OFF);
        int oldUsed = u16(OLD_USED_IDX_OFF);
        boolean wrap = region.get(U8, USED_WRAP_OFF) != 0;
        boolean oldWrap = region.get(U8, OLD_USED_WRAP_OFF) != 0;
        if (oldUsed >= size || used >= size || oldFree > size || free > size) {
            throw new RecoveryException(String.format(
                    "positions out of range (used %d, old %d; free head %d, old %d; " + "%d entries)",
                    used, oldUsed, free, oldFree, size));
        }
        if (used != oldUsed || wrap != oldWrap) {
            // Interrupted while returning a buffer, after used_idx moved. If the used descriptor reached the ring,
            // its slot no longer looks available in the old lap: the update is done, commit it.
            int flags = Short.toUnsignedInt(ring.get(VirtioRing.LE16, (long) oldUsed * VirtioRing.DESC_SIZE + 14));
            int availInLap = oldWrap ? VirtioRing.DESC_F_AVAIL : VirtioRing.DESC_F_USED;
            if ((flags & (VirtioRing.DESC_F_AVAIL | VirtioRing.DESC_F_USED)) != availInLap) {
                oldFree = free;
                oldUsed = used;
                oldWrap = wrap;
            }
        }
        for (int i = 0; i < size; i++) {
            next[i] = Math.min(u16(desc(i) + D_NEXT), size); // validated below for every entry that matters
        }
        // Roll back to the committed state: the free list from it holds no buffer in flight.
        boolean[] owned = new boolean[size];
        int accounted = 0;
        for (int i = oldFree; i != size; i = next[i]) {
            if (owned[i]) {
                throw new RecoveryException("the free list from entry " + oldFree + " loops at entry " + i);
            }
            owned[i] = true;
            accounted++;
        }
        boolean[] free0 = owned.clone();
        int pending = 0;
        Integer[] heads = new Integer[size - accounted];
        for (int i = 0; i < size; i++) {
            if (!free0[i] && region.get(U8, desc(i) + D_INFLIGHT) != 0) {
                if (pending == heads.length) {
                    throw new RecoveryException("more entries in flight than off the free list");
                }
                heads[pending++] = i;
            }
        }
        long[] counters = new long[size];
        for (int k = 0; k < pending; k++) {
            counters[heads[k]] = region.get(U64, desc(heads[k]) + D_COUNTER);
        }
        Arrays.sort(heads, 0, pending, (a, b) -> Long.compareUnsigned(counters[a], counters[b]));
        int[] nums = new int[pending];
        int[] lasts = new int[pending]; // each checked value is kept: the frontend shares the region and may rewrite it
        int[] headIds = new int[pending];
        boolean[] ids = new boolean[size];
        int slots = 0;
        long max = 0;
        for (int k = 0; k < pending; k++) {
            int head = heads[k];
            int num = u16(desc(head) + D_NUM);
            int last = u16(desc(head) + D_LAST);
            if (num < 1 || num > size || last >= size) {
                throw new RecoveryException(
                        "in-flight entry " + head + " has " + num + " descriptors ending at " + last);
            }
            int e = head;
            for (int n = 1; ; n++) {
                if (owned[e]) {
                    throw new RecoveryException("in-flight entry " + head + " shares entry " + e);
                }
                owned[e] = true;
                accounted++;
                if (n == num) {
                    break;
                }
                e = next[e];
                if (e >= size) {
                    throw new RecoveryException("in-flight entry " + head + " links past the last entry");
                }
            }
            if (e != last) {
                throw new RecoveryException("in-flight entry " + head + " ends at entry " + e + ", not " + last);
            }
            int id = u16(desc(last) + D_ID);
            if (id >= size || ids[id]) {
                throw new RecoveryException("in-flight entry " + head + " has buffer ID " + id
                        + (id >= size ? ", beyond the queue" : ", as another one does"));
            }
            ids[id] = true;
            nums[k] = num;
            lasts[k] = last;
            headIds[k] = id;
            slots += num;
            max = Math.max(max, counters[head]);
        }
        if (accounted != size) {
            throw new RecoveryException((size - accounted) + " entries are neither free nor in flight");
        }
        // Copy what is resubmitted out of the region, then commit the rollback: the region is the resumed state.
        resubmitStart = new int[pending + 1];
        rAddr = new long[slots];
        rLen = new long[slots];
        rFlags = new int[slots];
        rId = new int[slots];
        int j = 0;
        for (int k = 0; k < pending; k++) {
            resubmitStart[k] = j;
            int e = heads[k];
            for (int n = 0; n < nums[k]; n++, e = next[e]) {
                long d = desc(e);
                rAddr[j] = region.get(U64, d + D_ADDR);
                rLen[j] = Integer.toUnsignedLong(region.get(U32, d + D_LEN));
                rFlags[j] = u16(d + D_FLAGS);
                rId[j] = u16(d + D_ID);
                j++;
            }
            int id = headIds[k];
            headById[id] = heads[k];
            lastById[id] = lasts[k];
            rId[j - 1] = id; // the checked value, not the one just read again
        }
        resubmitStart[pending] = j;
        for (int i = 0; i < size; i++) {
            if (free0[i]) {
                region.set(U8, desc(i) + D_INFLIGHT, (byte) 0);
            }
        }
        region.set(U16, FREE_HEAD_OFF, (short) oldFree);
        region.set(U16, OLD_FREE_HEAD_OFF, (short) oldFree);
        region.set(U16, USED_IDX_OFF, (short) oldUsed);
        region.set(U16, OLD_USED_IDX_OFF, (short) oldUsed);
        region.set(U8, USED_WRAP_OFF, (byte) (oldWrap ? 1 : 0));
        region.set(U8, OLD_USED_WRAP_OFF, (byte) (oldWrap ? 1 : 0));
        VarHandle.releaseFence();
        freeHead = oldFree;
        oldFreeHead = oldFree;
        usedIdx = oldUsed;
        usedWrap = oldWrap;
        counter = max + 1;
        int avail = oldUsed + slots;
        boolean availWrap = oldWrap;
        if (avail >= size) {
            avail -= size;
            availWrap = !availWrap;
        }
        return new Resume(oldUsed, oldWrap, avail, availWrap, slots);
    }

    private void initialise(int baseUsed, boolean baseUsedWrap) {
        region.fill((byte) 0);
        for (int i = 0; i < size; i++) {
            next[i] = i + 1; // the free list: every entry, in order, ending at desc_num
            region.set(U16, desc(i) + D_NEXT, (short) (i + 1));
        }
        region.set(U16, DESC_NUM_OFF, (short) size);
        region.set(U16, USED_IDX_OFF, (short) baseUsed);
        region.set(U16, OLD_USED_IDX_OFF, (short) baseUsed);
        region.set(U8, USED_WRAP_OFF, (byte) (baseUsedWrap ? 1 : 0));
        region.set(U8, OLD_USED_WRAP_OFF, (byte) (baseUsedWrap ? 1 : 0));
        U16_RELEASE.setRelease(region, VERSION_OFF, VERSION);
        freeHead = 0;
        oldFreeHead = 0;
        usedIdx = baseUsed;
        usedWrap = baseUsedWrap;
        counter = 1;
    }

    private int u16(long off) {
        return Short.toUnsignedInt(region.get(U16, off));
    }

    /** Buffers to resubmit, oldest first. */
    int buffers() {
        return resubmitStart.length - 1;
    }

    /** Index of buffer {@code k}'s first descriptor in the resubmission arrays; {@code k + 1}'s is its end. */
    int firstDescriptor(int k) {
        return resubmitStart[k];
    }

    long addr(int j) {
        return rAddr[j];
    }

    long len(int j) {
        return rLen[j];
    }

    int flags(int j) {
        return rFlags[j];
    }

    /** The buffer ID (valid for the last descriptor of a buffer). */
    int id(int j) {
        return rId[j];
    }

    /**
     * The device read one descriptor of a buffer from the ring ({@code first}: it starts the buffer; {@code last}:
     * it ends it, by having no NEXT or being indirect). Called for each descriptor in ring order, at most as many
     * in flight as the ring has slots (the caller checks); a buffer is in flight once its last one is recorded.
     */
    void took(long addr, long len, int flags, int id, boolean first, boolean last) {
        if (first) {
            recording = oldFreeHead;
            recorded = 0;
            long h = desc(recording);
            region.set(U16, h + D_NUM, (short) 0);
            region.set(U64, h + D_COUNTER, counter++);
            region.set(U8, h + D_INFLIGHT, (byte) 1);
        }
        long h = desc(recording);
        if (last) {
            region.set(U16, h + D_LAST, (short) freeHead);
        }
        region.set(U16, h + D_NUM, (short) ++recorded);
        int e = freeHead;
        long d = desc(e);
        region.set(U64, d + D_ADDR, addr);
        region.set(U32, d + D_LEN, (int) len);
        region.set(U16, d + D_FLAGS, (short) flags);
        region.set(U16, d + D_ID, (short) id);
        freeHead = next[e];
        region.set(U16, FREE_HEAD_OFF, (short) freeHead);
        if (last) {
            headById[id] = recording;
            lastById[id] = e;
            oldFreeHead = freeHead;
            U16_RELEASE.setRelease(region, OLD_FREE_HEAD_OFF, (short) freeHead); // commits the buffer
        }
    }

    /**
     * Before the used descriptor of buffer {@code id} is written at the current used position: its entries go back
     * to the free list and the used position moves past its {@code slots}.
     */
    void beforeUsed(int id, int slots) {
        int head = headById[id];
        int last = lastById[id];
        next[last] = freeHead;
        region.set(U16, desc(last) + D_NEXT, (short) freeHead);
        freeHead = head;
        region.set(U16, FREE_HEAD_OFF, (short) head);
        usedIdx += slots;
        if (usedIdx >= size) {
            usedIdx -= size;
            usedWrap = !usedWrap;
        }
        region.set(U8, USED_WRAP_OFF, (byte) (usedWrap ? 1 : 0));
        U16_RELEASE.setRelease(region, USED_IDX_OFF, (short) usedIdx); // before the ring write (a release, too)
    }

    /** After the used descriptor of buffer {@code id} reached the ring: not in flight, and the update is committed. */
    void afterUsed(int id) {
        VarHandle.releaseFence(); // none of the stores below may move before the ring write
        region.set(U8, desc(headById[id]) + D_INFLIGHT, (byte) 0);
        oldFreeHead = freeHead;
        region.set(U16, OLD_FREE_HEAD_OFF, (short) freeHead);
        region.set(U8, OLD_USED_WRAP_OFF, (byte) (usedWrap ? 1 : 0));
        U16_RELEASE.setRelease(region, OLD_USED_IDX_OFF, (short) usedIdx);
    }
}
