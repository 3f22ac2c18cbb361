// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.FileIo;
import io.iovirt.testing.OpenFiles;
import io.iovirt.vfio.VfioException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class CompletionWaiterTest {
    @TempDir
    Path tmp;

    @Test
    void aWaiterThatCannotWatchItsEventfdLeavesNoEpollBehind() throws Exception {
        Path file = Files.writeString(tmp.resolve("not-an-eventfd"), "x");
        // epoll refuses a regular file (EPERM): the stand-in for an eventfd epoll_ctl cannot add.
        try (EventFd notPollable = EventFd.adopt(FileIo.open(file, FileIo.O_RDONLY))) {
            OpenFiles.Snapshot before = OpenFiles.snapshot();
            for (int i = 0; i < 20; i++) {
                VfioException e = assertThrows(
                        VfioException.class, () -> new CompletionWaiter.Interrupt(notPollable, null, "MSI-X 1"));
                assertTrue(e.getMessage().startsWith("cannot watch the MSI-X 1 eventfd"), e.getMessage());
            }
            EventFd closed = EventFd.create(false);
            closed.close();
            assertThrows(IllegalStateException.class, () -> new CompletionWaiter.Interrupt(closed, null, "MSI-X 2"));
            // Each failed construction leaked its epoll descriptor before.
            assertEquals(List.of(), before.openedSince(), "descriptors the failed constructions left open");
        }
    }

    /**
     * The host takes the device back while a thread waits for its command's interrupt: closing the waiter from
     * another thread wakes the waiting one (closing an epoll descriptor does not), and the descriptors are closed
     * after it has left them, not under it.
     */
    @Test
    void closingFromAnotherThreadWakesTheWaiterAndClosesTheDescriptorsAfterIt() throws Exception {
        EventFd vector = EventFd.create(true);
        CompletionWaiter.Interrupt w = new CompletionWaiter.Interrupt(vector, null, "MSI-X 1");
        CountDownLatch entering = new CountDownLatch(1);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Thread waiter = Thread.ofPlatform().start(() -> {
            try {
                entering.countDown();
                w.await(600_000_000_000L); // ten minutes: only the close can end it
            } catch (Throwable t) {
                failure.set(t);
            }
        });
        entering.await();
        // close() must find the thread inside await; until then a close would simply close both descriptors
        while (waiter.getState() != Thread.State.RUNNABLE || !inEpollWait(waiter)) {
            Thread.sleep(1);
        }
        w.close();
        waiter.join(30_000); // a guard against a hang, not a time measurement
        assertFalse(waiter.isAlive(), "the waiting thread was not woken");
        assertEquals(null, failure.get());
        assertFalse(vector.fd().isOpen(), "the eventfd was left open");
        VfioException again = assertThrows(VfioException.class, () -> w.await(1_000_000));
        assertEquals("waiting for the MSI-X 1 interrupt: the controller is closed", again.getMessage());
    }

    /** Whether {@code t} is blocked in the epoll wait (its stack shows the native call). */
    private static boolean inEpollWait(Thread t) {
        for (StackTraceElement e : t.getStackTrace()) {
            if (e.getClassName().equals("io.iovirt.linux.Epoll")) {
                return true;
            }
        }
        return false;
    }
}
