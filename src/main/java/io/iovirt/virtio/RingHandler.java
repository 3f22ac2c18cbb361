// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import io.iovirt.linux.EventFd;
import java.util.Objects;

/**
 * The {@link QueueWorker.Handler} of a device that serves requests one chain at a time (virtio-blk with synchronous
 * I/O, virtio-net transmit): the device implements only {@link Device#process}, this class runs the ring.
 *
 * <p>Per batch: pop up to {@code batch} chains (kicks suppressed while busy), process each, let the device end its
 * batch, push them all and publish them with one used-index update, then interrupt the driver once if its
 * suppression state asks for it. Before the worker
 * sleeps, kicks are re-enabled and the ring looked at once more (the driver may have raced us), and guest memory is
 * unpinned: nothing popped is in flight then.
 */
public final class RingHandler implements QueueWorker.Handler {
    /** What the device does with one request. Runs on the queue's worker thread. */
    public interface Device {
        /**
         * Serves one request. Guest mistakes inside the request are answered in the request (an error status, a
         * dropped frame); throw only when the queue cannot go on (it fails).
         *
         * @return bytes written into the chain's device-writable buffers, for the used ring
         */
        long process(DescriptorChain chain) throws Exception;

        /**
         * After each chain of a batch was processed, before any of them is pushed (net: the switch forwards the
         * pending burst and ends its batch): whatever the driver sees returned has been fully handled — forwarded
         * and counted — so a driver that reads the port's counters after its buffers came back finds them there.
         */
        default void batchDone() throws Exception {}

        /** The queue stopped (or failed); release per-queue state. */
        default void stopped() {}
    }

    private final Virtqueue vq;
    private final EventFd call;
    private final Device device;
    private final DescriptorChain[] chains;
    private final long[] written;
    private QueueWorker worker;
    private boolean kicksOff;

    /**
     * @param call  the driver's call eventfd (null: the driver polls)
     * @param batch chains per batch: pushed together, one interrupt decision per batch
     */
    public RingHandler(Virtqueue vq, EventFd call, int batch, Device device) {
        if (batch < 1) {
            throw new IllegalArgumentException("batch must be positive: " + batch);
        }
        this.vq = Objects.requireNonNull(vq);
        this.call = call;
        this.device = Objects.requireNonNull(device);
        this.chains = new DescriptorChain[batch];
        this.written = new long[batch];
        for (int i = 0; i < batch; i++) {
            chains[i] = vq.newChain();
        }
    }

    @Override
    public void attached(QueueWorker w) {
        worker = w;
        vq.servedBy(w); // a stopped worker takes no new requests, whichever way its thread comes back to the ring
    }

    public Virtqueue queue() {
        return vq;
    }

    @Override
    public boolean process() throws Exception {
        if (!kicksOff) { // one store to the shared ring per busy period, not per batch
            vq.disableNotifications();
            kicksOff = true;
        }
        return serve(chains.length) == chains.length;
    }

    /** Pops up to {@code max} chains, serves them and returns them: one batch. */
    private int serve(int max) throws Exception {
        int n = vq.pop(chains, max);
        if (n == 0) {
            return 0;
        }
        for (int i = 0; i < n; i++) {
            written[i] = device.process(chains[i]);
        }
        device.batchDone();
        vq.pushBatched(chains, written, n);
        vq.publishUsed(); // the whole batch with one used-index store
        if (vq.needsNotification()) {
            worker.signal(call);
        }
        return n;
    }

    @Override
    public boolean hasWork() throws Exception {
        return vq.hasAvailable();
    }

    @Override
    public boolean prepareToSleep() throws Exception {
        kicksOff = false;
        if (vq.enableNotifications()) {
            return true;
        }
        vq.releaseMemory();
        return false;
    }

    @Override
    public void recheck() throws Exception {
        worker.recheck(vq, call);
    }

    /**
     * Before the ring is handed back, the requests the in-flight record still holds for resubmission (a backend
     * restart, crash recovery) are served: the worker looks at a stop after each batch, so a stop that comes at once
     * (a migration's switch-over) found more than a batch of them still waiting. The position handed back
     * ({@link Virtqueue#vringBase}) lies after them, so whoever takes the ring next — a migration's destination —
     * would never serve them, and the guest would wait for them for ever. Only those: the rest of the ring stays for
     * whoever takes it next.
     */
    @Override
    public void stopped(boolean failed) {
        try {
            int left;
            while (!failed && (left = vq.resubmitsPending()) > 0 && serve(Math.min(left, chains.length)) > 0) {
                // batch after batch
            }
        } catch (Exception | InternalError e) {
            worker.failed(e); // as a failure in the loop: the device reports it (NEEDS_RESET, the err eventfd)
        } finally {
            vq.releaseMemory();
            device.stopped();
        }
    }
}
