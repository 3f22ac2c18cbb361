// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.RandomAccessFile;
import java.nio.file.Path;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Starts the real qemu-storage-daemon; no guest. */
@Tag("peer") // a real qemu-storage-daemon / iovirt backend process: Failsafe
class QemuStorageDaemonTest {

    @TempDir
    Path dir;

    @Test
    void listensUntilClosed() throws Exception {
        Path image = sparseImage("a.raw");
        Path socket = dir.resolve("a.sock");
        QemuStorageDaemon qsd =
                QemuStorageDaemon.builder(image, socket).numQueues(2).start();
        try {
            assertTrue(UnixSockets.isListening(socket.toString()));
            assertTrue(qsd.process().isAlive());
        } finally {
            qsd.close();
        }
        assertFalse(qsd.process().isAlive());
    }

    @Test
    void aDaemonThatCannotListenFailsWithItsOwnReason() throws Exception {
        Path image = sparseImage("b.raw");
        Path socket = dir.resolve("no-such-dir").resolve("b.sock");
        IllegalStateException e = assertThrows(
                IllegalStateException.class,
                () -> QemuStorageDaemon.builder(image, socket)
                        .log(dir.resolve("b.log"))
                        .start());
        assertTrue(e.getMessage().contains("exited") && e.getMessage().contains("b.sock"), e.getMessage());
    }

    @Test
    void tooLongSocketPathIsRefusedBeforeStarting() throws Exception {
        Path image = sparseImage("c.raw");
        Path socket = dir.resolve("x".repeat(120) + ".sock");
        IllegalArgumentException e = assertThrows(
                IllegalArgumentException.class,
                () -> QemuStorageDaemon.builder(image, socket).start());
        assertTrue(e.getMessage().contains("shorter"), e.getMessage());
    }

    private Path sparseImage(String name) throws Exception {
        Path image = dir.resolve(name);
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(16 << 20);
        }
        return image;
    }
}
