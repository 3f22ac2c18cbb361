// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static io.iovirt.virtio.VirtioRing.DESC_F_INDIRECT;
import static io.iovirt.virtio.VirtioRing.DESC_F_NEXT;
import static io.iovirt.virtio.VirtioRing.DESC_F_WRITE;
import static io.iovirt.virtio.VirtioRing.DESC_SIZE;
import static io.iovirt.virtio.VirtioRing.LE16;
import static io.iovirt.virtio.VirtioRing.LE32;
import static io.iovirt.virtio.VirtioRing.U16;
import static io.iovirt.virtio.VirtioRing.putDescriptor;

import io.iovirt.memory.GuestMemory;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;

/** Driver side of a split virtqueue (VIRTIO 1.2 §2.7), laid out as Linux's vring_init does. */
public final class SplitDriverRing implements DriverRing {
    private static final long IDX = 2;
    private static final long RING = 4;

    private final GuestMemory memory;
    private final int size;
    private final int mask;
    private final boolean eventIdx;
    private final long descGpa;
    private final long availGpa;
    private final long usedGpa;
    private final MemorySegment desc;
    private final MemorySegment avail;
    private final MemorySegment used;
    private final long usedEventOffset;
    private final long availEventOffset;

    /** Free descriptor indices (a stack); per head, the descriptors its chain holds, linked through {@code next}. */
    private final int[] free;

    private int freeCount;
    private final int[] next;
    private final int[] chainLength;
    private final boolean[] inFlight;
    private int inFlightCount;

    /** The head made available at each ring position, for the in-order driver to count runs. */
    private final int[] order;
    /** VIRTIO_F_IN_ORDER: one used entry may stand for a run of chains ({@link #inOrder}). */
    private boolean inOrder;
    /** In-order: chains of the current used entry's run not yet handed out, and the entry's length. */
    private int runLeft;

    private int runLen;

    private int availIdx;
    private int lastUsed;
    private int addedSinceKick;
    private boolean interruptsEnabled = true;

    /** Bytes {@link #create} needs at its base address: descriptor table, available ring, used ring (with event fields). */
    public static long bytesNeeded(int size) {
        long availEnd = VirtioRing.splitDescBytes(size) + VirtioRing.splitAvailBytes(size, true);
        return alignUp(availEnd, VirtioRing.SPLIT_USED_ALIGN) + VirtioRing.splitUsedBytes(size, true);
    }

    /** A ring laid out contiguously from {@code base} (16-byte aligned), starting at index 0. */
    public static SplitDriverRing create(GuestMemory mem, long base, int size, boolean eventIdx) {
        long avail = base + VirtioRing.splitDescBytes(size);
        long used = alignUp(avail + VirtioRing.splitAvailBytes(size, true), VirtioRing.SPLIT_USED_ALIGN);
        return new SplitDriverRing(mem, size, base, avail, used, eventIdx, 0);
    }

    /**
     * Initializes the ring areas (zeroed, as the driver must) with both indices at {@code startIndex}: 0 for a new
     * ring; tests start near 65535 to cross the 16-bit wrap.
     */
    public SplitDriverRing(
            GuestMemory mem, int size, long descGpa, long availGpa, long usedGpa, boolean eventIdx, int startIndex) {
        if (size < 1 || size > VirtioRing.MAX_QUEUE_SIZE || Integer.bitCount(size) != 1) {
            throw new IllegalArgumentException("split queue size " + size + " must be a power of two up to 32768");
        }
        this.memory = mem;
        this.size = size;
        this.mask = size - 1;
        this.eventIdx = eventIdx;
        this.descGpa = descGpa;
        this.availGpa = availGpa;
        this.usedGpa = usedGpa;
        this.desc = VirtioRing.area(
                mem, descGpa, VirtioRing.splitDescBytes(size), VirtioRing.SPLIT_DESC_ALIGN, "descriptor table");
        this.avail = VirtioRing.area(
                mem, availGpa, VirtioRing.splitAvailBytes(size, true), VirtioRing.SPLIT_AVAIL_ALIGN, "available ring");
        this.used = VirtioRing.area(
                mem, usedGpa, VirtioRing.splitUsedBytes(size, true), VirtioRing.SPLIT_USED_ALIGN, "used ring");
        this.usedEventOffset = RING + 2L * size;
        this.availEventOffset = RING + 8L * size;
        desc.fill((byte) 0);
        avail.fill((byte) 0);
        used.fill((byte) 0);
        this.free = new int[size];
        for (int i = 0; i < size; i++) {
            free[i] = size - 1 - i; // hand out 0, 1, 2, ... first
        }
        this.freeCount = size;
        this.next = new int[size];
        this.chainLength = new int[size];
        this.inFlight = new boolean[size];
        this.order = new int[size];
        this.availIdx = startIndex & 0xffff;
        this.lastUsed = availIdx;
        avail.set(LE16, IDX, (short) availIdx);
        used.set(LE16, IDX, (short) availIdx);
        if (eventIdx) {
            avail.set(LE16, usedEventOffset, (short) lastUsed);
            used.set(LE16, availEventOffset, (short) availIdx);
        }
        VarHandle.fullFence();
    }

    /**
     * Drives the ring as with VIRTIO_F_IN_ORDER negotiated ({@code true}): the device returns chains in the order they
     * were made available and may return a run of them with one used entry, which names the run's last chain; {@link
     * #pollUsed} hands out each chain of the run in order (length 0 for all but the last, which gets the entry's).
     * Set before the first request is made available.
     *
     * @return this ring
     */
    public SplitDriverRing inOrder(boolean on) {
        if (inFlightCount != 0) {
            throw new IllegalStateException("in-order mode is set before requests are made available");
        }
        inOrder = on;
        return this;
    }

    private static long alignUp(long v, int align) {
        return (v + align - 1) & -align;
    }

    @Override
    public int size() {
        return size;
    }

    @Override
    public int add(long[] addrs, int[] lens, boolean[] writable, int count, long indirectTable) {
        VirtioRing.checkRequest(size, addrs, lens, writable, count);
        boolean indirect = indirectTable != NO_INDIRECT;
        int needed = indirect ? 1 : count;
        if (freeCount < needed) {
            return -1;
        }
        int head;
        if (indirect) {
            MemorySegment table = VirtioRing.area(memory, indirectTable, (long) DESC_SIZE * count, 1, "indirect table");
            for (int i = 0; i < count; i++) {
                int flags = (writable[i] ? DESC_F_WRITE : 0) | (i + 1 < count ? DESC_F_NEXT : 0);
                putDescriptor(table, i, addrs[i], lens[i], flags, i + 1 < count ? i + 1 : 0);
            }
            head = free[--freeCount];
            putDescriptor(desc, head, indirectTable, DESC_SIZE * count, DESC_F_INDIRECT, 0);
        } else {
            head = free[--freeCount];
            int cur = head;
            for (int i = 0; i < count; i++) {
                int nxt = i + 1 < count ? free[--freeCount] : 0;
                next[cur] = nxt;
                int flags = (writable[i] ? DESC_F_WRITE : 0) | (i + 1 < count ? DESC_F_NEXT : 0);
                putDescriptor(desc, cur, addrs[i], lens[i], flags, nxt);
                cur = nxt;
            }
        }
        chainLength[head] = needed;
        inFlight[head] = true;
        inFlightCount++;
        exposeHead(head);
        return head;
    }

    @Override
    public boolean kickNeeded() {
        int added = addedSinceKick;
        if (added == 0) {
            return false;
        }
        addedSinceKick = 0;
        VarHandle.fullFence(); // avail.idx stored before the device's suppression state is read
        if (!eventIdx) {
            return (used.get(LE16, 0) & VirtioRing.USED_F_NO_NOTIFY) == 0;
        }
        int availEvent = Short.toUnsignedInt(used.get(LE16, availEventOffset));
        return added > 0xffff || VirtioRing.needEvent(availEvent, availIdx, availIdx - added);
    }

    @Override
    public long pollUsed() {
        if (inOrder) {
            return pollUsedInOrder();
        }
        if (usedPending() == 0) {
            return -1;
        }
        long off = RING + 8L * (lastUsed & mask);
        int id = used.get(LE32, off);
        int len = used.get(LE32, off + 4);
        if (id < 0 || id >= size || !inFlight[id]) {
            throw new IllegalStateException("device returned head " + Integer.toUnsignedString(id) + " at used index "
                    + lastUsed + ", which is not in flight");
        }
        release(id);
        return (long) id << 32 | Integer.toUnsignedLong(len);
    }

    /** Used entries the device published that this driver has not taken (used.idx read with acquire). */
    private int usedPending() {
        return (Short.toUnsignedInt((short) U16.getAcquire(used, IDX)) - lastUsed) & 0xffff;
    }

    /** {@link #pollUsed} with VIRTIO_F_IN_ORDER: a used entry names the last chain of a run starting at the next one. */
    private long pollUsedInOrder() {
        if (runLeft == 0) {
            int pending = usedPending();
            if (pending == 0) {
                return -1;
            }
            long off = RING + 8L * (lastUsed & mask);
            int id = used.get(LE32, off);
            int limit = Math.min(pending, inFlightCount);
            int k = 0;
            while (k < limit && order[(lastUsed + k) & mask] != id) {
                k++;
            }
            if (k == limit) {
                throw new IllegalStateException("device returned head " + Integer.toUnsignedString(id)
                        + " at used index " + lastUsed + ", which is none of the next " + limit
                        + " heads in the order they were made available");
            }
            runLeft = k + 1;
            runLen = used.get(LE32, off + 4);
        }
        int head = order[lastUsed & mask];
        if (!inFlight[head]) {
            throw new IllegalStateException("head " + head + " at used index " + lastUsed + " is not in flight");
        }
        runLeft--;
        release(head);
        return (long) head << 32 | (runLeft == 0 ? Integer.toUnsignedLong(runLen) : 0);
    }

    /** Frees the chain {@code id} the device returned and moves past its used entry. */
    private void release(int id) {
        inFlight[id] = false;
        inFlightCount--;
        int cur = id;
        for (int i = 0; i < chainLength[id]; i++) {
            free[freeCount++] = cur;
            cur = next[cur];
        }
        lastUsed = (lastUsed + 1) & 0xffff;
        if (eventIdx && interruptsEnabled) {
            avail.set(LE16, usedEventOffset, (short) lastUsed); // interrupt me for the next one
        }
    }

    @Override
    public boolean hasUsed() {
        return Short.toUnsignedInt((short) U16.getAcquire(used, IDX)) != lastUsed;
    }

    @Override
    public boolean enableInterrupts() {
        interruptsEnabled = true;
        if (eventIdx) {
            avail.set(LE16, usedEventOffset, (short) lastUsed);
        } else {
            avail.set(LE16, 0, (short) 0);
        }
        VarHandle.fullFence(); // publish the request before re-reading used.idx
        return hasUsed();
    }

    @Override
    public void disableInterrupts() {
        interruptsEnabled = false;
        if (eventIdx) {
            // The index just behind the next one: the device crosses it only after 65535 more used entries.
            avail.set(LE16, usedEventOffset, (short) (lastUsed - 1));
        } else {
            avail.set(LE16, 0, (short) VirtioRing.AVAIL_F_NO_INTERRUPT);
        }
    }

    @Override
    public int inFlight() {
        return inFlightCount;
    }

    @Override
    public long descAddr() {
        return descGpa;
    }

    @Override
    public long driverAreaAddr() {
        return availGpa;
    }

    @Override
    public long deviceAreaAddr() {
        return usedGpa;
    }

    /** The available index the driver publishes next. */
    public int availIndex() {
        return availIdx;
    }

    @Override
    public QueueConfig queueConfig(int index, boolean indirectDesc) {
        return QueueConfig.split(index, size, descGpa, availGpa, usedGpa, eventIdx, indirectDesc, availIdx)
                .withInOrder(inOrder);
    }

    // ---- Raw access for crafting hostile rings in tests: these follow no rule and track nothing. ----

    /** Writes descriptor {@code i} of the descriptor table verbatim. */
    void writeDescriptor(int i, long addr, int len, int flags, int nxt) {
        putDescriptor(desc, i, addr, len, flags, nxt);
    }

    /** Writes a descriptor into an indirect table at {@code tableGpa} verbatim. */
    void writeIndirect(long tableGpa, int i, long addr, int len, int flags, int nxt) {
        putDescriptor(VirtioRing.indirectEntry(memory, tableGpa, i), 0, addr, len, flags, nxt);
    }

    /** Puts {@code head} (any value) in the next available ring entry and publishes the index. */
    void exposeHead(int head) {
        order[availIdx & mask] = head;
        avail.set(LE16, RING + 2L * (availIdx & mask), (short) head);
        availIdx = (availIdx + 1) & 0xffff;
        U16.setRelease(avail, IDX, (short) availIdx); // entry and descriptors visible before the index
        if (addedSinceKick <= 0xffff) {
            addedSinceKick++;
        }
    }

    /** Publishes an arbitrary available index. */
    void setAvailIndex(int idx) {
        availIdx = idx & 0xffff;
        U16.setRelease(avail, IDX, (short) availIdx);
    }

    MemorySegment descTable() {
        return desc;
    }

    MemorySegment availRing() {
        return avail;
    }

    MemorySegment usedRing() {
        return used;
    }
}
