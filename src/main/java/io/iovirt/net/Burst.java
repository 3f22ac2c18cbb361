// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Objects;

/**
 * Up to {@link #capacity} small frames a receiving thread collected from its peer, forwarded through the switch
 * together ({@link Port#receive(Ingress, Burst)}): the switch checks and learns each frame exactly as it would a
 * single one, groups the frames by destination port (each destination's frames keep their order) and hands each
 * destination its frames in one call ({@link Port#transmit(Burst, int, int)}), so a destination that serializes its
 * transmit path takes its lock once per burst, not once per frame.
 *
 * <p>The frames live in fixed slots of private memory allocated once with the burst (a little over
 * {@code capacity × slotSize} bytes): the sender copies a frame into the next slot ({@link #nextOffset}, {@link #append}); a frame larger than a
 * slot does not go into a burst (the sender forwards the pending burst first, then that frame on its own, so its
 * frames stay in order). Nothing is allocated per frame or per burst. Owned by one receiving thread; the switch's
 * per-burst state (each frame's destination, the grouped order) lives here too, so forwarding allocates nothing.
 */
public final class Burst {
    private final MemorySegment memory;
    private final int slotSize;
    /**
     * Bytes from one slot to the next: the slot size rounded up to a cache line plus one line, so the slots' first
     * lines (where small frames and every frame's addresses are) fall in different L1 sets; with a power-of-two
     * stride (2 KiB) all 32 would share two sets of an 8-way cache and evict each other within one burst.
     */
    private final int stride;

    private final int[] lengths;
    /**
     * Each frame's destination and source address, read from the burst's private copy when the frame was appended
     * (0 for a frame shorter than the two): the switch's per-frame loop compares these instead of reading every
     * frame's header again through the segment (measured in the single-port run, docs/benchmarks.md 2026-12-05).
     */
    private final long[] destinations;

    private final long[] sources;
    private final Frame view;
    /** The switch's classification: each frame's destination port, null once dropped or delivered. */
    final Port[] destination;
    /** The switch's classification: frames to flood (every other port whose link is up), false once delivered. */
    final boolean[] flooded;
    /** The switch's grouping: frame numbers, each destination's in a contiguous run. */
    final int[] order;

    private int count;

    /**
     * @param capacity frames per burst
     * @param slotSize bytes per frame slot (larger frames are forwarded on their own)
     */
    public Burst(int capacity, int slotSize) {
        if (capacity < 1 || capacity > 1024) {
            throw new IllegalArgumentException("burst capacity must be 1..1024: " + capacity);
        }
        if (slotSize < Ethernet.HEADER || slotSize > 65536) {
            throw new IllegalArgumentException("burst slot size must be " + Ethernet.HEADER + "..65536: " + slotSize);
        }
        this.slotSize = slotSize;
        this.stride = ((slotSize + 63) & ~63) + 64;
        this.memory = Arena.ofAuto().allocate((long) capacity * stride, 64);
        this.lengths = new int[capacity];
        this.destinations = new long[capacity];
        this.sources = new long[capacity];
        this.destination = new Port[capacity];
        this.flooded = new boolean[capacity];
        this.order = new int[capacity];
        this.view = new Frame(memory);
    }

    /** Most frames one burst holds. */
    public int capacity() {
        return lengths.length;
    }

    /** The largest frame a slot holds. */
    public int slotSize() {
        return slotSize;
    }

    /** The frames' memory (private to the burst's owner, never guest memory). */
    public MemorySegment memory() {
        return memory;
    }

    /** Frames collected. */
    public int size() {
        return count;
    }

    public boolean isEmpty() {
        return count == 0;
    }

    public boolean isFull() {
        return count == lengths.length;
    }

    /** Where in {@link #memory} the next frame's bytes go (the burst must not be full). */
    public long nextOffset() {
        return (long) count * stride;
    }

    /** Adds the frame of {@code length} bytes just copied to {@link #nextOffset}. */
    public void append(int length) {
        Objects.checkIndex(count, lengths.length);
        if (length < 0 || length > slotSize) {
            throw new IllegalArgumentException("a " + length + "-byte frame does not fit a " + slotSize + "-byte slot");
        }
        long at = (long) count * stride;
        boolean addressed = length >= 2 * Mac.BYTES;
        destinations[count] = addressed ? Mac.read(memory, at) : 0;
        sources[count] = addressed ? Mac.read(memory, at + Mac.BYTES) : 0;
        lengths[count++] = length;
    }

    /** The length of frame {@code i}. */
    public int length(int i) {
        Objects.checkIndex(i, count);
        return lengths[i];
    }

    /** Frame {@code i}'s destination address as it was appended (0 when the frame is shorter than two addresses). */
    public long destination(int i) {
        Objects.checkIndex(i, count);
        return destinations[i];
    }

    /** Frame {@code i}'s source address as it was appended (0 when the frame is shorter than two addresses). */
    public long source(int i) {
        Objects.checkIndex(i, count);
        return sources[i];
    }

    /**
     * Frame {@code i} of the burst, as a view this burst owns and re-points on every call: valid until the next call
     * of {@link #frame} or {@link #selected}.
     */
    public Frame frame(int i) {
        Objects.checkIndex(i, count);
        return view.set((long) i * stride, lengths[i]);
    }

    /**
     * The {@code k}-th frame of the grouped order the switch handed a destination ({@link Port#transmit(Burst, int,
     * int)} gets {@code k} in {@code from..to-1}); the same re-pointed view as {@link #frame}.
     */
    public Frame selected(int k) {
        return frame(order[k]);
    }

    /**
     * The length of the {@code k}-th frame of the grouped order ({@link #selected}), without re-pointing the view: a
     * destination's per-frame loop stores nothing of its own between the frames' copies.
     */
    public int selectedLength(int k) {
        int i = order[k];
        Objects.checkIndex(i, count);
        return lengths[i];
    }

    /** Where in {@link #memory} the {@code k}-th frame of the grouped order starts ({@link #selectedLength}). */
    public long selectedOffset(int k) {
        int i = order[k];
        Objects.checkIndex(i, count);
        return (long) i * stride;
    }

    /** Empties the burst (its memory is reused) and forgets the switch's per-burst state. */
    public void clear() {
        for (int i = 0; i < count; i++) { // a loop the JIT inlines (no Arrays.fill call), usually all null already
            destination[i] = null;
            flooded[i] = false;
        }
        count = 0;
    }
}
