// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import java.nio.file.Path;
import java.time.Duration;
import java.util.function.BooleanSupplier;

/**
 * How an export lets go of its image once its server has stopped: at once when no thread of the export can touch the
 * image any more, which is the rule; otherwise later, on a thread of its own. A request stuck in image I/O (a hung
 * NFS or FUSE file, a dying disk) outlives the server's stop, and its thread may still read, write or flush through
 * the image's descriptors: closed now, a number could be reused by another open (another tenant's image or socket)
 * and take that request's writes. So the image stays open and locked (another VM or export of it is refused) until
 * every such thread has ended; the caller — a control request, a reload, the daemon's stop — is not held up.
 */
final class ImageRelease {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    /** Waits at most a timeout until no thread of the export can touch the image; whether none can. */
    interface Await {
        boolean awaitQuiescent(Duration timeout) throws InterruptedException;
    }

    private ImageRelease() {}

    /**
     * An export's close: runs {@code stop} (its server's close: no new request, its connections end); then — even if
     * {@code stop} threw — runs {@code close} (flush, close, unlock) now if {@code quiescent} — no thread of the export
     * (its queue threads, or its NBD connections and workers) can touch the image — else logs one error line and runs
     * it on a daemon thread once {@code await} says so. So the image is let go of in every case, and never before the
     * server has stopped.
     *
     * @param who     "blk ID" or "nbd ID", for log lines and the thread's name
     * @param stuck   what is still in I/O, e.g. "a request of its frontend"
     * @param refused what the lock kept meanwhile refuses, e.g. "exporting it again is refused"
     */
    static void afterStop(
            Runnable stop,
            String who,
            Path image,
            String stuck,
            String refused,
            BooleanSupplier quiescent,
            Await await,
            Runnable close) {
        try {
            stop.run();
        } finally {
            if (quiescent.getAsBoolean()) {
                close.run();
            } else {
                closeLater(who, image, stuck, refused, await, close);
            }
        }
    }

    private static void closeLater(String who, Path image, String stuck, String refused, Await await, Runnable close) {
        LOG.log(
                System.Logger.Level.ERROR,
                who + ": " + stuck + " still in I/O on " + image + " (its file system or disk does not answer): the"
                        + " image stays open and locked (" + refused + ") until that ends, then it is flushed and"
                        + " closed; make that file system or disk answer again (a hung NFS server or FUSE daemon, a"
                        + " failing disk), or stop the daemon to let go of the image without its final flush");
        Thread.ofPlatform().name(who + " close").daemon().start(() -> {
            try {
                while (!await.awaitQuiescent(Duration.ofMinutes(10))) {
                    // as long as it takes: the image must not be closed under a request
                }
            } catch (InterruptedException e) {
                LOG.log(
                        System.Logger.Level.ERROR,
                        who + ": interrupted waiting for its requests to end: " + image
                                + " stays open and locked until the daemon stops");
                return;
            }
            close.run();
            LOG.log(
                    System.Logger.Level.WARNING,
                    who + ": its last requests have ended: " + image + " is flushed, closed and unlocked now");
        });
    }
}
