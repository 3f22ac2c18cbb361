// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.Test;

/** {@link Chains#copy}: byte-exact at every length across the in-line limit, at odd offsets, and bounds checked. */
class ChainsCopyTest {
    @Test
    void copiesEveryLengthAndOffsetExactlyAndTouchesNothingElse() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment src = arena.allocate(1024, 64);
            MemorySegment dst = arena.allocate(1024, 64);
            for (int i = 0; i < 1024; i++) {
                src.set(ValueLayout.JAVA_BYTE, i, (byte) (i * 31 + 7));
            }
            for (int len = 0; len <= Chains.INLINE_COPY_MAX + 20; len++) {
                for (int so : new int[] {0, 1, 3, 8, 13}) {
                    for (int d : new int[] {0, 5, 12, 64}) {
                        dst.fill((byte) 0x5a);
                        Chains.copy(src, 100 + so, dst, 200 + d, len);
                        byte[] want = src.asSlice(100 + so, len).toArray(ValueLayout.JAVA_BYTE);
                        byte[] got = dst.asSlice(200 + d, len).toArray(ValueLayout.JAVA_BYTE);
                        assertArrayEquals(want, got, "len " + len + " src +" + so + " dst +" + d);
                        assertEquals((byte) 0x5a, dst.get(ValueLayout.JAVA_BYTE, 200 + d - 1), "byte before");
                        assertEquals((byte) 0x5a, dst.get(ValueLayout.JAVA_BYTE, 200 + d + len), "byte after");
                    }
                }
            }
        }
    }

    @Test
    void aCopyPastEitherEndIsRefusedBeforeAnyByteMoves() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment src = arena.allocate(64);
            MemorySegment dst = arena.allocate(64);
            src.fill((byte) 2);
            dst.fill((byte) 1);
            // within the in-line limit, source and then destination too short: both ranges are checked before the
            // word loop's first store, so neither call writes a byte
            assertThrows(IndexOutOfBoundsException.class, () -> Chains.copy(src, 8, dst, 0, 60));
            assertThrows(IndexOutOfBoundsException.class, () -> Chains.copy(src, 0, dst, 8, 60));
            for (int i = 0; i < 64; i++) {
                assertEquals((byte) 1, dst.get(ValueLayout.JAVA_BYTE, i), "byte " + i + " written");
            }
        }
    }
}
