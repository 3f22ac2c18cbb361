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

    /**
     * An export's server stop ({@link #afterStop}), bounded for its caller — a control request, a reload, the daemon's
     * stop — even when a thread of the server is stuck (a vhost-user session inside a device callback that waits on a
     * file system that does not answer); the rest of it is then ended on the export's close thread.
     *
     * @param stopWithin stops the server, waiting a bounded time: null once it has stopped; otherwise what of it still
     *                   runs (a phrase, for the log and the removal's answer), and {@code finish} ends the stop
     * @param finish     ends the stop {@code stopWithin} left under way, as long as that takes (on the close thread)
     * @param cause      what a stop still under way means, after the phrase (" (a device callback that waits...)"),
     *                   or ""
     * @param remedy     what to do about it, a sentence for the log and the removal's answer, or ""
     */
    record ServerStop(java.util.function.Supplier<String> stopWithin, Runnable finish, String cause, String remedy) {
        /**
         * A vhost-user server's stop, whose part left under way is a session thread inside a device callback: one
         * that waits on a file system or disk that does not answer.
         */
        ServerStop(java.util.function.Supplier<String> stopWithin, Runnable finish) {
            this(
                    stopWithin,
                    finish,
                    " (a device callback that waits, e.g. on a file system or disk that does not answer)",
                    "Make the file system or disk answer again");
        }

        /** A server whose close bounds its own wait: it has stopped once {@code close} returns. */
        static ServerStop bounded(Runnable close) {
            return new ServerStop(
                    () -> {
                        close.run();
                        return null;
                    },
                    () -> {},
                    "",
                    "");
        }
    }

    private ImageRelease() {}

    /**
     * The close of one export's image, as {@link #afterStop} runs it on a thread of its own: {@link #flushed}
     * completes once the image is flushed, closed and its lock let go of — true when the final flush succeeded, false
     * when it failed (logged as an ERROR naming the image: writes acknowledged before may not be on disk). It completes
     * exceptionally when the close threw, or with a {@link LeftOpen} when it could not be run and the image stays open.
     */
    static final class Closing {
        final String who;
        final Path image;
        final java.util.concurrent.CompletableFuture<Boolean> flushed = new java.util.concurrent.CompletableFuture<>();
        /**
         * What of the export's server still runs after its bounded stop ({@link ServerStop#stopWithin}); null once it
         * has stopped (or when it stopped within its bound).
         */
        private volatile String serverStopping;

        /** The server stop {@link #afterStop} ran, for what {@link #serverStopping} means; set with it. */
        private volatile ServerStop stop;

        /** When the close began ({@link System#nanoTime}), for the answer that says how long it was waited for. */
        private final long started = System.nanoTime();

        /** @param who "blk ID" or "nbd ID" */
        Closing(String who, Path image) {
            this.who = who;
            this.image = image;
        }

        /**
         * Waits for the close up to {@code limit}: null when it ended with its final flush; otherwise, for the caller's
         * answer, that the final flush failed or that the image is still being flushed and closed (a file system or
         * disk that does not answer) — then how it ends is logged when it does.
         */
        String await(Duration limit) {
            return await(limit, false);
        }

        /**
         * As {@link #await}, for the daemon's stop, which exits once it has waited: what is left then is not waited for
         * and does not happen in this process. Null when the close ended with its final flush; otherwise what the
         * daemon exits without — not, as {@link #await} says to a removal, that it ends later.
         */
        String awaitBeforeExit(Duration limit) {
            return await(limit, true);
        }

        private String await(Duration limit, boolean exiting) {
            try {
                return outcome(flushed.get(limit.toNanos(), java.util.concurrent.TimeUnit.NANOSECONDS));
            } catch (java.util.concurrent.TimeoutException e) {
                flushed.whenComplete(this::logEnd);
                long waited = (System.nanoTime() - started) / 1_000_000;
                String server = serverStopping;
                if (exiting) {
                    String what = server != null
                            ? "its server has not stopped after " + waited + " ms: " + server + stop.cause()
                            : "its image " + image + " is still being flushed and closed after " + waited + " ms (its"
                                    + " file system or disk does not answer)";
                    return what + ": the daemon exits without the final flush of " + image + " (its lock goes with"
                            + " the process): writes acknowledged before may not be on disk. Make the file system or"
                            + " disk answer again before the image is used again";
                }
                if (server != null) {
                    return "the export is removed, but its server has not stopped after " + waited + " ms: " + server
                            + stop.cause() + ": its image " + image + " stays open and locked, and its id, socket and"
                            + " image stay taken (adding it again is refused) until that has ended and the image is"
                            + " flushed and closed; a log line says how it ended"
                            + (stop.remedy().isEmpty() ? "" : ". " + stop.remedy());
                }
                return "the export is removed, but its image " + image + " is still being flushed and closed after "
                        + waited + " ms (its file system or disk does not answer): it stays open and"
                        + " locked, and its id, socket and image stay taken (adding it again is refused) until"
                        + " that has ended; a log line says how it ended (an ERROR line if its final flush failed:"
                        + " writes acknowledged before may then not be on disk). Make the file system or disk"
                        + " answer again";
            } catch (java.util.concurrent.ExecutionException e) {
                if (e.getCause() instanceof LeftOpen l) {
                    return exiting ? l.getMessage() : "the export is removed, but " + l.getMessage();
                }
                return "the export is removed, but closing its image " + image + " failed: " + e.getCause();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                flushed.whenComplete(this::logEnd);
                return "interrupted: the export is removed, its image " + image + " is still being flushed and"
                        + " closed; a log line says how it ended";
            }
        }

        private String outcome(boolean ok) {
            return ok
                    ? null
                    : "the export is removed, but the final flush of its image " + image + " failed (see the log):"
                            + " writes acknowledged before may not be on disk";
        }

        private void logEnd(Boolean ok, Throwable failure) {
            if (failure != null) {
                LOG.log(System.Logger.Level.ERROR, who + ": closing " + image + " failed: " + failure);
            } else if (ok) {
                LOG.log(System.Logger.Level.INFO, who + ": " + image + " is flushed, closed and unlocked now");
            } else {
                LOG.log(
                        System.Logger.Level.ERROR,
                        who + ": " + image + " is closed and unlocked now, but its final flush failed: writes"
                                + " acknowledged before its removal may not be on disk");
            }
        }
    }

    /**
     * An export's close: stops its server ({@code stop}: no new request, its connections end), waiting a bounded time;
     * then — even if that threw — runs {@code close} (flush, close, unlock; whether the flush succeeded) on a thread
     * of its own, at once if {@code quiescent} — no thread of the export (its queue threads, or its NBD connections
     * and workers) can touch the image — else, after one error line, once {@code await} says so; it completes {@code
     * closing}. A server that has not stopped within its bound (a thread of it stuck in a device callback, which may
     * still use the image) is named in an error line and its stop ended on that thread first. So the image is let
     * go of in every case, never before the server has stopped, and never before its final flush has ended; the
     * caller waits for it as long as it chooses ({@link Closing#await}): a flush on a file system that does not answer
     * does not end.
     *
     * <p>When the close thread cannot be started (no memory, a thread limit), {@code closing} is completed all the
     * same, so no caller waits for it: the close runs here if no thread can touch the image, which is safe; else the
     * image stays open and locked until the daemon stops, and {@code closing} completes with a {@link LeftOpen} that
     * says so (logged as an ERROR).
     *
     * @param who     "blk ID" or "nbd ID", for log lines and the thread's name
     * @param stuck   what is still in I/O, e.g. "a request of its frontend is"
     * @param refused what the lock kept meanwhile refuses, e.g. "exporting it again is refused"
     */
    static void afterStop(
            ServerStop stop,
            String who,
            Path image,
            String stuck,
            String refused,
            BooleanSupplier quiescent,
            Await await,
            BooleanSupplier close,
            Closing closing) {
        afterStop(stop, who, image, stuck, refused, quiescent, await, close, closing, ImageRelease::start);
    }

    /** Starts an export's close thread, named for {@code who}, running {@code close}; throws when it cannot. */
    @FunctionalInterface
    interface CloseThread {
        void start(String who, Runnable close);
    }

    /** As the other {@code afterStop}, its close thread started by {@code threads} (tests: one that cannot start). */
    static void afterStop(
            ServerStop stop,
            String who,
            Path image,
            String stuck,
            String refused,
            BooleanSupplier quiescent,
            Await await,
            BooleanSupplier close,
            Closing closing,
            CloseThread threads) {
        String running = null;
        try {
            running = stop.stopWithin().get();
        } finally {
            if (running != null) {
                closing.stop = stop;
                closing.serverStopping = running;
                LOG.log(
                        System.Logger.Level.ERROR,
                        who + ": its server has not stopped yet: " + running + stop.cause() + ". Until it has, the"
                                + " image stays open and locked (" + refused + ") and the export's id, socket and image"
                                + " stay taken (adding it again is refused); then " + image + " is flushed and closed."
                                + (stop.remedy().isEmpty()
                                        ? " Stopping the daemon lets go of the image without its final flush"
                                        : " " + stop.remedy() + " (a hung NFS server or FUSE daemon, a failing disk),"
                                                + " or stop the daemon to let go of the image without its final"
                                                + " flush"));
                startOrLeaveOpen(threads, who, closing, refused, "its server has not stopped (" + running + ")", () -> {
                    try {
                        stop.finish().run();
                    } catch (RuntimeException | Error e) { // it is not waited for any more: the image goes all the same
                        LOG.log(System.Logger.Level.ERROR, who + ": ending its server's stop failed", e);
                    }
                    closing.serverStopping = null;
                    if (quiescent.getAsBoolean()) {
                        finish(close, closing);
                        LOG.log(
                                System.Logger.Level.WARNING,
                                who + ": its server has stopped: " + image + " is flushed, closed and unlocked now");
                    } else {
                        LOG.log(System.Logger.Level.WARNING, who + ": its server has stopped");
                        logStuck(who, image, stuck, refused);
                        awaitThenFinish(who, image, await, close, closing);
                    }
                });
            } else if (quiescent.getAsBoolean()) {
                try {
                    threads.start(who, () -> finish(close, closing));
                } catch (RuntimeException | OutOfMemoryError e) {
                    finish(close, closing); // no thread: here, as before
                }
            } else {
                logStuck(who, image, stuck, refused);
                startOrLeaveOpen(
                        threads,
                        who,
                        closing,
                        refused,
                        stuck + " still in I/O",
                        () -> awaitThenFinish(who, image, await, close, closing));
            }
        }
    }

    /**
     * The close could not be run, as a thread may still use the image (its message, a sentence's rest after "the
     * export is removed, but", says why and what to do): the image stays open and locked until the daemon stops.
     */
    static final class LeftOpen extends Exception {
        LeftOpen(String message, Throwable cause) {
            super(message, cause);
        }
    }

    /**
     * Starts the close thread running {@code close}, which waits for what may still use the image ({@code holder}:
     * "its server has not stopped (...)"); when it cannot be started, the image is left open and locked, and
     * {@code closing} is completed with a {@link LeftOpen} saying so (logged as an ERROR): its callers are not left
     * waiting for a close that will not come.
     */
    private static void startOrLeaveOpen(
            CloseThread threads, String who, Closing closing, String refused, String holder, Runnable close) {
        try {
            threads.start(who, close);
        } catch (RuntimeException | OutOfMemoryError e) {
            try {
                String why = "its close thread cannot be started (" + e + "), and " + holder + ": a thread may still"
                        + " use its image " + closing.image + ", so it is not closed: it stays open and locked ("
                        + refused + ") until the daemon stops, which lets go of it without its final flush, and"
                        + " its id, socket and image stay taken until then (adding it again is refused). Free memory"
                        + " (or raise the thread limit), then stop the daemon to let go of the image";
                LOG.log(System.Logger.Level.ERROR, who + ": " + why);
                closing.flushed.completeExceptionally(new LeftOpen(why, e));
            } finally {
                closing.flushed.completeExceptionally(e); // what failed, if even that could not be said
            }
        }
    }

    /** Starts the export's close thread, running {@code close}: the {@link CloseThread} {@link #afterStop} uses. */
    static void start(String who, Runnable close) {
        Thread.ofPlatform().name(who + " close").daemon().start(close);
    }

    /** Runs {@code close} and completes {@code closing} with its outcome. */
    private static void finish(BooleanSupplier close, Closing closing) {
        try {
            closing.flushed.complete(close.getAsBoolean());
        } catch (RuntimeException | Error e) {
            closing.flushed.completeExceptionally(e);
            throw e;
        }
    }

    private static void logStuck(String who, Path image, String stuck, String refused) {
        LOG.log(
                System.Logger.Level.ERROR,
                who + ": " + stuck + " still in I/O on " + image + " (its file system or disk does not answer): the"
                        + " image stays open and locked (" + refused + ") until that ends, then it is flushed and"
                        + " closed; make that file system or disk answer again (a hung NFS server or FUSE daemon, a"
                        + " failing disk), or stop the daemon to let go of the image without its final flush");
    }

    /** Waits (on the close thread) until no thread of the export can touch the image, then closes it. */
    private static void awaitThenFinish(String who, Path image, Await await, BooleanSupplier close, Closing closing) {
        try {
            while (!await.awaitQuiescent(Duration.ofMinutes(10))) {
                // as long as it takes: the image must not be closed under a request
            }
        } catch (InterruptedException e) {
            LOG.log(
                    System.Logger.Level.ERROR,
                    who + ": interrupted waiting for its requests to end: " + image
                            + " stays open and locked until the daemon stops");
            closing.flushed.completeExceptionally(e);
            return;
        }
        finish(close, closing);
        LOG.log(
                System.Logger.Level.WARNING,
                who + ": its last requests have ended: " + image + " is flushed, closed and unlocked now");
    }
}
