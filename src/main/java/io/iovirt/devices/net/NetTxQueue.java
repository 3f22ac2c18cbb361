// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

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
 * polling for a while before sleeping); this class handles one chain: it copies the virtio-net header into private
 * memory and checks it (no offload was negotiated, so flags and GSO type must be zero — anything else is counted as
 * malformed and dropped, never forwarded half-understood) and copies the frame into private memory (the guest cannot
 * change it while the switch decides).
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
    private final MemorySegment header;
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
        this.header = arena.allocate(VirtioNet.HDR_SIZE, 8);
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

    /** One chain: header, frame, forward; anything the guest got wrong is counted and dropped. */
    void handle(DescriptorChain c) {
        long readable = c.readableBytes();
        if (readable < headerSize) {
            rx.counters().increment(PortStat.RX_DROPPED_MALFORMED);
            log.warn(name + " tx queue " + index + ": a " + readable + "-byte request is shorter than the " + headerSize
                    + "-byte virtio-net header; dropped");
            return;
        }
        // Usually header and frame share one buffer (Linux and DPDK put the header in the frame's headroom): read
        // the two header fields straight from it, once each. Otherwise copy the header out first.
        boolean oneBuffer = c.length(0) >= readable;
        MemorySegment hdr = oneBuffer ? c.mapping(0) : header;
        long hdrOff = oneBuffer ? c.offset(0) : 0;
        if (!oneBuffer) {
            Chains.gather(c, 0, header, 0, headerSize);
        }
        int flags = Byte.toUnsignedInt(hdr.get(JAVA_BYTE, hdrOff + VirtioNet.HDR_FLAGS));
        int gso = Byte.toUnsignedInt(hdr.get(JAVA_BYTE, hdrOff + VirtioNet.HDR_GSO_TYPE));
        if (flags != 0 || gso != VirtioNet.GSO_NONE) {
            rx.counters().increment(PortStat.RX_DROPPED_MALFORMED);
            log.warn(name + " tx queue " + index + ": virtio-net header asks for checksum/segmentation offload"
                    + " (flags 0x" + Integer.toHexString(flags) + ", gso_type 0x" + Integer.toHexString(gso)
                    + ") that was not negotiated; dropped");
            return;
        }
        long len = readable - headerSize;
        if (len > maxFrame) {
            rx.counters().increment(PortStat.RX_DROPPED_OVERSIZE);
            return;
        }
        if (len <= SLOT) { // the common case: into the burst, forwarded when it is full or the batch ends
            MemorySegment mem = burst.memory();
            long at = burst.nextOffset();
            if (oneBuffer) {
                MemorySegment.copy(hdr, hdrOff + headerSize, mem, at, len);
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
            MemorySegment.copy(hdr, hdrOff + headerSize, buffer, 0, len);
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
