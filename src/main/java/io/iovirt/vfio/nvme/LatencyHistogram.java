package io.iovirt.vfio.nvme;

/**
 * Latencies in nanoseconds, log-linear buckets (32 per power of two, so ~3% resolution), fixed size: recording
 * allocates nothing and costs a few instructions.
 */
final class LatencyHistogram {
    private static final int SUB_BITS = 5;
    private static final int SUB = 1 << SUB_BITS;
    private static final int LINEAR = 2 * SUB; // values below 64 get a bucket each
    private final long[] counts = new long[LINEAR + (64 - SUB_BITS - 1) * SUB];
    private long total;
    private long sum;
    private long max;

    void record(long nanos) {
        long v = Math.max(0, nanos);
        counts[index(v)]++;
        total++;
        sum += v;
        if (v > max) {
            max = v;
        }
    }

    static int index(long v) {
        if (v < LINEAR) {
            return (int) v;
        }
        int exp = 63 - Long.numberOfLeadingZeros(v); // ≥ 6
        int sub = (int) (v >>> (exp - SUB_BITS)) & (SUB - 1);
        return LINEAR + (exp - SUB_BITS - 1) * SUB + sub;
    }

    /** The smallest value that falls in bucket {@code i}. */
    static long lowerBound(int i) {
        if (i < LINEAR) {
            return i;
        }
        int exp = (i - LINEAR) / SUB + SUB_BITS + 1;
        int sub = (i - LINEAR) % SUB;
        return (1L << exp) | ((long) sub << (exp - SUB_BITS));
    }

    long count() {
        return total;
    }

    double mean() {
        return total == 0 ? 0 : (double) sum / total;
    }

    long max() {
        return max;
    }

    /** The value at quantile {@code q} (0..1), as the midpoint of its bucket (exact below 64 ns). */
    long quantile(double q) {
        if (total == 0) {
            return 0;
        }
        long rank = (long) Math.ceil(q * total);
        long seen = 0;
        for (int i = 0; i < counts.length; i++) {
            seen += counts[i];
            if (seen >= Math.max(1, rank)) {
                long lo = lowerBound(i);
                long hi = i + 1 < counts.length ? lowerBound(i + 1) : lo;
                return Math.min(max, lo + (hi - lo) / 2);
            }
        }
        return max;
    }
}
