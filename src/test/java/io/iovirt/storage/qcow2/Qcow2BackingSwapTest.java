// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.ok;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.BackingPolicy;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.testing.Require;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A qcow2 backing file swapped (by the tenant who controls a link on its path) between its check by path and its
 * open is refused on the descriptor before anything of it is read: its header is not parsed, its own backing files
 * are not opened, and the message names nothing the swapped-in file holds. Before, the swapped-in file was opened in
 * full (its header, tables and backing chain) and errors on the way described it.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img: Failsafe
class Qcow2BackingSwapTest {
    @TempDir
    Path dir;

    @Test
    void aSwappedInQcow2BackingFileIsRefusedBeforeItsHeaderIsRead() throws Exception {
        Require.program("qemu-img", "apt-get install qemu-utils");
        Path bases = Files.createDirectories(dir.resolve("bases"));
        Path tenant = Files.createDirectories(dir.resolve("tenant"));
        Path base = bases.resolve("base.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", base.toString(), "1M");
        // outside the allowed directory: a qcow2 file naming another tenant's backing file (which does not exist
        // here, so that opening it would say so, with its name)
        Path other = tenant.resolve("other.qcow2");
        ok(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                "/nonexistent/OTHER-TENANT.raw",
                "-F",
                "raw",
                other.toString(),
                "1M");
        Path top = tenant.resolve("disk.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", base.toString(), "-F", "qcow2", top.toString(), "1M");
        BackingPolicy policy = BackingPolicy.of(List.of(bases), false);
        try (DiskImage d = Images.open(top, null, true, false, policy)) {
            // not swapped: opens
        }
        Qcow2Image.beforeBackingOpen = () -> { // the swap, after the check by path
            try {
                Files.delete(base);
                Files.createSymbolicLink(base, other);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        };
        try {
            IOException e = assertThrows(IOException.class, () -> {
                try (DiskImage d = Images.open(top, null, true, false, policy)) {
                    // opened: the assertion fails
                }
            });
            String m = e.getMessage();
            assertTrue(m.contains(base + " (" + other.toRealPath() + ") of " + top + " is outside"), m);
            assertFalse(m.contains("OTHER-TENANT"), m);
        } finally {
            Qcow2Image.beforeBackingOpen = null;
        }
    }
}
