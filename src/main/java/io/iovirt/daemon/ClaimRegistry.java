// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import java.io.IOException;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Predicate;

/**
 * The daemon's claims: what each device, switch and port holds from the moment its add is accepted until it has
 * stopped ({@link Claim}), and whether the daemon still takes new ones. Adds and removes do their slow work (opening
 * an image, stopping a device) outside the daemon's lock; between the two, the claim is what refuses a request for the
 * same id, socket, TAP interface or image.
 *
 * <p>Locking: every field here, and every claim's {@link Claim#state}, is guarded by the daemon's registry lock — the
 * object given to the constructor, the one that also guards the daemon's device maps, so that a claim and the map
 * entry it stands for change in one step. Methods that say "lock held" expect the caller to hold it (they are part of
 * a larger change under it); the others take it themselves, only for quick looks and changes, except
 * {@link #awaitRemovals}, which waits on it.
 */
final class ClaimRegistry {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    /**
     * What a device, switch or port holds from the moment its add is accepted until it has stopped: its id (a
     * port's within its switch), its socket and its image, as {@link #socketKey}/{@link #imageKey}, or a TAP port's
     * interface name. Every add and remove is checked against the claims, so a request for an id, socket or image
     * that another one is still opening or closing (outside the lock) is refused as in use, like one that runs.
     */
    static final class Claim {
        final String net; // the switch of a port, else null
        final String id;
        final String who; // "blk 'a'", "port 'p' of switch 'sw'"
        final Path socket; // null: none (a switch, a TAP port)
        final String tap; // a TAP port's interface name as given (the kernel's names are exact), else null
        private Path image; // null: none (yet: see claimImage); guarded by the daemon's lock
        final boolean readOnly;
        private State state = State.ADDING; // guarded by the daemon's lock

        Claim(String net, String id, String who, Path socket, String tap, Path image, boolean readOnly) {
            this.net = net;
            this.id = id;
            this.who = who;
            this.socket = socket;
            this.tap = tap;
            this.image = image;
            this.readOnly = readOnly;
        }

        String key() {
            return key(net, id);
        }

        static String key(String net, String id) {
            return net == null ? id : net + "/" + id; // ids have no '/'
        }

        String describe() {
            return who + note();
        }

        /** What a claim whose device does not run (yet, or any more) adds to a refusal. */
        String note() {
            return switch (state) {
                case ADDING -> " (being added)";
                case ACTIVE -> "";
                case REMOVING -> " (being removed; try again once it is gone)";
                case LEFT_OPEN ->
                    " (removed, but its image was left open and locked: its close could not be run, see the log; it"
                            + " stays taken until the daemon stops)";
            };
        }
    }

    private enum State {
        ADDING,
        ACTIVE,
        REMOVING,
        /**
         * Removed, but its image was left open and locked ({@link ImageRelease.LeftOpen}): a thread of it may still
         * use the image, so its id, socket and image stay taken until the daemon stops, which does not wait for it.
         */
        LEFT_OPEN
    }

    /** The daemon's registry lock: guards everything here (see the class comment). */
    private final Object lock;
    /** Whether the daemon has an entry (disk, NBD export, switch) with this id; asked with the lock held. */
    private final Predicate<String> hasDevice;
    /** Claims by {@link Claim#key}: every device, switch and port that runs or is being added or removed. */
    private final Map<String, Claim> claims = new LinkedHashMap<>(); // guarded by lock
    /** The daemon began stopping: no new claims, and adds under way close what they opened. */
    private boolean closed; // guarded by lock

    /**
     * @param lock      the daemon's registry lock
     * @param hasDevice whether the daemon has a disk, NBD export or switch with an id (asked with the lock held)
     */
    ClaimRegistry(Object lock, Predicate<String> hasDevice) {
        this.lock = lock;
        this.hasDevice = hasDevice;
    }

    /**
     * Claims an id, socket and image for an add, or refuses (EXISTS) when a claim holds any of them: the id; the
     * socket (one check across blk, NBD and port sockets); a TAP port's interface, on any switch — TapPort opens it
     * single-queue, so the kernel would refuse a second open too (EBUSY), but as if another process held it, and a
     * port being removed still holds it; the image, unless both are read-only — a second writer
     * would corrupt it, and a reader would see it torn. Another process's exports are refused by the image lock
     * instead (a writable NBD export takes it at once, a blk export when its frontend starts).
     */
    Claim claim(Claim c) throws RpcException {
        synchronized (lock) {
            checkOpen();
            if (c.net == null) {
                requireFree(c.id);
            } else if (claims.containsKey(c.key())) {
                throw new RpcException(
                        RpcException.EXISTS,
                        "switch '" + c.net + "' already has a port '" + c.id + "'"
                                + claims.get(c.key()).note() + "; choose another id or remove it first");
            }
            for (Claim o : claims.values()) {
                if (c.socket != null && c.socket.equals(o.socket)) {
                    throw new RpcException(
                            RpcException.EXISTS,
                            "socket " + c.socket + " is already served by " + o.describe()
                                    + "; choose another path or remove that one first");
                }
                if (c.tap != null && c.tap.equals(o.tap)) {
                    throw new RpcException(
                            RpcException.EXISTS,
                            "TAP interface " + c.tap + " is already used by " + o.describe()
                                    + "; each port needs its own interface (one interface on two ports would mix"
                                    + " their frames): choose another ifname or remove that port first");
                }
                requireImageFree(c, c.image, o);
            }
            claims.put(c.key(), c);
            return c;
        }
    }

    /**
     * Claims {@code image} (as {@link #imageKey}) for the add that holds {@code c}, or refuses (EXISTS) as
     * {@link #claim} does; the caller releases {@code c} either way it fails. An add claims its id and socket first
     * and resolves its image's path only then, outside the lock: on a file system that does not answer (a stopped
     * FUSE daemon, an unreachable NFS server) resolving it waits, and the add must meanwhile hold its id and socket,
     * so that a request for them is refused as in use (being added) instead of going ahead beside it.
     */
    void claimImage(Claim c, Path image) throws RpcException {
        synchronized (lock) {
            for (Claim o : claims.values()) {
                if (o != c) {
                    requireImageFree(c, image, o);
                }
            }
            c.image = image;
        }
    }

    /**
     * Refuses (EXISTS), before its path is resolved, an add of {@code image} named by the very path a claim holds (as
     * given, made absolute and normalised): resolving it waits on a file system that does not answer, as a removal's
     * final flush still under way may (its claim stays until that flush has ended), and the add would then wait for
     * its open's bound to say only that the file system does not answer. {@link #claimImage} still decides for the
     * other spellings of the path.
     */
    void requireImagePathFree(Claim c, Path image) throws RpcException {
        Path given = image.toAbsolutePath().normalize();
        synchronized (lock) {
            for (Claim o : claims.values()) {
                if (o != c) {
                    requireImageFree(c, given, o);
                }
            }
        }
    }

    /** Refuses {@code image} for {@code c} when {@code o} holds it and they are not both read-only (lock held). */
    private static void requireImageFree(Claim c, Path image, Claim o) throws RpcException {
        if (image != null && image.equals(o.image) && !(c.readOnly && o.readOnly)) {
            throw new RpcException(
                    RpcException.EXISTS,
                    "image " + image + " is already exported by " + o.describe()
                            + "; two writers would corrupt it (export it read-only twice, or not at all)");
        }
    }

    /**
     * Makes {@code device} visible ({@code put}, under the lock) once its add has started it outside the lock; a
     * daemon that began stopping meanwhile closes it instead and refuses the add.
     */
    void publish(Claim c, String what, Daemon.Export device, Runnable put) throws RpcException {
        synchronized (lock) {
            if (!closed) {
                put.run();
                c.state = State.ACTIVE;
                return;
            }
        }
        try {
            // the claim goes once its image is closed (after its final flush), as a removal's
            releaseWhenClosed(c, device.closeAsync());
        } catch (RuntimeException e) {
            LOG.log(System.Logger.Level.WARNING, what + ": closing after the daemon began stopping failed", e);
            release(c);
        }
        throw new RpcException(RpcException.FAILED, what + ": the daemon is stopping");
    }

    /** The device of {@code c} runs and is in the daemon's maps (lock held; the caller put it there). */
    void activate(Claim c) {
        c.state = State.ACTIVE;
    }

    /** The claim of {@code key}, now being removed (lock held). */
    Claim removing(String key) {
        Claim c = claims.get(key);
        if (c != null) {
            c.state = State.REMOVING;
        }
        return c;
    }

    /**
     * Lets go of {@code c} once {@code closing} has ended — its image flushed and closed, or its close failed — but not
     * when the close could not be run and the image was left open and locked ({@link ImageRelease.LeftOpen}): a thread
     * of the export may still use the image, and its server's socket may still be there, so its id, socket and image
     * stay taken until the daemon stops (an add of any of them is refused, saying so). The daemon's stop does not wait
     * for such a claim, and names it among what it exits without ({@link #awaitRemovals}).
     */
    void releaseWhenClosed(Claim c, ImageRelease.Closing closing) {
        closing.flushed.whenComplete((flushed, failure) -> {
            Throwable cause = failure instanceof java.util.concurrent.CompletionException ce ? ce.getCause() : failure;
            if (cause instanceof ImageRelease.LeftOpen) {
                leftOpen(c);
            } else {
                release(c);
            }
        });
    }

    /** {@code c}'s image was left open ({@link #releaseWhenClosed}): its claim stays, not waited for by the stop. */
    private void leftOpen(Claim c) {
        if (c == null) {
            return;
        }
        synchronized (lock) {
            if (claims.get(c.key()) == c) {
                c.state = State.LEFT_OPEN;
            }
            lock.notifyAll(); // close() waits for removals to end: this one will not
        }
    }

    /** Lets go of a claim once its device has stopped (or its add failed). */
    void release(Claim c) {
        if (c == null) {
            return;
        }
        synchronized (lock) {
            claims.remove(c.key(), c);
            lock.notifyAll(); // close() waits for removals to end
        }
    }

    /** Whether a claim holds {@code key} (lock held). */
    boolean holds(String key) {
        return claims.containsKey(key);
    }

    /** Whether a claim or an entry of the daemon has {@code id} (lock held). */
    boolean taken(String id) {
        return claims.containsKey(id) || hasDevice.test(id);
    }

    /** Refuses an id a disk, NBD export or switch already has (ids name all three in one space; lock held). */
    void requireFree(String id) throws RpcException {
        if (taken(id)) {
            Claim c = claims.get(id);
            throw new RpcException(
                    RpcException.EXISTS,
                    "id '" + id + "' is already in use" + (c == null ? "" : " by " + c.describe())
                            + "; choose another id or remove it first");
        }
    }

    /** Whether the daemon began stopping (lock held). */
    boolean closed() {
        return closed;
    }

    /** Refuses a request once the daemon began stopping (lock held). */
    void checkOpen() throws RpcException {
        if (closed) {
            throw new RpcException(RpcException.FAILED, "the daemon is stopping");
        }
    }

    /**
     * The daemon begins stopping (lock held; it takes its running devices out of its maps in the same step and
     * closes them): no new claims, and the claims of running devices go — those being removed stay until their
     * removal ends ({@link #awaitRemovals}).
     */
    void close() {
        closed = true;
        claims.values().removeIf(c -> c.state == State.ACTIVE); // the daemon closes them
    }

    /**
     * Waits for the removals under way to end (their images are being flushed and closed), naming them every 10 s,
     * until {@code deadline} ({@link System#nanoTime}) at most: then an ERROR line names those left (a file system or
     * disk that does not answer) and the daemon stops without their final flush. Removals whose image was left open
     * ({@link #releaseWhenClosed}) are not waited for: an ERROR line names them too. Returns those left (empty when
     * every removal ended).
     */
    List<String> awaitRemovals(long deadline) {
        boolean interrupted = false;
        long warnAt = System.nanoTime() + 10_000_000_000L;
        List<String> left;
        synchronized (lock) {
            while (!(left = claims.values().stream()
                            .filter(c -> c.state == State.REMOVING)
                            .map(c -> c.who)
                            .toList())
                    .isEmpty()) {
                long now = System.nanoTime();
                if (now - deadline >= 0) {
                    LOG.log(
                            System.Logger.Level.ERROR,
                            "stopping without waiting longer for the removal of " + left + ": their images are"
                                    + " still being flushed and closed (a file system or disk that does not answer);"
                                    + " writes acknowledged before may not be on disk");
                    break;
                }
                long wait = Math.min(warnAt, deadline) - now;
                if (warnAt - now <= 0) {
                    LOG.log(System.Logger.Level.WARNING, "stopping: still waiting for the removal of " + left);
                    warnAt += 10_000_000_000L;
                    continue;
                }
                try {
                    lock.wait(Math.max(1, wait / 1_000_000));
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
            List<String> open = claims.values().stream()
                    .filter(c -> c.state == State.LEFT_OPEN)
                    .map(c -> c.who)
                    .toList();
            if (!open.isEmpty()) {
                LOG.log(
                        System.Logger.Level.ERROR,
                        "stopping without the final flush of the images of " + open + ": they were left open and"
                                + " locked when they were removed (their close could not be run, see the log); writes"
                                + " acknowledged before may not be on disk");
                left = java.util.stream.Stream.concat(left.stream(), open.stream())
                        .toList();
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
        return left;
    }

    /** A socket path as compared: absolute, normalised, its directory's symbolic links resolved (or its own). */
    static Path socketKey(Path socket) {
        Path abs = socket.toAbsolutePath().normalize();
        try {
            return abs.toRealPath();
        } catch (IOException | SecurityException e) {
            // not there yet: its directory decides
        }
        Path parent = abs.getParent();
        if (parent != null) {
            try {
                return parent.toRealPath().resolve(abs.getFileName());
            } catch (IOException | SecurityException e) {
                // the directory is missing too: listening will say so
            }
        }
        return abs;
    }

    /** An image path as compared: the file itself, with every symbolic link and {@code .}/{@code ..} resolved. */
    static Path imageKey(Path image) {
        return socketKey(image);
    }
}
