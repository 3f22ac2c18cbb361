// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.RandomAccessFile;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@link PageCache} sees a write that is only in the page cache, and no longer once it is synced. */
class PageCacheTest {
    @TempDir
    Path dir;

    @Test
    void aWriteIsNotOnDiskUntilSynced() throws Exception {
        Path file = dir.resolve("f");
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            f.write(new byte[1 << 20]);
            long dirty = PageCache.notOnDisk(file);
            assertTrue(dirty > 0, "pages not on disk after a write: " + dirty);
            f.getFD().sync();
            assertEquals(0, PageCache.notOnDisk(file));
        }
    }
}
