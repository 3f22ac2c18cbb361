// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.testing.Await;
import io.iovirt.testing.GuestFixture;
import java.lang.foreign.MemorySegment;
import java.time.Duration;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A driver that missed the device's interrupt (its store of used_event and its load of used.idx ran in the wrong
 * order, as under QEMU's TCG with one vCPU) gets it once the queue has been idle for {@link
 * QueueWorker#RECHECK_MILLIS}, on a queue thread of its own and on a shared poll thread; a driver that took
 * everything is not taken for one that waits.
 */
class RecheckTest {
    private static final int SIZE = 16;
    private static final Duration WAIT = Duration.ofSeconds(20);
    private final GuestFixture g = new GuestFixture();

    @AfterEach
    void close() {
        g.close();
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void aMissedInterruptIsSentAgainAfterAnIdleSpell(boolean shared) throws Exception {
        SplitDriverRing d = split(true);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder);
        try (EventFd kick = EventFd.create(true);
                EventFd call = EventFd.create(true);
                WorkerGroup group = shared ? WorkerGroup.create("recheck-test", 1) : null) {
            RingHandler h = new RingHandler(q, call, 8, chain -> 0);
            QueueWorker.Builder b = QueueWorker.builder("recheck-test").kick(kick);
            if (group != null) {
                b.group(group);
            }
            QueueWorker w = b.start(h);
            try {
                AtomicLong got = new AtomicLong();
                // A first buffer with interrupts on: the device's first decision (always an interrupt) is behind us.
                d.enableInterrupts();
                add(d);
                kick.signal();
                Await.until(WAIT, "the first buffer's interrupt", () -> read(call, got) > 0);
                assertTrue(d.pollUsed() != -1);
                // The driver does not want an interrupt for the second buffer: the device returns it silently.
                d.disableInterrupts();
                add(d);
                kick.signal();
                Await.until(WAIT, "the device returned the second buffer", d::hasUsed);
                assertEquals(0, call.read(), "no interrupt asked for, none sent");
                // Then it asks for one at the buffer it has not taken, but its look at used.idx came before that store
                // reached the ring (the reordering): it sees nothing and waits — for an interrupt the device, having
                // returned everything already, has no reason to send.
                d.enableInterrupts();
                long since = System.nanoTime();
                Await.until(WAIT, "an interrupt after the idle spell", () -> read(call, got) > 0);
                System.err.printf(
                        "RecheckTest: the missed interrupt came %d ms later (shared: %s)%n",
                        (System.nanoTime() - since) / 1_000_000, shared);
                assertTrue(
                        w.stats().recheckSignals.sum() >= 1,
                        "counted: " + w.stats().totals());
                assertTrue(g.guardsIntact());
            } finally {
                w.stop();
            }
            // What the recheck asks of the ring: a driver that took everything it was given is not waiting.
            assertTrue(d.pollUsed() != -1);
            assertEquals(false, d.enableInterrupts(), "nothing more returned");
            assertEquals(false, q.driverMayBeWaiting(), "used_event is the used index published");
            d.disableInterrupts();
            assertEquals(true, q.driverMayBeWaiting(), "used_event back at the entry returned silently");
            q.releaseMemory();
        }
    }

    // ---- what the recheck asks of a ring: only entries returned silently since the last interrupt count ----

    @Test
    void aSplitRingWithEventIndexes() throws Exception {
        SplitDriverRing d = split(true);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder);
        MemorySegment usedEvent = g.at(d.driverAreaAddr() + 4 + 2L * SIZE, 2);
        d.enableInterrupts();
        returnOne(d, q);
        assertTrue(q.needsNotification(), "the first decision interrupts");
        assertFalse(q.driverMayBeWaiting(), "interrupted after everything returned, taken or not");
        assertTrue(d.pollUsed() != -1);
        d.disableInterrupts(); // used_event one behind the next entry
        returnOne(d, q);
        assertFalse(q.needsNotification());
        assertFalse(q.driverMayBeWaiting(), "it asked for none of the entries returned since");
        usedEvent.set(VirtioRing.LE16, 0, (short) 5);
        assertFalse(q.driverMayBeWaiting(), "an event ahead of the used index (delayed callbacks) is no missed one");
        d.enableInterrupts(); // used_event at the entry returned silently
        assertTrue(q.driverMayBeWaiting(), "it asked for an entry returned silently: it missed the interrupt");
        q.releaseMemory();
    }

    @Test
    void aSplitRingWithoutEventIndexes() throws Exception {
        SplitDriverRing d = split(false);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder);
        d.enableInterrupts();
        returnOne(d, q);
        assertTrue(q.needsNotification());
        assertFalse(q.driverMayBeWaiting(), "interrupted after everything returned");
        d.disableInterrupts();
        returnOne(d, q);
        assertFalse(q.needsNotification());
        assertFalse(q.driverMayBeWaiting(), "interrupts off");
        d.enableInterrupts();
        assertTrue(q.driverMayBeWaiting(), "an entry returned silently, and interrupts wanted now");
        q.releaseMemory();
    }

    @Test
    void aPackedRing() throws Exception {
        for (boolean eventIdx : new boolean[] {false, true}) {
            PackedDriverRing d =
                    PackedDriverRing.create(g.memory, g.alloc(PackedDriverRing.bytesNeeded(SIZE), 16), SIZE, eventIdx);
            Virtqueue q = Virtqueue.create(d.queueConfig(0, false), g.holder);
            MemorySegment event = g.at(d.driverAreaAddr(), 4);
            d.enableInterrupts();
            returnOne(d, q);
            assertTrue(q.needsNotification(), "the first decision interrupts");
            assertFalse(q.driverMayBeWaiting(), "interrupted after everything returned");
            assertTrue(d.pollUsed() != -1);
            d.disableInterrupts();
            returnOne(d, q);
            assertFalse(q.needsNotification());
            assertFalse(q.driverMayBeWaiting(), "interrupts off");
            if (eventIdx) { // position 5 of the first lap: ahead of the used side at 2
                event.set(VirtioRing.LE16, 0, (short) (5 | 0x8000));
                event.set(VirtioRing.LE16, 2, (short) VirtioRing.EVENT_FLAGS_DESC);
                assertFalse(q.driverMayBeWaiting(), "an event ahead of the used side is no missed one");
            }
            d.enableInterrupts(); // with event indexes: at the slot returned silently
            assertTrue(q.driverMayBeWaiting(), "a slot returned silently, and interrupts wanted there: " + eventIdx);
            q.releaseMemory();
        }
    }

    private SplitDriverRing split(boolean eventIdx) {
        return SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, eventIdx);
    }

    private void returnOne(DriverRing d, Virtqueue q) throws VirtqueueException {
        long buf = g.alloc(64, 8);
        d.add(new long[] {buf}, new int[] {64}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
        q.push(q.pop(), 0);
    }

    private void add(SplitDriverRing d) {
        long buf = g.alloc(64, 8);
        d.add(new long[] {buf}, new int[] {64}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
    }

    private static long read(EventFd call, AtomicLong got) {
        try {
            long n = call.read();
            got.addAndGet(n);
            return n;
        } catch (io.iovirt.linux.LinuxException e) {
            throw new IllegalStateException(e);
        }
    }
}
