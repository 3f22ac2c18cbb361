// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

/**
 * The state of a server's stop that a caller who must answer within a bound runs in two parts — a bounded one
 * ({@code stopWithin}) and, when a thread of the server outlasts it, the rest on a thread of its own ({@code
 * finishStop}) — and that {@code close}, a reload, the daemon's stop or a second request may run at the same time:
 * it is begun once and ended once, whoever calls. The server keeps its own waits between the two; this class keeps
 * only the order: not begun, under way ({@link #begun}: nothing new may start), ended.
 *
 * <p>{@link #begin} runs the server's first step (its listener shut down, which wakes its accept thread) on the first
 * call only, after the state has changed and outside the lock: a concurrent call returns at once, and waits for what
 * it has to wait for on its own. {@link #end} likewise runs the last step (the listener closed, the socket file
 * removed) on the first call only; once it has been called, {@link #begin} returns false, so a later {@code
 * stopWithin} or {@code finishStop} does nothing and waits for nothing.
 */
public final class StopOnce {
    private final Object lock = new Object();
    private final Runnable first;
    private final Runnable last;

    /** Set by the first {@link #begin}; read without the lock by accept loops. */
    private volatile boolean begun; // written under lock

    private boolean ended; // guarded by lock

    /**
     * @param first the stop's first step, run once by the first {@link #begin}: from then on nothing is accepted
     * @param last the stop's last step, run once by the first {@link #end}, when everything waited for has ended
     */
    public StopOnce(Runnable first, Runnable last) {
        this.first = first;
        this.last = last;
    }

    /**
     * Begins the stop: the first call runs the first step. True while the stop is under way (the caller goes on with
     * its waits, then calls {@link #end}); false when it has ended already (nothing left to do).
     */
    public boolean begin() {
        synchronized (lock) {
            if (ended) {
                return false;
            }
            if (begun) {
                return true;
            }
            begun = true;
        }
        first.run();
        return true;
    }

    /**
     * True once the stop has begun: nothing new may start (an accept loop ends, a connection accepted meanwhile is
     * closed). A check made under a lock the server also takes after {@link #begin} to read what runs (say its
     * current session) either sees the stop begun or has its result seen by the stop.
     */
    public boolean begun() {
        return begun;
    }

    /**
     * Ends the stop, once {@link #begin} has returned true and what the stop waits for has ended: the first call runs
     * the last step; a later or concurrent call returns at once.
     */
    public void end() {
        synchronized (lock) {
            if (ended) {
                return;
            }
            ended = true;
        }
        last.run();
    }
}
