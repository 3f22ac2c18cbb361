// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.util.ArrayList;
import java.util.List;

/**
 * The switch's forwarding database: which port each station address was last seen on, forgotten after the aging
 * time.
 *
 * <p>Every port's receive thread looks up and refreshes entries for every frame, so those two operations take no
 * lock and write no shared memory in the steady state: an open-addressing table of single 64-bit words
 * ({@code mac << 16 | port + 1}) read with acquire loads, and a parallel array of last-seen seconds that is stored to
 * (opaque) only when the second changed. Changes of the key set — a new address, a station that moved, aging,
 * flushing a port — are rare and take one lock, so inserts never race each other into duplicate slots. Removal
 * leaves a tombstone; when tombstones pile up, the live entries are copied into a fresh array that is published
 * with a volatile store (readers still on the old array see a consistent, merely stale, view).
 *
 * <p>The table holds at most {@code capacity} addresses; when full, new addresses are not learned (their frames are
 * flooded, as a hardware switch with a full CAM does) and {@link #learnFailures()} counts it. Each port may also hold
 * at most {@code perPortLimit} of them (Linux's bridge calls this {@code fdb_max_learned}, a switch's port security
 * "maximum"), so one port spraying source addresses fills its own share, not the table: the others' entries stay,
 * and addresses they learn later still fit as long as {@code capacity} exceeds the sum of the shares in use.
 */
public final class MacTable {
    private static final long EMPTY = 0;
    private static final long TOMBSTONE = -1;
    /** Port numbers are stored plus one in 16 bits, so 0 stays free to mean "empty". */
    public static final int MAX_PORTS = 0xfffe;

    private static final VarHandle WORDS = MethodHandles.arrayElementVarHandle(long[].class);
    private static final VarHandle SEEN = MethodHandles.arrayElementVarHandle(int[].class);

    private static final class Table {
        final long[] words;
        final int[] seen;
        final int mask;

        Table(int slots) {
            words = new long[slots];
            seen = new int[slots];
            mask = slots - 1;
        }
    }

    /** One learned address, for display. */
    public record Entry(long mac, int port, int ageSeconds) {
        @Override
        public String toString() {
            return Mac.toString(mac) + " port " + port + " age " + ageSeconds + "s";
        }
    }

    /** {@link #tryLearn} outcomes. */
    public static final int LEARNED = 0;
    /** The table is full (and nothing has aged out). */
    public static final int TABLE_FULL = 1;
    /** The port already holds its share of addresses (and none of them has aged out). */
    public static final int PORT_FULL = 2;

    private final Object lock = new Object();
    private final int capacity;
    private final int perPortLimit;
    private int[] perPort = new int[16]; // guarded by lock: live entries per port
    private int agedFullAt = Integer.MIN_VALUE; // guarded by lock
    private volatile int agingSeconds;
    private volatile Table table;
    private int live; // guarded by lock
    private int tombstones; // guarded by lock
    private volatile long learnFailures;

    /**
     * @param capacity     most addresses held at once
     * @param agingSeconds how long an address is remembered after its last frame (at least 1)
     */
    public MacTable(int capacity, int agingSeconds) {
        this(capacity, agingSeconds, capacity);
    }

    /**
     * @param capacity     most addresses held at once
     * @param agingSeconds how long an address is remembered after its last frame (at least 1)
     * @param perPortLimit most addresses held for one port at once (1..capacity)
     */
    public MacTable(int capacity, int agingSeconds, int perPortLimit) {
        if (capacity < 1 || capacity > 1 << 24) {
            throw new IllegalArgumentException("MAC table capacity must be 1.." + (1 << 24) + ": " + capacity);
        }
        if (perPortLimit < 1 || perPortLimit > capacity) {
            throw new IllegalArgumentException("MAC addresses per port must be 1.." + capacity + ": " + perPortLimit);
        }
        this.perPortLimit = perPortLimit;
        setAgingSeconds(agingSeconds);
        this.capacity = capacity;
        this.table = new Table(Math.max(16, Integer.highestOneBit(capacity * 2 - 1) << 1));
    }

    public void setAgingSeconds(int seconds) {
        if (seconds < 1) {
            throw new IllegalArgumentException("MAC aging time must be at least 1 second: " + seconds);
        }
        this.agingSeconds = seconds;
    }

    public int agingSeconds() {
        return agingSeconds;
    }

    public int capacity() {
        return capacity;
    }

    public int perPortLimit() {
        return perPortLimit;
    }

    private static int hash(long mac) {
        return (int) ((mac * 0x9E37_79B9_7F4A_7C15L) >>> 32);
    }

    private static int portOf(long word) {
        return (int) (word & 0xffff) - 1;
    }

    private static boolean holds(long word, long mac) {
        return word != TOMBSTONE && word >>> 16 == mac;
    }

    /**
     * The port {@code mac} was last seen on, or -1 when it is unknown or older than the aging time.
     *
     * @param now the caller's clock in seconds (the same clock for every call)
     */
    public int lookup(long mac, int now) {
        Table t = table;
        int i = hash(mac) & t.mask;
        for (int n = 0; n <= t.mask; n++) {
            long w = (long) WORDS.getAcquire(t.words, i);
            if (w == EMPTY) {
                return -1;
            }
            if (holds(w, mac)) {
                return now - (int) SEEN.getOpaque(t.seen, i) < agingSeconds ? portOf(w) : -1;
            }
            i = (i + 1) & t.mask;
        }
        return -1;
    }

    /**
     * Records that {@code mac} was seen on {@code port} at {@code now}.
     *
     * @return false when the table or the port's share is full and the address was not learned
     */
    public boolean learn(long mac, int port, int now) {
        return tryLearn(mac, port, now) == LEARNED;
    }

    /**
     * Records that {@code mac} was seen on {@code port} at {@code now}.
     *
     * @return {@link #LEARNED}, or why not: {@link #TABLE_FULL}, {@link #PORT_FULL}
     */
    public int tryLearn(long mac, int port, int now) {
        Table t = table;
        int i = hash(mac) & t.mask;
        for (int n = 0; n <= t.mask; n++) {
            long w = (long) WORDS.getAcquire(t.words, i);
            if (w == EMPTY) {
                break;
            }
            if (holds(w, mac)) {
                if (portOf(w) != port) {
                    break; // the station moved: rewrite under the lock
                }
                if ((int) SEEN.getOpaque(t.seen, i) != now) {
                    SEEN.setOpaque(t.seen, i, now);
                }
                return LEARNED;
            }
            i = (i + 1) & t.mask;
        }
        return learnLocked(mac, port, now);
    }

    private int learnLocked(long mac, int port, int now) {
        if (port < 0 || port >= MAX_PORTS) {
            throw new IllegalArgumentException("port number outside 0.." + (MAX_PORTS - 1) + ": " + port);
        }
        synchronized (lock) {
            Table t = table;
            int free = -1;
            int i = hash(mac) & t.mask;
            for (int n = 0; n <= t.mask; n++) {
                long w = t.words[i];
                if (w == EMPTY) {
                    if (free < 0) {
                        free = i;
                    }
                    break;
                }
                if (w == TOMBSTONE) {
                    if (free < 0) {
                        free = i;
                    }
                } else if (w >>> 16 == mac) {
                    int from = portOf(w);
                    if (from != port) { // the station moved: it takes a place in the new port's share
                        if (portCount(port) >= perPortLimit) {
                            if (ageOncePerSecondLocked(now) > 0) {
                                return learnLocked(mac, port, now); // aging may have rebuilt the table
                            }
                            learnFailures++;
                            return PORT_FULL; // it stays where it was until it ages out there
                        }
                        perPort[from]--;
                        countPort(port, 1);
                    }
                    SEEN.setOpaque(t.seen, i, now);
                    WORDS.setRelease(t.words, i, mac << 16 | (port + 1));
                    return LEARNED;
                }
                i = (i + 1) & t.mask;
            }
            if (portCount(port) >= perPortLimit || live >= capacity) {
                if (ageOncePerSecondLocked(now) > 0) {
                    return learnLocked(mac, port, now); // aging may have rebuilt the table: find the free slot again
                }
                learnFailures++;
                return portCount(port) >= perPortLimit ? PORT_FULL : TABLE_FULL;
            }
            if (t.words[free] == TOMBSTONE) {
                tombstones--;
            }
            SEEN.setOpaque(t.seen, free, now);
            WORDS.setRelease(t.words, free, mac << 16 | (port + 1)); // seen is visible before the entry is
            live++;
            countPort(port, 1);
            return LEARNED;
        }
    }

    private int portCount(int port) {
        return port < perPort.length ? perPort[port] : 0;
    }

    private void countPort(int port, int delta) {
        if (port >= perPort.length) {
            perPort = java.util.Arrays.copyOf(perPort, Math.min(MAX_PORTS, Math.max(port + 1, perPort.length * 2)));
        }
        perPort[port] += delta;
    }

    /** Addresses held for {@code port} now (including expired ones that aging has not swept yet). */
    public int size(int port) {
        synchronized (lock) {
            return portCount(port);
        }
    }

    /** Forgets addresses not seen for the aging time; returns how many. */
    public int age(int now) {
        synchronized (lock) {
            return ageLocked(now);
        }
    }

    /**
     * Ages on behalf of a learner that found no room, at most once per clock second: entries only expire when the
     * clock moves, and a port spraying new source addresses would otherwise sweep the whole table per frame.
     */
    private int ageOncePerSecondLocked(int now) {
        if (agedFullAt == now) {
            return 0;
        }
        agedFullAt = now;
        return ageLocked(now);
    }

    private int ageLocked(int now) {
        int aging = agingSeconds;
        return removeLocked(-1, now, aging);
    }

    /** Forgets every address learned on {@code port} (its peer went away); returns how many. */
    public int flushPort(int port) {
        synchronized (lock) {
            return removeLocked(port, 0, 0);
        }
    }

    /** Forgets everything. */
    public void flush() {
        synchronized (lock) {
            Table t = table;
            for (int i = 0; i <= t.mask; i++) {
                long w = t.words[i];
                if (w != EMPTY && w != TOMBSTONE) {
                    WORDS.setRelease(t.words, i, TOMBSTONE);
                    live--;
                    tombstones++;
                }
            }
            java.util.Arrays.fill(perPort, 0);
            maybeRebuildLocked();
        }
    }

    /** Removes entries of {@code port} (port ≥ 0), or entries older than {@code aging} seconds (port -1). */
    private int removeLocked(int port, int now, int aging) {
        Table t = table;
        int removed = 0;
        for (int i = 0; i <= t.mask; i++) {
            long w = t.words[i];
            if (w == EMPTY || w == TOMBSTONE) {
                continue;
            }
            boolean drop = port >= 0 ? portOf(w) == port : now - (int) SEEN.getOpaque(t.seen, i) >= aging;
            if (drop) {
                WORDS.setRelease(t.words, i, TOMBSTONE);
                perPort[portOf(w)]--;
                removed++;
            }
        }
        live -= removed;
        tombstones += removed;
        maybeRebuildLocked();
        return removed;
    }

    /** Tombstones lengthen every probe for an absent address: past a quarter of the slots, copy the live entries. */
    private void maybeRebuildLocked() {
        Table t = table;
        if (tombstones <= (t.mask + 1) / 4) {
            return;
        }
        Table n = new Table(t.mask + 1);
        for (int i = 0; i <= t.mask; i++) {
            long w = t.words[i];
            if (w == EMPTY || w == TOMBSTONE) {
                continue;
            }
            int j = hash(w >>> 16) & n.mask;
            while (n.words[j] != EMPTY) {
                j = (j + 1) & n.mask;
            }
            n.words[j] = w;
            n.seen[j] = (int) SEEN.getOpaque(t.seen, i);
        }
        tombstones = 0;
        table = n; // volatile store publishes the filled arrays
    }

    /** Addresses currently held (including expired ones that aging has not swept yet). */
    public int size() {
        synchronized (lock) {
            return live;
        }
    }

    /** Addresses that could not be learned because the table was full. */
    public long learnFailures() {
        return learnFailures;
    }

    /** The unexpired entries, for display. */
    public List<Entry> entries(int now) {
        List<Entry> out = new ArrayList<>();
        Table t = table;
        for (int i = 0; i <= t.mask; i++) {
            long w = (long) WORDS.getAcquire(t.words, i);
            if (w != EMPTY && w != TOMBSTONE) {
                int age = now - (int) SEEN.getOpaque(t.seen, i);
                if (age < agingSeconds) {
                    out.add(new Entry(w >>> 16, portOf(w), age));
                }
            }
        }
        return out;
    }
}
