// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import io.iovirt.linux.Mmap;
import io.iovirt.net.Burst;
import io.iovirt.net.Frame;
import io.iovirt.net.Ingress;
import io.iovirt.net.Mac;
import io.iovirt.net.PortStat;
import io.iovirt.net.RateLimitedLog;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.RingHandler;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A transmit queue: frames the guest sends, into the switch. The queue's {@link io.iovirt.virtio.QueueWorker} runs
 * the ring ({@link RingHandler}: batches of up to {@link #BATCH} chains, kicks suppressed while busy, optionally
 * polling for a while before sleeping); this class handles one chain: it steps over the virtio-net header and copies
 * the frame into private memory (the guest cannot change it while the switch decides).
 *
 * <p>The header's fields are not read. No checksum or segmentation offload is offered, so no flag or GSO type means
 * anything here: VIRTIO 1.2 §5.1.6.2.2 has the device ignore flag bits it does not recognize, and a driver that sets
 * NEEDS_CSUM or a GSO type anyway (against §5.1.6.2.1) gets its frame forwarded as the plain Ethernet frame of at most
 * the MTU that it is — bytes it could have sent without the header, checked by the switch like any frame; a bad
 * checksum it relied on the device for is its own receivers' to drop. DPDK's vhost backend does the same when no
 * offload is negotiated. Measured reason: Linux and DPDK write the header into the frame's headroom for every frame
 * they send, and DPDK's virtio driver puts it on a cache line of its own just before a line-aligned frame, so reading
 * it pulled one more line per frame from the driver's core — 1.07× the frames single port with it skipped (median of
 * 14 windows, switched every 500 ms inside one backend; docs/benchmarks.md, 2026-12-05 12:06 section).
 *
 * <p>Frames of up to {@link #SLOT} bytes (every frame at the default MTU) go into the next slot of a {@link Burst}
 * of {@link #BURST}, preallocated with the queue; the burst is forwarded when it is full and at the end of each
 * batch: the switch checks and learns each frame as it would one by one, and each destination takes its share under
 * one lock acquisition (for a guest: one pair of fault checks, one running check, one update of the counters) instead
 * of paying those per frame. A larger frame forwards the pending burst first and then goes on its own, so the
 * guest's frames leave in the order it sent them. At the end of each batch the switch ends its burst, so the guests
 * that received frames are interrupted once per batch, as each driver's event index asks.
 */
final class NetTxQueue implements RingHandler.Device {
    static final int BATCH = 64;
    /** Small frames forwarded together (see the class comment). */
    static final int BURST = 32;
    /** Bytes per burst slot: a frame of the default MTU fits; larger ones go through the switch one by one. */
    static final int SLOT = 2048;

    private final int index;
    private final String name;
    private final VirtioNetPort port;
    private final Ingress rx;
    private final int headerSize;
    private final int maxFrame;
    private final MemorySegment buffer;
    private final Frame frame;
    private final Burst burst = new Burst(BURST, SLOT);
    private final RateLimitedLog log = new RateLimitedLog(5000);
    private long lastSource = -1;

    NetTxQueue(VirtioNetPort port, int index, Ingress rx, int headerSize, int maxFrame) {
        this.port = port;
        this.name = port.name();
        this.index = index;
        this.rx = rx;
        this.headerSize = headerSize;
        this.maxFrame = maxFrame;
        Arena arena = Arena.ofAuto();
        this.buffer = arena.allocate(maxFrame, 64);
        this.frame = new Frame(buffer);
    }

    @Override
    public long process(DescriptorChain c) {
        handle(c);
        return 0;
    }

    @Override
    public void batchDone() {
        try {
            forwardBurst();
        } finally {
            port.endBatch(rx); // the destinations interrupt their guests once for the batch
        }
    }

    @Override
    public void stopped() {
        burst.clear();
    }

    /** Forwards the small frames collected so far, if any. */
    private void forwardBurst() {
        if (burst.isEmpty()) {
            return;
        }
        try {
            // a SIGBUS while copying from this guest's memory is this guest's: surfaced here, on its own thread,
            // before any of the frames goes anywhere
            Mmap.surfaceFaults();
            port.forward(rx, burst);
        } finally {
            burst.clear();
        }
    }

    /** One chain: past the header, copy the frame, forward; a request too short for a header is counted and dropped. */
    void handle(DescriptorChain c) {
        long readable = c.readableBytes();
        if (readable < headerSize) {
            rx.counters().increment(PortStat.RX_DROPPED_MALFORMED);
            if (log.due()) { // a guest may send these at line rate: the message is built only when logged
                log.warn(name + " tx queue " + index + ": a " + readable + "-byte request is shorter than the "
                        + headerSize + "-byte virtio-net header; dropped");
            }
            return;
        }
        // Usually header and frame share one buffer (Linux and DPDK put the header in the frame's headroom): copy the
        // frame straight from it. Otherwise gather it from the buffers after the header's bytes.
        boolean oneBuffer = c.length(0) >= readable;
        long len = readable - headerSize;
        if (len > maxFrame) {
            rx.counters().increment(PortStat.RX_DROPPED_OVERSIZE);
            return;
        }
        if (len <= SLOT) { // the common case: into the burst, forwarded when it is full or the batch ends
            MemorySegment mem = burst.memory();
            long at = burst.nextOffset();
            if (oneBuffer) {
                MemorySegment.copy(c.mapping(0), c.offset(0) + headerSize, mem, at, len);
            } else {
                Chains.gather(c, headerSize, mem, at, len);
            }
            burst.append((int) len);
            if (len >= 2 * Mac.BYTES) {
                sourceSeen(burst.source(burst.size() - 1));
            }
            if (burst.isFull()) {
                forwardBurst();
            }
            return;
        }
        forwardBurst(); // the frames before this one go first
        if (oneBuffer) {
            MemorySegment.copy(c.mapping(0), c.offset(0) + headerSize, buffer, 0, len);
        } else {
            Chains.gather(c, headerSize, buffer, 0, len);
        }
        frame.set(0, (int) len);
        if (len >= 12) {
            sourceSeen(frame.source());
        }
        port.forward(rx, frame);
    }

    private void sourceSeen(long src) {
        if (src != lastSource) {
            lastSource = src;
            port.guestAddressSeen(src);
        }
    }
}
