package io.iovirt.vfio.nvme;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.LongRange;
import org.junit.jupiter.api.Test;

class LatencyHistogramTest {
    @Property(tries = 2000)
    void aValueFallsInABucketThatStartsAtMostThreePercentBelowIt(@ForAll @LongRange(min = 0, max = Long.MAX_VALUE / 2) long v) {
        int i = LatencyHistogram.index(v);
        long lo = LatencyHistogram.lowerBound(i);
        assertTrue(lo <= v, lo + " > " + v);
        assertTrue(LatencyHistogram.lowerBound(i + 1) > v);
        assertTrue(v - lo <= Math.max(0, v / 32), v + " in bucket from " + lo);
    }

    @Test
    void quantilesOfAKnownDistribution() {
        LatencyHistogram h = new LatencyHistogram();
        for (int i = 1; i <= 1000; i++) {
            h.record(i * 1000L); // 1..1000 µs
        }
        assertEquals(1000, h.count());
        assertEquals(500_500, h.mean(), 0.001);
        assertEquals(1_000_000, h.max());
        assertEquals(500_000, h.quantile(0.5), 500_000 / 32.0);
        assertEquals(990_000, h.quantile(0.99), 990_000 / 32.0);
        assertEquals(0, new LatencyHistogram().quantile(0.5));
    }
}
