// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import org.junit.jupiter.api.Test;

class BlockPatternTest {
    private static final long SEED = 0x1234_5678_9abc_def0L;

    @Test
    void whatIsFilledChecksAndCarriesTheSectorNumberAndSeed() {
        MemorySegment buf = MemorySegment.ofArray(new byte[8192]);
        BlockPattern.fill(buf, 0, 4096, SEED, 800);
        assertNull(BlockPattern.check(buf, 0, 4096, SEED, 800));
        ValueLayout.OfLong le = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
        for (int s = 0; s < 8; s++) {
            assertEquals(800 + s, buf.get(le, 512L * s), "sector number stamped at the start of sector " + s);
            assertEquals(SEED, buf.get(le, 512L * s + 8));
        }
    }

    @Test
    void oneFlippedByteIsFoundAndLocated() {
        MemorySegment buf = MemorySegment.ofArray(new byte[4096]);
        BlockPattern.fill(buf, 0, 4096, SEED, 16);
        buf.set(ValueLayout.JAVA_BYTE, 3 * 512 + 100, (byte) (buf.get(ValueLayout.JAVA_BYTE, 3 * 512 + 100) ^ 1));
        String diff = BlockPattern.check(buf, 0, 4096, SEED, 16);
        assertNotNull(diff);
        assertTrue(diff.startsWith("sector 19, byte 96:"), diff);
    }

    @Test
    void dataOfAnotherBlockOrAnotherRunDoesNotMatch() {
        MemorySegment buf = MemorySegment.ofArray(new byte[4096]);
        BlockPattern.fill(buf, 0, 4096, SEED, 8);
        String wrongPlace = BlockPattern.check(buf, 0, 4096, SEED, 16);
        assertNotNull(wrongPlace);
        assertTrue(wrongPlace.contains("stamped there is 8"), wrongPlace);
        assertNotNull(BlockPattern.check(buf, 0, 4096, SEED + 1, 8), "a stale block from a run with another seed");
        assertNotNull(
                BlockPattern.check(MemorySegment.ofArray(new byte[4096]), 0, 4096, SEED, 0), "zeros (never written)");
    }
}
