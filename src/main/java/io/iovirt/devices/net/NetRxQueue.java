package io.iovirt.devices.net;

import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.net.Counters;
import io.iovirt.net.Frame;
import io.iovirt.net.PortStat;
import io.iovirt.net.RateLimitedLog;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * A receive queue: frames from the switch into the guest's buffers. There is no thread: the receive thread of
 * whichever port the frame came from fills the guest's buffers under this queue's lock (one lock per queue, so
 * frames for different guests, or different queues of one guest, are copied in parallel), and interrupts the guest
 * once at the end of its burst ({@link #flush}). When the guest has no buffer posted the frame is dropped and
 * counted at once; the switch never waits for a guest.
 *
 * <p>Buffers too small for a frame (without MRG_RXBUF: one chain must hold header and frame; with it, at most
 * {@link #MAX_BUFFERS} chains) are returned to the guest unused (length 0, which Linux counts as a length error
 * and reposts) and the frame is dropped and counted.
 */
final class NetRxQueue {
    /** Most chains one frame may be spread over with MRG_RXBUF (a 64 KiB frame over 1 KiB buffers). */
    static final int MAX_BUFFERS = 64;
    /** A sender that never ends its burst still gets the guest interrupted every this many frames. */
    static final int MAX_UNNOTIFIED = 64;

    final Object lock = new Object();
    private final int index;
    private final String name;
    private final Counters tx;
    private final RateLimitedLog log = new RateLimitedLog(5000);
    private final MemorySegment header = Arena.ofAuto().allocate(VirtioNet.HDR_SIZE, 8);
    private final long[] lengths = new long[MAX_BUFFERS];
    // guarded by lock
    private Virtqueue vq;
    private EventFd call;
    private DescriptorChain[] chains;
    private int headerSize;
    private boolean mergeable;
    private boolean running;
    /** Frames delivered since the driver's notification state was last checked. */
    private int unnotified;

    NetRxQueue(int index, String name, Counters tx) {
        this.index = index;
        this.name = name;
        this.tx = tx;
    }

    void start(Virtqueue q, EventFd callFd, int hdrSize, boolean mrgRxBuf) {
        DescriptorChain[] cs = new DescriptorChain[mrgRxBuf ? MAX_BUFFERS : 1];
        for (int i = 0; i < cs.length; i++) {
            cs[i] = q.newChain();
        }
        synchronized (lock) {
            vq = q;
            call = callFd;
            unnotified = 0;
            chains = cs;
            headerSize = hdrSize;
            mergeable = mrgRxBuf;
            running = true;
        }
    }

    /** Stops filling buffers; returns the ring position to resume from. */
    int stop() {
        synchronized (lock) {
            running = false;
            Virtqueue q = vq;
            vq = null;
            call = null;
            return q == null ? 0 : q.vringBase();
        }
    }

    boolean running() {
        synchronized (lock) {
            return running;
        }
    }

    /** Waits until no frame is being copied with the previous memory table (the caller already installed the new). */
    void memoryBarrier() {
        synchronized (lock) {
            // nothing: taking the lock proves no copy is in progress
        }
    }

    /** Copies one frame into the guest's buffers, or counts why not. Any thread; never blocks on the guest. */
    void transmit(Frame f) {
        synchronized (lock) {
            if (!running) {
                tx.increment(PortStat.TX_DROPPED_LINK_DOWN);
                return;
            }
            try {
                if (fill(f)) {
                    tx.tx(f.length());
                }
                // the interrupt waits for the sender's end of burst (flush), but not for ever
                if (++unnotified >= MAX_UNNOTIFIED) {
                    notifyGuest();
                }
            } catch (VirtqueueException e) {
                running = false; // the queue stays failed until the frontend restarts it
                tx.increment(PortStat.TX_DROPPED_ERROR);
                log.warn(name + " rx queue " + index + ": " + e.getMessage());
            } catch (LinuxException e) {
                log.warn(name + " rx queue " + index + ": cannot interrupt the guest: " + e.getMessage());
            }
        }
    }

    /** Interrupts the guest for what was delivered since the last time, if its driver wants that. */
    void flush() {
        synchronized (lock) {
            if (running && unnotified > 0) {
                try {
                    notifyGuest();
                } catch (VirtqueueException e) {
                    running = false;
                    log.warn(name + " rx queue " + index + ": " + e.getMessage());
                } catch (LinuxException e) {
                    log.warn(name + " rx queue " + index + ": cannot interrupt the guest: " + e.getMessage());
                }
            }
        }
    }

    private void notifyGuest() throws VirtqueueException, LinuxException {
        unnotified = 0;
        if (vq.needsNotification()) {
            call.signal();
        }
    }

    /** Returns true when the frame was delivered; counts the drop otherwise. */
    private boolean fill(Frame f) throws VirtqueueException {
        int len = f.length();
        long need = headerSize + (long) len;
        DescriptorChain first = chains[0];
        if (!vq.pop(first)) {
            tx.increment(PortStat.TX_DROPPED_NO_BUFFERS);
            return false;
        }
        long cap = first.writableBytes();
        if (!mergeable) {
            if (cap < need) {
                vq.push(first, 0);
                tx.increment(PortStat.TX_DROPPED_BUFFER_TOO_SMALL);
                return false;
            }
            writeHeader(first, 1);
            Chains.scatter(first, headerSize, f.buffer(), f.offset(), len);
            vq.push(first, need);
            return true;
        }
        if (cap < headerSize) { // §5.1.6.3.1: every merge buffer holds at least a header
            vq.push(first, 0);
            tx.increment(PortStat.TX_DROPPED_BUFFER_TOO_SMALL);
            return false;
        }
        long put = Math.min(cap - headerSize, len);
        Chains.scatter(first, headerSize, f.buffer(), f.offset(), put);
        lengths[0] = headerSize + put;
        int n = 1;
        while (put < len) {
            if (n == MAX_BUFFERS) {
                returnUnused(n);
                tx.increment(PortStat.TX_DROPPED_BUFFER_TOO_SMALL);
                return false;
            }
            DescriptorChain c = chains[n];
            if (!vq.pop(c)) {
                returnUnused(n);
                tx.increment(PortStat.TX_DROPPED_NO_BUFFERS);
                return false;
            }
            long k = Math.min(c.writableBytes(), len - put);
            Chains.scatter(c, 0, f.buffer(), f.offset() + put, k);
            lengths[n++] = k;
            put += k;
        }
        writeHeader(first, n);
        for (int i = 0; i < n; i++) {
            vq.push(chains[i], lengths[i]);
        }
        return true;
    }

    /** Gives popped chains back untouched (length 0) so the guest can repost them. */
    private void returnUnused(int n) throws VirtqueueException {
        for (int i = 0; i < n; i++) {
            vq.push(chains[i], 0);
        }
    }

    /** No offloads are negotiated: flags and GSO type 0, num_buffers as used (§5.1.6.4). */
    private void writeHeader(DescriptorChain c, int numBuffers) {
        header.fill((byte) 0);
        if (headerSize == VirtioNet.HDR_SIZE) {
            header.set(JAVA_SHORT_UNALIGNED, VirtioNet.HDR_NUM_BUFFERS, (short) numBuffers);
        }
        Chains.scatter(c, 0, header, 0, headerSize);
    }
}
