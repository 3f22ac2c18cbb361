// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static io.iovirt.virtio.VirtioRing.DESC_F_AVAIL;
import static io.iovirt.virtio.VirtioRing.DESC_F_INDIRECT;
import static io.iovirt.virtio.VirtioRing.DESC_F_NEXT;
import static io.iovirt.virtio.VirtioRing.DESC_F_USED;
import static io.iovirt.virtio.VirtioRing.DESC_F_WRITE;
import static io.iovirt.virtio.VirtioRing.DESC_SIZE;
import static io.iovirt.virtio.VirtioRing.LE16;
import static io.iovirt.virtio.VirtioRing.LE32;
import static io.iovirt.virtio.VirtioRing.U16;
import static io.iovirt.virtio.VirtioRing.putDescriptor;

import io.iovirt.memory.GuestMemory;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;

/** Driver side of a packed virtqueue (VIRTIO 1.2 §2.8), following the spec's driver example and Linux's. */
public final class PackedDriverRing implements DriverRing {
    private static final long OFF_WRAP = 0;
    private static final long EVENT_FLAGS = 2;

    private final GuestMemory memory;
    private final int size;
    private final boolean eventIdx;
    private final long ringGpa;
    private final long driverEventGpa;
    private final long deviceEventGpa;
    private final MemorySegment ring;
    private final MemorySegment driverEvent;
    private final MemorySegment deviceEvent;

    private final int[] freeIds;
    private int freeIdCount;
    private final int[] slotsById;
    private final boolean[] inFlight;
    private int inFlightCount;
    private int freeSlots;

    private int nextAvail;
    private boolean availWrap;
    private int nextUsed;
    private boolean usedWrap;
    private int addedSinceKick;
    private boolean interruptsEnabled = true;

    /** Bytes {@link #create} needs: descriptor ring, then driver and device event suppression structures. */
    public static long bytesNeeded(int size) {
        return (long) DESC_SIZE * size + 2L * VirtioRing.PACKED_EVENT_BYTES;
    }

    /** A fresh ring laid out contiguously from {@code base} (16-byte aligned). */
    public static PackedDriverRing create(GuestMemory mem, long base, int size, boolean eventIdx) {
        long driver = base + (long) DESC_SIZE * size;
        return new PackedDriverRing(mem, size, base, driver, driver + VirtioRing.PACKED_EVENT_BYTES, eventIdx, 0, true);
    }

    /**
     * Initializes the ring (zeroed) as if it had been used up to {@code startPos} with wrap counter {@code startWrap}
     * on both sides: (0, true) for a new ring; tests start elsewhere to cross the wrap.
     */
    public PackedDriverRing(
            GuestMemory mem,
            int size,
            long ringGpa,
            long driverEventGpa,
            long deviceEventGpa,
            boolean eventIdx,
            int startPos,
            boolean startWrap) {
        if (size < 1 || size > VirtioRing.MAX_QUEUE_SIZE) {
            throw new IllegalArgumentException("packed queue size " + size + " must be 1..32768");
        }
        if (startPos < 0 || startPos >= size) {
            throw new IllegalArgumentException("start position " + startPos + " is outside the ring of " + size);
        }
        this.memory = mem;
        this.size = size;
        this.eventIdx = eventIdx;
        this.ringGpa = ringGpa;
        this.driverEventGpa = driverEventGpa;
        this.deviceEventGpa = deviceEventGpa;
        this.ring =
                VirtioRing.area(mem, ringGpa, (long) DESC_SIZE * size, VirtioRing.PACKED_DESC_ALIGN, "descriptor ring");
        this.driverEvent = VirtioRing.area(
                mem,
                driverEventGpa,
                VirtioRing.PACKED_EVENT_BYTES,
                VirtioRing.PACKED_EVENT_ALIGN,
                "driver event suppression");
        this.deviceEvent = VirtioRing.area(
                mem,
                deviceEventGpa,
                VirtioRing.PACKED_EVENT_BYTES,
                VirtioRing.PACKED_EVENT_ALIGN,
                "device event suppression");
        ring.fill((byte) 0);
        driverEvent.fill((byte) 0);
        deviceEvent.fill((byte) 0);
        // Descriptors before the start position carry the previous lap's "used" marking, as a real history would.
        if (!startWrap) {
            // Lap with wrap 0 follows a lap with wrap 1: every slot was used with AVAIL|USED set.
            for (int i = 0; i < size; i++) {
                ring.set(LE16, (long) i * DESC_SIZE + 14, (short) (DESC_F_AVAIL | DESC_F_USED));
            }
        }
        for (int i = 0; i < startPos; i++) {
            ring.set(LE16, (long) i * DESC_SIZE + 14, (short) (startWrap ? DESC_F_AVAIL | DESC_F_USED : 0));
        }
        this.freeIds = new int[size];
        for (int i = 0; i < size; i++) {
            freeIds[i] = size - 1 - i;
        }
        this.freeIdCount = size;
        this.slotsById = new int[size];
        this.inFlight = new boolean[size];
        this.freeSlots = size;
        this.nextAvail = startPos;
        this.availWrap = startWrap;
        this.nextUsed = startPos;
        this.usedWrap = startWrap;
        VarHandle.fullFence();
    }

    @Override
    public int size() {
        return size;
    }

    private static int availBits(boolean wrap) {
        return wrap ? DESC_F_AVAIL : DESC_F_USED;
    }

    @Override
    public int add(long[] addrs, int[] lens, boolean[] writable, int count, long indirectTable) {
        VirtioRing.checkRequest(size, addrs, lens, writable, count);
        boolean indirect = indirectTable != NO_INDIRECT;
        int slots = indirect ? 1 : count;
        if (freeSlots < slots || freeIdCount == 0) {
            return -1;
        }
        int id = freeIds[--freeIdCount];
        int head = nextAvail;
        int headFlags;
        if (indirect) {
            MemorySegment table = VirtioRing.area(memory, indirectTable, (long) DESC_SIZE * count, 1, "indirect table");
            for (int i = 0; i < count; i++) {
                putDescriptor(table, i, addrs[i], lens[i], 0, writable[i] ? DESC_F_WRITE : 0);
            }
            putDescriptor(ring, head, indirectTable, DESC_SIZE * count, id, 0);
            headFlags = DESC_F_INDIRECT | availBits(availWrap);
            advance();
        } else {
            headFlags = 0;
            for (int i = 0; i < count; i++) {
                int flags = (writable[i] ? DESC_F_WRITE : 0) | (i + 1 < count ? DESC_F_NEXT : 0) | availBits(availWrap);
                putDescriptor(ring, nextAvail, addrs[i], lens[i], id, 0);
                if (i == 0) {
                    headFlags = flags; // published last, below
                } else {
                    ring.set(LE16, (long) nextAvail * DESC_SIZE + 14, (short) flags);
                }
                advance();
            }
        }
        slotsById[id] = slots;
        freeSlots -= slots;
        inFlight[id] = true;
        inFlightCount++;
        addedSinceKick = Math.min(addedSinceKick + slots, 2 * size); // two laps or more: always kick
        U16.setRelease(ring, (long) head * DESC_SIZE + 14, (short) headFlags); // the whole list before its head
        return id;
    }

    private void advance() {
        if (++nextAvail == size) {
            nextAvail = 0;
            availWrap = !availWrap;
        }
    }

    @Override
    public boolean kickNeeded() {
        int added = addedSinceKick;
        if (added == 0) {
            return false;
        }
        addedSinceKick = 0;
        VarHandle.fullFence(); // descriptor flags stored before the device event structure is read
        int offWrap = Short.toUnsignedInt(deviceEvent.get(LE16, OFF_WRAP));
        int flags = deviceEvent.get(LE16, EVENT_FLAGS) & 0x3;
        if (flags == VirtioRing.EVENT_FLAGS_DISABLE) {
            return false;
        }
        if (flags != VirtioRing.EVENT_FLAGS_DESC || !eventIdx) {
            return true;
        }
        return PackedQueue.crossed(offWrap, nextAvail, availWrap, added, size);
    }

    @Override
    public long pollUsed() {
        long off = (long) nextUsed * DESC_SIZE;
        int flags = Short.toUnsignedInt((short) U16.getAcquire(ring, off + 14));
        if (((flags & DESC_F_AVAIL) != 0) != usedWrap || ((flags & DESC_F_USED) != 0) != usedWrap) {
            return -1;
        }
        int id = Short.toUnsignedInt(ring.get(LE16, off + 12));
        int len = (flags & DESC_F_WRITE) != 0 ? ring.get(LE32, off + 8) : 0; // len is reserved without WRITE
        if (id >= size || !inFlight[id]) {
            throw new IllegalStateException(
                    "device returned buffer ID " + id + " at ring position " + nextUsed + ", which is not in flight");
        }
        inFlight[id] = false;
        inFlightCount--;
        int slots = slotsById[id];
        freeSlots += slots;
        freeIds[freeIdCount++] = id;
        nextUsed += slots;
        if (nextUsed >= size) {
            nextUsed -= size;
            usedWrap = !usedWrap;
        }
        if (eventIdx && interruptsEnabled) {
            driverEvent.set(LE16, OFF_WRAP, (short) usedEventPosition()); // interrupt me for the next one
        }
        return (long) id << 32 | Integer.toUnsignedLong(len);
    }

    private int usedEventPosition() {
        return nextUsed | (usedWrap ? 0x8000 : 0);
    }

    @Override
    public boolean enableInterrupts() {
        interruptsEnabled = true;
        if (eventIdx) {
            driverEvent.set(LE16, OFF_WRAP, (short) usedEventPosition());
            U16.setRelease(driverEvent, EVENT_FLAGS, (short) VirtioRing.EVENT_FLAGS_DESC);
        } else {
            driverEvent.set(LE16, EVENT_FLAGS, (short) VirtioRing.EVENT_FLAGS_ENABLE);
        }
        VarHandle.fullFence(); // publish the request before looking at the ring again
        return hasUsed();
    }

    @Override
    public boolean hasUsed() {
        int flags = Short.toUnsignedInt((short) U16.getAcquire(ring, (long) nextUsed * DESC_SIZE + 14));
        return ((flags & DESC_F_AVAIL) != 0) == usedWrap && ((flags & DESC_F_USED) != 0) == usedWrap;
    }

    @Override
    public void disableInterrupts() {
        interruptsEnabled = false;
        driverEvent.set(LE16, EVENT_FLAGS, (short) VirtioRing.EVENT_FLAGS_DISABLE);
    }

    @Override
    public int inFlight() {
        return inFlightCount;
    }

    @Override
    public long descAddr() {
        return ringGpa;
    }

    @Override
    public long driverAreaAddr() {
        return driverEventGpa;
    }

    @Override
    public long deviceAreaAddr() {
        return deviceEventGpa;
    }

    @Override
    public QueueConfig queueConfig(int index, boolean indirectDesc) {
        return QueueConfig.packed(
                index,
                size,
                ringGpa,
                driverEventGpa,
                deviceEventGpa,
                eventIdx,
                indirectDesc,
                nextAvail,
                availWrap,
                nextUsed,
                usedWrap);
    }

    // ---- Raw access for crafting hostile rings in tests: these follow no rule and track nothing. ----

    /** The flags that mark a descriptor available in the driver's current lap. */
    int availFlags() {
        return availBits(availWrap);
    }

    int nextAvailPosition() {
        return nextAvail;
    }

    boolean availWrapCounter() {
        return availWrap;
    }

    /** Writes ring descriptor {@code pos} verbatim; the flags with release semantics, last. */
    void writeDescriptor(int pos, long addr, int len, int id, int flags) {
        putDescriptor(ring, pos, addr, len, id, 0);
        U16.setRelease(ring, (long) pos * DESC_SIZE + 14, (short) flags);
    }

    /** Writes an entry of an indirect table at {@code tableGpa} verbatim. */
    void writeIndirect(long tableGpa, int i, long addr, int len, int id, int flags) {
        putDescriptor(VirtioRing.indirectEntry(memory, tableGpa, i), 0, addr, len, id, flags);
    }

    MemorySegment descRing() {
        return ring;
    }

    MemorySegment driverEventArea() {
        return driverEvent;
    }

    MemorySegment deviceEventArea() {
        return deviceEvent;
    }
}
