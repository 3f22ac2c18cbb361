// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import io.iovirt.net.Frame;
import io.iovirt.net.Ingress;
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
 * malformed and dropped, never forwarded half-understood), copies the frame into a private buffer (the guest cannot
 * change it while the switch decides) and forwards it on this thread. At the end of each batch the switch ends its
 * burst, so the guests that received frames are interrupted once per batch, as each driver's event index asks.
 */
final class NetTxQueue implements RingHandler.Device {
    static final int BATCH = 64;

    private final int index;
    private final String name;
    private final VirtioNetPort port;
    private final Ingress rx;
    private final int headerSize;
    private final int maxFrame;
    private final MemorySegment header;
    private final MemorySegment buffer;
    private final Frame frame;
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
        port.endBatch(rx); // the destinations interrupt their guests once for the batch
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
        if (oneBuffer) {
            MemorySegment.copy(hdr, hdrOff + headerSize, buffer, 0, len);
        } else {
            Chains.gather(c, headerSize, buffer, 0, len);
        }
        frame.set(0, (int) len);
        if (len >= 12) {
            long src = frame.source();
            if (src != lastSource) {
                lastSource = src;
                port.guestAddressSeen(src);
            }
        }
        port.forward(rx, frame);
    }
}
