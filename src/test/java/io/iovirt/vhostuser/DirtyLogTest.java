// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Fd;
import io.iovirt.linux.MemFd;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.CountDownLatch;
import org.junit.jupiter.api.Test;

/** The dirty log bitmap: the spec's bit numbering, page rounding, bounds, and concurrent marking. */
class DirtyLogTest {

    private static boolean bit(MemorySegment bitmap, long page) {
        return (bitmap.get(JAVA_BYTE, page / 8) & (1 << (page % 8))) != 0;
    }

    @Test
    void marksEachTouchedPageAtTheSpecsBit() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment bitmap = arena.allocate(64, 8);
            DirtyLog log = DirtyLog.over("t", bitmap);
            assertEquals(64 * 8 * 4096L, log.coveredBytes());
            assertTrue(log.mark(0x1fff, 2)); // last byte of page 1, first of page 2
            assertTrue(bit(bitmap, 1) && bit(bitmap, 2));
            assertFalse(bit(bitmap, 0) || bit(bitmap, 3));
            assertTrue(log.mark(63 * 4096L, 3 * 4096L)); // pages 63..65, across a 64-bit word
            for (long p = 63; p <= 65; p++) {
                assertTrue(bit(bitmap, p), "page " + p);
            }
            assertFalse(bit(bitmap, 62) || bit(bitmap, 66));
            assertEquals((byte) 0b110, bitmap.get(JAVA_BYTE, 0), "page n is bit n % 8 of byte n / 8");
            assertTrue(log.mark(5 * 4096L, 0), "empty range");
            assertFalse(bit(bitmap, 5));
            assertTrue(log.mark(0, 64 * 8 * 4096L), "the whole log");
            for (int i = 0; i < 64; i++) {
                assertEquals((byte) 0xff, bitmap.get(JAVA_BYTE, i));
            }
        }
    }

    @Test
    void writesBeyondTheLogAreCountedNotMarked() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment bitmap = arena.allocate(12, 8); // 12 bytes: the last partial word is not used
            DirtyLog log = DirtyLog.over("t", bitmap);
            assertEquals(64 * 4096L, log.coveredBytes());
            assertFalse(log.mark(64 * 4096L, 1));
            assertFalse(log.mark(63 * 4096L, 4097), "straddles the end");
            assertFalse(log.mark(-4096L, 8192), "wraps around");
            assertFalse(log.mark(Long.MAX_VALUE, 1));
            assertEquals(4, log.outOfRange());
            for (int i = 0; i < 12; i++) {
                assertEquals(0, bitmap.get(JAVA_BYTE, i), "nothing marked at byte " + i);
            }
        }
    }

    @Test
    void concurrentMarksAreNotLost() throws Exception {
        try (Arena arena = Arena.ofShared()) {
            MemorySegment bitmap = arena.allocate(8, 8);
            DirtyLog log = DirtyLog.over("t", bitmap);
            CountDownLatch go = new CountDownLatch(1);
            Thread[] threads = new Thread[4];
            for (int t = 0; t < threads.length; t++) {
                int first = t;
                threads[t] = Thread.ofPlatform().start(() -> {
                    try {
                        go.await();
                    } catch (InterruptedException e) {
                        return;
                    }
                    for (int p = first; p < 64; p += threads.length) { // same word, different bits
                        log.mark(p * 4096L, 1);
                    }
                });
            }
            go.countDown();
            for (Thread t : threads) {
                t.join();
            }
            assertEquals(-1L, bitmap.get(java.lang.foreign.ValueLayout.JAVA_LONG, 0));
        }
    }

    @Test
    void mapChecksTheFrontendsDescription() throws Exception {
        try (Fd f = MemFd.allocate("log", 8192)) {
            assertThrows(ProtocolException.class, () -> DirtyLog.map("t", f.dup(), 0, 0), "empty");
            assertThrows(ProtocolException.class, () -> DirtyLog.map("t", f.dup(), 4096, 4), "misaligned");
            assertThrows(ProtocolException.class, () -> DirtyLog.map("t", f.dup(), 8192, 4096), "past the end");
            assertThrows(ProtocolException.class, () -> DirtyLog.map("t", f.dup(), -1, 0), "huge");
            try (DirtyLog log = DirtyLog.map("t", f.dup(), 4096, 4096)) {
                assertTrue(log.mark(0, 1));
            }
        }
    }
}
