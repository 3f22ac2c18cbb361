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

    /** Waits on one interrupt vector's eventfd. Owns the epoll instance, not the eventfd. */
    static final class Interrupt extends CompletionWaiter {
        private final EventFd eventfd;
        private final Epoll epoll;
        private final VfioDevice intxDevice; // non-null: INTx, to unmask after each interrupt
        private final String name;
        private boolean fired;
        private long count;

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
            int ms = (int) Math.max(1, Math.min(Integer.MAX_VALUE, (timeoutNanos + 999_999) / 1_000_000));
            try {
                if (epoll.wait(ms) > 0 && eventfd.read() > 0) {
                    fired = true;
                    count++;
                }
            } catch (LinuxException e) {
                throw new VfioException("waiting for the " + name + " interrupt failed: " + e.getMessage(), e);
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

        @Override
        public void close() {
            epoll.close();
        }

        @Override
        public String toString() {
            return name;
        }
    }
}
