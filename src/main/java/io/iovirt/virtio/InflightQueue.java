// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

/**
 * One split queue's in-flight record in the frontend-kept shared memory of vhost-user
 * {@code VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD} (docs/interop/vhost-user.rst, "Inflight I/O tracking"): which
 * requests the device has taken and not yet returned, in the order it took them, so that a backend restarted after
 * a crash resubmits exactly those — with out-of-order completion, the used index alone cannot tell which they are.
 *
 * <p>Layout ({@code QueueRegionSplit}): {@code u64 features; u16 version, desc_num, last_batch_head, used_idx;}
 * then per descriptor head a 16-byte {@code DescStateSplit}: {@code u8 inflight; u8 pad[5]; u16 next; u64
 * counter}. Used entries are returned one at a time, so a "batch" is one entry: {@code last_batch_head} is the
 * entry whose used-ring write may be half done when the process dies, and {@code used_idx} lags the ring's
 * {@code idx} exactly then.
 *
 * <p>Every guest-controlled value read back from the region (it is shared with the frontend, and a previous
 * process may have died in the middle of an update) is checked: a head index beyond the queue is ignored.
 */
public final class InflightQueue {
    /** Bytes of the split header and of each descriptor state. */
    public static final int SPLIT_HEADER = 16;

    public static final int SPLIT_DESC = 16;
    static final short VERSION = 1;

    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED;
    private static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED;
    private static final VarHandle U8_RELEASE = ValueLayout.JAVA_BYTE.varHandle();
    private static final VarHandle U16_RELEASE = ValueLayout.JAVA_SHORT.varHandle();
    private static final long VERSION_OFF = 8;
    private static final long DESC_NUM_OFF = 10;
    private static final long LAST_BATCH_OFF = 12;
    private static final long USED_IDX_OFF = 14;

    private final MemorySegment region;
    private final int size;
    private long counter;

    /**
     * @param region at least {@link #splitBytes(int)} bytes of the frontend's inflight memory for this queue
     * @param size   the queue size
     */
    public InflightQueue(MemorySegment region, int size) {
        checkRegion(region, splitBytes(size), size);
        this.region = region.asSlice(0, splitBytes(size));
        this.size = size;
    }

    /** A queue's part of the in-flight memory must hold {@code bytes} and be aligned for 64-bit fields. */
    static void checkRegion(MemorySegment region, long bytes, int size) {
        if (region.byteSize() < bytes) {
            throw new IllegalArgumentException(
                    "inflight region of " + region.byteSize() + " bytes is too small for " + size + " descriptors");
        }
        if (region.address() % 8 != 0) {
            throw new IllegalArgumentException("inflight region must be 8-byte aligned");
        }
    }

    /** Bytes one split queue of {@code size} needs. */
    public static long splitBytes(int size) {
        return SPLIT_HEADER + (long) SPLIT_DESC * size;
    }

    private static long desc(int head) {
        return SPLIT_HEADER + (long) SPLIT_DESC * head;
    }

    /**
     * How many heads a split record shows in flight right now: read-only, for an observer outside the device (a
     * test that maps the region to kill a backend while requests are in flight). The device itself never reads its
     * record while it runs. A snapshot of memory another process writes concurrently: a count, not a recovery
     * (that is {@link #attach}); 0 for an uninitialised region; entries beyond the region are not read.
     */
    public static int inFlight(MemorySegment queueRegion) {
        if (queueRegion.byteSize() < SPLIT_HEADER || queueRegion.get(U16, VERSION_OFF) == 0) {
            return 0;
        }
        long n = Math.min(
                Short.toUnsignedInt(queueRegion.get(U16, DESC_NUM_OFF)),
                (queueRegion.byteSize() - SPLIT_HEADER) / SPLIT_DESC);
        int count = 0;
        for (int i = 0; i < n; i++) {
            if ((byte) U8_RELEASE.getAcquire(queueRegion, desc(i)) != 0) {
                count++;
            }
        }
        return count;
    }

    /**
     * Attaches to the ring at start. A fresh region (version 0) is initialised and nothing is resubmitted; a
     * region a previous backend wrote is recovered: a used entry whose write was half done is settled against
     * the ring's used index, and the heads still in flight are returned oldest first.
     *
     * @param ringUsedIdx the used ring's idx now
     * @return the heads to resubmit, in the order the device first took them (empty for a fresh region)
     */
    int[] attach(int ringUsedIdx) {
        short version = region.get(U16, VERSION_OFF);
        if (version == 0 || Short.toUnsignedInt(region.get(U16, DESC_NUM_OFF)) != size) {
            region.fill((byte) 0);
            region.set(U16, DESC_NUM_OFF, (short) size);
            region.set(U16, USED_IDX_OFF, (short) ringUsedIdx);
            U16_RELEASE.setRelease(region, VERSION_OFF, VERSION);
            counter = 1;
            return new int[0];
        }
        int regionUsed = Short.toUnsignedInt(region.get(U16, USED_IDX_OFF));
        if (regionUsed != ringUsedIdx) {
            // The last returned entry reached the used ring, its in-flight flag was not cleared yet: it is done.
            int last = Short.toUnsignedInt(region.get(U16, LAST_BATCH_OFF));
            if (last < size) {
                region.set(ValueLayout.JAVA_BYTE, desc(last), (byte) 0);
            }
            region.set(U16, USED_IDX_OFF, (short) ringUsedIdx);
        }
        List<long[]> pending = new ArrayList<>();
        long max = 0;
        for (int i = 0; i < size; i++) {
            if (region.get(ValueLayout.JAVA_BYTE, desc(i)) != 0) {
                long c = region.get(U64, desc(i) + 8);
                pending.add(new long[] {c, i});
                max = Math.max(max, c);
            }
        }
        pending.sort(Comparator.comparingLong((long[] e) -> e[0]));
        counter = max + 1;
        int[] heads = new int[pending.size()];
        for (int i = 0; i < heads.length; i++) {
            heads[i] = (int) pending.get(i)[1];
        }
        return heads;
    }

    /** The device took request {@code head} from the available ring. */
    void popped(int head) {
        long d = desc(head);
        region.set(U64, d + 8, counter++);
        U8_RELEASE.setRelease(region, d, (byte) 1);
    }

    /** Before the used-ring write of {@code head}: it becomes the batch a crash may leave half done. */
    void beforeUsed(int head) {
        region.set(U16, desc(head) + 6, region.get(U16, LAST_BATCH_OFF));
        U16_RELEASE.setRelease(region, LAST_BATCH_OFF, (short) head);
    }

    /** After the used ring's idx became {@code usedIdx}: {@code head} is no longer in flight. */
    void afterUsed(int head, int usedIdx) {
        U8_RELEASE.setRelease(region, desc(head), (byte) 0);
        U16_RELEASE.setRelease(region, USED_IDX_OFF, (short) usedIdx);
    }
}
