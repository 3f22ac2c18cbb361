// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * An in-process port for switch unit tests: frames injected from the test thread go into the switch as if received
 * from a peer; frames the switch transmits are recorded (or only counted, for the allocation test).
 */
class TestPort extends Port {
    private final boolean record;
    private final List<byte[]> sent = new ArrayList<>();
    volatile boolean link = true;
    /** The source address this port is pinned to, or -1 (set before the port is added). */
    long pin = -1;

    private Ingress rx;
    private Counters tx;
    private MemorySegment buf;
    private Frame frame;

    TestPort(String name) {
        this(name, true);
    }

    TestPort(String name, boolean record) {
        super(name);
        this.record = record;
    }

    @Override
    protected long pinnedSource() {
        return pin;
    }

    @Override
    public boolean isLinkUp() {
        return link;
    }

    @Override
    protected void start() {
        rx = newIngress();
        tx = newCounters();
        buf = Arena.ofAuto().allocate(70_000);
        frame = new Frame(buf);
    }

    /** Delivers {@code bytes} into the switch as a frame from this port's peer. */
    void inject(byte[] bytes) {
        MemorySegment.copy(MemorySegment.ofArray(bytes), 0, buf, 0, bytes.length);
        receive(rx, frame.set(0, bytes.length));
        endBurst(rx);
    }

    /** Delivers the first {@code length} bytes already in the buffer (no copy: for the allocation test). */
    void injectInPlace(int length) {
        receive(rx, frame.set(0, length));
        endBurst(rx);
    }

    /** Delivers {@code frames} into the switch as one burst from this port's peer. */
    void injectBurst(byte[]... frames) {
        Burst b = new Burst(frames.length, 2048);
        for (byte[] f : frames) {
            MemorySegment.copy(MemorySegment.ofArray(f), 0, b.memory(), b.nextOffset(), f.length);
            b.append(f.length);
        }
        receive(rx, b);
        endBurst(rx);
    }

    MemorySegment buffer() {
        return buf;
    }

    @Override
    protected synchronized void transmit(Frame f) {
        if (!link) {
            tx.increment(PortStat.TX_DROPPED_LINK_DOWN);
            return;
        }
        if (record) {
            sent.add(f.toByteArray());
        }
        tx.tx(f.length());
    }

    /** Burst deliveries ({@link #transmit(Burst, int, int)} calls) so far. */
    int burstCalls;

    @Override
    protected synchronized void transmit(Burst burst, int from, int to) {
        burstCalls++;
        for (int k = from; k < to; k++) { // the view-free accessors a destination's loop uses name the same frame
            Frame f = burst.selected(k);
            if (burst.selectedLength(k) != f.length() || burst.selectedOffset(k) != f.offset()) {
                throw new AssertionError("frame " + k + " of the burst: selectedLength/selectedOffset give "
                        + burst.selectedLength(k) + " bytes at " + burst.selectedOffset(k) + ", selected() "
                        + f.length() + " at " + f.offset());
            }
        }
        super.transmit(burst, from, to);
    }

    /** {@link #flush} calls so far: one per sender's burst that reached this port. */
    volatile int flushes;

    @Override
    protected void flush() {
        flushes++;
    }

    synchronized List<byte[]> takeSent() {
        List<byte[]> out = new ArrayList<>(sent);
        sent.clear();
        return out;
    }

    @Override
    public void close() {
        link = false;
    }
}
