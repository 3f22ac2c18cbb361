package io.iovirt.devices.blk;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.Virtqueue;
import io.iovirt.virtio.VirtqueueException;
import java.lang.System.Logger.Level;

/**
 * The thread that serves one virtio-blk queue: blocks in epoll on the kick eventfd, drains the ring with kicks
 * suppressed, completes requests and interrupts the driver only when it asked (EVENT_IDX or flags).
 *
 * <p>A platform thread: epoll_wait is a blocking native call and would pin a virtual thread's carrier. It is
 * stopped through its own eventfd, since interrupting a thread does not break a native call. Requests are served
 * synchronously, so when {@link #stop()} returns nothing is in flight and the ring position is final.
 */
final class BlkQueueWorker implements Runnable {
    private static final System.Logger LOG = System.getLogger(BlkQueueWorker.class.getName());
    private static final long KICK = 0;
    private static final long STOP = 1;

    private final String name;
    private final Virtqueue queue;
    private final BlkQueueHandler handler;
    private final EventFd kick;
    private final EventFd call;
    private final EventFd err;
    private final BlkStats stats;
    private final EventFd stopFd;
    private final Epoll epoll;
    private final Thread thread;
    private volatile String failure;

    /**
     * @param name identifies the device and queue in log lines, e.g. {@code "blk /run/vub.sock q0"}
     * @param call may be null when the driver polls
     * @param err  may be null; signalled when the queue fails
     */
    BlkQueueWorker(String name, Virtqueue queue, BlkQueueHandler handler, EventFd kick, EventFd call, EventFd err,
                   BlkStats stats) throws LinuxException {
        this.name = name;
        this.queue = queue;
        this.handler = handler;
        this.kick = kick;
        this.call = call;
        this.err = err;
        this.stats = stats;
        this.stopFd = EventFd.create(true);
        this.epoll = Epoll.create(2);
        epoll.add(kick.fd(), Epoll.EPOLLIN, KICK);
        epoll.add(stopFd.fd(), Epoll.EPOLLIN, STOP);
        this.thread = Thread.ofPlatform().name("iovirt-" + name).daemon().unstarted(this);
    }

    void start() {
        thread.start();
    }

    /** Why the queue stopped serving requests, or null. */
    String failure() {
        return failure;
    }

    @Override
    public void run() {
        try {
            serve(); // requests made available before the first kick (e.g. after a reconnect) are served at once
            for (;;) {
                int n = epoll.wait(-1);
                for (int i = 0; i < n; i++) {
                    if (epoll.data(i) == STOP) {
                        return;
                    }
                    kick.read();
                }
                if (n > 0 && failure == null) {
                    serve();
                }
            }
        } catch (LinuxException e) {
            fail("cannot wait for kicks: " + e.getMessage());
        } catch (RuntimeException | InternalError e) {
            // InternalError: the frontend shrank a file we had mapped (SIGBUS caught by the JVM). This queue stops;
            // the process and the other devices go on.
            LOG.log(Level.ERROR, name + ": internal error", e);
            fail("internal error: " + e);
        } finally {
            handler.close();
        }
    }

    /** Serves everything available; re-checks after enabling kicks so a request published meanwhile is not lost. */
    private void serve() throws LinuxException {
        if (failure != null) {
            return;
        }
        try {
            queue.disableNotifications();
            do {
                DescriptorChain c;
                while ((c = queue.pop()) != null) {
                    long written = handler.process(c);
                    String why = handler.lastError();
                    if (why != null) {
                        logRequestError(why);
                    }
                    queue.push(c, written);
                }
                if (call != null) {
                    queue.notifyIfNeeded(call::signal);
                }
            } while (queue.enableNotifications());
        } catch (VirtqueueException | BlkQueueHandler.UnanswerableRequest e) {
            fail(e.getMessage());
        }
    }

    /** A broken ring: this queue stops (the device needs a reset); the process and other queues go on. */
    private void fail(String why) {
        failure = why;
        stats.queueFailures.increment();
        LOG.log(Level.ERROR, "{0}: {1}; queue stopped until the driver resets the device", name, why);
        if (err != null) {
            try {
                err.signal(); // QEMU reports "vhost vring error" for the queue
            } catch (LinuxException ignored) {
                // the frontend closed the error fd: the log line above is all we can do
            }
        }
    }

    private long lastRequestLog;
    private long suppressedRequestLogs;

    /** Bad requests are answered with an error status; log them at most once a second per queue. */
    private void logRequestError(String why) {
        long now = System.nanoTime();
        if (now - lastRequestLog < 1_000_000_000L && lastRequestLog != 0) {
            suppressedRequestLogs++;
            return;
        }
        String more = suppressedRequestLogs > 0 ? " (" + suppressedRequestLogs + " similar suppressed)" : "";
        LOG.log(Level.WARNING, "{0}: request failed: {1}{2}", name, why, more);
        lastRequestLog = now;
        suppressedRequestLogs = 0;
    }

    /** Stops the thread and waits for it: afterwards the queue's ring position is final. */
    void stop() {
        try {
            stopFd.signal();
        } catch (LinuxException e) {
            throw new IllegalStateException("cannot stop " + name, e);
        }
        boolean interrupted = false;
        while (thread.isAlive()) {
            try {
                thread.join();
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        epoll.close();
        stopFd.close();
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    int vringBase() {
        return queue.vringBase();
    }
}
