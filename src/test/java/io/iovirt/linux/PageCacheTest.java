// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.RandomAccessFile;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link PageCache} sees a write that is only in the page cache, and no longer once it is synced — with cachestat,
 * and on a kernel without it (before 6.5, e.g. Debian 12's 6.1), where it failed with ENOSYS and failed every test
 * using it.
 */
class PageCacheTest {
    /** A system call number no kernel has: the call fails with ENOSYS, as cachestat's does before Linux 6.5. */
    private static final long NO_SUCH_SYSCALL = 1000;

    @TempDir
    Path dir;

    @Test
    void aWriteIsNotOnDiskUntilSynced() throws Exception {
        writeThenSync(PageCache.NR_CACHESTAT);
    }

    @Test
    void withoutCachestatTheDirtyPagesAreStillSeen() throws Exception {
        writeThenSync(NO_SUCH_SYSCALL);
    }

    private void writeThenSync(long nr) throws Exception {
        Path file = dir.resolve("f");
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            f.write(new byte[1 << 20]);
            long dirty = PageCache.notOnDisk(file, nr);
            assertTrue(dirty > 0, "pages not on disk after a write: " + dirty);
            f.getFD().sync();
            assertEquals(0, PageCache.notOnDisk(file, nr));
        }
    }
}
