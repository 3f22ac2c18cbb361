package io.iovirt.devices.net;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.net.Ingress;
import io.iovirt.net.Frame;
import io.iovirt.net.PortStat;
import io.iovirt.net.RateLimitedLog;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.locks.LockSupport;

/**
 * A transmit queue: frames the guest sends, into the switch. One platform thread per queue waits for the guest's
 * kick, then drains the ring with kicks suppressed: for each chain it copies the virtio-net header into private
 * memory and checks it (no offload was negotiated, so flags and GSO type must be zero — anything else is counted as
 * malformed and dropped, never forwarded half-understood), copies the frame into a private buffer (the guest cannot
 * change it while the switch decides) and forwards it on this thread, then returns the chain. Interrupts — to this
 * guest for its returned chains, and to the guests that received the frames — are sent once per batch of up to
 * {@link #BATCH} chains, as each driver's event index asks.
 *
 * <p>With {@code pollNanos > 0} the thread keeps polling the ring that long after it ran dry before it re-enables
 * kicks and sleeps: a frontend that sends continuously then never has to kick (a system call on its side) and this
 * thread never has to be woken (one on ours). It costs a busy core while traffic lasts.
 */
final class NetTxQueue {
    static final int BATCH = 64;
    private static final long KICK = 0;
    private static final long WAKE = 1;

    /** Held while a batch is in progress: a memory-table change waits for it. */
    final Object lock = new Object();
    private final int index;
    private final String name;
    private final VirtioNetPort port;
    private final Virtqueue vq;
    private final EventFd kick;
    private final EventFd call;
    private final Ingress rx;
    private final int headerSize;
    private final int maxFrame;
    private final long pollNanos;
    private final MemorySegment header;
    private final MemorySegment buffer;
    private final Frame frame;
    private final EventFd wake;
    private final Epoll epoll;
    private final RateLimitedLog log = new RateLimitedLog(5000);
    private final Thread thread;
    private final DescriptorChain[] chains = new DescriptorChain[BATCH];
    private volatile boolean stopping;
    private long lastSource = -1;

    NetTxQueue(VirtioNetPort port, int index, Virtqueue vq, EventFd kick, EventFd call, Ingress rx, int headerSize,
               int maxFrame, long pollNanos) throws LinuxException {
        this.port = port;
        this.name = port.name();
        this.index = index;
        this.vq = vq;
        this.kick = kick;
        this.call = call;
        this.rx = rx;
        this.headerSize = headerSize;
        this.maxFrame = maxFrame;
        this.pollNanos = pollNanos;
        Arena arena = Arena.ofAuto();
        this.header = arena.allocate(VirtioNet.HDR_SIZE, 8);
        this.buffer = arena.allocate(maxFrame, 64);
        this.frame = new Frame(buffer);
        this.wake = EventFd.create(true);
        try {
            this.epoll = Epoll.create(4);
            epoll.add(wake.fd(), Epoll.EPOLLIN, WAKE);
            if (kick != null) {
                epoll.add(kick.fd(), Epoll.EPOLLIN, KICK);
            }
        } catch (LinuxException | RuntimeException e) {
            wake.close();
            throw e;
        }
        for (int i = 0; i < BATCH; i++) {
            chains[i] = vq.newChain();
        }
        this.thread = Thread.ofPlatform().name("vhost-net " + port.index() + " tx" + index).unstarted(this::run);
    }

    void start() {
        thread.start();
    }

    /** Stops the thread (it finishes the chain in hand) and returns the ring position to resume from. */
    int stop() {
        stopping = true;
        try {
            wake.signal();
        } catch (LinuxException e) {
            // the thread also checks the flag between batches
        }
        try {
            thread.join();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        epoll.close();
        wake.close();
        return vq.vringBase();
    }

    void memoryBarrier() {
        synchronized (lock) {
            // taking the lock proves no batch is using the previous memory table
        }
    }

    private void run() {
        try {
            boolean kicksOn = true; // as the ring starts
            while (!stopping) {
                synchronized (lock) {
                    if (kicksOn) { // one store to the shared ring per busy period, not per pass
                        vq.disableNotifications();
                        kicksOn = false;
                    }
                    drain();
                }
                if (pollNanos > 0 && poll()) {
                    continue;
                }
                synchronized (lock) {
                    kicksOn = true;
                    if (vq.enableNotifications()) {
                        continue; // the guest raced us: buffers are already there
                    }
                }
                waitForKick();
            }
        } catch (VirtqueueException e) {
            port.queueFailed(index, e);
        } catch (LinuxException | RuntimeException e) {
            if (!stopping) {
                RateLimitedLog.warning(name + " tx queue " + index + " stopped: " + e);
                port.queueFailed(index, e);
            }
        }
    }

    /**
     * Processes everything available, in batches: take up to {@link #BATCH} chains, forward their frames, then
     * return them all, so the ring's shared cache lines move between the cores once per batch rather than once per
     * frame. Notifies the guest after each batch.
     */
    private void drain() throws VirtqueueException, LinuxException {
        int n;
        do {
            n = 0;
            while (n < BATCH && vq.pop(chains[n])) {
                n++;
            }
            for (int i = 0; i < n; i++) {
                handle(chains[i]);
            }
            for (int i = 0; i < n; i++) {
                vq.push(chains[i], 0);
            }
            endBurst(); // the destinations interrupt their guests once for the batch
            if (n > 0 && vq.needsNotification()) {
                call.signal();
            }
        } while (n == BATCH && !stopping);
    }

    void endBurst() {
        port.endBatch(rx);
    }

    /** Spins up to pollNanos for new buffers; true when some arrived. */
    private boolean poll() throws VirtqueueException {
        long end = System.nanoTime() + pollNanos;
        do {
            if (vq.hasAvailable()) {
                return true;
            }
            Thread.onSpinWait();
        } while (System.nanoTime() < end && !stopping);
        return false;
    }

    private void waitForKick() throws LinuxException {
        if (kick == null) { // the frontend asked for polling (no kick descriptor): check the ring periodically
            LockSupport.parkNanos(50_000);
            return;
        }
        int n = epoll.wait(-1);
        for (int i = 0; i < n; i++) {
            if (epoll.data(i) == KICK) {
                kick.read();
            }
        }
    }

    /** One chain: header, frame, forward; anything the guest got wrong is counted and dropped. */
    void handle(DescriptorChain c) {
        long readable = c.readableBytes();
        if (readable < headerSize) {
            rx.counters().increment(PortStat.RX_DROPPED_MALFORMED);
            log.warn(name + " tx queue " + index + ": a " + readable + "-byte request is shorter than the "
                    + headerSize + "-byte virtio-net header; dropped");
            return;
        }
        // Usually header and frame share one buffer (Linux and DPDK put the header in the frame's headroom): read
        // the two header fields straight from it, once each. Otherwise copy the header out first.
        MemorySegment first = c.segment(0);
        boolean oneBuffer = first.byteSize() >= readable;
        MemorySegment hdr = oneBuffer ? first : header;
        if (!oneBuffer) {
            Chains.gather(c, 0, header, 0, headerSize);
        }
        int flags = Byte.toUnsignedInt(hdr.get(JAVA_BYTE, VirtioNet.HDR_FLAGS));
        int gso = Byte.toUnsignedInt(hdr.get(JAVA_BYTE, VirtioNet.HDR_GSO_TYPE));
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
            MemorySegment.copy(first, headerSize, buffer, 0, len);
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
