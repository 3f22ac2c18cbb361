// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link DirectoryReads}: what a test handing its view to the code under test relies on — each listing of a directory
 * is counted, and the code works on the view as on the real directory (a file channel, the way StateStore locks and
 * writes, included).
 */
class DirectoryReadsTest {
    @TempDir
    Path tmp;

    @Test
    void countsEachListingOfEachDirectory() throws Exception {
        Files.createDirectories(tmp.resolve("a/b"));
        DirectoryReads reads = DirectoryReads.of(tmp);
        for (int i = 0; i < 2; i++) {
            try (Stream<Path> s = Files.list(reads.root().resolve("a"))) {
                assertEquals(
                        List.of("b"), s.map(p -> p.getFileName().toString()).toList());
            }
        }
        assertEquals(2, reads.listings("a"));
        assertEquals(0, reads.listings(""), "the root was not listed");
        assertEquals(0, reads.listings("a/b"));
    }

    /** FileChannel.open and Files.createLink on a path of the view failed with UnsupportedOperationException. */
    @Test
    void fileChannelsAndHardLinksGoThroughToTheRealFiles() throws Exception {
        Path file = DirectoryReads.of(tmp).root().resolve("state");
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.CREATE, StandardOpenOption.WRITE)) {
            ch.lock();
            ch.write(ByteBuffer.wrap("row\n".getBytes(StandardCharsets.UTF_8)));
        }
        assertEquals("row\n", Files.readString(tmp.resolve("state")));
        Files.createLink(file.resolveSibling("link"), file);
        assertTrue(Files.isSameFile(tmp.resolve("link"), tmp.resolve("state")), "a hard link of the real file");
    }

    /** A path of the view equalled the real path it stands for, though the real path did not equal it. */
    @Test
    void aPathOfTheViewEqualsOnlyPathsOfTheSameView() {
        DirectoryReads reads = DirectoryReads.of(tmp);
        Path viewed = reads.root().resolve("a");
        assertEquals(reads.root().resolve("a"), viewed);
        assertEquals(reads.root().resolve("a").hashCode(), viewed.hashCode());
        assertNotEquals(tmp.resolve("a"), viewed, "the real path does not equal the view's");
        assertNotEquals(viewed, tmp.resolve("a"), "nor the view's the real one");
        assertNotEquals(viewed, DirectoryReads.of(tmp).root().resolve("a"), "nor another view's");
    }
}
