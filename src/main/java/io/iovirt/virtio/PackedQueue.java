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
import static io.iovirt.virtio.VirtioRing.LE64;
import static io.iovirt.virtio.VirtioRing.U16;

import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.GuestWriteLog;
import io.iovirt.virtio.VirtqueueException.Reason;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;

/**
 * Device side of a packed virtqueue (VIRTIO 1.2 §2.8): one descriptor ring both sides write, the driver event
 * suppression structure (driver area, read here) and the device event suppression structure (device area, written
 * here).
 */
public final class PackedQueue extends Virtqueue {
    private static final long EVENT_OFF_WRAP = 0;
    private static final long EVENT_FLAGS = 2;
    private static final long DESC_LEN = 8;
    private static final long DESC_ID = 12;
    private static final long DESC_FLAGS = 14;

    private final boolean indirectDesc;
    private MemorySegment ring;
    private MemorySegment driverEvent;
    private MemorySegment deviceEvent;

    /** Next ring position to look for an available descriptor at, and the wrap counter it must carry. */
    private int nextAvail;

    private boolean availWrap;
    /** Next ring position to write a used descriptor at, and the device ring wrap counter. */
    private int nextUsed;

    private boolean usedWrap;
    /** Ring slots each in-flight buffer ID occupies: the used side skips that many when it completes. */
    private final int[] slotsById;

    private int slotsInFlight;
    /** Slots the used side advanced since the last notification decision. */
    private int usedSinceDecision;

    private boolean decidedValid;
    /**
     * Slots advanced by decisions that sent no interrupt since the last one that did (at most two laps), for {@link
     * #driverMayBeWaiting}; counted once a decision has sent one on this attachment.
     */
    private int unsignalled;

    private boolean signalledValid;
    /**
     * Ring offset of the flags of the first used descriptor {@link #pushBatched} wrote and left unpublished (-1: none),
     * and the flags to store there. Its flags are stored last, by {@link #publishUsed}: the driver reads used
     * descriptors in ring order and stops at the first one not yet used, so the descriptors written after it (their
     * flags stored at once) become visible with it — a batch, and every buffer of a multi-buffer receive frame
     * (MRG_RXBUF, VIRTIO 1.2 §5.1.6.4.2: all of a packet's buffers used together, at least num_buffers observed as
     * used), reach the driver together, as on a split ring. Published one by one, a Linux driver polling meanwhile
     * took a frame's first buffer, found the rest missing, dropped it (rx_length_errors), and then parsed the
     * frame's later buffers as frames of their own, their payload bytes read as virtio-net headers.
     */
    private long pendingFlagsOff = -1;

    private short pendingFlags;
    // crash recovery (issue 11): the in-flight record, and how many of the buffers it kept were handed out again
    private final InflightPacked inflight;
    private int resubmitted;

    PackedQueue(QueueConfig config, GuestMemoryHolder memory, InflightPacked inflight) throws VirtqueueException {
        super(config, memory);
        if (config.availIndex() < 0
                || config.availIndex() >= size
                || config.usedIndex() < 0
                || config.usedIndex() >= size) {
            throw fail(
                    Reason.BAD_CONFIG,
                    "starting positions avail " + config.availIndex() + " / used " + config.usedIndex()
                            + " are outside the ring of " + size);
        }
        int inFlightAtStart =
                slotsBetween(config.usedIndex(), config.usedWrap(), config.availIndex(), config.availWrap(), size);
        if (inFlightAtStart > size) {
            throw fail(
                    Reason.BAD_CONFIG,
                    "starting positions avail " + config.availIndex() + " (wrap " + (config.availWrap() ? 1 : 0)
                            + ") / used " + config.usedIndex() + " (wrap " + (config.usedWrap() ? 1 : 0)
                            + ") put the used side " + inFlightAtStart + " slots behind the available side,"
                            + " more than the ring of " + size + " holds: not a state a ring can be in (the used"
                            + " position and wrap counter are bits 16-31 of SET_VRING_BASE)");
        }
        this.indirectDesc = config.indirectDesc();
        this.slotsById = new int[size];
        this.nextAvail = config.availIndex();
        this.availWrap = config.availWrap();
        this.nextUsed = config.usedIndex();
        this.usedWrap = config.usedWrap();
        this.inflight = inflight;
        refresh();
        if (inflight != null) {
            InflightPacked.Resume r;
            try {
                r = inflight.attach(ring, nextUsed, usedWrap);
            } catch (InflightPacked.RecoveryException e) {
                throw fail(Reason.BAD_CONFIG, "in-flight record cannot be recovered: " + e.getMessage());
            }
            // QEMU's base for a packed ring is stale after a crash (it has nothing in shared memory to restore it
            // from): the record says where the used side is, and the buffers in flight fill the slots after it.
            nextUsed = r.usedIdx();
            usedWrap = r.usedWrap();
            nextAvail = r.availIdx();
            availWrap = r.availWrap();
            slotsInFlight = r.slots();
        }
    }

    @Override
    public int resubmitted() {
        return inflight == null ? 0 : inflight.buffers();
    }

    @Override
    public int resubmitsPending() {
        return inflight == null ? 0 : inflight.buffers() - resubmitted;
    }

    /** The in-flight record (tests: to stop between its steps as a crash would). */
    InflightPacked inflightForTest() {
        return inflight;
    }

    private boolean resubmitPending() {
        return inflight != null && resubmitted < inflight.buffers();
    }

    /** Hands out buffer {@code resubmitted} of the in-flight record, from the descriptors the record kept. */
    private boolean popResubmitted(DescriptorChain chain, GuestMemory mem) throws VirtqueueException {
        chain.reset();
        int k = resubmitted++;
        int from = inflight.firstDescriptor(k);
        int to = inflight.firstDescriptor(k + 1);
        for (int j = from; j < to; j++) {
            int flags = inflight.flags(j);
            if ((flags & DESC_F_INDIRECT) != 0) {
                if (to - from != 1) {
                    throw fail(
                            Reason.INDIRECT_MISPLACED,
                            "in-flight record: indirect descriptor in a list of " + (to - from));
                }
                expandIndirect(chain, mem, inflight.addr(j), inflight.len(j), -1);
            } else {
                appendBuffer(chain, mem, inflight.addr(j), inflight.len(j), (flags & DESC_F_WRITE) != 0);
            }
        }
        int id = inflight.id(to - 1); // checked against the queue size and for duplicates when attaching
        chain.id = id;
        inFlight[id] = true;
        inFlightCount++;
        slotsById[id] = to - from; // already counted in slotsInFlight
        return true;
    }

    @Override
    void mapRings(GuestMemory mem) throws VirtqueueException {
        ring = mapDescArea(mem);
        driverEvent = mapDriverArea(mem);
        deviceEvent = mapDeviceArea(mem);
    }

    /** A driver descriptor is available for lap {@code wrap} when AVAIL matches it and USED does not (§2.8.1). */
    private static boolean isAvail(int flags, boolean wrap) {
        return ((flags & DESC_F_AVAIL) != 0) == wrap && ((flags & DESC_F_USED) != 0) != wrap;
    }

    @Override
    boolean popInto(DescriptorChain chain, GuestMemory mem) throws VirtqueueException {
        if (resubmitPending()) {
            return popResubmitted(chain, mem);
        }
        int pos = nextAvail;
        boolean wrap = availWrap;
        // Acquire: the rest of the list and its buffers were written before the driver published the head's flags.
        int flags = Short.toUnsignedInt((short) U16.getAcquire(ring, (long) pos * DESC_SIZE + DESC_FLAGS));
        if (!isAvail(flags, wrap)) {
            return false;
        }
        chain.reset();
        int slots = 0;
        int id;
        for (; ; ) {
            long off = (long) pos * DESC_SIZE;
            long addr = ring.get(LE64, off);
            long len = Integer.toUnsignedLong(ring.get(LE32, off + DESC_LEN));
            int descId = Short.toUnsignedInt(ring.get(LE16, off + DESC_ID));
            slots++;
            if (inflight != null) {
                record(addr, len, flags, descId, slots, pos);
            }
            if ((flags & DESC_F_INDIRECT) != 0) {
                if (slots != 1 || (flags & DESC_F_NEXT) != 0) {
                    throw fail(
                            Reason.INDIRECT_MISPLACED,
                            "indirect descriptor at ring position " + pos + " is part of a descriptor list");
                }
                expandIndirect(chain, mem, addr, len, pos);
                id = descId;
                break;
            }
            appendBuffer(chain, mem, addr, len, (flags & DESC_F_WRITE) != 0);
            if ((flags & DESC_F_NEXT) == 0) {
                id = descId; // the buffer ID is in the last descriptor of the list
                break;
            }
            if (slots == size) {
                throw fail(
                        Reason.CHAIN_TOO_LONG,
                        "descriptor list at ring position " + nextAvail + " is longer than the queue size " + size);
            }
            if (++pos == size) {
                pos = 0;
                wrap = !wrap;
            }
            flags = Short.toUnsignedInt(ring.get(LE16, (long) pos * DESC_SIZE + DESC_FLAGS));
            if (!isAvail(flags, wrap)) {
                throw fail(
                        Reason.CHAIN_INCOMPLETE,
                        "descriptor at ring position " + pos + " continues a list but is not marked available");
            }
        }
        if (id >= size) {
            throw fail(
                    Reason.ID_OUT_OF_RANGE, "buffer ID " + id + " at ring position " + pos + ", queue size is " + size);
        }
        if (inFlight[id]) {
            throw fail(Reason.ID_IN_USE, "buffer ID " + id + " made available again while the device still owns it");
        }
        if (slotsInFlight + slots > size) {
            throw fail(
                    Reason.RING_OVERRUN,
                    "driver made " + (slotsInFlight + slots) + " descriptors available in a ring of " + size);
        }
        if (++pos == size) {
            pos = 0;
            wrap = !wrap;
        }
        nextAvail = pos;
        availWrap = wrap;
        chain.id = id;
        inFlight[id] = true;
        inFlightCount++;
        slotsById[id] = slots;
        slotsInFlight += slots;
        if (eventIdx && notificationsEnabled) {
            writeDeviceEventPosition();
        }
        return true;
    }

    /** Copies one descriptor into the in-flight record, after the checks that keep the record consistent. */
    private void record(long addr, long len, int flags, int descId, int slots, int pos) throws VirtqueueException {
        boolean last = (flags & (DESC_F_INDIRECT | DESC_F_NEXT)) != DESC_F_NEXT;
        if (slotsInFlight + slots > size) {
            throw fail(
                    Reason.RING_OVERRUN,
                    "driver made " + (slotsInFlight + slots) + " descriptors available in a ring of " + size);
        }
        if (last && descId >= size) {
            throw fail(
                    Reason.ID_OUT_OF_RANGE,
                    "buffer ID " + descId + " at ring position " + pos + ", queue size is " + size);
        }
        if (last && inFlight[descId]) {
            throw fail(
                    Reason.ID_IN_USE, "buffer ID " + descId + " made available again while the device still owns it");
        }
        inflight.took(addr, len, flags, descId, slots == 1, last);
    }

    private void expandIndirect(DescriptorChain chain, GuestMemory mem, long addr, long len, int pos)
            throws VirtqueueException {
        if (!indirectDesc) {
            throw fail(
                    Reason.INDIRECT_NOT_NEGOTIATED,
                    "ring position " + pos + " uses an indirect descriptor, VIRTIO_F_INDIRECT_DESC not negotiated");
        }
        if (len == 0 || len % DESC_SIZE != 0 || len / DESC_SIZE > maxChain) {
            throw fail(
                    Reason.BAD_INDIRECT_TABLE,
                    "indirect table at ring position " + pos + " is " + len
                            + " bytes: must be a non-zero multiple of 16 of at most " + maxChain + " descriptors");
        }
        int region = mem.find(addr, len); // (mapping, offset), not a slice: expanding a table allocates nothing
        if (region < 0) {
            throw fail(
                    Reason.INDIRECT_TABLE_OUTSIDE_MEMORY,
                    String.format(
                            "indirect table 0x%x+0x%x at ring position %d is outside guest memory", addr, len, pos));
        }
        MemorySegment table = mem.mapping(region);
        long base = mem.offset(region, addr);
        int n = (int) (len / DESC_SIZE);
        for (int i = 0; i < n; i++) {
            long off = base + (long) i * DESC_SIZE;
            long a = table.get(LE64, off);
            long l = Integer.toUnsignedLong(table.get(LE32, off + DESC_LEN));
            int f = Short.toUnsignedInt(table.get(LE16, off + DESC_FLAGS));
            // Entries are consecutive; only WRITE means something in them (NEXT and the ID are ignored, §2.8.7).
            if ((f & DESC_F_INDIRECT) != 0) {
                throw fail(
                        Reason.NESTED_INDIRECT,
                        "indirect table at ring position " + pos + " contains an indirect descriptor");
            }
            appendBuffer(chain, mem, a, l, (f & DESC_F_WRITE) != 0);
        }
    }

    @Override
    public void publishUsed() {
        long off = pendingFlagsOff;
        if (off < 0) {
            return;
        }
        pendingFlagsOff = -1;
        U16.setRelease(ring, off, pendingFlags); // every descriptor written after it is visible before it
        logged(config.descAddr() + off, 2); // stored after the batch's report (logUsedSince): reported again
    }

    @Override
    void writeUsed(int id, int len, boolean publish, boolean log) {
        if (inflight != null) {
            inflight.beforeUsed(id, slotsById[id]);
        }
        long off = (long) nextUsed * DESC_SIZE;
        ring.set(LE16, off + DESC_ID, (short) id);
        ring.set(LE32, off + DESC_LEN, len);
        int flags = usedWrap ? DESC_F_AVAIL | DESC_F_USED : 0;
        if (len != 0) {
            flags |= DESC_F_WRITE; // §2.8.3: in a used descriptor WRITE says data was written
        }
        if (!publish && inflight == null && pendingFlagsOff < 0) {
            // the batch's first: its flags wait for publishUsed (with an in-flight record each entry is published
            // between the record's two steps, as before)
            pendingFlagsOff = off + DESC_FLAGS;
            pendingFlags = (short) flags;
        } else {
            U16.setRelease(ring, off + DESC_FLAGS, (short) flags); // id and len visible before the flags
        }
        if (inflight != null) {
            inflight.afterUsed(id);
        }
        if (log) {
            logged(config.descAddr() + off, DESC_SIZE);
        }
        int slots = slotsById[id];
        slotsInFlight -= slots;
        nextUsed += slots;
        if (nextUsed >= size) {
            nextUsed -= size;
            usedWrap = !usedWrap;
        }
        usedSinceDecision = Math.min(usedSinceDecision + slots, 2 * size); // two laps or more: always notify
        if (publish) {
            publishUsed(); // and the batched ones before it, after it: all together
        }
    }

    @Override
    int usedMark() {
        return nextUsed;
    }

    @Override
    void logUsedSince(GuestWriteLog l, int mark, int count) {
        // The descriptors from mark to nextUsed: each entry is written into the first slot of its chain's, so the
        // range covers them (and the other slots of those chains, a few more bytes of the same pages).
        long base = config.descAddr();
        int slots = nextUsed - mark;
        if (slots <= 0) {
            slots += size; // wrapped (a whole lap when count > 0 and the position is back where it was)
        }
        if (slots >= size) {
            l.written(base, (long) size * DESC_SIZE);
            return;
        }
        int head = Math.min(slots, size - mark);
        l.written(base + (long) mark * DESC_SIZE, (long) head * DESC_SIZE);
        if (head < slots) {
            l.written(base, (long) (slots - head) * DESC_SIZE);
        }
    }

    @Override
    public boolean needsNotification() throws VirtqueueException {
        refresh();
        publishUsed();
        int advanced = usedSinceDecision;
        if (advanced == 0) {
            return false;
        }
        usedSinceDecision = 0;
        boolean valid = decidedValid;
        decidedValid = true;
        VarHandle.fullFence(); // used flags stored before the driver's event structure is read
        int offWrap = Short.toUnsignedInt(driverEvent.get(LE16, EVENT_OFF_WRAP));
        int flags = driverEvent.get(LE16, EVENT_FLAGS) & 0x3;
        boolean notify;
        if (flags == VirtioRing.EVENT_FLAGS_DISABLE) {
            notify = false;
        } else if (flags != VirtioRing.EVENT_FLAGS_DESC || !eventIdx || !valid) {
            // ENABLE, or a value we must not interpret, or the first decision after attaching: notify rather than
            // risk a hang
            notify = true;
        } else {
            notify = crossed(offWrap, nextUsed, usedWrap, advanced, size);
        }
        if (notify) {
            unsignalled = 0;
            signalledValid = true;
        } else {
            unsignalled = Math.min(unsignalled + advanced, 2 * size);
        }
        return notify;
    }

    @Override
    public boolean driverMayBeWaiting() throws VirtqueueException {
        refresh();
        int flags = driverEvent.get(LE16, EVENT_FLAGS) & 0x3;
        if (flags == VirtioRing.EVENT_FLAGS_DISABLE) {
            return false; // it polls, or will look before it asks for interrupts again
        }
        if (!signalledValid || usedSinceDecision > 0) {
            return true;
        }
        if (unsignalled == 0) {
            return false; // the last interrupt came after everything returned: the driver will look
        }
        if (flags != VirtioRing.EVENT_FLAGS_DESC || !eventIdx) {
            return true;
        }
        // it asked for an interrupt at a slot returned silently since the last interrupt: missed
        int offWrap = Short.toUnsignedInt(driverEvent.get(LE16, EVENT_OFF_WRAP));
        return crossed(offWrap, nextUsed, usedWrap, unsignalled, size);
    }

    /**
     * Whether moving a ring position forward by {@code advanced} slots to ({@code newPos}, {@code newWrap}) passed the
     * event descriptor {@code offWrap} (offset in bits 0-14, wrap counter in bit 15). A (position, wrap) pair recurs
     * every two laps; the event was passed when its latest occurrence before {@code newPos} lies within the last
     * {@code advanced} slots. Shared with the driver side.
     */
    static boolean crossed(int offWrap, int newPos, boolean newWrap, int advanced, int size) {
        if (advanced >= 2 * size) {
            return true; // every (position, wrap) pair was passed
        }
        int event = offWrap & 0x7fff;
        if (((offWrap & 0x8000) != 0) != newWrap) {
            event -= size; // tagged with the other wrap counter: the previous lap
        }
        if (event >= newPos) {
            event -= 2 * size; // not reached yet in this lap: its last occurrence was two laps back
        }
        return event >= newPos - advanced;
    }

    /**
     * How many slots position {@code to} (with wrap counter {@code toWrap}) is ahead of {@code from}, 0 to {@code 2 *
     * size - 1}: a (position, wrap counter) pair recurs every two laps, the counter starting at 1 on the first lap.
     * The used side trails the available side by the slots of the buffers in flight, at most a ring's worth; more is
     * no state a ring can be in (the used side would be a lap behind, or ahead of the available side).
     */
    static int slotsBetween(int from, boolean fromWrap, int to, boolean toWrap, int size) {
        int a = to + (toWrap ? 0 : size);
        int b = from + (fromWrap ? 0 : size);
        int d = a - b;
        return d < 0 ? d + 2 * size : d;
    }

    private void writeDeviceEventPosition() {
        deviceEvent.set(LE16, EVENT_OFF_WRAP, (short) (nextAvail | (availWrap ? 0x8000 : 0)));
        logged(config.deviceArea(), VirtioRing.PACKED_EVENT_BYTES);
    }

    @Override
    public void disableNotifications() throws VirtqueueException {
        refresh();
        notificationsEnabled = false;
        deviceEvent.set(LE16, EVENT_FLAGS, (short) VirtioRing.EVENT_FLAGS_DISABLE);
        logged(config.deviceArea(), VirtioRing.PACKED_EVENT_BYTES);
    }

    @Override
    public boolean enableNotifications() throws VirtqueueException {
        refresh();
        notificationsEnabled = true;
        if (eventIdx) {
            writeDeviceEventPosition();
            U16.setRelease(deviceEvent, EVENT_FLAGS, (short) VirtioRing.EVENT_FLAGS_DESC); // position before mode
        } else {
            deviceEvent.set(LE16, EVENT_FLAGS, (short) VirtioRing.EVENT_FLAGS_ENABLE);
            logged(config.deviceArea(), VirtioRing.PACKED_EVENT_BYTES);
        }
        VarHandle.fullFence(); // publish the request to kick before looking at the ring again
        return hasAvailable();
    }

    @Override
    public boolean hasAvailable() throws VirtqueueException {
        refresh();
        if (resubmitPending()) {
            return true;
        }
        int flags = Short.toUnsignedInt((short) U16.getAcquire(ring, (long) nextAvail * DESC_SIZE + DESC_FLAGS));
        return isAvail(flags, availWrap);
    }

    @Override
    public int vringBase() {
        int avail = nextAvail | (availWrap ? 0x8000 : 0);
        int used = nextUsed | (usedWrap ? 0x8000 : 0);
        return avail | used << 16;
    }
}
