// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.Fd;
import io.iovirt.linux.LinuxException;
import io.iovirt.virtio.QueueWorker;
import java.io.IOException;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * A switch port: a transport that delivers frames from its peer into the switch ({@link #receive}) and accepts
 * frames from the switch for its peer ({@link #transmit}).
 *
 * <p>Threading contract. A port owns the thread(s) that receive from its peer and forwards each frame on that same
 * thread (run to completion): each such thread has an {@link Ingress} ({@link #newIngress()}), hands frames over
 * with {@link #receive} and ends each burst with {@link #endBurst}. {@link #transmit} is therefore called by any
 * port's receive thread, concurrently: the implementation serializes its own transmit path (a lock per port or per
 * queue, never one shared with other ports), must not block (no room → count a drop and return) and must not keep
 * the frame after returning; work it may defer to the end of the sender's burst (an interrupt) goes in
 * {@link #flush}. Counting uses {@link Counters} blocks, one per writer (per receive thread, per transmit lock).
 */
public abstract class Port implements AutoCloseable {
    private final String name;
    private final CopyOnWriteArrayList<Counters> counters = new CopyOnWriteArrayList<>();
    private volatile Switch owner;
    private volatile int index = -1;

    protected Port(String name) {
        this.name = name;
    }

    /**
     * The only source MAC this port's peer may send from, or -1 (any). A pinned port's frames from another source are
     * dropped (counted as rx_dropped_bad_source) before the switch learns anything from them, so a guest can neither
     * spoof another station nor fill the MAC table: it owns exactly one entry.
     */
    protected long pinnedSource() {
        return -1;
    }

    /** How the port was specified, e.g. {@code stream:/run/b.sock}. */
    public final String name() {
        return name;
    }

    /** The port number in its switch (-1 before it was added). */
    public final int index() {
        return index;
    }

    /** A counters block for one writer of this port (a receive thread or a transmit lock holder). */
    protected final Counters newCounters() {
        Counters c = new Counters();
        counters.add(c);
        return c;
    }

    /** The context for one thread that receives from this port's peer. */
    protected final Ingress newIngress() {
        return new Ingress(newCounters());
    }

    /**
     * A context for frames the port originates itself (a RARP announcement on a guest's behalf): they are
     * forwarded like any other but counted nowhere, since the peer did not send them.
     */
    protected final Ingress newDetachedIngress() {
        return new Ingress(Counters.detached());
    }

    /** The sum of this port's counters now. */
    public final PortStats stats() {
        long[] sums = new long[PortStat.ALL.length];
        for (Counters c : counters) {
            c.addTo(sums);
        }
        return new PortStats(name, sums);
    }

    /** True when a peer is attached that frames can be sent to; flooding skips ports whose link is down. */
    public abstract boolean isLinkUp();

    /**
     * Sends one frame to the peer, or counts why not. Called concurrently by the receive threads of all ports;
     * never blocks; {@code frame} (a valid frame: header present, not over the MTU) may be read only until this
     * returns.
     */
    protected abstract void transmit(Frame frame);

    /**
     * Sends frames {@code burst.selected(from)} .. {@code burst.selected(to - 1)} to the peer, in that order, or counts
     * why not: the part of a sender's {@link Burst} the switch found addressed to this port. Same contract as
     * {@link #transmit(Frame)}; the default sends them one by one. A port that serializes its transmit path
     * overrides it to take its lock once for all of them.
     */
    protected void transmit(Burst burst, int from, int to) {
        for (int k = from; k < to; k++) {
            transmit(burst.selected(k));
        }
    }

    /**
     * Completes what {@link #transmit} deferred (e.g. one guest interrupt for a burst of frames). Called by the
     * sending thread at the end of its burst, on any port it sent to; must not block.
     */
    protected void flush() {}

    /** Starts receiving; called once by {@link Switch#addPort} after the port got its number. */
    protected abstract void start() throws IOException;

    /** Stops the port's threads and releases its transport. Idempotent. */
    @Override
    public abstract void close();

    /** Forwards a frame received from the peer, on the calling receive thread. */
    protected final void receive(Ingress in, Frame frame) {
        owner.forward(this, in, frame);
    }

    /**
     * Forwards a burst of frames received from the peer, on the calling receive thread: the same checks, learning
     * and counting as {@link #receive(Ingress, Frame)} frame by frame, each destination's frames delivered together
     * and in order. The burst may be cleared when this returns.
     */
    protected final void receive(Ingress in, Burst burst) {
        owner.forward(this, in, burst);
    }

    /** Ends a burst of {@link #receive} calls: the destinations complete what they deferred. */
    protected final void endBurst(Ingress in) {
        in.flush();
    }

    /** The peer went away: the switch forgets the addresses learned here (their frames flood until relearned). */
    protected final void peerGone() {
        Switch s = owner;
        if (s != null) {
            s.peerGone(this);
        }
    }

    /** The switch's MTU; valid once added. */
    protected final int mtu() {
        return owner.mtu();
    }

    /** The largest frame the switch forwards; valid once added. */
    protected final int maxFrame() {
        return Ethernet.maxFrame(owner.mtu());
    }

    /** What a descriptor-driven receive loop does when one of its sources is ready. */
    @FunctionalInterface
    protected interface Events {
        void ready(long token, int events) throws Exception;
    }

    /**
     * The receive loop of a port fed by host descriptors (a stream socket, a TAP device): a {@link QueueWorker}
     * (its own platform thread in epoll, bounded stop, failures logged) whose work all happens in descriptor
     * events. {@code fd} is watched for input under {@code token}; more sources may be added with
     * {@link QueueWorker#watch}. {@code stopped} runs once on the worker thread when the loop ends.
     */
    protected final QueueWorker receiveWorker(Fd fd, long token, Events events, Runnable stopped)
            throws LinuxException {
        return QueueWorker.builder(this + " receive")
                .source(fd, Epoll.EPOLLIN, token)
                .build(new QueueWorker.Handler() {
                    @Override
                    public boolean process() {
                        return false; // all work happens in event()
                    }

                    @Override
                    public void event(long t, int ev) throws Exception {
                        events.ready(t, ev);
                    }

                    @Override
                    public void stopped(boolean failed) {
                        stopped.run();
                    }
                });
    }

    /** Stops a receive loop from {@link #close} (bounded); from the loop's own thread it ends by itself. */
    protected static void stopReceiveWorker(QueueWorker w) {
        if (w != null && !w.onWorkerThread()) {
            w.stop();
        }
    }

    final void attach(Switch s, int i) {
        if (owner != null) {
            throw new IllegalStateException("port " + name + " is already on a switch");
        }
        owner = s;
        index = i;
    }

    @Override
    public String toString() {
        return name + (index >= 0 ? " (port " + index + ")" : "");
    }
}
