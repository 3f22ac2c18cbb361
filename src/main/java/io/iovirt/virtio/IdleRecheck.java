// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

/**
 * When a worker loop (a queue's own thread or a shared poll thread) takes its one look after an idle spell ({@link
 * QueueWorker#RECHECK_MILLIS}): the first sleep after a wake-up — and the first at the start — ends after that long,
 * the look is taken once, and the sleeps after it last until the loop is woken. So an idle queue costs one wake-up in
 * all, and a busy one none beyond its own. Owned by the loop's thread.
 */
final class IdleRecheck {
    private boolean armed = true;

    /** The timeout of the next sleep of a loop that otherwise sleeps {@code millis} (-1: until woken). */
    int timeout(int millis) {
        if (!armed) {
            return millis;
        }
        return millis > 0 ? Math.min(millis, QueueWorker.RECHECK_MILLIS) : QueueWorker.RECHECK_MILLIS;
    }

    /** After a sleep that returned {@code events}: true when it was the idle spell that ends in the one look. */
    boolean due(int events) {
        if (events > 0) {
            armed = true;
            return false;
        }
        if (armed) {
            armed = false;
            return true;
        }
        return false;
    }
}
