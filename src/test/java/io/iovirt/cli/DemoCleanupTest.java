// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The demo's shutdown hook against a command thread that is still writing into the directory when the signal comes
 * (what {@code DemoSignalGuestTest} once caught in CI: the guest's directory created again after the hook had removed
 * everything, so the demo directory was left).
 */
@Timeout(60)
class DemoCleanupTest {
    @TempDir
    Path tmp;

    @Test
    void theHookRemovesTheDirectoryOnlyAfterTheCommandHasStoppedWritingIntoIt() throws Exception {
        Path dir = Files.createDirectories(tmp.resolve("iovirt-demo"));
        Files.writeString(dir.resolve("pv-disk.raw"), "image");
        CountDownLatch writing = new CountDownLatch(1);
        DemoCleanup[] cleanup = new DemoCleanup[1];
        Thread command = new Thread(() -> {
            try {
                // like QemuGuest.start: the guest's directory (and its parents) made, files written, until the signal
                while (!Thread.currentThread().isInterrupted()) {
                    Path guest = Files.createDirectories(dir.resolve("guest-1"));
                    Files.writeString(guest.resolve("initrd"), "x".repeat(4096));
                    writing.countDown();
                }
                // on the way out, like a server closing: one more file touched after the interrupt
                Files.writeString(
                        Files.createDirectories(dir.resolve("guest-1")).resolve("console.log"), "bye");
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            } finally {
                cleanup[0].commandEnded();
            }
        });
        cleanup[0] = new DemoCleanup(dir, command);
        command.start();
        writing.await();

        cleanup[0].hook().run(); // what the JVM runs on SIGTERM

        command.join();
        assertFalse(Files.exists(dir), "the demo directory is left: " + dir);
    }

    @Test
    void removalPassesOverADanglingLinkAndADirectoryAlreadyGone() throws Exception {
        Path dir = Files.createDirectories(tmp.resolve("iovirt-demo"));
        Files.writeString(Files.createDirectories(dir.resolve("a/b")).resolve("f"), "x");
        Files.writeString(dir.resolve("b"), "x");
        Files.createSymbolicLink(dir.resolve("dangling.sock"), dir.resolve("gone"));
        DemoCleanup.deleteTree(dir);
        assertFalse(Files.exists(dir));
        DemoCleanup.deleteTree(dir); // gone already: nothing to do, no error
        assertTrue(Files.notExists(dir));
    }
}
