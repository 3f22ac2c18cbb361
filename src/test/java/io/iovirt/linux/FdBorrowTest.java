// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.OpenFiles;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * {@link Fd#borrow}: a number another thread uses without the owner's knowledge (the eventfd watchdog ending a blocked
 * read or write) is not closed under it — and so not reused by an unrelated open before its system call — while the
 * owner's close does not wait for it.
 */
@Timeout(60)
class FdBorrowTest {
    @Test
    void aBorrowedNumberStaysThisFileThroughACloseUntilGivenBack() throws Exception {
        EventFd e = EventFd.create(true);
        int n = e.fd().get();
        long id = OpenFiles.eventfdId(n);
        assertEquals(n, e.fd().borrow());
        e.close(); // returns at once
        assertThrows(IllegalStateException.class, () -> e.fd().get(), "closed for its owner");
        assertEquals(-1, e.fd().borrow(), "no borrow after the close");
        try (EventFd next = EventFd.create(true)) {
            assertNotEquals(n, next.fd().get(), "the number is not handed to a new open while borrowed");
        }
        assertEquals(id, OpenFiles.eventfdId(n), "still the same eventfd");
        Syscalls.PerThread t = Syscalls.perThread();
        t.scratch.set(java.lang.foreign.ValueLayout.JAVA_LONG, 0, 1L);
        assertEquals(8, Syscalls.write(n, t.scratch, 8), "what the borrower does reaches the eventfd");
        e.fd().giveBack();
        assertEquals(List.of(), OpenFiles.eventfd(id), "closed by the last give-back");
    }

    @Test
    void aDescriptorNotBorrowedClosesAtOnceAndABorrowOfAClosedOneFails() throws Exception {
        EventFd e = EventFd.create(true);
        long id = OpenFiles.eventfdId(e.fd().get());
        int n = e.fd().borrow();
        e.fd().giveBack();
        e.close();
        assertEquals(List.of(), OpenFiles.eventfd(id), "closed by close itself: nothing was borrowed");
        assertEquals(-1, e.fd().borrow());
        assertTrue(n >= 0);
    }

    /** Borrowers racing the close: each borrowed number is this eventfd's while borrowed, and it is closed once. */
    @Test
    void borrowersRacingACloseEachSeeThisFileAndItIsClosedOnce() throws Exception {
        for (int round = 0; round < 200; round++) {
            EventFd e = EventFd.create(true);
            long id = OpenFiles.eventfdId(e.fd().get());
            CountDownLatch go = new CountDownLatch(1);
            AtomicInteger wrong = new AtomicInteger();
            List<Thread> threads = new ArrayList<>();
            for (int t = 0; t < 3; t++) {
                threads.add(Thread.ofPlatform().start(() -> {
                    try {
                        go.await();
                    } catch (InterruptedException ex) {
                        return;
                    }
                    for (int i = 0; i < 50; i++) {
                        int f = e.fd().borrow();
                        if (f < 0) {
                            return;
                        }
                        try {
                            if (OpenFiles.eventfdId(f) != id) {
                                wrong.incrementAndGet();
                            }
                        } finally {
                            e.fd().giveBack();
                        }
                    }
                }));
            }
            go.countDown();
            e.close();
            for (Thread t : threads) {
                t.join();
            }
            assertEquals(0, wrong.get(), "a borrowed number referred to another file");
            assertEquals(List.of(), OpenFiles.eventfd(id), "closed once all were given back");
        }
    }
}
