// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static io.iovirt.virtio.VirtioRing.DESC_F_INDIRECT;
import static io.iovirt.virtio.VirtioRing.DESC_F_NEXT;
import static io.iovirt.virtio.VirtioRing.DESC_F_WRITE;
import static io.iovirt.virtio.VirtioRing.DESC_SIZE;
import static io.iovirt.virtio.VirtioRing.LE16;
import static io.iovirt.virtio.VirtioRing.LE64;
import static io.iovirt.virtio.VirtioRing.U16;

import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.GuestWriteLog;
import io.iovirt.virtio.VirtqueueException.Reason;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;
import java.util.Arrays;

/**
 * Device side of a split virtqueue (VIRTIO 1.2 §2.7): descriptor table, available ring (driver area), used ring
 * (device area).
 */
public final class SplitQueue extends Virtqueue {
    private static final long AVAIL_IDX = 2;
    private static final long USED_IDX = 2;
    private static final long RING = 4;

    private final int mask;
    private final boolean indirectDesc;
    private final long usedEventOffset; // in the available ring
    private final long availEventOffset; // in the used ring
    private MemorySegment desc;
    private MemorySegment avail;
    private MemorySegment used;

    /** Next available ring index to consume (16-bit counter). */
    private int lastAvail;
    /** Last available index read from the ring; saves re-reading it while a batch is pending. */
    private int shadowAvail;
    /** Used index the device publishes next (16-bit counter); entries up to it are written. */
    private int usedIdx;
    /** Used index the driver can see (the last release store of used.idx). */
    private int publishedIdx;
    /** Used index at the last notification decision; valid after the first one. */
    private int decidedUsed;

    private boolean decidedValid;
    /** Entries pushed since the last decision (more than 2^16 would defeat 16-bit event arithmetic). */
    private int pushedSinceDecision;
    /**
     * Entries published by decisions that sent no interrupt since the last one that did (at most 2^16), for {@link
     * #driverMayBeWaiting}; counted once a decision has sent one on this attachment.
     */
    private int unsignalled;

    private boolean signalledValid;

    // Loop detection without clearing per request: a descriptor is visited in this walk when its stamp equals the
    // walk's stamp.
    private final int[] visitedDirect;
    private final int[] visitedIndirect;
    private int stamp;

    // crash recovery (issue 11): the in-flight record, and the heads to hand out again before the available ring
    private final InflightQueue inflight;
    private final int[] resubmit;
    private int resubmitted;
    /** VIRTIO_F_IN_ORDER and no in-flight record: runs of returned transmit chains share a used entry. */
    private final boolean coalesce;

    SplitQueue(QueueConfig config, GuestMemoryHolder memory, InflightQueue inflight) throws VirtqueueException {
        super(config, memory);
        if (Integer.bitCount(size) != 1) {
            throw fail(Reason.BAD_CONFIG, "split queue size " + size + " is not a power of two");
        }
        if (config.availIndex() < 0 || config.availIndex() > 0xffff) {
            throw fail(Reason.BAD_CONFIG, "starting available index " + config.availIndex() + " does not fit 16 bits");
        }
        this.mask = size - 1;
        this.indirectDesc = config.indirectDesc();
        this.usedEventOffset = RING + 2L * size;
        this.availEventOffset = RING + 8L * size;
        this.visitedDirect = new int[size];
        this.visitedIndirect = new int[maxChain];
        refresh();
        this.lastAvail = config.availIndex();
        this.shadowAvail = lastAvail;
        this.usedIdx = Short.toUnsignedInt((short) U16.getAcquire(used, USED_IDX));
        this.decidedUsed = usedIdx;
        this.publishedIdx = usedIdx;
        this.inflight = inflight;
        this.coalesce = config.inOrder() && inflight == null;
        this.resubmit = inflight == null ? new int[0] : inflight.attach(usedIdx);
        if (inflight != null && resubmit.length > 0) {
            // Every request taken so far was either returned (used idx) or is in flight: resume after them.
            this.lastAvail = (usedIdx + resubmit.length) & 0xffff;
            this.shadowAvail = lastAvail;
        }
    }

    @Override
    void mapRings(GuestMemory mem) throws VirtqueueException {
        desc = mapDescArea(mem);
        avail = mapDriverArea(mem);
        used = mapDeviceArea(mem);
    }

    /** Reads avail.idx (acquire: ring entries and descriptors written before it become visible) and checks it. */
    private int readAvailIdx() throws VirtqueueException {
        int idx = Short.toUnsignedInt((short) U16.getAcquire(avail, AVAIL_IDX));
        int pending = (idx - lastAvail) & 0xffff;
        if (pending > size) {
            throw fail(
                    Reason.AVAIL_INDEX_OUT_OF_RANGE,
                    String.format(
                            "available index moved from %d to %d, more than the queue size %d", lastAvail, idx, size));
        }
        return idx;
    }

    @Override
    public int resubmitted() {
        return resubmit.length;
    }

    @Override
    public int resubmitsPending() {
        return resubmit.length - resubmitted;
    }

    @Override
    boolean popInto(DescriptorChain chain, GuestMemory mem) throws VirtqueueException {
        if (resubmitted < resubmit.length) { // crash recovery: what a previous backend took and never returned
            int head = resubmit[resubmitted++];
            if (inFlight[head]) {
                throw fail(Reason.ID_IN_USE, "in-flight record names head " + head + " twice");
            }
            chain.reset();
            walk(head, chain, mem);
            chain.id = head;
            inFlight[head] = true;
            inFlightCount++;
            return true;
        }
        if (lastAvail == shadowAvail) {
            shadowAvail = readAvailIdx();
            if (lastAvail == shadowAvail) {
                return false;
            }
        }
        int head = Short.toUnsignedInt(avail.get(LE16, RING + 2L * (lastAvail & mask)));
        if (head >= size) {
            throw fail(
                    Reason.ID_OUT_OF_RANGE,
                    "available ring entry " + lastAvail + " names head " + head + ", queue size is " + size);
        }
        if (inFlight[head]) {
            throw fail(Reason.ID_IN_USE, "head " + head + " made available again while the device still owns it");
        }
        chain.reset();
        walk(head, chain, mem);
        chain.id = head;
        inFlight[head] = true;
        inFlightCount++;
        if (inflight != null) {
            inflight.popped(head);
        }
        lastAvail = (lastAvail + 1) & 0xffff;
        if (eventIdx && notificationsEnabled) {
            // Keep avail_event at the next entry we will look at, so a driver that adds after we go idle kicks us.
            used.set(LE16, availEventOffset, (short) lastAvail);
            logged(config.deviceArea() + availEventOffset, 2);
        }
        return true;
    }

    /** Walks the chain from {@code head}, expanding at most one indirect table at its end. */
    private void walk(int head, DescriptorChain chain, GuestMemory mem) throws VirtqueueException {
        int s = ++stamp;
        if (s == 0) {
            Arrays.fill(visitedDirect, 0);
            Arrays.fill(visitedIndirect, 0);
            s = stamp = 1;
        }
        // The table being walked: the ring's descriptor table, or an indirect table as (region mapping, offset) so
        // that expanding one per request allocates no slice.
        MemorySegment table = desc;
        long tableBase = 0;
        int tableSize = size;
        int[] visited = visitedDirect;
        boolean indirect = false;
        int i = head;
        for (; ; ) {
            if (visited[i] == s) {
                throw fail(
                        Reason.LOOP,
                        String.format(
                                "chain from head %d revisits %sdescriptor %d", head, indirect ? "indirect " : "", i));
            }
            long off = tableBase + (long) i * DESC_SIZE;
            // Each field is read exactly once (the guest may rewrite the descriptor while we look at it): the
            // descriptor as two 8-byte loads, address, then length, flags and next together.
            long addr = table.get(LE64, off);
            long lfn = table.get(LE64, off + 8);
            long len = lfn & 0xffff_ffffL;
            int flags = (int) (lfn >>> 32) & 0xffff;
            int next = (int) (lfn >>> 48);
            if ((flags & DESC_F_INDIRECT) != 0) {
                if (indirect) {
                    throw fail(
                            Reason.NESTED_INDIRECT,
                            "indirect table of head " + head + " contains an indirect descriptor");
                }
                if (!indirectDesc) {
                    throw fail(
                            Reason.INDIRECT_NOT_NEGOTIATED,
                            "head " + head + " uses an indirect descriptor, VIRTIO_F_INDIRECT_DESC not negotiated");
                }
                if ((flags & DESC_F_NEXT) != 0) {
                    throw fail(
                            Reason.INDIRECT_MISPLACED,
                            "indirect descriptor " + i + " of head " + head + " also has NEXT set");
                }
                if (len == 0 || len % DESC_SIZE != 0 || len / DESC_SIZE > maxChain) {
                    throw fail(
                            Reason.BAD_INDIRECT_TABLE,
                            "indirect table of head " + head + " is " + len
                                    + " bytes: must be a non-zero multiple of 16 of at most " + maxChain
                                    + " descriptors");
                }
                int region = mem.find(addr, len);
                if (region < 0) {
                    throw fail(
                            Reason.INDIRECT_TABLE_OUTSIDE_MEMORY,
                            String.format(
                                    "indirect table 0x%x+0x%x of head %d is outside guest memory", addr, len, head));
                }
                table = mem.mapping(region);
                tableBase = mem.offset(region, addr);
                tableSize = (int) (len / DESC_SIZE);
                visited = visitedIndirect;
                indirect = true;
                i = 0;
                continue;
            }
            appendBuffer(chain, mem, addr, len, (flags & DESC_F_WRITE) != 0);
            if ((flags & DESC_F_NEXT) == 0) {
                return;
            }
            // Only a descriptor that links on is marked: a walk can come back only to one it left through next
            // (and a one-descriptor chain, the usual net request, stores no mark at all).
            visited[i] = s;
            if (next >= tableSize) {
                throw fail(
                        Reason.NEXT_OUT_OF_RANGE,
                        String.format(
                                "%sdescriptor %d of head %d links to %d, table has %d",
                                indirect ? "indirect " : "", i, head, next, tableSize));
            }
            i = next;
        }
    }

    @Override
    boolean coalescesUsed() {
        return coalesce;
    }

    @Override
    void writeUsedRun(int lastId, int count) {
        if (!coalesce) {
            throw new IllegalStateException("virtqueue " + index + " does not coalesce used entries");
        }
        used.set(LE64, RING + 8L * (usedIdx & mask), lastId & 0xffff_ffffL); // id, and length 0
        usedIdx = (usedIdx + count) & 0xffff;
        pushedSinceDecision = Math.min(pushedSinceDecision + count, 0x10000);
    }

    @Override
    void writeUsed(int id, int len, boolean publish, boolean log) {
        if (inflight != null) {
            inflight.beforeUsed(id);
        }
        long off = RING + 8L * (usedIdx & mask);
        // id and len in one (possibly unaligned) 8-byte store: the driver reads the element only after the index
        used.set(LE64, off, (id & 0xffff_ffffL) | ((long) len << 32));
        usedIdx = (usedIdx + 1) & 0xffff;
        if (log) {
            GuestWriteLog l = log();
            if (l != null) {
                l.written(config.deviceArea() + off, 8);
            }
        }
        if (pushedSinceDecision <= 0xffff) {
            pushedSinceDecision++;
        }
        if (publish || inflight != null) {
            publishUsed();
            if (inflight != null) {
                inflight.afterUsed(id, usedIdx);
            }
        }
    }

    @Override
    int usedMark() {
        return usedIdx;
    }

    @Override
    void logUsedSince(GuestWriteLog l, int mark, int count) {
        long base = config.deviceArea() + RING;
        if (count >= size) { // a whole lap: every entry
            l.written(base, 8L * size);
            return;
        }
        int first = mark & mask;
        int head = Math.min(count, size - first); // up to the end of the ring, then from its start
        l.written(base + 8L * first, 8L * head);
        if (head < count) {
            l.written(base, 8L * (count - head));
        }
    }

    @Override
    public void publishUsed() {
        if (publishedIdx == usedIdx) {
            return;
        }
        publishedIdx = usedIdx;
        U16.setRelease(used, USED_IDX, (short) usedIdx); // the elements visible before the index
        logged(config.deviceArea() + USED_IDX, 2);
    }

    @Override
    public boolean needsNotification() throws VirtqueueException {
        refresh();
        publishUsed();
        int pushed = pushedSinceDecision;
        if (pushed == 0) {
            return false;
        }
        int old = decidedUsed;
        boolean valid = decidedValid;
        pushedSinceDecision = 0;
        decidedUsed = usedIdx;
        decidedValid = true;
        // Order our used.idx store before the load of the driver's suppression state (the driver does the mirror
        // image); without it both sides can miss each other's update and the interrupt is lost.
        VarHandle.fullFence();
        boolean notify;
        if (!eventIdx) {
            notify = (avail.get(LE16, 0) & VirtioRing.AVAIL_F_NO_INTERRUPT) == 0;
        } else {
            int usedEvent = Short.toUnsignedInt(avail.get(LE16, usedEventOffset));
            // First decision after attaching: we do not know which used_event the driver has already seen crossed (by
            // a previous backend), so notify; a spurious interrupt is harmless, a lost one hangs the driver.
            notify = !valid || pushed > 0xffff || VirtioRing.needEvent(usedEvent, usedIdx, old);
        }
        if (notify) {
            unsignalled = 0;
            signalledValid = true;
        } else {
            unsignalled = Math.min(unsignalled + pushed, 0x10000);
        }
        return notify;
    }

    @Override
    public void disableNotifications() throws VirtqueueException {
        refresh();
        notificationsEnabled = false;
        if (!eventIdx) {
            used.set(LE16, 0, (short) VirtioRing.USED_F_NO_NOTIFY);
            logged(config.deviceArea(), 2);
        }
        // With EVENT_IDX, avail_event simply stays behind: the driver stops kicking once it has passed it.
    }

    @Override
    public boolean enableNotifications() throws VirtqueueException {
        refresh();
        notificationsEnabled = true;
        if (eventIdx) {
            used.set(LE16, availEventOffset, (short) lastAvail);
            logged(config.deviceArea() + availEventOffset, 2);
        } else {
            used.set(LE16, 0, (short) 0);
            logged(config.deviceArea(), 2);
        }
        VarHandle.fullFence(); // publish the request to kick before re-reading avail.idx
        shadowAvail = readAvailIdx();
        return shadowAvail != lastAvail || resubmitted < resubmit.length;
    }

    @Override
    public boolean hasAvailable() throws VirtqueueException {
        refresh();
        if (shadowAvail == lastAvail) {
            shadowAvail = readAvailIdx();
        }
        return shadowAvail != lastAvail || resubmitted < resubmit.length;
    }

    @Override
    public int vringBase() {
        return lastAvail;
    }

    @Override
    public boolean driverMayBeWaiting() throws VirtqueueException {
        refresh();
        // Precise once every entry published went through a decision and one decision sent an interrupt: only the
        // entries returned silently since then can be the ones a driver waits for.
        boolean precise = signalledValid && pushedSinceDecision == 0 && unsignalled <= 0xffff;
        if (precise && unsignalled == 0) {
            return false; // the last interrupt came after everything published: the driver will look
        }
        if (!eventIdx) {
            return (avail.get(LE16, 0) & VirtioRing.AVAIL_F_NO_INTERRUPT) == 0;
        }
        int usedEvent = Short.toUnsignedInt(avail.get(LE16, usedEventOffset));
        if (precise) { // it asked for an interrupt at one of them: an event index ahead of them is no missed one
            return VirtioRing.needEvent(usedEvent, publishedIdx, publishedIdx - unsignalled);
        }
        return usedEvent != (publishedIdx & 0xffff);
    }

    @Override
    public String ringState() {
        try {
            StringBuilder b = new StringBuilder("split ring: avail.idx ")
                    .append(Short.toUnsignedInt((short) U16.getAcquire(avail, AVAIL_IDX)))
                    .append(", next to take ")
                    .append(lastAvail)
                    .append(", used.idx ")
                    .append(Short.toUnsignedInt((short) U16.getAcquire(used, USED_IDX)))
                    .append(" (device's ")
                    .append(usedIdx)
                    .append("), in flight ")
                    .append(inFlightCount)
                    .append(", kicks ")
                    .append(notificationsEnabled ? "on" : "off");
            if (eventIdx) {
                b.append(", used_event ")
                        .append(Short.toUnsignedInt(avail.get(LE16, usedEventOffset)))
                        .append(", avail_event ")
                        .append(Short.toUnsignedInt(used.get(LE16, availEventOffset)));
            } else {
                b.append(", avail.flags ")
                        .append(Short.toUnsignedInt(avail.get(LE16, 0)))
                        .append(", used.flags ")
                        .append(Short.toUnsignedInt(used.get(LE16, 0)));
            }
            return b.toString();
        } catch (RuntimeException e) { // not mapped yet, or its memory was let go
            return toString() + " (ring not readable: " + e + ")";
        }
    }

    /** Used index the device will publish next. */
    public int usedIndex() {
        return usedIdx;
    }
}
