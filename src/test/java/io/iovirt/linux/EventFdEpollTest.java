// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

@Timeout(30)
class EventFdEpollTest {

    @Test
    void counterAddsUpAndReadResetsIt() throws Exception {
        try (EventFd e = EventFd.create(false)) {
            e.signal();
            e.write(41);
            assertEquals(42, e.read());
            assertTrue(e.fd().isCloseOnExec());
            assertFalse(e.fd().isNonBlocking());
        }
    }

    @Test
    void nonBlockingReadOfAnEmptyCounterReturnsZero() throws Exception {
        try (EventFd e = EventFd.create(true)) {
            assertTrue(e.fd().isNonBlocking());
            assertEquals(0, e.read());
            e.signal();
            assertEquals(1, e.read());
            assertEquals(0, e.read());
        }
    }

    @Test
    void semaphoreModeCountsDownByOne() throws Exception {
        try (EventFd e = EventFd.create(3, EventFd.EFD_CLOEXEC | EventFd.EFD_NONBLOCK | EventFd.EFD_SEMAPHORE)) {
            assertEquals(1, e.read());
            assertEquals(1, e.read());
            assertEquals(1, e.read());
            assertEquals(0, e.read());
        }
    }

    @Test
    void overflowingNonBlockingCounterIsAlreadySignalled() throws Exception {
        try (EventFd e = EventFd.create(true)) {
            e.write(0xffff_ffff_ffff_fffeL); // the maximum the counter holds
            e.signal(); // would overflow: EAGAIN, dropped
            assertEquals(0xffff_ffff_ffff_fffeL, e.read());
        }
    }

    @Test
    void closedEventFdRefusesUse() throws Exception {
        EventFd e = EventFd.create(true);
        e.close();
        e.close(); // idempotent
        assertThrows(IllegalStateException.class, e::signal);
    }

    @Test
    void epollWakesWhenAnotherThreadSignals() throws Exception {
        try (Epoll ep = Epoll.create(8);
                EventFd kick = EventFd.create(true);
                EventFd other = EventFd.create(true)) {
            ep.add(kick.fd(), Epoll.EPOLLIN, 0x1234_5678_9abc_def0L);
            ep.add(other.fd(), Epoll.EPOLLIN, 7);
            assertEquals(0, ep.wait(0));
            CountDownLatch waiting = new CountDownLatch(1);
            AtomicReference<Throwable> failure = new AtomicReference<>();
            Thread signaller = Thread.ofPlatform().start(() -> {
                try {
                    waiting.await();
                    kick.signal();
                } catch (Throwable t) {
                    failure.set(t);
                }
            });
            waiting.countDown();
            int n;
            do {
                n = ep.wait(-1);
            } while (n == 0);
            signaller.join();
            assertEquals(null, failure.get());
            assertEquals(1, n);
            assertEquals(0x1234_5678_9abc_def0L, ep.data(0)); // full 64-bit data survives the packed layout
            assertEquals(Epoll.EPOLLIN, ep.events(0) & Epoll.EPOLLIN);
            assertThrows(IndexOutOfBoundsException.class, () -> ep.data(1));
            assertEquals(1, kick.read());
        }
    }

    @Test
    void reportsSeveralReadyDescriptorsAndHonoursModifyAndDelete() throws Exception {
        try (Epoll ep = Epoll.create(4);
                EventFd a = EventFd.create(true);
                EventFd b = EventFd.create(true)) {
            ep.add(a.fd(), Epoll.EPOLLIN, 1);
            ep.add(b.fd(), Epoll.EPOLLIN, 2);
            a.signal();
            b.signal();
            assertEquals(2, ep.wait(1000));
            long sum = ep.data(0) + ep.data(1);
            assertEquals(3, sum);

            ep.modify(a.fd(), Epoll.EPOLLIN, 10);
            ep.delete(b.fd());
            assertEquals(1, ep.wait(1000));
            assertEquals(10, ep.data(0));

            LinuxException e = assertThrows(LinuxException.class, () -> ep.delete(b.fd()));
            assertEquals(Errno.ENOENT, e.errno());
            assertTrue(e.getMessage().contains("epoll_ctl(EPOLL_CTL_DEL)"), e.getMessage());
            assertTrue(e.getMessage().contains("ENOENT"), e.getMessage());
        }
    }

    @Test
    void replacingTheFileBehindADescriptorRedirectsLaterWrites() throws Exception {
        try (EventFd oldCall = EventFd.create(true);
                EventFd newCall = EventFd.create(true);
                EventFd user = EventFd.adopt(oldCall.fd().dup())) {
            int number = user.fd().get();
            user.signal();
            assertEquals(1, oldCall.read());
            user.fd().replaceWith(newCall.fd()); // the worker's descriptor number stays the same ...
            assertEquals(number, user.fd().get());
            assertTrue(user.fd().isCloseOnExec());
            user.write(7); // ... but now reaches the new eventfd
            assertEquals(7, newCall.read());
            assertEquals(0, oldCall.read());
        }
    }

    @Test
    void eventLayoutMatchesTheArchitecture() {
        String arch = System.getProperty("os.arch");
        boolean x86 = arch.equals("amd64") || arch.equals("x86_64");
        assertEquals(x86 ? 12 : 16, Epoll.EVENT_SIZE);
        assertEquals(x86 ? 4 : 8, Epoll.DATA_OFFSET);
    }

    @Test
    void blockingReadReturnsOnceSignalled() throws Exception {
        try (EventFd e = EventFd.create(false)) {
            Thread t = Thread.ofPlatform().start(() -> {
                try {
                    e.write(5);
                } catch (LinuxException ex) {
                    throw new RuntimeException(ex);
                }
            });
            assertEquals(5, e.read());
            assertTrue(t.join(java.time.Duration.ofSeconds(10)));
        }
    }
}
