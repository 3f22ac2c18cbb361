// SPDX-License-Identifier: Apache-2.0
package io.iovirt.memory;

import java.util.Arrays;

/**
 * The current guest memory snapshot of one device, swapped as a whole when the frontend changes the memory table.
 *
 * <p>The holder owns one reference to its current snapshot. Each thread that uses guest memory (a queue worker, a
 * receive queue filled by other ports' threads under its lock) goes through its own {@link Reader}, which pins the
 * snapshot it works from; a replaced snapshot's mappings are closed when its last pin is dropped. So the control
 * thread never waits for queue threads, and queue threads never see memory unmapped under them.
 */
public final class GuestMemoryHolder {
    private volatile GuestMemory current = GuestMemory.empty();
    /** Migration (issue 11): where devices report guest-memory writes while the frontend logs them, else null. */
    private volatile GuestWriteLog writeLog;

    /** The dirty log devices report their guest-memory writes to, or null while no migration tracks them. */
    public GuestWriteLog writeLog() {
        return writeLog;
    }

    /** Installs (or with null removes) the dirty log; the protocol layer calls this as the frontend toggles it. */
    public void writeLog(GuestWriteLog log) {
        this.writeLog = log;
    }

    /** The current snapshot, unpinned: for the control thread (the only one that swaps) and for tests. */
    public GuestMemory get() {
        return current;
    }

    /**
     * Installs {@code next} (the holder takes over the caller's reference) and drops the holder's reference to the
     * snapshot it replaced, which is returned for information only: once its readers let go it is released.
     */
    public GuestMemory swap(GuestMemory next) {
        GuestMemory prev = current;
        current = next;
        if (prev != next) {
            prev.release();
        }
        return prev;
    }

    /** A pinning view for one thread (or one lock holder at a time). */
    public Reader newReader() {
        return new Reader();
    }

    /**
     * One thread's view: {@link #current()} pins the holder's current snapshot (one volatile read when it did not
     * change; a compare-and-set when it did). A snapshot it moved away from stays pinned ("retired") until the owner
     * says nothing in flight uses it any more ({@link #quiesce()}), e.g. an io_uring request still writing into it.
     * Not thread-safe: one owner.
     */
    public final class Reader {
        private GuestMemory pinned;
        private GuestMemory[] retired = new GuestMemory[2];
        private int retiredCount;

        private Reader() {}

        /** The holder's dirty log (one volatile read), or null. */
        public GuestWriteLog writeLog() {
            return writeLog;
        }

        /** The snapshot to work from, pinned until {@link #leave()}. */
        public GuestMemory current() {
            GuestMemory c = current;
            if (c == pinned) {
                return c;
            }
            while (!c.tryAcquire()) {
                c = current; // it was replaced and released meanwhile: the new one is already installed
            }
            if (pinned != null) {
                if (retiredCount == retired.length) {
                    retired = Arrays.copyOf(retired, retiredCount * 2);
                }
                retired[retiredCount++] = pinned;
            }
            pinned = c;
            return c;
        }

        /** Nothing in flight uses an older snapshot: unpin them. */
        public void quiesce() {
            for (int i = 0; i < retiredCount; i++) {
                retired[i].release();
                retired[i] = null;
            }
            retiredCount = 0;
        }

        /** Nothing in flight at all (the thread goes idle or stops): unpin everything. */
        public void leave() {
            quiesce();
            if (pinned != null) {
                pinned.release();
                pinned = null;
            }
        }

        /** Snapshots pinned now (the current one and retired ones), for tests. */
        public int pinnedCount() {
            return (pinned != null ? 1 : 0) + retiredCount;
        }
    }
}
