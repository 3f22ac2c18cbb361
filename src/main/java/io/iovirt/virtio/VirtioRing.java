// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryFault;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;

/**
 * Wire constants and memory layouts of virtqueues (VIRTIO 1.2 §2.7 split, §2.8 packed), shared by the device side
 * ({@link Virtqueue}) and the driver side ({@link DriverRing}). All ring fields are little-endian.
 */
public final class VirtioRing {
    private VirtioRing() {}

    /** Size of one descriptor, split and packed alike. */
    public static final int DESC_SIZE = 16;
    /** Largest queue size either layout allows. */
    public static final int MAX_QUEUE_SIZE = 32768;
    /**
     * Most buffers in one chain, whatever the queue size: Linux sizes indirect tables by the device's seg_max (plus
     * header and status), not by the queue size, and QEMU and libvhost-user accept that, so a 128-entry queue sees
     * 1024-entry tables. Chains of a larger queue may be as long as the queue.
     */
    public static final int MAX_INDIRECT_DESCRIPTORS = 1024;

    /** The chain length bound for a queue of {@code size} entries. */
    public static int maxChain(int size) {
        return Math.max(size, MAX_INDIRECT_DESCRIPTORS);
    }

    public static final int DESC_F_NEXT = 1;
    public static final int DESC_F_WRITE = 2;
    public static final int DESC_F_INDIRECT = 4;
    /** Packed ring: the descriptor's available bit. */
    public static final int DESC_F_AVAIL = 1 << 7;
    /** Packed ring: the descriptor's used bit. */
    public static final int DESC_F_USED = 1 << 15;

    /** Split ring, avail.flags: the driver does not want used-buffer notifications. */
    public static final int AVAIL_F_NO_INTERRUPT = 1;
    /** Split ring, used.flags: the device does not want available-buffer notifications. */
    public static final int USED_F_NO_NOTIFY = 1;

    /** Packed event suppression flags. */
    public static final int EVENT_FLAGS_ENABLE = 0;

    public static final int EVENT_FLAGS_DISABLE = 1;
    public static final int EVENT_FLAGS_DESC = 2;

    /** A chain may describe at most 2^32 bytes (§2.7.5: "MUST NOT add a descriptor chain longer than 2^32 bytes"). */
    public static final long MAX_CHAIN_BYTES = 1L << 32;

    /** Split ring part sizes (§2.7, table "Virtqueue Part"). The event fields exist only with EVENT_IDX. */
    public static long splitDescBytes(int size) {
        return (long) DESC_SIZE * size;
    }

    public static long splitAvailBytes(int size, boolean eventIdx) {
        return 4 + 2L * size + (eventIdx ? 2 : 0);
    }

    public static long splitUsedBytes(int size, boolean eventIdx) {
        return 4 + 8L * size + (eventIdx ? 2 : 0);
    }

    public static final int SPLIT_DESC_ALIGN = 16;
    public static final int SPLIT_AVAIL_ALIGN = 2;
    public static final int SPLIT_USED_ALIGN = 4;
    public static final int PACKED_DESC_ALIGN = 16;
    public static final int PACKED_EVENT_ALIGN = 4;
    public static final int PACKED_EVENT_BYTES = 4;

    /**
     * The three areas of a ring of {@code size} entries in the layout the driver negotiated, as both the vhost-user
     * protocol layer (when a ring starts) and {@link Virtqueue} (on every memory snapshot) check them: one definition,
     * so the two cannot disagree on where a ring ends.
     */
    public static long descAreaBytes(int size) {
        return (long) DESC_SIZE * size;
    }

    /** Available ring (split; with used_event only under EVENT_IDX) or driver event suppression area (packed). */
    public static long driverAreaBytes(boolean packed, int size, boolean eventIdx) {
        return packed ? PACKED_EVENT_BYTES : splitAvailBytes(size, eventIdx);
    }

    /** Used ring (split; with avail_event only under EVENT_IDX) or device event suppression area (packed). */
    public static long deviceAreaBytes(boolean packed, int size, boolean eventIdx) {
        return packed ? PACKED_EVENT_BYTES : splitUsedBytes(size, eventIdx);
    }

    public static int descAreaAlign(boolean packed) {
        return packed ? PACKED_DESC_ALIGN : SPLIT_DESC_ALIGN;
    }

    public static int driverAreaAlign(boolean packed) {
        return packed ? PACKED_EVENT_ALIGN : SPLIT_AVAIL_ALIGN;
    }

    public static int deviceAreaAlign(boolean packed) {
        return packed ? PACKED_EVENT_ALIGN : SPLIT_USED_ALIGN;
    }

    /** The areas' names in error messages. */
    public static String descAreaName(boolean packed) {
        return packed ? "descriptor ring" : "descriptor table";
    }

    public static String driverAreaName(boolean packed) {
        return packed ? "driver event suppression" : "available ring";
    }

    public static String deviceAreaName(boolean packed) {
        return packed ? "device event suppression" : "used ring";
    }

    /**
     * The EVENT_IDX rule (vring_need_event): true when {@code event} lies in [old, new) in 16-bit ring index
     * arithmetic, i.e. moving the index from {@code oldIdx} to {@code newIdx} crossed the index the other side asked
     * to be notified at.
     */
    public static boolean needEvent(int event, int newIdx, int oldIdx) {
        return ((newIdx - event - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
    }

    // Plain accesses use unaligned layouts: indirect tables have no alignment rule, and a hostile guest must not be
    // able to turn an alignment check into an unchecked exception. Acquire/release accesses need natural alignment,
    // which the ring mapping code checks once per snapshot.
    static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    /** 16-bit ring field with acquire/release access; coordinates (MemorySegment, long offset). */
    static final VarHandle U16 =
            ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    /**
     * Driver side: writes descriptor {@code i} of {@code table} (16 bytes): address, length, then two 16-bit fields,
     * {@code word12} and {@code word14} (split: flags and next; packed: buffer ID and flags), all plain stores.
     */
    static void putDescriptor(MemorySegment table, int i, long addr, int len, int word12, int word14) {
        long off = (long) i * DESC_SIZE;
        table.set(LE64, off, addr);
        table.set(LE32, off + 8, len);
        table.set(LE16, off + 12, (short) word12);
        table.set(LE16, off + 14, (short) word14);
    }

    /** Driver side: entry {@code i} of the indirect table at {@code tableGpa} in the driver's own memory. */
    static MemorySegment indirectEntry(GuestMemory mem, long tableGpa, int i) {
        return area(mem, tableGpa + (long) i * DESC_SIZE, DESC_SIZE, 1, "indirect entry");
    }

    /** Driver side: translates a ring area of the driver's own memory (a wrong address is a bug, not guest input). */
    static MemorySegment area(GuestMemory mem, long gpa, long bytes, int align, String what) {
        if ((gpa & (align - 1)) != 0) {
            throw new IllegalArgumentException(String.format("%s at 0x%x must be %d-byte aligned", what, gpa, align));
        }
        try {
            return mem.translate(gpa, bytes);
        } catch (GuestMemoryFault f) {
            throw new IllegalArgumentException(what + " does not fit the driver's memory: " + f.getMessage(), f);
        }
    }

    /** Driver side: the rules {@link DriverRing#add} callers must follow. */
    static void checkRequest(int size, long[] addrs, int[] lens, boolean[] writable, int count) {
        if (count < 1 || count > size || count > addrs.length || count > lens.length || count > writable.length) {
            throw new IllegalArgumentException(
                    "request of " + count + " buffers does not fit a queue of " + size + " or the arrays given");
        }
        for (int i = 1; i < count; i++) {
            if (writable[i - 1] && !writable[i]) {
                throw new IllegalArgumentException("device-readable buffer " + i + " follows a device-writable one");
            }
        }
    }
}
