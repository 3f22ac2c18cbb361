// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.GuestFixture;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.statistics.Statistics;

/**
 * Notification suppression against the spec's own wording, modelled with unbounded counters: an event index E asks
 * for a notification when the other side moves past E, so the decision must be "E lies in [old, new)", checked by
 * enumerating the ring positions that were crossed (not by the 16-bit arithmetic under test).
 */
class NotificationPropertiesTest {
    private static final ValueLayout.OfShort LE16 = VirtioRing.LE16;

    /**
     * One round: {@code requests} requests of {@code slots} descriptors each pass through the ring; then the side being
     * tested sets its suppression state ({@code mode}, event at {@code delta} from the last decision or at ring
     * position {@code off}/{@code wrap}), and the other side decides when {@code decide}.
     */
    record Round(int requests, int slots, int mode, int delta, int off, boolean wrap, boolean decide) {}

    @Provide
    Arbitrary<Rings> rings() {
        return Rings.any(7, 70);
    }

    @Provide
    Arbitrary<List<Round>> rounds() {
        Arbitrary<Integer> delta = Arbitraries.frequencyOf(
                net.jqwik.api.Tuple.of(3, Arbitraries.integers().between(-2, 8)),
                net.jqwik.api.Tuple.of(1, Arbitraries.integers().between(-32000, 32000)));
        return Combinators.combine(
                        Arbitraries.integers().between(0, 4),
                        Arbitraries.integers().between(1, 3),
                        Arbitraries.integers().between(0, 3),
                        delta,
                        Arbitraries.integers().between(0, 0x7fff),
                        Arbitraries.of(true, false),
                        Arbitraries.frequency(net.jqwik.api.Tuple.of(3, true), net.jqwik.api.Tuple.of(1, false)))
                .as(Round::new)
                .list()
                .ofMinSize(1)
                .ofMaxSize(60);
    }

    private static String mode(Rings r, int mode) {
        if (!r.packed()) {
            return r.eventIdx() ? "split event index" : "split flags";
        }
        return mode == VirtioRing.EVENT_FLAGS_DESC && r.eventIdx() ? "packed descriptor event" : "packed flags";
    }

    /** Packed event position: half the time near the last decision (as drivers place it), else anywhere. */
    private static int packedOff(Round round, long decided, int size) {
        return round.off() % 2 == 0 ? (int) Math.floorMod(decided + round.delta(), (long) size) : round.off() % size;
    }

    private static boolean packedWrap(Round round, long decided, int size) {
        return round.off() % 2 == 0 ? lapWrap(Math.max(0, decided + round.delta()), size) : round.wrap();
    }

    /** Absolute ring-position counter of a packed ring whose lap parity gives the wrap counter. */
    private static long packedAbsolute(int pos, boolean wrap, int size) {
        return pos + (wrap ? 0 : size) + 2L * size * 1000;
    }

    private static boolean lapWrap(long abs, int size) {
        return (abs / size) % 2 == 0;
    }

    /** Did positions [old, now) include the event? Enumerated. */
    private static boolean crossedSplit(long old, long now, int event) {
        for (long i = old; i < now; i++) {
            if ((i & 0xffff) == event) {
                return true;
            }
        }
        return false;
    }

    private static boolean crossedPacked(long old, long now, int off, boolean wrap, int size) {
        for (long s = old; s < now; s++) {
            if (s % size == off && lapWrap(s, size) == wrap) {
                return true;
            }
        }
        return false;
    }

    /** Driver and device on one ring; moves {@code n} requests of {@code slots} descriptors through it, out of order. */
    private static final class Pair {
        final GuestFixture g;
        final Rings r;
        final DriverRing d;
        final Virtqueue q;
        final long buf;
        final Random random;

        Pair(GuestFixture g, Rings r, long seed) throws VirtqueueException {
            this.g = g;
            this.r = r;
            this.d = r.driver(g);
            this.q = Virtqueue.create(d.queueConfig(0, false), g.holder);
            this.buf = g.alloc(64, 8);
            this.random = new Random(seed);
        }

        /** Adds up to n requests; returns the ring positions (split: entries) they took. */
        int add(int n, int slots) {
            int size = r.size();
            int per = Math.min(slots, size);
            int took = 0;
            for (int i = 0; i < n; i++) {
                int id = d.add(
                        new long[] {buf, buf, buf},
                        new int[] {8, 8, 8},
                        new boolean[] {true, true, true},
                        per,
                        DriverRing.NO_INDIRECT);
                if (id < 0) {
                    break;
                }
                took += r.packed() ? per : 1;
            }
            return took;
        }

        /** Device takes everything and completes it in random order; returns used positions advanced. */
        int serveAll() throws VirtqueueException {
            List<DescriptorChain> chains = new ArrayList<>();
            for (; ; ) {
                DescriptorChain c = q.newChain();
                if (!q.pop(c)) {
                    break;
                }
                chains.add(c);
            }
            Collections.shuffle(chains, random);
            int advanced = 0;
            for (DescriptorChain c : chains) {
                q.push(c, 1);
                advanced += r.packed() ? c.count() : 1;
            }
            return advanced;
        }

        void drainUsed() {
            while (d.pollUsed() != -1) {
                // frees the ring for the next round
            }
        }
    }

    @Property(tries = 400)
    void deviceNotifiesTheDriverExactlyWhenTheSpecSays(
            @ForAll("rings") Rings r, @ForAll("rounds") List<Round> rounds, @ForAll long seed) throws Exception {
        try (GuestFixture g = new GuestFixture()) {
            Pair p = new Pair(g, r, seed);
            int size = r.size();
            long used = r.packed() ? packedAbsolute(r.start(), r.wrap(), size) : r.start();
            long decided = used;
            boolean first = true;
            MemorySegment driverArea = g.at(p.d.driverAreaAddr(), 4);
            MemorySegment usedEvent = r.packed() ? null : g.at(p.d.driverAreaAddr() + 4 + 2L * size, 2);
            for (Round round : rounds) {
                p.add(round.requests(), round.slots());
                used += p.serveAll();
                p.drainUsed();
                boolean expected;
                boolean pushed = used != decided;
                if (!r.packed()) {
                    int flags = round.mode(); // the driver MUST write 0 or 1; the device looks at bit 0 only
                    driverArea.set(LE16, 0, (short) flags);
                    int event = (int) ((decided + round.delta()) & 0xffff);
                    usedEvent.set(LE16, 0, (short) event);
                    expected =
                            pushed && (r.eventIdx() ? first || crossedSplit(decided, used, event) : (flags & 1) == 0);
                } else {
                    int off = packedOff(round, decided, size);
                    boolean wrap = packedWrap(round, decided, size);
                    driverArea.set(LE16, 0, (short) (off | (wrap ? 0x8000 : 0)));
                    driverArea.set(LE16, 2, (short) round.mode());
                    expected = pushed
                            && switch (round.mode()) {
                                case VirtioRing.EVENT_FLAGS_DISABLE -> false;
                                case VirtioRing.EVENT_FLAGS_DESC ->
                                    !r.eventIdx() || first || crossedPacked(decided, used, off, wrap, size);
                                default -> true; // ENABLE, and the reserved value 3 (notify rather than risk a hang)
                            };
                }
                if (round.decide()) {
                    String where =
                            "round " + round + ", used " + decided + " -> " + used + (first ? " (first decision)" : "");
                    assertEquals(expected, p.q.needsNotification(), where);
                    Statistics.label("decision").collect(mode(r, round.mode()), expected);
                    if (pushed) {
                        first = false;
                    }
                    decided = used;
                }
            }
            assertNull(p.q.failure());
        }
    }

    @Property(tries = 400)
    void driverKicksTheDeviceExactlyWhenTheSpecSays(
            @ForAll("rings") Rings r, @ForAll("rounds") List<Round> rounds, @ForAll long seed) throws Exception {
        try (GuestFixture g = new GuestFixture()) {
            Pair p = new Pair(g, r, seed);
            int size = r.size();
            long avail = r.packed() ? packedAbsolute(r.start(), r.wrap(), size) : r.start();
            long decided = avail;
            MemorySegment deviceArea = g.at(p.d.deviceAreaAddr(), 4);
            MemorySegment availEvent = r.packed() ? null : g.at(p.d.deviceAreaAddr() + 4 + 8L * size, 2);
            for (Round round : rounds) {
                boolean expected;
                int off = packedOff(round, decided, size);
                boolean wrap = packedWrap(round, decided, size);
                int event = (int) ((decided + round.delta()) & 0xffff);
                if (!r.packed()) {
                    deviceArea.set(LE16, 0, (short) round.mode());
                    availEvent.set(LE16, 0, (short) event);
                } else {
                    deviceArea.set(LE16, 0, (short) (off | (wrap ? 0x8000 : 0)));
                    deviceArea.set(LE16, 2, (short) round.mode());
                }
                avail += p.add(round.requests(), round.slots());
                boolean added = avail != decided;
                if (!r.packed()) {
                    expected = added && (r.eventIdx() ? crossedSplit(decided, avail, event) : (round.mode() & 1) == 0);
                } else {
                    expected = added
                            && switch (round.mode()) {
                                case VirtioRing.EVENT_FLAGS_DISABLE -> false;
                                case VirtioRing.EVENT_FLAGS_DESC ->
                                    !r.eventIdx() || crossedPacked(decided, avail, off, wrap, size);
                                default -> true;
                            };
                }
                if (round.decide()) {
                    assertEquals(expected, p.d.kickNeeded(), "round " + round + ", avail " + decided + " -> " + avail);
                    Statistics.label("decision").collect(mode(r, round.mode()), expected);
                    decided = avail;
                    p.serveAll();
                    p.drainUsed();
                }
            }
            assertNull(p.q.failure());
        }
    }

    /** Which side does what next in {@link #noWakeupIsEverLost}. */
    @Provide
    Arbitrary<List<Integer>> schedule() {
        return Arbitraries.integers().between(0, 6).list().ofMinSize(1).ofMaxSize(300);
    }

    /**
     * Driver and device each sleep only after re-enabling notifications and finding nothing to do, exactly as the
     * {@link Virtqueue} documentation prescribes. Under any interleaving, no buffer is left stranded: a sleeping device
     * has a kick pending or nothing available, a sleeping driver has an interrupt pending or nothing used, and once
     * the pending notifications are delivered everything completes.
     */
    @Property(tries = 400)
    void noWakeupIsEverLost(@ForAll("rings") Rings r, @ForAll("schedule") List<Integer> schedule, @ForAll long seed)
            throws Exception {
        try (GuestFixture g = new GuestFixture()) {
            Pair p = new Pair(g, r, seed);
            Sim s = new Sim(p);
            for (int step : schedule) {
                s.step(step);
                s.checkInvariants();
            }
            // Let notifications flow until both sides sleep with nothing pending.
            for (int guard = 0; guard < 100_000 && !s.quiescent(); guard++) {
                s.step(guard % 7 == 0 ? 1 : guard % 7);
                s.checkInvariants();
            }
            assertTrue(s.quiescent());
            assertEquals(s.submitted, s.completed, "every submitted request came back");
            assertNull(p.q.failure());
        }
    }

    private static final class Sim {
        final Pair p;
        boolean deviceAwake;
        boolean kickPending;
        boolean driverAwake;
        boolean irqPending;
        final List<DescriptorChain> inService = new ArrayList<>();
        int submitted;
        int completed;

        Sim(Pair p) throws VirtqueueException {
            this.p = p;
            assertFalse(p.q.enableNotifications()); // the device starts asleep, listening
            assertFalse(p.d.enableInterrupts()); // so does the driver
        }

        void step(int what) throws VirtqueueException {
            switch (what) {
                case 0 -> { // the driver submits (from any context)
                    if (p.add(1, 1 + submitted % 2) > 0) {
                        submitted++;
                        if (p.d.kickNeeded()) {
                            kickPending = true;
                        }
                    }
                }
                case 1 -> { // a kick arrives
                    if (kickPending) {
                        kickPending = false;
                        deviceAwake = true;
                        p.q.disableNotifications();
                    }
                }
                case 2 -> { // the awake device takes requests into service
                    if (deviceAwake) {
                        DescriptorChain c = p.q.newChain();
                        while (p.q.pop(c)) {
                            inService.add(c);
                            c = p.q.newChain();
                        }
                    }
                }
                case 3 -> { // an I/O finishes: the device completes one request
                    if (!inService.isEmpty()) {
                        p.q.push(inService.remove(0), 0);
                        if (p.q.needsNotification()) {
                            irqPending = true;
                        }
                    }
                }
                case 4 -> { // the device tries to go to sleep
                    if (deviceAwake && !p.q.enableNotifications()) {
                        deviceAwake = false;
                    }
                }
                case 5 -> { // an interrupt arrives
                    if (irqPending) {
                        irqPending = false;
                        driverAwake = true;
                        p.d.disableInterrupts();
                    }
                }
                default -> { // the awake driver reaps, then tries to sleep
                    if (driverAwake) {
                        while (p.d.pollUsed() != -1) {
                            completed++;
                        }
                        if (!p.d.enableInterrupts()) {
                            driverAwake = false;
                        }
                    }
                }
            }
        }

        void checkInvariants() throws VirtqueueException {
            if (!deviceAwake && !kickPending) {
                assertFalse(p.q.hasAvailable(), "device asleep without a kick while buffers are available");
            }
            if (!driverAwake && !irqPending) {
                assertFalse(p.d.hasUsed(), "driver asleep without an interrupt while used buffers wait");
            }
        }

        boolean quiescent() {
            return !deviceAwake && !kickPending && !driverAwake && !irqPending && inService.isEmpty();
        }
    }
}
