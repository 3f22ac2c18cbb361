// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.MemFd;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * {@link OpenFiles.Snapshot#openedSince}: what the descriptor tests rely on — a descriptor left open is named, one
 * closed since (by the test or another thread of the JVM) is not, and a number reused for another file is.
 */
class OpenFilesTest {
    @Test
    void namesWhatWasOpenedAndLeftOpenAndIgnoresWhatWasClosed() throws Exception {
        EventFd closedLater = EventFd.create(true);
        OpenFiles.Snapshot before = OpenFiles.snapshot();
        closedLater.close(); // as another thread closing its own descriptor meanwhile: no difference
        assertEquals(List.of(), before.openedSince());
        try (Fd mem = MemFd.allocate("openfiles-test", 4096)) {
            List<String> open = before.openedSince();
            assertEquals(1, open.size(), open.toString());
            assertTrue(
                    open.getFirst().startsWith("fd " + mem.get() + ": /memfd:openfiles-test"),
                    "named by number and file: " + open);
        }
        assertEquals(List.of(), before.openedSince(), "closed again");
    }

    @Test
    void aNumberNowReferringToAnotherEventfdCountsAsOpened() throws Exception {
        try (EventFd kept = EventFd.create(true)) {
            int n = kept.fd().get();
            OpenFiles.eventfdId(n); // the kernel shows eventfd ids, which tell one eventfd from another
            OpenFiles.Snapshot before = OpenFiles.snapshot();
            try (EventFd other = EventFd.create(true)) {
                kept.fd().replaceWith(other.fd()); // number n closed and opened again, for another eventfd
            }
            List<String> open = before.openedSince();
            assertEquals(1, open.size(), open.toString());
            assertTrue(open.getFirst().startsWith("fd " + n + ": anon_inode:[eventfd]"), open.toString());
        }
    }
}
