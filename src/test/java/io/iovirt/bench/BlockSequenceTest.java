// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.BitSet;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;
import org.junit.jupiter.api.Test;

class BlockSequenceTest {

    /** One pass of all queues together visits every block exactly once, random or not. */
    @Property(tries = 200)
    void onePassOfAllQueuesVisitsEveryBlockOnce(
            @ForAll @IntRange(min = 1, max = 5000) int blocks,
            @ForAll @IntRange(min = 1, max = 8) int queues,
            @ForAll boolean random,
            @ForAll long seed) {
        BitSet seen = new BitSet(blocks);
        long visits = 0;
        for (int q = 0; q < queues; q++) {
            BlockSequence s = new BlockSequence(blocks, random, seed, queues, q);
            for (long n = 0; n < s.blocksPerPass(); n++) {
                long b = s.block(n);
                assertTrue(b >= 0 && b < blocks, "block " + b + " outside 0.." + blocks);
                assertFalse(seen.get((int) b), "block " + b + " visited twice in one pass");
                seen.set((int) b);
                visits++;
            }
        }
        assertEquals(blocks, visits);
        assertEquals(blocks, seen.cardinality());
    }

    @Property(tries = 50)
    void theNextPassRepeatsTheSameOrder(@ForAll @IntRange(min = 1, max = 3000) int blocks, @ForAll long seed) {
        BlockSequence s = new BlockSequence(blocks, true, seed, 1, 0);
        for (long n = 0; n < blocks; n++) {
            assertEquals(s.block(n), s.block(n + blocks));
        }
    }

    @Test
    void sequentialIsInOrderAndRandomIsNot() {
        BlockSequence seq = new BlockSequence(1 << 20, false, 1, 1, 0);
        BlockSequence rnd = new BlockSequence(1 << 20, true, 1, 1, 0);
        int inOrder = 0;
        for (long n = 0; n < 1000; n++) {
            assertEquals(n, seq.block(n));
            if (rnd.block(n + 1) == rnd.block(n) + 1) {
                inOrder++;
            }
        }
        assertTrue(inOrder < 10, inOrder + " of 1000 random steps went to the next block");
        assertNotEquals(rnd.block(0), new BlockSequence(1 << 20, true, 2, 1, 0).block(0), "the seed changes the order");
    }

    @Test
    void aWholeLargeDiskPermutesWithoutRepeats() {
        int blocks = 262_144; // 1 GiB of 4 KiB blocks
        BlockSequence s = new BlockSequence(blocks, true, 42, 1, 0);
        BitSet seen = new BitSet(blocks);
        for (long n = 0; n < blocks; n++) {
            seen.set((int) s.block(n));
        }
        assertEquals(blocks, seen.cardinality());
    }
}
