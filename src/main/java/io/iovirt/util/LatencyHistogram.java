// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

/**
 * A log-linear histogram of non-negative values (nanoseconds here), in the style of HdrHistogram: values below 64
 * are counted exactly; above, every power of two is split into 64 equal buckets, so a reported value is within
 * 1/64 (1.6 %) of a recorded one. The whole {@code long} range fits in a fixed array allocated up front:
 * {@link #record} allocates nothing and costs a few instructions.
 *
 * <p>Not thread-safe: each queue thread records into its own histogram; {@link #add} merges them afterwards.
 */
public final class LatencyHistogram {
    private static final int SUB_BITS = 6;
    private static final int SUB = 1 << SUB_BITS;
    /** Exact buckets 0..63, then 64 buckets for each exponent 6..62. */
    private static final int BUCKETS = SUB + (63 - SUB_BITS) * SUB;

    private final long[] counts = new long[BUCKETS];
    private long count;
    // The sum for the mean, 128 bits wide (sumLow unsigned): it is in-flight requests times run time (Little's law),
    // and 64 queues x 32768 requests over a day pass a long's 292 years of nanoseconds.
    private long sumLow;
    private long sumHigh;
    private long min = Long.MAX_VALUE;
    private long max;

    /** Counts one value; negative values (a clock that went backwards) count as 0. */
    public void record(long value) {
        long v = Math.max(value, 0);
        counts[index(v)]++;
        count++;
        long sum = sumLow + v;
        if (Long.compareUnsigned(sum, sumLow) < 0) {
            sumHigh++;
        }
        sumLow = sum;
        if (v < min) {
            min = v;
        }
        if (v > max) {
            max = v;
        }
    }

    static int index(long v) {
        if (v < SUB) {
            return (int) v;
        }
        int exp = 63 - Long.numberOfLeadingZeros(v); // >= SUB_BITS
        int shift = exp - SUB_BITS;
        return SUB + shift * SUB + (int) ((v >>> shift) - SUB);
    }

    /** Smallest value that falls into bucket {@code index}. */
    static long lowerBound(int index) {
        if (index < SUB) {
            return index;
        }
        int shift = index / SUB - 1;
        return (long) (SUB + index % SUB) << shift;
    }

    /** Largest value that falls into bucket {@code index}. */
    static long upperBound(int index) {
        if (index < SUB) {
            return index;
        }
        int shift = index / SUB - 1;
        return lowerBound(index) + (1L << shift) - 1;
    }

    /**
     * The value at quantile {@code q} (0..1]: the smallest recorded value such that at least {@code q} of all values
     * are at or below it, reported as its bucket's midpoint (clamped to the recorded min and max). 0 when empty.
     */
    public long valueAtQuantile(double q) {
        if (!(q > 0 && q <= 1)) {
            throw new IllegalArgumentException("quantile must be in (0, 1]: " + q);
        }
        if (count == 0) {
            return 0;
        }
        long rank = Math.max(1, (long) Math.ceil(q * count));
        long seen = 0;
        for (int i = 0; i < BUCKETS; i++) {
            seen += counts[i];
            if (seen >= rank) {
                long mid = lowerBound(i) + (upperBound(i) - lowerBound(i)) / 2;
                return Math.min(Math.max(mid, min), max);
            }
        }
        return max; // not reached: the counts add up to count
    }

    public long count() {
        return count;
    }

    /** Smallest recorded value, 0 when empty. */
    public long min() {
        return count == 0 ? 0 : min;
    }

    public long max() {
        return max;
    }

    public double mean() {
        double low = (double) (sumLow >>> 1) * 2 + (sumLow & 1); // unsigned
        return count == 0 ? 0 : (sumHigh * 0x1p64 + low) / count;
    }

    /** Adds every value of {@code other} to this histogram. */
    public void add(LatencyHistogram other) {
        for (int i = 0; i < BUCKETS; i++) {
            counts[i] += other.counts[i];
        }
        count += other.count;
        long sum = sumLow + other.sumLow;
        if (Long.compareUnsigned(sum, sumLow) < 0) {
            sumHigh++;
        }
        sumLow = sum;
        sumHigh += other.sumHigh;
        min = Math.min(min, other.min);
        max = Math.max(max, other.max);
    }

    public void reset() {
        java.util.Arrays.fill(counts, 0);
        count = 0;
        sumLow = 0;
        sumHigh = 0;
        min = Long.MAX_VALUE;
        max = 0;
    }
}
