// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Fd;
import io.iovirt.linux.MemFd;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.util.LogLimiter;
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

    /**
     * A log replaced: what is still marked over guest memory moves to the new log (the frontend finds each page in
     * one of them, never in neither nor in both); words over no guest memory are not read, and what lies beyond the
     * new log's end stays behind.
     */
    @Test
    void carryOverMovesTheMarksOverGuestMemoryIntoTheNextLog() {
        try (Arena arena = Arena.ofConfined()) {
            long word = 64 * 4096L; // guest bytes one 64-bit word of the log covers
            GuestMemory memory = GuestMemory.of(java.util.List.of(
                    new MemoryRegion(0, word, 0x1000_0000L, 0, arena.allocate(word, 4096), null),
                    new MemoryRegion(3 * word, word, 0x2000_0000L, 0, arena.allocate(word, 4096), null)));
            MemorySegment oldBits = arena.allocate(32, 8); // words 0..3
            MemorySegment newBits = arena.allocate(24, 8); // words 0..2: the memory at word 3 is no longer logged
            oldBits.setAtIndex(JAVA_LONG, 0, 0b101L);
            oldBits.setAtIndex(JAVA_LONG, 1, 0xffL); // over no guest memory
            oldBits.setAtIndex(JAVA_LONG, 3, 1L << 63);
            newBits.setAtIndex(JAVA_LONG, 0, 0b10L); // marked in the new log already
            DirtyLog old = DirtyLog.over("old", oldBits);
            DirtyLog next = DirtyLog.over("next", newBits);
            old.retire(next);

            assertEquals(2, old.carryOver(next, memory));
            assertEquals(0b111L, newBits.getAtIndex(JAVA_LONG, 0));
            assertEquals(0L, oldBits.getAtIndex(JAVA_LONG, 0), "moved: the frontend finds each page once");
            assertEquals(0xffL, oldBits.getAtIndex(JAVA_LONG, 1), "not read");
            assertEquals(0L, newBits.getAtIndex(JAVA_LONG, 1));
            assertEquals(1L << 63, oldBits.getAtIndex(JAVA_LONG, 3), "beyond the new log");
        }
    }

    private static final LogLimiter LINES = new LogLimiter(System.getLogger("io.iovirt.vhostuser"));

    @Test
    void mapChecksTheFrontendsDescription() throws Exception {
        try (Fd f = MemFd.allocate("log", 8192)) {
            assertThrows(
                    ProtocolException.class,
                    () -> DirtyLog.map("t", new PeerFile.Quota(), f.dup(), 0, 0, LINES),
                    "empty");
            assertThrows(
                    ProtocolException.class,
                    () -> DirtyLog.map("t", new PeerFile.Quota(), f.dup(), 4096, 4, LINES),
                    "misaligned");
            assertThrows(
                    ProtocolException.class,
                    () -> DirtyLog.map("t", new PeerFile.Quota(), f.dup(), 8192, 4096, LINES),
                    "past the end");
            assertThrows(
                    ProtocolException.class,
                    () -> DirtyLog.map("t", new PeerFile.Quota(), f.dup(), -1, 0, LINES),
                    "huge");
            try (DirtyLog log = DirtyLog.map("t", new PeerFile.Quota(), f.dup(), 4096, 4096, LINES)) {
                assertTrue(log.mark(0, 1));
            }
        }
    }
}
