// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.util.Arrays;

/**
 * One receiving thread's context on the switch: the counters it writes and the ports it has sent frames to since
 * its burst began. A port receives a burst of frames ({@link Port#receive}), then ends it ({@link Port#endBurst}),
 * which lets every destination complete what it queued in one go — a virtio-net port interrupts its guest once per
 * burst instead of once per frame. Owned by one thread; not shared.
 */
public final class Ingress {
    private final Counters counters;
    private Port[] touched = new Port[8];
    /**
     * The port touched, by port number: a number is reused once its port is removed, and a burst that began before
     * the removal may touch the old and the new port, which both need their {@link Port#flush}.
     */
    private Port[] marked = new Port[8];

    private int count;

    Ingress(Counters counters) {
        this.counters = counters;
    }

    /** The receive-side counters of this thread. */
    public Counters counters() {
        return counters;
    }

    void touch(Port p) {
        int i = p.index();
        if (i >= marked.length) {
            marked = Arrays.copyOf(marked, Math.max(i + 1, marked.length * 2)); // only when a port is added
        }
        if (marked[i] == p) {
            return;
        }
        marked[i] = p;
        if (count == touched.length) {
            touched = Arrays.copyOf(touched, touched.length * 2);
        }
        touched[count++] = p;
    }

    void flush() {
        for (int i = 0; i < count; i++) {
            Port p = touched[i];
            touched[i] = null;
            marked[p.index()] = null;
            p.flush();
        }
        count = 0;
    }
}
