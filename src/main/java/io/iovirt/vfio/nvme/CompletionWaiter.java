// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.vfio.VfioDevice;
import io.iovirt.vfio.VfioException;

/**
 * How a thread waits for completions on a queue: by spinning on the CQ phase tag, or by blocking on the eventfd
 * VFIO signals for the queue's interrupt vector. After waking from an interrupt the caller drains the queue and then
 * calls {@link #afterReap()}, which re-arms a level-triggered INTx line (VFIO masks it each time it fires).
 */
abstract sealed class CompletionWaiter implements AutoCloseable {
    /** Blocks until the interrupt fires or {@code timeoutNanos} pass; a polling waiter just yields the CPU briefly. */
    abstract void await(long timeoutNanos) throws VfioException;

    abstract void afterReap() throws VfioException;

    /** Interrupts seen so far (0 for polling). */
    abstract long interrupts();

    @Override
    public void close() {}

    static CompletionWaiter polling() {
        return new Polling();
    }

    static final class Polling extends CompletionWaiter {
        @Override
        void await(long timeoutNanos) {
            Thread.onSpinWait();
        }

        @Override
        void afterReap() {}

        @Override
        long interrupts() {
            return 0;
        }

        @Override
        public String toString() {
            return "polling";
        }
    }

    /**
     * Waits on one interrupt vector's eventfd. Owns the epoll instance and, once constructed, the eventfd.
     *
     * <p>{@link #close()} may run on another thread while one waits (the controller released at the host's request):
     * it wakes the waiter through the eventfd, and the descriptors are closed by whichever of the two comes last —
     * never under a thread that may still use their numbers, which another open could reuse at once.
     */
    static final class Interrupt extends CompletionWaiter {
        private final EventFd eventfd;
        private final Epoll epoll;
        private final VfioDevice intxDevice; // non-null: INTx, to unmask after each interrupt
        private final String name;
        private boolean fired;
        private long count;
        private final Object lock = new Object();
        private int waiting; // threads inside await
        private boolean closing;

        Interrupt(EventFd eventfd, VfioDevice intxDevice, String name) throws VfioException {
            this.eventfd = eventfd;
            this.intxDevice = intxDevice;
            this.name = name;
            Epoll e;
            try {
                e = Epoll.create(1);
            } catch (LinuxException x) {
                throw new VfioException("cannot watch the " + name + " eventfd: " + x.getMessage(), x);
            }
            try {
                e.add(eventfd.fd(), Epoll.EPOLLIN, 0);
            } catch (LinuxException | RuntimeException x) {
                e.close(); // not ours to keep when the waiter is never made
                if (x instanceof LinuxException le) {
                    throw new VfioException("cannot watch the " + name + " eventfd: " + le.getMessage(), le);
                }
                throw (RuntimeException) x;
            }
            this.epoll = e;
        }

        @Override
        void await(long timeoutNanos) throws VfioException {
            synchronized (lock) {
                if (closing) {
                    throw new VfioException("waiting for the " + name + " interrupt: the controller is closed");
                }
                waiting++;
            }
            int ms = (int) Math.max(1, Math.min(Integer.MAX_VALUE, (timeoutNanos + 999_999) / 1_000_000));
            try {
                if (epoll.wait(ms) > 0 && eventfd.read() > 0) {
                    fired = true;
                    count++;
                }
            } catch (LinuxException e) {
                throw new VfioException("waiting for the " + name + " interrupt failed: " + e.getMessage(), e);
            } finally {
                synchronized (lock) {
                    if (--waiting == 0 && closing) {
                        release();
                    }
                }
            }
        }

        @Override
        void afterReap() throws VfioException {
            if (fired && intxDevice != null) {
                intxDevice.unmaskIntx();
            }
            fired = false;
        }

        @Override
        long interrupts() {
            return count;
        }

        /** Closes the epoll instance and the eventfd, or, while a thread waits, wakes it to do so on its way out. */
        @Override
        public void close() {
            synchronized (lock) {
                if (closing) {
                    return;
                }
                closing = true;
                if (waiting == 0) {
                    release();
                    return;
                }
                try {
                    eventfd.signal(); // under the lock: the waiter cannot close it meanwhile
                } catch (LinuxException | RuntimeException e) {
                    // the waiter still leaves at its timeout, and closes both then
                }
            }
        }

        private void release() {
            epoll.close();
            eventfd.close();
        }

        @Override
        public String toString() {
            return name;
        }
    }
}
