// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.List;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.LongRange;
import net.jqwik.api.constraints.Size;
import org.junit.jupiter.api.Test;

class LatencyHistogramTest {

    @Test
    void smallValuesAreExact() {
        LatencyHistogram h = new LatencyHistogram();
        for (long v = 0; v < 64; v++) {
            h.record(v);
        }
        assertEquals(64, h.count());
        assertEquals(0, h.min());
        assertEquals(63, h.max());
        assertEquals(31, h.valueAtQuantile(0.5)); // the 32nd of 0..63
        assertEquals(63, h.valueAtQuantile(1.0));
        assertEquals(31.5, h.mean(), 1e-9);
    }

    @Test
    void bucketsTileTheWholeRangeWithoutGaps() {
        long expectedLower = 0;
        int last = LatencyHistogram.index(Long.MAX_VALUE);
        for (int i = 0; i <= last; i++) {
            assertEquals(expectedLower, LatencyHistogram.lowerBound(i), "bucket " + i);
            assertEquals(i, LatencyHistogram.index(LatencyHistogram.lowerBound(i)));
            assertEquals(i, LatencyHistogram.index(LatencyHistogram.upperBound(i)));
            expectedLower = LatencyHistogram.upperBound(i) + 1;
        }
        assertEquals(Long.MAX_VALUE, LatencyHistogram.upperBound(last));
    }

    @Property(tries = 300)
    void everyValueLandsInABucketWithin1Point6Percent(@ForAll @LongRange(min = 0, max = Long.MAX_VALUE) long v) {
        int i = LatencyHistogram.index(v);
        long lo = LatencyHistogram.lowerBound(i);
        long hi = LatencyHistogram.upperBound(i);
        assertTrue(lo <= v && v <= hi, v + " not in [" + lo + ", " + hi + "]");
        assertTrue(hi - lo <= Math.max(0, lo / 64), "bucket [" + lo + ", " + hi + "] wider than 1/64");
    }

    @Property(tries = 200)
    void quantilesMatchASortedArrayWithinTheBucketError(
            @ForAll @Size(min = 1, max = 2000) List<@LongRange(min = 0, max = 10_000_000_000L) Long> values,
            @ForAll @LongRange(min = 1, max = 1000) long permille) {
        LatencyHistogram h = new LatencyHistogram();
        values.forEach(h::record);
        long[] sorted = values.stream().mapToLong(Long::longValue).sorted().toArray();
        double q = permille / 1000.0;
        long exact = sorted[(int) Math.max(0, Math.ceil(q * sorted.length) - 1)];
        long got = h.valueAtQuantile(q);
        assertTrue(Math.abs(got - exact) <= Math.max(1, exact / 64), "q=" + q + ": " + got + " vs exact " + exact);
        assertEquals(sorted[0], h.min());
        assertEquals(sorted[sorted.length - 1], h.max());
        assertEquals(Arrays.stream(sorted).average().orElseThrow(), h.mean(), 1e-6 * sorted[sorted.length - 1] + 1e-9);
    }

    @Test
    void mergingEqualsRecordingEverythingInOne() {
        LatencyHistogram a = new LatencyHistogram();
        LatencyHistogram b = new LatencyHistogram();
        LatencyHistogram all = new LatencyHistogram();
        for (long v = 1; v < 1_000_000; v = v * 3 + 1) {
            (v % 2 == 0 ? a : b).record(v);
            all.record(v);
        }
        a.add(b);
        assertEquals(all.count(), a.count());
        assertEquals(all.min(), a.min());
        assertEquals(all.max(), a.max());
        for (double q : new double[] {0.01, 0.5, 0.9, 0.99, 1}) {
            assertEquals(all.valueAtQuantile(q), a.valueAtQuantile(q), "q=" + q);
        }
    }

    /**
     * The mean's sum of nanoseconds outgrows a long after 292 years of summed latency — which is no more than
     * in-flight requests times run time (Little's law): 64 queues x 32768 requests for a day's run reach it. It wraps
     * neither in one histogram nor when queues' histograms are merged.
     */
    @Test
    void theMeanSurvivesASumBeyondALong() {
        LatencyHistogram a = new LatencyHistogram();
        LatencyHistogram b = new LatencyHistogram();
        long v = 3_000_000_000_000_000_000L; // 3e18 ns: a sum of three passes Long.MAX_VALUE (9.2e18)
        for (int i = 0; i < 3; i++) {
            a.record(v);
            b.record(v + 2);
        }
        assertEquals(v, a.mean(), 1e3);
        a.add(b);
        assertEquals(v + 1, a.mean(), 1e3);
        assertEquals(6, a.count());
        a.reset();
        a.record(10);
        assertEquals(10, a.mean());
    }

    @Test
    void emptyAndNegative() {
        LatencyHistogram h = new LatencyHistogram();
        assertEquals(0, h.valueAtQuantile(0.99));
        assertEquals(0, h.min());
        h.record(-5); // a clock step backwards counts as zero, never as a huge unsigned value
        assertEquals(0, h.max());
        assertThrows(IllegalArgumentException.class, () -> h.valueAtQuantile(0));
        assertThrows(IllegalArgumentException.class, () -> h.valueAtQuantile(1.5));
        h.reset();
        assertEquals(0, h.count());
    }
}
