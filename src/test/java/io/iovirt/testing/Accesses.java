// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.RandomDistribution;
import net.jqwik.api.Tuple;
import net.jqwik.api.Tuple.Tuple2;
import net.jqwik.api.statistics.Statistics;

/**
 * Address ranges (start, length) for properties of a range check over one region [start, end). Drawn anywhere in the
 * 64-bit space they almost never touch a small region (none of 500 did for a 16 KiB one), so the property tests only
 * refusals; these cluster where mistakes hide: starts around the region and exactly at its edges, lengths that end
 * just before, at or just past its end, small ones, and some of each drawn anywhere (negative, overflowing).
 */
public final class Accesses {
    private Accesses() {}

    public static Arbitrary<Tuple2<Long, Long>> around(long start, long end) {
        long margin = Math.max(16, (end - start) / 4);
        Arbitrary<Long> from = Arbitraries.frequencyOf(
                Tuple.of(4, uniform(start - margin, end + margin)),
                Tuple.of(1, uniform(start - 2, start + 2)),
                Tuple.of(1, uniform(end - 2, end + 2)),
                Tuple.of(1, Arbitraries.longs()));
        return from.flatMap(a -> Arbitraries.frequencyOf(
                        Tuple.of(2, uniform(-2, 256)),
                        Tuple.of(2, uniform(-2, 2).map(d -> end - a + d)),
                        Tuple.of(1, Arbitraries.longs()))
                .map(len -> Tuple.of(a, len)));
    }

    /**
     * Records one try's outcome and requires both outcomes among the tries (each at least 10 %): a property whose
     * inputs all land on one side of the check tests only that side.
     */
    public static void record(boolean translated) {
        Statistics.collect(translated ? "translated" : "refused");
        Statistics.coverage(c -> {
            c.check("translated").percentage(p -> p >= 10);
            c.check("refused").percentage(p -> p >= 10);
        });
    }

    private static Arbitrary<Long> uniform(long min, long max) {
        return Arbitraries.longs().between(min, max).withDistribution(RandomDistribution.uniform());
    }
}
