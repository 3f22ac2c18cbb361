// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.FileIo;
import io.iovirt.vfio.VfioException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class CompletionWaiterTest {
    @TempDir
    Path tmp;

    private static long epollFds() throws Exception {
        try (Stream<Path> fds = Files.list(Path.of("/proc/self/fd"))) {
            return fds.filter(p -> {
                        try {
                            return Files.readSymbolicLink(p).toString().equals("anon_inode:[eventpoll]");
                        } catch (Exception e) {
                            return false; // the directory's own descriptor, gone by now
                        }
                    })
                    .count();
        }
    }

    @Test
    void aWaiterThatCannotWatchItsEventfdLeavesNoEpollBehind() throws Exception {
        Path file = Files.writeString(tmp.resolve("not-an-eventfd"), "x");
        // epoll refuses a regular file (EPERM): the stand-in for an eventfd epoll_ctl cannot add.
        try (EventFd notPollable = EventFd.adopt(FileIo.open(file, FileIo.O_RDONLY))) {
            long before = epollFds();
            for (int i = 0; i < 20; i++) {
                VfioException e = assertThrows(
                        VfioException.class, () -> new CompletionWaiter.Interrupt(notPollable, null, "MSI-X 1"));
                assertTrue(e.getMessage().startsWith("cannot watch the MSI-X 1 eventfd"), e.getMessage());
            }
            EventFd closed = EventFd.create(false);
            closed.close();
            assertThrows(IllegalStateException.class, () -> new CompletionWaiter.Interrupt(closed, null, "MSI-X 2"));
            // Each failed construction leaked one before; another test's thread may open or close one meanwhile.
            long leaked = epollFds() - before;
            assertTrue(leaked < 10, leaked + " epoll descriptors leaked");
        }
    }
}
