// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

@Timeout(60)
class MacTableTest {
    @Test
    void learnsLooksUpAndAges() {
        MacTable t = new MacTable(16, 300);
        assertTrue(t.learn(0x5254_0000_0001L, 3, 0));
        assertEquals(3, t.lookup(0x5254_0000_0001L, 299));
        assertEquals(-1, t.lookup(0x5254_0000_0001L, 300), "expired entries are not used even before a sweep");
        assertEquals(-1, t.lookup(0x5254_0000_0002L, 0));
        assertEquals(1, t.age(300));
        assertEquals(0, t.size());
    }

    @Test
    void aFullTableRefusesNewAddressesUntilSomeAgeOut() {
        MacTable t = new MacTable(4, 10);
        for (int i = 0; i < 4; i++) {
            assertTrue(t.learn(0x0200_0000_0000L + i, i, i));
        }
        assertFalse(t.learn(0x0200_0000_0100L, 0, 5));
        assertEquals(1, t.learnFailures());
        assertTrue(t.learn(0x0200_0000_0001L, 2, 5), "known addresses still refresh and move when full");
        assertEquals(2, t.lookup(0x0200_0000_0001L, 5));
        assertTrue(t.learn(0x0200_0000_0100L, 1, 10), "at t=10 the entry from t=0 has aged out and makes room");
        assertEquals(-1, t.lookup(0x0200_0000_0000L, 10));
        assertEquals(1, t.lookup(0x0200_0000_0100L, 10));
    }

    @Test
    void churnThroughTombstonesKeepsLiveEntriesReachable() {
        MacTable t = new MacTable(64, 1);
        long keep = 0x0200_0000_ffffL;
        int now = 0;
        for (int round = 0; round < 200; round++) {
            now = round;
            assertTrue(t.learn(keep, 7, now));
            for (int i = 0; i < 40; i++) {
                assertTrue(t.learn(0x0600_0000_0000L + round * 100L + i, i, now));
            }
            t.age(now); // removes the previous round's 40 addresses
            assertEquals(7, t.lookup(keep, now));
            assertEquals(41, t.size());
        }
        assertEquals(0, t.learnFailures());
    }

    @Test
    void flushPortForgetsOnlyThatPort() {
        MacTable t = new MacTable(16, 300);
        t.learn(1, 0, 0);
        t.learn(2, 1, 0);
        t.learn(3, 1, 0);
        assertEquals(2, t.flushPort(1));
        assertEquals(0, t.lookup(1, 0));
        assertEquals(-1, t.lookup(2, 0));
        assertEquals(1, t.entries(0).size());
    }

    @Test
    void rejectsNonsense() {
        assertThrows(IllegalArgumentException.class, () -> new MacTable(0, 300));
        assertThrows(IllegalArgumentException.class, () -> new MacTable(16, 0));
        assertThrows(IllegalArgumentException.class, () -> new MacTable(16, 10).learn(1, MacTable.MAX_PORTS, 0));
    }

    /**
     * Threads each own a set of addresses that keep moving between two ports while every thread looks up everyone's
     * addresses: a lookup may see an old or new port, or miss during a flush, but never a port the address was never
     * on.
     */
    @Test
    void concurrentLearnersAndReadersNeverSeeAForeignPort() throws Exception {
        MacTable t = new MacTable(1024, 1000);
        int threads = 4;
        CountDownLatch go = new CountDownLatch(1);
        AtomicReference<String> error = new AtomicReference<>();
        List<Thread> ts = new ArrayList<>();
        for (int k = 0; k < threads; k++) {
            int me = k;
            ts.add(Thread.ofPlatform().start(() -> {
                try {
                    go.await();
                    for (int iter = 0; iter < 20_000 && error.get() == null; iter++) {
                        for (int m = 0; m < 50; m++) {
                            long mac = (long) me << 32 | m;
                            t.learn(mac, 2 * me + (iter & 1), 0);
                        }
                        if (iter % 1000 == 999) {
                            t.flushPort(2 * me);
                        }
                        for (int other = 0; other < threads; other++) {
                            long mac = (long) other << 32 | (iter % 50);
                            int p = t.lookup(mac, 0);
                            if (p != -1 && p != 2 * other && p != 2 * other + 1) {
                                error.set("address of thread " + other + " seen on port " + p);
                            }
                        }
                    }
                } catch (InterruptedException e) {
                    error.set("interrupted");
                }
            }));
        }
        go.countDown();
        for (Thread th : ts) {
            th.join();
        }
        assertEquals(null, error.get());
        assertTrue(t.size() <= threads * 50, "no duplicates: " + t.size());
    }

    @Test
    void eachPortHoldsAtMostItsShare() {
        MacTable t = new MacTable(16, 10, 3);
        for (int i = 0; i < 3; i++) {
            assertEquals(MacTable.LEARNED, t.tryLearn(0x0200_0000_0000L + i, 0, 0));
        }
        assertEquals(MacTable.PORT_FULL, t.tryLearn(0x0200_0000_0010L, 0, 0));
        assertEquals(MacTable.LEARNED, t.tryLearn(0x0200_0000_0020L, 1, 0), "another port still learns");
        assertEquals(
                MacTable.PORT_FULL, t.tryLearn(0x0200_0000_0020L, 0, 0), "a full port cannot take over an address");
        assertEquals(1, t.lookup(0x0200_0000_0020L, 0));
        assertEquals(MacTable.LEARNED, t.tryLearn(0x0200_0000_0000L, 1, 0), "moving away frees a place in the share");
        assertEquals(2, t.size(0));
        assertEquals(2, t.size(1));
        assertEquals(MacTable.LEARNED, t.tryLearn(0x0200_0000_0010L, 0, 0));
        assertEquals(MacTable.PORT_FULL, t.tryLearn(0x0200_0000_0011L, 0, 5));
        assertEquals(MacTable.LEARNED, t.tryLearn(0x0200_0000_0011L, 0, 10), "at t=10 the t=0 entries aged out");
        assertEquals(1, t.size(0));
        t.flushPort(1);
        assertEquals(0, t.size(1));
        assertEquals(3, t.learnFailures(), "three refusals were counted");
        assertThrows(IllegalArgumentException.class, () -> new MacTable(16, 10, 17));
    }
}
