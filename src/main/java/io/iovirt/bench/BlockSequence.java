// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

/**
 * The blocks one queue visits, in order. Sequential: block {@code i}. Random: a seeded pseudo-random permutation of
 * all blocks, so each block is visited once per pass over the disk (as fio's default random map does) and a later
 * read pass can replay exactly the blocks a write pass covered. Queues interleave: queue {@code q} of {@code Q} takes
 * positions {@code q, q+Q, q+2Q, ...} of the global order, so queues never share a block within a pass.
 *
 * <p>The permutation is a keyed bijection on the smallest power-of-two domain that holds every block (multiply by
 * an odd constant, xor-shift, add a key — each step bijective modulo 2^k), restricted to {@code [0, blocks)} by
 * cycle-walking. Computing a block allocates nothing and takes on average fewer than two rounds.
 */
final class BlockSequence {
    private final long blocks;
    private final boolean random;
    private final int queues;
    private final int queue;
    private final long mask;
    private final int shift;
    private final long key0;
    private final long key1;

    BlockSequence(long blocks, boolean random, long seed, int queues, int queue) {
        if (blocks < 1) {
            throw new IllegalArgumentException("no blocks to visit");
        }
        if (queue < 0 || queue >= queues) {
            throw new IllegalArgumentException("queue " + queue + " of " + queues);
        }
        this.blocks = blocks;
        this.random = random;
        this.queues = queues;
        this.queue = queue;
        int bits = Math.max(1, 64 - Long.numberOfLeadingZeros(blocks - 1));
        this.mask = bits == 64 ? -1L : (1L << bits) - 1;
        this.shift = Math.max(1, bits / 2);
        this.key0 = mix(seed) & mask;
        this.key1 = mix(seed + 0x9E3779B97F4A7C15L) & mask;
    }

    /** How many distinct blocks this queue visits in one pass. */
    long blocksPerPass() {
        return queue < blocks ? (blocks - queue + queues - 1) / queues : 0;
    }

    /** The block of this queue's {@code n}-th request (n ≥ 0); wraps around to a new pass after the last block. */
    long block(long n) {
        long i = Math.floorMod(n * queues + queue, blocks);
        if (!random) {
            return i;
        }
        long x = permute(i);
        while (x >= blocks) {
            x = permute(x);
        }
        return x;
    }

    private long permute(long x) {
        x = (x * 0xD6E8FEB86659FD93L + key0) & mask;
        x ^= x >>> shift;
        x = (x * 0xA0761D6478BD642FL + key1) & mask;
        x ^= x >>> shift;
        x = (x * 0xE7037ED1A0B428DBL) & mask;
        return x ^ (x >>> shift);
    }

    /** The splitmix64 finalizer: a well-mixed 64-bit function of {@code z}. */
    static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }
}
