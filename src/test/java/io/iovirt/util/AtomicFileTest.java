// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@link AtomicFile}: what it writes and exactly which names a crash of it could leave behind. */
class AtomicFileTest {
    @TempDir
    Path dir;

    /**
     * The name a write's temporary file has (seen by making the prepare step fail after it was created) is a
     * leftover of its target, and only of its target: not of a file whose name starts like it (FILE.failed's), nor
     * a name someone chose alike.
     */
    @Test
    void leftoversAreExactlyTheTemporaryFilesOfTheirTarget() throws Exception {
        Path target = dir.resolve("state.json");
        Path[] temp = new Path[1];
        try {
            AtomicFile.replace(target, new byte[] {1}, t -> {
                temp[0] = t;
                throw new java.io.IOException("stop here");
            });
        } catch (java.io.IOException expected) {
            // the temporary file is removed again; its name is what counts
        }
        assertTrue(AtomicFile.isLeftover(target, temp[0]), temp[0].toString());
        assertFalse(Files.exists(temp[0]), "a failed write's temporary file stays");
        Path failed = dir.resolve("state.json.failed");
        assertFalse(AtomicFile.isLeftover(target, dir.resolve("state.json.failed.iovirt-tmp-12-34")));
        assertTrue(AtomicFile.isLeftover(failed, dir.resolve("state.json.failed.iovirt-tmp-12-34")));
        for (String name : List.of(
                "state.json.iovirt-tmp-",
                "state.json.iovirt-tmp-12",
                "state.json.iovirt-tmp-1-x",
                "state.json.iovirt-tmp-1-2.keep",
                "state.json.lock")) {
            assertFalse(AtomicFile.isLeftover(target, dir.resolve(name)), name);
        }
        AtomicFile.replace(target, new byte[] {1, 2}, null);
        assertArrayEquals(new byte[] {1, 2}, Files.readAllBytes(target));
        try (var files = Files.list(dir)) {
            assertEquals(
                    List.of("state.json"),
                    files.map(p -> p.getFileName().toString()).toList());
        }
    }
}
