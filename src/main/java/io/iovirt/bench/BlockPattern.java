// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * The data {@code --verify} writes and expects back: every 512-byte sector starts with its own sector number and
 * the run's seed (readable in a hex dump of the image), followed by 62 words derived from both. A block read from
 * the wrong place, a stale block, or a torn one does not match.
 */
public final class BlockPattern {
    public static final int SECTOR = 512;
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final int WORDS = SECTOR / 8;

    private BlockPattern() {}

    /** The 8-byte word {@code word} (0..63) of sector {@code sector}. */
    public static long word(long seed, long sector, int word) {
        return switch (word) {
            case 0 -> sector;
            case 1 -> seed;
            default -> BlockSequence.mix(seed ^ BlockSequence.mix(sector * WORDS + word));
        };
    }

    /** Fills {@code len} bytes (whole sectors) at {@code offset} of {@code buf} with the data of sectors from {@code firstSector}. */
    public static void fill(MemorySegment buf, long offset, long len, long seed, long firstSector) {
        for (long s = 0; s < len / SECTOR; s++) {
            long base = offset + s * SECTOR;
            for (int w = 0; w < WORDS; w++) {
                buf.set(LE64, base + 8L * w, word(seed, firstSector + s, w));
            }
        }
    }

    /**
     * Compares {@code len} bytes at {@code offset} of {@code buf} with what {@link #fill} writes; returns null when
     * they match, else a description of the first difference.
     */
    public static String check(MemorySegment buf, long offset, long len, long seed, long firstSector) {
        for (long s = 0; s < len / SECTOR; s++) {
            long base = offset + s * SECTOR;
            for (int w = 0; w < WORDS; w++) {
                long want = word(seed, firstSector + s, w);
                long got = buf.get(LE64, base + 8L * w);
                if (got != want) {
                    return String.format(
                            "sector %d, byte %d: expected %016x, read %016x%s",
                            firstSector + s,
                            8 * w,
                            want,
                            got,
                            w == 0 ? " (the sector number stamped there is " + got + ")" : "");
                }
            }
        }
        return null;
    }
}
