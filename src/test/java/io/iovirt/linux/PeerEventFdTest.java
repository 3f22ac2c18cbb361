// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A peer's "eventfd": checked when adopted, and never able to hold one of our threads, even when the peer clears
 * O_NONBLOCK on the file description it shares with us.
 */
@Timeout(60)
class PeerEventFdTest {
    @TempDir
    Path dir;

    @Test
    void onlyEventfdsAreAdopted() throws Exception {
        UnixSocket[] pair = UnixSocket.pair();
        try (Fd file = FileIo.open(dir.resolve("f"), FileIo.O_RDWR | FileIo.O_CREAT, 0600)) {
            var e = assertThrows(
                    EventFd.NotAnEventFd.class,
                    () -> EventFd.adoptFromPeer(pair[0].fd().dup(), "kick"));
            assertTrue(e.getMessage().startsWith("kick is socket:["), e.getMessage());
            e = assertThrows(EventFd.NotAnEventFd.class, () -> EventFd.adoptFromPeer(file.dup(), "call"));
            assertTrue(e.getMessage().contains(dir.resolve("f").toString()), e.getMessage());
            try (Fd mem = MemFd.allocate("x", 4096)) {
                assertThrows(EventFd.NotAnEventFd.class, () -> EventFd.adoptFromPeer(mem.dup(), "err"));
            }
        } finally {
            pair[0].close();
            pair[1].close();
        }
        try (EventFd real = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd adopted = EventFd.adoptFromPeer(real.fd().dup(), "kick")) {
            assertTrue(real.fd().isNonBlocking(), "made non-blocking (the file description is shared)");
            adopted.trySignal();
            assertEquals(1, real.read());
        }
    }

    @Test
    void aFullBlockingCounterCannotHoldAWriter() throws Exception {
        try (EventFd peer = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd ours = EventFd.adoptFromPeer(peer.fd().dup(), "call")) {
            peer.write(0xffff_ffff_ffff_fffeL);
            peer.fd().setNonBlocking(false); // the peer undoes what we did
            assertFalse(ours.trySignal(), "a write that blocked is the peer's fault"); // @Timeout bounds it

            // Quarantined from now on: a full counter is seen before the write, which then does not block at all.
            assertTrue(ours.quarantined());
            assertEquals(1, peer.read(), "the rescue drained the counter, then our write went through");
            peer.write(EventFd.Watchdog.COUNTER_MAX);
            assertFalse(ours.trySignal(), "the counter is full");
            assertEquals(
                    EventFd.Watchdog.COUNTER_MAX,
                    EventFd.Watchdog.counter(ours.fd().get()),
                    "no rescue happened: the write was never tried");
            assertEquals(EventFd.Watchdog.COUNTER_MAX, peer.read());
            assertTrue(ours.trySignal(), "with room in the counter the interrupt goes through");
            assertEquals(1, peer.read());
        }
    }

    /**
     * A peer that made one write of ours block has every eventfd it sent — an earlier one, a stand-in, and a fresh one
     * it sends later — looked at before each write: a fresh full blocking counter is then never written, so sending
     * new eventfds costs shared threads no more blocked writes. Another peer's eventfds are untouched by it.
     */
    @Test
    void aPeerWhoseWriteBlockedOnceHasAllItsEventfdsLookedAt() throws Exception {
        EventFd.PeerConduct conduct = new EventFd.PeerConduct();
        try (EventFd first = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd other = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd earlier = EventFd.adoptFromPeer(other.fd().dup(), "call", conduct);
                EventFd standIn = EventFd.createStandIn(conduct);
                EventFd ours = EventFd.adoptFromPeer(first.fd().dup(), "call", conduct)) {
            first.write(0xffff_ffff_ffff_fffeL);
            first.fd().setNonBlocking(false);
            assertFalse(ours.trySignal(), "a write that blocked is the peer's fault"); // @Timeout bounds it
            assertTrue(conduct.blockedAWrite(), "the peer's record is marked");
            assertEquals(1, first.read(), "the rescue drained the counter, then our write went through");

            for (int round = 0; round < 3; round++) {
                try (EventFd trap = EventFd.create(0, EventFd.EFD_CLOEXEC);
                        EventFd fresh = EventFd.adoptFromPeer(trap.fd().dup(), "call", conduct)) {
                    trap.write(EventFd.Watchdog.COUNTER_MAX);
                    trap.fd().setNonBlocking(false); // made blocking again after we adopted it
                    assertFalse(fresh.trySignal(), "round " + round + ": the counter is full");
                    assertFalse(fresh.quarantined(), "round " + round + ": no write blocked");
                    assertEquals(
                            EventFd.Watchdog.COUNTER_MAX,
                            EventFd.Watchdog.counter(trap.fd().get()),
                            "round " + round + ": no rescue happened: the write was never tried");
                }
            }
            other.write(EventFd.Watchdog.COUNTER_MAX); // the eventfd adopted before the mark
            other.fd().setNonBlocking(false);
            assertFalse(earlier.trySignal(), "the earlier eventfd's full counter is seen before the write");
            assertFalse(earlier.quarantined(), "no write to the earlier eventfd blocked");
            assertEquals(
                    EventFd.Watchdog.COUNTER_MAX,
                    EventFd.Watchdog.counter(other.fd().get()),
                    "never written");
            assertTrue(standIn.trySignal(), "a stand-in with room is written");
        }
        assertFalse(new EventFd.PeerConduct().blockedAWrite(), "another peer starts unmarked");
    }

    /**
     * A peer that lets each write of ours it blocked through itself, well before the watchdog would end it (here after
     * about 20 ms each time), is marked too: only a write the watchdog ended marked it, so such a peer was never
     * looked at and held the threads writing its eventfds (other tenants' senders, shared poll threads) for as long
     * as it liked, one short hold after another. Now a write the watchdog's look sees blocked marks it.
     */
    @Test
    void aPeerThatReleasesItsBlockedWritesBeforeTheWatchdogIsMarkedToo() throws Exception {
        EventFd.PeerConduct conduct = new EventFd.PeerConduct();
        java.util.concurrent.ExecutorService writer = java.util.concurrent.Executors.newSingleThreadExecutor(
                Thread.ofPlatform().daemon().name("held writer").factory());
        try (EventFd peer = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd ours = EventFd.adoptFromPeer(peer.fd().dup(), "call", conduct)) {
            peer.fd().setNonBlocking(false);
            int held = 0;
            for (int round = 0; round < 300 && !conduct.blockedAWrite(); round++) {
                peer.write(EventFd.Watchdog.COUNTER_MAX);
                java.util.concurrent.Future<Boolean> w = writer.submit(ours::trySignal);
                Thread.sleep(20); // the peer holds our write, then lets it through: never as long as STUCK_NANOS
                peer.read();
                if (w.get(60, java.util.concurrent.TimeUnit.SECONDS)) {
                    held++;
                }
                peer.fd().setNonBlocking(true);
                peer.read(); // our write's 1, if it went through
                peer.fd().setNonBlocking(false);
            }
            assertTrue(
                    conduct.blockedAWrite(),
                    "the peer held " + held + " writes of ours, each released before the watchdog ended it, and"
                            + " is still not looked at");
            assertTrue(ours.quarantined(), "the eventfd whose write was seen blocked");
        } finally {
            writer.shutdownNow();
        }
    }

    /**
     * Several threads write one peer's eventfd at once — the senders delivering frames to one guest's receive queue
     * (other tenants' transmit threads, the recheck thread) — and the peer lets one of them through: the others must
     * still be freed. The watchdog knew of one write per eventfd (a start time each write overwrote and each cleared
     * when it returned), so once the write let through had returned, the one still blocked was invisible to it and
     * held its thread — another tenant's — for good.
     */
    @Test
    void aWriteStillBlockedAfterAnotherOneWentThroughIsEndedToo() throws Exception {
        try (EventFd peer = EventFd.create(0, EventFd.EFD_CLOEXEC | EventFd.EFD_SEMAPHORE);
                EventFd ours = EventFd.adoptFromPeer(peer.fd().dup(), "call")) {
            peer.write(EventFd.Watchdog.COUNTER_MAX);
            peer.fd().setNonBlocking(false); // the peer undoes what we did; the counter is full
            java.util.concurrent.ExecutorService senders = java.util.concurrent.Executors.newFixedThreadPool(
                    2, Thread.ofPlatform().daemon().name("sender ", 0).factory());
            try {
                java.util.concurrent.Future<Boolean> a = senders.submit(ours::trySignal);
                java.util.concurrent.Future<Boolean> b = senders.submit(ours::trySignal);
                Thread.sleep(80); // both writes block (the watchdog ends a write after 200 ms)
                assertEquals(1, peer.read(), "semaphore mode: the counter goes down by one, one write fits");
                a.get(5, java.util.concurrent.TimeUnit.SECONDS);
                b.get(5, java.util.concurrent.TimeUnit.SECONDS);
            } finally {
                peer.fd().setNonBlocking(true);
                peer.read(); // room for a write still blocked, should the test have failed: its thread ends
                peer.read();
                senders.shutdownNow();
            }
        }
    }

    /**
     * A peer that lets one blocked write through every 150 ms (a semaphore-mode counter, read once each time) while
     * six senders keep signalling: each look of the watchdog saw a write return and started its count over, so it
     * never ended one, and the senders — other tenants' threads — went at the peer's pace for as long as it liked.
     * Now the count starts over only once as many writes returned as were in progress when it began.
     */
    @Test
    void aPeerLettingWritesThroughOneAtATimeDoesNotHoldTheOthers() throws Exception {
        try (EventFd peer = EventFd.create(0, EventFd.EFD_CLOEXEC | EventFd.EFD_SEMAPHORE);
                EventFd ours = EventFd.adoptFromPeer(peer.fd().dup(), "call")) {
            peer.write(EventFd.Watchdog.COUNTER_MAX);
            peer.fd().setNonBlocking(false);
            java.util.concurrent.atomic.AtomicBoolean done = new java.util.concurrent.atomic.AtomicBoolean();
            java.util.concurrent.ExecutorService threads = java.util.concurrent.Executors.newFixedThreadPool(
                    7, Thread.ofPlatform().daemon().name("paced ", 0).factory());
            try {
                for (int i = 0; i < 6; i++) {
                    threads.submit(() -> {
                        while (!done.get() && !ours.quarantined()) {
                            ours.trySignal();
                        }
                        return null;
                    });
                }
                threads.submit(() -> {
                    while (!done.get()) {
                        Thread.sleep(150);
                        peer.read(); // one write fits
                    }
                    return null;
                });
                Await.until(
                        Duration.ofSeconds(20),
                        "the watchdog ended a write the peer held while it let one through every 150 ms",
                        ours::quarantined);
            } finally {
                done.set(true);
                peer.fd().setNonBlocking(true);
                for (int i = 0; i < 8; i++) {
                    peer.read(); // room for writes still blocked, should the test have failed: their threads end
                }
                threads.shutdownNow();
            }
        }
    }

    @Test
    void anEmptyBlockingCounterCannotHoldAReader() throws Exception {
        try (EventFd peer = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd ours = EventFd.adoptFromPeer(peer.fd().dup(), "kick")) {
            peer.fd().setNonBlocking(false);
            assertEquals(0, ours.consume(), "nothing pending: returns at once, the file's flags notwithstanding");
            assertEquals(0, EventFd.Watchdog.counter(ours.fd().get()), "no spurious kick from the watchdog either");
            peer.write(3);
            assertEquals(3, ours.consume());
            assertEquals(0, ours.consume(), "nothing pending afterwards, and no block");
        }
    }

    /**
     * Where the kernel (or a seccomp filter) refuses RWF_NOWAIT reads, a kick read is a plain read the watchdog ends
     * by adding 1, and a blocked write is ended by a thread of its own reading the counter.
     */
    @Test
    void withoutNowaitReadsTheWatchdogStillEndsBlockedReadsAndWrites() throws Exception {
        boolean was = EventFd.nowaitReads(false);
        try (EventFd peer = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd kick = EventFd.adoptFromPeer(peer.fd().dup(), "kick");
                EventFd call = EventFd.adoptFromPeer(peer.fd().dup(), "call")) {
            peer.fd().setNonBlocking(false);
            assertEquals(1, kick.consume(), "the blocked read was ended by the watchdog's 1 (a spurious kick)");
            assertEquals(0, kick.consume(), "the watchdog made the file non-blocking again; nothing pending");
            assertFalse(EventFd.Watchdog.drainWithoutWaiting(call), "no drain on the watchdog's thread");
            peer.write(EventFd.Watchdog.COUNTER_MAX);
            peer.fd().setNonBlocking(false);
            assertFalse(call.trySignal(), "the blocked write was ended (by the unblock thread's read)");
            assertEquals(1, peer.read(), "the counter was drained, then our write went through");
        } finally {
            EventFd.nowaitReads(was);
        }
    }

    /**
     * The read behind kick reads and the watchdog's drain cannot wait whatever the file's flags are: a peer that clears
     * O_NONBLOCK and empties the counter just before the watchdog drains it (the write it held having gone through)
     * would otherwise hold the draining thread until the next signal — for ever, with the borrowed descriptor, if the
     * eventfd is closed first.
     */
    @Test
    void aDrainOfACounterThePeerEmptiedFirstDoesNotWait() throws Exception {
        try (EventFd peer = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd ours = EventFd.adoptFromPeer(peer.fd().dup(), "call")) {
            peer.fd().setNonBlocking(false);
            assertEquals(-Errno.EAGAIN, Syscalls.read8NoWait(ours.fd().get()), "an empty counter: EAGAIN, no wait");
            assertFalse(peer.fd().isNonBlocking(), "without making the file non-blocking");
            assertTrue(EventFd.Watchdog.drainWithoutWaiting(ours), "this kernel reads eventfds with RWF_NOWAIT");
            peer.write(EventFd.Watchdog.COUNTER_MAX);
            peer.fd().setNonBlocking(false);
            assertTrue(EventFd.Watchdog.drainWithoutWaiting(ours));
            assertEquals(0, EventFd.Watchdog.counter(ours.fd().get()), "a full counter is drained");
        }
    }

    /**
     * The watchdog drains a peer's counter only when the kernel shows the operation blocked: a writer that is merely
     * late (descheduled on a loaded host) must not have its pending count read away — that was an interrupt the
     * peer had not consumed yet.
     */
    @Test
    void theWatchdogTellsABlockedOperationFromALateOne() throws Exception {
        try (EventFd peer = EventFd.create(0, EventFd.EFD_CLOEXEC);
                EventFd ours = EventFd.adoptFromPeer(peer.fd().dup(), "call")) {
            assertEquals(0, EventFd.Watchdog.counter(ours.fd().get()));
            assertTrue(EventFd.Watchdog.wouldBlock(ours, true), "a read of an empty counter blocks");
            assertFalse(EventFd.Watchdog.wouldBlock(ours, false), "a write to an empty counter does not");
            peer.write(0x1234_5678_9abcL);
            assertEquals(0x1234_5678_9abcL, EventFd.Watchdog.counter(ours.fd().get()), "fdinfo is hexadecimal");
            assertFalse(EventFd.Watchdog.wouldBlock(ours, true), "pending count: a read returns at once");
            assertFalse(EventFd.Watchdog.wouldBlock(ours, false), "room left: a write returns at once");
            assertEquals(0x1234_5678_9abcL, peer.read(), "deciding read nothing away");
            peer.write(EventFd.Watchdog.COUNTER_MAX);
            assertTrue(EventFd.Watchdog.wouldBlock(ours, false), "a full counter holds a writer");
        }
    }
}
