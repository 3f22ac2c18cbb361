// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.DiskTempDir;
import io.iovirt.testing.Require;
import java.io.RandomAccessFile;
import java.nio.file.Files;
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

    @TempDir(factory = DiskTempDir.class) // not a tmpfs /tmp: its pages are never clean
    Path dir;

    @Test
    void aWriteIsNotOnDiskUntilSynced() throws Exception {
        writeThenSync(PageCache.NR_CACHESTAT);
    }

    @Test
    void withoutCachestatTheDirtyPagesAreStillSeen() throws Exception {
        writeThenSync(NO_SUCH_SYSCALL);
    }

    /** A tmpfs file's pages are never written back: refused, rather than counted 0 (cachestat) or all (smaps). */
    @Test
    void aFileOnATmpfsIsRefused() throws Exception {
        Path shm = Path.of("/dev/shm");
        Require.that(
                Files.isDirectory(shm) && Files.getFileStore(shm).type().equals("tmpfs"),
                "/dev/shm mounted as a tmpfs");
        Path file = Files.createTempFile(shm, "iovirt-pagecache-", "");
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            f.write(new byte[1 << 20]);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PageCache.notOnDisk(file));
            assertTrue(e.getMessage().contains("tmpfs"), e.getMessage());
        } finally {
            Files.delete(file);
        }
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
