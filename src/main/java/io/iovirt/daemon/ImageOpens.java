// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Where an add opens its image: on a platform thread of its own, which the request waits for at most {@link #wait}.
 * An open on a file system that does not answer (a stopped FUSE daemon, an unreachable NFS server) does not return
 * until the file system answers, if ever, and no thread can be made to leave it; a control client's thread held there
 * held one of the control socket's {@link RpcServer#MAX_CLIENTS} places, so that 32 such adds left the daemon
 * unmanageable (not even list, remove or shutdown got an answer).
 *
 * <p>Now the request gets an error after the wait while the open goes on; the add's claim (its id, socket and image)
 * stays until the open returns, then what it opened is closed, the claim released and both logged: the request
 * failed, so the add never takes effect behind its caller's back. At most {@link #MAX_OPENS} opens run at once, so
 * the threads stuck in a file system are bounded too. One more add waits for one of them to return, within its own
 * wait (waiting for a place and opening share it): opens merely under way (a host starting many VMs at once, each
 * adding its disks) are no reason to fail. The adds waiting get the places that free in the order they came (each
 * goes to the add that has waited longest, and an add that comes while others wait queues behind them). At most
 * {@link #MAX_WAITING} adds wait so, each holding a control client meanwhile; one more is refused at once, so that
 * adds never hold all of the control socket's clients. An add is also refused at once when every place is held by an
 * open whose request already gave up on it and that has been under way for that request's whole wait (so hung: its
 * file system does not answer; one given up on sooner because its add spent most of its wait for a place is merely
 * slow), naming those images, so that adds on such file systems leave most of the control socket's places free.
 * Each add was refused at once as soon as {@link #MAX_OPENS} opens were under way, healthy or not, saying their file
 * systems did not answer.
 */
final class ImageOpens {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    /** How many images may be being opened at once (each on its own thread). */
    static final int MAX_OPENS = 8;
    /**
     * How many adds may wait for a place at once: with the {@link #MAX_OPENS} opening, adds hold at most 24 of the
     * control socket's {@link RpcServer#MAX_CLIENTS} clients, so list, remove and shutdown still get one.
     */
    static final int MAX_WAITING = RpcServer.MAX_CLIENTS - 2 * MAX_OPENS;
    /** How long a request waits for its image's open: well within {@code iovirt ctl}'s default 30 s. */
    static final Duration WAIT = Duration.ofSeconds(10);

    /** An image's open: what the add does outside the daemon's lock (claiming the image, opening, starting). */
    interface Open<T extends AutoCloseable> {
        /**
         * @param wanted asked once the image is open, before anything others would see is started (the export's
         *               socket): an open that returns after its request gave up starts nothing
         */
        T open(Wanted wanted) throws IOException, RpcException;
    }

    /** Whether the request still waits for its open ({@link Open#open}). */
    interface Wanted {
        /** For an open no request gives up on (tests that start an export directly). */
        Wanted ALWAYS = () -> {};

        /**
         * @throws GivenUp the request gave up on this open: it closes what it opened and starts nothing
         */
        void check() throws GivenUp;
    }

    /** An open that returned after its request had given up, and so started nothing ({@link Wanted#check}). */
    static final class GivenUp extends IOException {
        GivenUp() {
            super("its request had given up on it, so it started nothing");
        }
    }

    /**
     * One open under way: its thread's result, and whether its request stopped waiting (guarded by itself;
     * {@link #abandoned} is also read under the {@link ImageOpens}' lock, by adds waiting for a place).
     */
    private static final class Pending {
        final String what;
        final Path image;
        final long since = System.nanoTime();
        /** Its request's whole wait (for a place, then for this open): an open under way longer is hung. */
        final long waitNanos;

        AutoCloseable result;
        Throwable failure;
        boolean done;
        volatile boolean abandoned;

        Pending(String what, Path image, Duration wait) {
            this.what = what;
            this.image = image;
            this.waitNanos = wait.toNanos();
        }

        /**
         * Given up on and under way for a whole wait: its file system does not answer. An open its request gave up on
         * sooner, having spent most of the wait for a place, is merely under way (a slow but healthy file system).
         */
        boolean hung(long now) {
            return abandoned && now - since >= waitNanos;
        }
    }

    private final Map<Pending, Boolean> running = new LinkedHashMap<>(); // guarded by this
    /** Adds waiting for a place (guarded by this): each holds a control client's thread meanwhile. */
    private int waiting;
    /**
     * The adds waiting for a place and not yet given one, in arrival order (guarded by this). A place that frees goes
     * to the first ({@link #handOn}), and an add that arrives while any wait takes none: with every waiting add
     * woken to race for the place, as before, the one that got it was whichever the scheduler ran first — an add
     * could be passed over again and again until its wait ran out, while later ones went through.
     */
    private final ArrayDeque<Turn> queue = new ArrayDeque<>();
    /** Places handed to a waiting add that has not taken it yet ({@link #running} does not count them yet). */
    private int handedOn;

    /** A waiting add's turn: set when a place is handed to it (guarded by the {@link ImageOpens}' lock). */
    private static final class Turn {
        boolean given;
    }

    private volatile Duration wait = WAIT;

    /** Sets how long requests wait for an open (tests). */
    void waitFor(Duration d) {
        wait = d;
    }

    /**
     * Runs {@code open} on a thread of its own, once fewer than {@link #MAX_OPENS} opens run, and returns what it
     * opened, or throws what it threw; after the wait (for a place, then for the open) throws FAILED, and an open
     * started goes on. {@code release} (letting go of the add's claim) runs exactly once whenever this does not
     * return: before it throws, or — when the wait ran out after the open started — once the open has returned (what
     * it opened closed first).
     *
     * @param what  the request, for messages ("blk.add vm1")
     * @param image the image as given
     * @throws RpcException FAILED when every place is held by an open given up on, no place was free within the wait
     *                      or this open did not return in it, or what {@code open} threw
     * @throws IOException  what {@code open} threw
     */
    @SuppressWarnings("unchecked")
    <T extends AutoCloseable> T run(String what, Path image, Open<T> open, Runnable release)
            throws RpcException, IOException {
        Duration d = wait;
        long deadline = System.nanoTime() + d.toNanos();
        Pending p;
        try {
            p = place(what, image, d, deadline);
        } catch (RpcException e) {
            release.run();
            throw e;
        }
        Thread t = Thread.ofPlatform()
                .name("image open " + image)
                .daemon(true) // one stuck in a file system must not keep the JVM from exiting
                .unstarted(() -> openOn(p, open, release));
        try {
            t.start();
        } catch (OutOfMemoryError e) { // no thread could be created
            synchronized (this) {
                running.remove(p);
                handOn(); // its place is free again
            }
            release.run();
            throw e;
        }
        boolean interrupted = false;
        synchronized (p) {
            while (!p.done) {
                long left = deadline - System.nanoTime();
                if (left <= 0 || interrupted) {
                    p.abandoned = true;
                    break;
                }
                try {
                    p.wait(Math.max(1, left / 1_000_000));
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
        if (p.abandoned) {
            Duration waited = Duration.ofNanos(System.nanoTime() - p.since); // the wait less that for a place
            long queued = p.since - (deadline - d.toNanos());
            String after = queued < 1_000_000_000L
                    ? ""
                    : " (what was left of this add's wait of " + seconds(d) + " after "
                            + seconds(Duration.ofNanos(queued)) + " waiting for one of the " + MAX_OPENS
                            + " opens under way to return)";
            synchronized (this) {
                notifyAll(); // adds waiting for a place: every place may now be held by an open given up on
            }
            // logged too: the request's answer goes to its client only, and the open may never return to say more
            LOG.log(
                    System.Logger.Level.WARNING,
                    what + ": the open of image " + image + " has not returned after " + seconds(waited) + " (thread '"
                            + t.getName() + "' waits in its file system, which does not answer: a stopped FUSE"
                            + " daemon, an unreachable NFS server?); the request failed, and its id and socket stay"
                            + " in use until the open returns; make the file system answer (or unmount it:"
                            + " umount -l)");
            throw new RpcException(
                    RpcException.FAILED,
                    what + ": image " + image + " did not open within " + seconds(waited) + after + ": its file system"
                            + (after.isEmpty() ? " does not answer" : " is slow or does not answer")
                            + " (a stopped FUSE daemon, an unreachable NFS server?). Nothing was added; the id"
                            + " and socket stay in use until the open returns (then they are released, and the log"
                            + " says so); make the file system answer and retry");
        }
        if (p.failure != null) {
            release.run();
        }
        if (p.failure instanceof IOException e) {
            throw e;
        } else if (p.failure instanceof RpcException e) {
            throw e;
        } else if (p.failure instanceof RuntimeException e) {
            throw e;
        } else if (p.failure instanceof Error e) {
            throw e;
        }
        return (T) p.result;
    }

    /** The open thread: runs it, then hands the outcome to the request, or undoes it when the request gave up. */
    private void openOn(Pending p, Open<?> open, Runnable release) {
        AutoCloseable r = null;
        Throwable failure = null;
        try {
            r = open.open(() -> {
                synchronized (p) {
                    if (p.abandoned) {
                        throw new GivenUp();
                    }
                }
            });
        } catch (Throwable e) { // handed to the request, or logged below
            failure = e;
        }
        boolean abandoned;
        synchronized (this) {
            running.remove(p);
            handOn(); // a place is free: the add that has waited longest gets it
        }
        synchronized (p) {
            p.result = r;
            p.failure = failure;
            p.done = true;
            abandoned = p.abandoned;
            p.notifyAll();
        }
        if (!abandoned) {
            return;
        }
        long after = System.nanoTime() - p.since;
        try {
            if (r != null) {
                r.close();
            }
        } catch (Exception | Error e) {
            LOG.log(System.Logger.Level.WARNING, p.what + ": closing what the late open of " + p.image + " made", e);
        } finally {
            release.run();
        }
        LOG.log(
                System.Logger.Level.WARNING,
                p.what + ": the open of image " + p.image + " returned after " + seconds(Duration.ofNanos(after))
                        + ", its request having failed already"
                        + (failure instanceof GivenUp
                                ? " (the image is closed again: its export was not started, nothing was added)"
                                : failure != null
                                        ? " (the open failed too: " + failure.getMessage() + ")"
                                        : " (what it opened is closed again: nothing was added)")
                        + "; its id and socket are free again: add it again if it is still wanted");
    }

    /**
     * Takes a place among the {@link #MAX_OPENS} opens: at once when one is free and no add waits for one, else in
     * arrival order — the add that has waited longest gets the next place that frees ({@link #handOn}).
     *
     * @throws RpcException FAILED, at once when every place is held by a hung open ({@link Pending#hung}: given up on,
     *                      and under way for its request's whole wait) or {@link #MAX_WAITING} adds wait already;
     *                      else when {@code deadline} passes first, or the request's thread is interrupted
     */
    private synchronized Pending place(String what, Path image, Duration d, long deadline) throws RpcException {
        if (queue.isEmpty() && running.size() + handedOn < MAX_OPENS) {
            return take(what, image, d);
        }
        refuseIfHung(what);
        if (waiting >= MAX_WAITING) {
            throw new RpcException(
                    RpcException.FAILED,
                    what + ": " + MAX_OPENS + " images are being opened (" + describe() + ") and " + MAX_WAITING
                            + " more adds already wait for one of them to return, so this add is refused rather than"
                            + " hold one more of the control socket's " + RpcServer.MAX_CLIENTS + " clients (list,"
                            + " remove and shutdown need some); nothing was added, and the id and socket are free"
                            + " again; retry once those adds have been answered");
        }
        Turn turn = new Turn();
        queue.addLast(turn);
        waiting++;
        boolean taken = false;
        try {
            while (!turn.given) {
                long now = System.nanoTime();
                refuseIfHung(what);
                long left = deadline - now;
                String why = "within this add's wait of " + seconds(d);
                if (left > 0) {
                    // woken when a place is handed on or a request gives up on its open; an open given up on early
                    // turns hung only once under way for its whole wait, which nobody signals: look again then
                    long look = left;
                    for (Pending o : running.keySet()) {
                        long toHung = o.since + o.waitNanos - now;
                        if (toHung > 0) {
                            look = Math.min(look, toHung);
                        }
                    }
                    try {
                        wait(Math.max(1, look / 1_000_000));
                        continue;
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        why = "before this request was interrupted (the daemon stops?)";
                    }
                }
                throw new RpcException(
                        RpcException.FAILED,
                        what + ": " + MAX_OPENS + " images are still being opened (" + describe() + ") and none"
                                + " returned " + why + ": their file systems are slow or do not answer (a stopped"
                                + " FUSE daemon, an unreachable NFS server?). Nothing was added, and the id and"
                                + " socket are free again; retry once those opens have returned (or make their file"
                                + " systems answer, or unmount them: umount -l)");
            }
            handedOn--;
            taken = true;
            return take(what, image, d);
        } finally {
            waiting--;
            if (!taken) {
                if (turn.given) { // handed a place as it was interrupted: the next add gets it
                    handedOn--;
                    handOn();
                } else {
                    queue.remove(turn);
                }
            }
        }
    }

    /** Counts a new open among the places (lock held). */
    private Pending take(String what, Path image, Duration d) {
        Pending p = new Pending(what, image, d);
        running.put(p, Boolean.TRUE);
        return p;
    }

    /**
     * A place may have freed (lock held): hands each free one to the add that has waited longest, and wakes the
     * waiting adds (the one handed a place takes it; the others wait on).
     */
    private void handOn() {
        while (!queue.isEmpty() && running.size() + handedOn < MAX_OPENS) {
            queue.removeFirst().given = true;
            handedOn++;
        }
        notifyAll();
    }

    /**
     * Refuses the add when every place is held by a hung open ({@link Pending#hung}; lock held): none handed on to a
     * waiting add, all {@link #MAX_OPENS} running and hung.
     */
    private void refuseIfHung(String what) throws RpcException {
        long now = System.nanoTime();
        if (handedOn == 0
                && running.size() >= MAX_OPENS
                && running.keySet().stream().allMatch(o -> o.hung(now))) {
            throw new RpcException(
                    RpcException.FAILED,
                    what + ": " + MAX_OPENS + " images are still being opened (" + describe() + ") and their"
                            + " requests all gave up on them: their file systems do not answer (a stopped FUSE"
                            + " daemon, an unreachable NFS server?), so this add is refused rather than wait with"
                            + " them; make those file systems answer (or unmount them: umount -l) and retry");
        }
    }

    /**
     * The daemon stops: the opens still under way cannot be called off, nor waited for (their file systems may never
     * answer), so they are named in the log. Each closes what it opened if it returns before the process has exited
     * (its request failed already, or finds the daemon stopping), and nothing of them was added.
     */
    void close() {
        String left;
        synchronized (this) {
            if (running.isEmpty()) {
                return;
            }
            left = describe();
        }
        LOG.log(
                System.Logger.Level.WARNING,
                "stopping while image opens have not returned: " + left + ". Their file systems do not answer (a"
                        + " stopped FUSE daemon, an unreachable NFS server?); nothing of them was added, and what one"
                        + " opens if it returns before the process has exited is closed again");
    }

    /** The images being opened, with their requests and how long they have waited (lock held). */
    private String describe() {
        List<String> out = new ArrayList<>();
        long now = System.nanoTime();
        for (Pending p : running.keySet()) {
            out.add(p.image + " (" + p.what + ", " + seconds(Duration.ofNanos(now - p.since)) + ")");
        }
        return String.join(", ", out);
    }

    private static String seconds(Duration d) {
        return d.toMillis() < 10_000 ? d.toMillis() / 100 / 10.0 + " s" : d.toSeconds() + " s";
    }
}
