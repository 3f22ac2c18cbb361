// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import io.iovirt.testing.GuestFixture;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;

/** Ring shapes for property tests: split sizes are powers of two, packed sizes anything; starts cross the wraps. */
record Rings(boolean packed, int size, int start, boolean wrap, boolean eventIdx) {
    static Arbitrary<Rings> any(int maxLog2, int maxPacked) {
        Arbitrary<Integer> splitStart = Arbitraries.oneOf(
                Arbitraries.integers().between(0, 0xffff),
                Arbitraries.integers().between(0xffc0, 0xffff));
        Arbitrary<Rings> split = Combinators.combine(
                        Arbitraries.integers().between(0, maxLog2), splitStart, Arbitraries.of(true, false))
                .as((log, start, ev) -> new Rings(false, 1 << log, start, true, ev));
        Arbitrary<Rings> packed = Arbitraries.integers()
                .between(1, maxPacked)
                .flatMap(size -> Combinators.combine(
                                Arbitraries.integers().between(0, size - 1),
                                Arbitraries.of(true, false),
                                Arbitraries.of(true, false))
                        .as((pos, wrap, ev) -> new Rings(true, size, pos, wrap, ev)));
        return Arbitraries.oneOf(split, packed);
    }

    /** A driver ring of this shape in {@code g}'s low region. */
    DriverRing driver(GuestFixture g) {
        if (packed) {
            long base = g.alloc(PackedDriverRing.bytesNeeded(size), 16);
            return new PackedDriverRing(
                    g.memory, size, base, base + 16L * size, base + 16L * size + 4, eventIdx, start, wrap);
        }
        long base = g.alloc(SplitDriverRing.bytesNeeded(size), 16);
        long avail = base + 16L * size;
        long used = (avail + 6 + 2L * size + 3) & -4;
        return new SplitDriverRing(g.memory, size, base, avail, used, eventIdx, start);
    }
}
