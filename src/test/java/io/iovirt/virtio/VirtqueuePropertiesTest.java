// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.GuestFixture;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.Tuple;
import net.jqwik.api.statistics.Statistics;

/** Legal traffic round-trips exactly; corrupted rings fail cleanly and never reach outside guest memory. */
class VirtqueuePropertiesTest {
    private static final int MAX_SEGS = 6;
    private static final int MAX_LEN = 48;

    record Seg(int len, boolean writable) {}

    sealed interface Op permits Add, Complete, Poll {}

    record Add(List<Seg> segs, boolean indirect) implements Op {}

    /** The device completes one of its in-flight requests, writing {@code percent}% of its writable bytes. */
    record Complete(int pick, int percent) implements Op {}

    record Poll() implements Op {}

    @Provide
    Arbitrary<Rings> rings() {
        return Rings.any(6, 40);
    }

    @Provide
    Arbitrary<List<Op>> traffic() {
        Arbitrary<Seg> seg = Combinators.combine(
                        Arbitraries.integers().between(0, MAX_LEN), Arbitraries.of(true, false))
                .as(Seg::new);
        Arbitrary<Op> add = Combinators.combine(
                        seg.list().ofMinSize(1).ofMaxSize(MAX_SEGS), Arbitraries.of(true, false))
                .as(Add::new);
        Arbitrary<Op> complete = Combinators.combine(
                        Arbitraries.integers().between(0, 1000),
                        Arbitraries.integers().between(0, 100))
                .as(Complete::new);
        return Arbitraries.frequencyOf(
                        Tuple.of(5, add), Tuple.of(4, complete), Tuple.of(2, Arbitraries.just(new Poll())))
                .list()
                .ofMaxSize(160);
    }

    private record Expected(int slot, List<Seg> segs, long[] addrs, int seed) {}

    @Property(tries = 250)
    void legalTrafficRoundTripsExactly(@ForAll("rings") Rings r, @ForAll("traffic") List<Op> ops) throws Exception {
        try (GuestFixture g = new GuestFixture(1 << 20, 256 << 10)) {
            DriverRing d = r.driver(g);
            Virtqueue q = Virtqueue.create(d.queueConfig(0, true), g.holder);
            int size = r.size();
            // Per request slot: buffers alternating between the two regions, and an indirect table.
            long[][] bufs = new long[size][MAX_SEGS];
            long[] tables = new long[size];
            for (int s = 0; s < size; s++) {
                for (int i = 0; i < MAX_SEGS; i++) {
                    bufs[s][i] = i % 2 == 0 ? g.alloc(MAX_LEN, 1) : g.allocHigh(MAX_LEN, 1);
                }
                tables[s] = g.alloc(16L * MAX_SEGS, 16);
            }
            ArrayDeque<Integer> freeSlots = new ArrayDeque<>();
            for (int s = 0; s < size; s++) {
                freeSlots.add(s);
            }
            Map<Integer, Expected> available = new HashMap<>();
            Map<Integer, Long> completed = new HashMap<>();
            List<DescriptorChain> popped = new ArrayList<>();
            ArrayDeque<DescriptorChain> spare = new ArrayDeque<>();
            Traffic t = new Traffic(g, d, q, available, completed, popped, spare, freeSlots);
            int seed = 0;
            for (Op op : ops) {
                switch (op) {
                    case Add a -> {
                        if (freeSlots.isEmpty()) {
                            continue;
                        }
                        List<Seg> segs = new ArrayList<>(
                                a.segs().subList(0, Math.min(a.segs().size(), size)));
                        segs.sort((x, y) -> Boolean.compare(x.writable(), y.writable())); // readable first
                        int slot = freeSlots.poll();
                        int n = segs.size();
                        long[] addrs = new long[n];
                        int[] lens = new int[n];
                        boolean[] w = new boolean[n];
                        seed++;
                        for (int i = 0; i < n; i++) {
                            addrs[i] = bufs[slot][i];
                            lens[i] = segs.get(i).len();
                            w[i] = segs.get(i).writable();
                            MemorySegment m = g.at(addrs[i], MAX_LEN);
                            for (int b = 0; b < MAX_LEN; b++) {
                                m.set(ValueLayout.JAVA_BYTE, b, w[i] ? 0 : (byte) (seed * 31 + i * 7 + b));
                            }
                        }
                        int id = d.add(addrs, lens, w, n, a.indirect() ? tables[slot] : DriverRing.NO_INDIRECT);
                        if (id < 0) {
                            freeSlots.push(slot);
                            continue;
                        }
                        assertNull(available.put(id, new Expected(slot, segs, addrs, seed)), "driver reused a live ID");
                        d.kickNeeded();
                    }
                    case Complete c -> {
                        t.popAll();
                        if (!popped.isEmpty()) {
                            t.complete(popped.remove(c.pick() % popped.size()), c.percent());
                        }
                    }
                    case Poll p -> t.pollAll();
                }
            }
            t.popAll();
            while (!popped.isEmpty()) {
                t.complete(popped.removeLast(), 100);
            }
            t.pollAll();
            assertTrue(available.isEmpty(), "requests lost: " + available.keySet());
            assertEquals(0, d.inFlight());
            assertEquals(0, q.inFlight());
            assertNull(q.failure());
            assertTrue(g.guardsIntact());
        }
    }

    /** Both ends of {@link #legalTrafficRoundTripsExactly}, with the checks at each hand-over. */
    private record Traffic(
            GuestFixture g,
            DriverRing d,
            Virtqueue q,
            Map<Integer, Expected> available,
            Map<Integer, Long> completed,
            List<DescriptorChain> popped,
            ArrayDeque<DescriptorChain> spare,
            ArrayDeque<Integer> freeSlots) {
        void popAll() throws VirtqueueException {
            for (; ; ) {
                DescriptorChain c = spare.isEmpty() ? q.newChain() : spare.pop();
                if (!q.pop(c)) {
                    spare.push(c);
                    return;
                }
                Expected e = available.get(c.id());
                assertNotNull(e, "device popped ID " + c.id() + " that the driver did not make available");
                assertEquals(e.segs().size(), c.count());
                int readable = 0;
                for (int i = 0; i < c.count(); i++) {
                    Seg s = e.segs().get(i);
                    assertEquals(e.addrs()[i], c.guestAddress(i));
                    assertEquals(s.len(), c.segment(i).byteSize());
                    assertEquals(s.writable(), c.isWritable(i));
                    assertTrue(g.insideGuest(c.segment(i)) || s.len() == 0);
                    if (!s.writable()) {
                        assertArrayEquals(
                                g.at(e.addrs()[i], s.len()).toArray(ValueLayout.JAVA_BYTE),
                                c.segment(i).toArray(ValueLayout.JAVA_BYTE));
                        readable += s.len();
                    }
                }
                MemorySegment all = Arena.ofAuto().allocate(Math.max(1, readable));
                assertEquals(readable, c.copyFromReadable(0, all.asSlice(0, readable)));
                assertEquals(readable, c.readableBytes());
                popped.add(c);
            }
        }

        void complete(DescriptorChain c, int percent) throws VirtqueueException {
            long n = c.writableBytes() * percent / 100;
            byte[] data = new byte[(int) n];
            for (int i = 0; i < n; i++) {
                data[i] = (byte) (c.id() * 13 + i);
            }
            assertEquals(n, c.copyToWritable(0, MemorySegment.ofArray(data)));
            completed.put(c.id(), n);
            q.push(c, n);
            spare.push(c);
        }

        void pollAll() {
            for (long u; (u = d.pollUsed()) != -1; ) {
                int id = DriverRing.usedId(u);
                Long len = completed.remove(id);
                assertNotNull(len, "driver got ID " + id + " back that the device did not complete");
                assertEquals(len.longValue(), DriverRing.usedLen(u));
                Expected e = available.remove(id);
                // The first len bytes of the writable part hold what the device wrote, across buffers.
                long off = 0;
                for (int i = 0; i < e.segs().size() && off < len; i++) {
                    Seg s = e.segs().get(i);
                    if (!s.writable()) {
                        continue;
                    }
                    MemorySegment m = g.at(e.addrs()[i], s.len());
                    for (int b = 0; b < s.len() && off < len; b++, off++) {
                        assertEquals((byte) (id * 13 + off), m.get(ValueLayout.JAVA_BYTE, b));
                    }
                }
                freeSlots.push(e.slot());
            }
        }
    }

    // ---- corrupted rings ----

    /** One thing a hostile guest or the device does next. */
    record Step(int kind, int a, int b, long addr, int len, int flags) {}

    @Provide
    Arbitrary<List<Step>> hostileSteps() {
        Arbitrary<Long> addr = Arbitraries.oneOf(
                Arbitraries.of(
                        0L,
                        -8L,
                        -1L,
                        0x10_0000L - 4,
                        0x10_0000L,
                        0x7fff_ffff_ffffL,
                        (long) (1 << 20) - 8,
                        0x10_0000L + (256 << 10) - 4),
                Arbitraries.longs().between(0, 1 << 20),
                Arbitraries.longs().between(0x10_0000L, 0x10_0000L + (256 << 10)),
                Arbitraries.longs());
        Arbitrary<Integer> len = Arbitraries.oneOf(
                Arbitraries.of(0, 1, 15, 16, 32, 48, 16 * 64, 16 * 65, -1, Integer.MIN_VALUE),
                Arbitraries.integers().between(0, 4096),
                Arbitraries.integers());
        Arbitrary<Integer> flags = Arbitraries.oneOf(
                Arbitraries.integers()
                        .between(0, 7)
                        .flatMap(f -> Arbitraries.of(
                                        0,
                                        VirtioRing.DESC_F_AVAIL,
                                        VirtioRing.DESC_F_USED,
                                        VirtioRing.DESC_F_AVAIL | VirtioRing.DESC_F_USED)
                                .map(x -> x | f)),
                Arbitraries.integers().between(0, 0xffff));
        Arbitrary<Integer> small = Arbitraries.frequencyOf(
                Tuple.of(4, Arbitraries.integers().between(0, 70)),
                Tuple.of(1, Arbitraries.integers().between(0, 0xffff)));
        return Combinators.combine(Arbitraries.integers().between(0, 13), small, small, addr, len, flags)
                .as(Step::new)
                .list()
                .ofMinSize(1)
                .ofMaxSize(80);
    }

    @Property(tries = 1500)
    void corruptedRingsFailCleanlyInsideGuestMemory(
            @ForAll("rings") Rings r, @ForAll("hostileSteps") List<Step> steps, @ForAll boolean indirectDesc)
            throws Exception {
        try (GuestFixture g = new GuestFixture(1 << 20, 256 << 10)) {
            DriverRing d = r.driver(g);
            Virtqueue q = Virtqueue.create(d.queueConfig(0, indirectDesc), g.holder);
            long[] tables = new long[4];
            for (int i = 0; i < tables.length; i++) {
                tables[i] = g.alloc(16L * 8, 16);
            }
            long buf = g.alloc(64, 8);
            long bufHigh = g.allocHigh(64, 8);
            MemorySegment ringArea = g.at(d.descAddr(), 16L * r.size());
            List<DescriptorChain> popped = new ArrayList<>();
            VirtqueueException failure = null;
            for (Step s : steps) {
                try {
                    switch (s.kind()) {
                        case 0 -> { // a legal request, so the device has real chains to mix with the junk
                            int n = Math.min(1 + s.a() % 3, r.size());
                            d.add(
                                    new long[] {buf, bufHigh, buf},
                                    new int[] {64, 64, 8},
                                    new boolean[] {false, true, true},
                                    n,
                                    s.b() % 2 == 0 ? DriverRing.NO_INDIRECT : tables[s.a() % tables.length]);
                        }
                        case 1, 2, 3 -> { // rewrite a descriptor the device is about to read
                            if (d instanceof SplitDriverRing sd) {
                                int i = s.a() % r.size();
                                sd.writeDescriptor(
                                        i,
                                        pick(s, tables),
                                        s.len(),
                                        s.flags() & ~(s.kind() == 3 ? 0 : 0xfff8),
                                        s.b() % (r.size() + 2));
                                if (s.kind() != 3) {
                                    sd.exposeHead(i);
                                }
                            } else {
                                // The device's next position and lap come from its vring base; mark the descriptor
                                // available for that lap most of the time.
                                int base = q.failure() == null ? q.vringBase() : 0;
                                int pos = ((base & 0x7fff) + s.a() % 3) % r.size();
                                boolean lap = (base & 0x8000) != 0;
                                int avail = lap ? VirtioRing.DESC_F_AVAIL : VirtioRing.DESC_F_USED;
                                int f = s.kind() == 3 ? s.flags() : (s.flags() & 7) | avail;
                                ((PackedDriverRing) d)
                                        .writeDescriptor(pos, pick(s, tables), s.len(), s.b() % (r.size() + 2), f);
                            }
                        }
                        case 4 -> { // rewrite an indirect table entry
                            long t = tables[s.a() % tables.length];
                            int i = s.b() % 8;
                            if (d instanceof SplitDriverRing sd) {
                                sd.writeIndirect(t, i, pick(s, tables), s.len(), s.flags(), s.b() % 10);
                            } else {
                                ((PackedDriverRing) d).writeIndirect(t, i, pick(s, tables), s.len(), s.b(), s.flags());
                            }
                        }
                        case 5 -> { // available ring entry / index, or raw ring bytes
                            if (d instanceof SplitDriverRing sd) {
                                if (s.flags() % 2 == 0) {
                                    sd.exposeHead(s.b());
                                } else {
                                    sd.setAvailIndex(sd.availIndex() + s.a() % (r.size() + 3));
                                }
                            } else {
                                ringArea.set(ValueLayout.JAVA_BYTE, Math.floorMod(s.addr(), ringArea.byteSize()), (byte)
                                        s.flags());
                            }
                        }
                        case 6 -> { // the driver's event / suppression area
                            MemorySegment area =
                                    g.at(d.driverAreaAddr(), 4); // avail flags/idx, or the driver event structure
                            area.set(ValueLayout.JAVA_SHORT_UNALIGNED, (s.a() % 2) * 2L, (short) s.flags());
                        }
                        case 7, 8, 9 -> { // device pops
                            DescriptorChain c = q.newChain();
                            if (q.pop(c)) {
                                for (int i = 0; i < c.count(); i++) {
                                    assertTrue(
                                            c.segment(i).byteSize() == 0 || g.insideGuest(c.segment(i)), c.toString());
                                }
                                popped.add(c);
                            }
                        }
                        case 10 -> { // device completes one, writing all of its writable buffers
                            if (!popped.isEmpty()) {
                                DescriptorChain c = popped.remove(s.a() % popped.size());
                                for (int i = c.readableCount(); i < c.count(); i++) {
                                    c.segment(i).fill((byte) 0x5a);
                                }
                                q.push(c, Math.min(c.writableBytes(), 0xffff_ffffL));
                            }
                        }
                        case 11 -> q.needsNotification();
                        case 12 -> q.enableNotifications();
                        default -> {
                            q.disableNotifications();
                            q.hasAvailable();
                        }
                    }
                } catch (VirtqueueException e) {
                    failure = e;
                    break;
                }
            }
            Statistics.label("outcome").collect(failure == null ? "no violation seen" : failure.reason());
            if (failure != null) {
                assertSame(failure, q.failure());
                VirtqueueException f = failure;
                assertSame(f, assertThrows(VirtqueueException.class, q::pop));
                assertEquals(0, failure.queueIndex());
            }
            assertTrue(g.guardsIntact(), "a device access escaped guest memory");
            assertFalse(failure == null && q.failure() != null);
        }
    }

    private static long pick(Step s, long[] tables) {
        // Indirect tables and in-range addresses are what lets a walk get deep enough to meet the later rules.
        return switch (Math.floorMod(s.len(), 4)) {
            case 0 -> tables[Math.floorMod(s.b(), tables.length)];
            case 1 -> Math.floorMod(s.addr(), 1 << 20);
            default -> s.addr();
        };
    }
}
