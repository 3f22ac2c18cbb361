// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The socket ownership lock behind {@code serve blk --standby}: one owner at a time; a second server is refused with
 * the remedy; a standby waits and takes over when the owner lets go (OFD locks conflict between open file
 * descriptions, so this works within one process as across processes).
 */
class SocketOwnerTest {
    @TempDir
    Path dir;

    @Test
    void aSecondOwnerIsRefusedAndAStandbyTakesOverWhenTheFirstLetsGo() throws Exception {
        Path sock = dir.resolve("blk.sock");
        SocketOwner first = SocketOwner.acquire(sock);
        IOException e = assertThrows(IOException.class, () -> SocketOwner.acquire(sock));
        assertTrue(e.getMessage().contains("--standby"), e.getMessage());

        CompletableFuture<SocketOwner> standby = CompletableFuture.supplyAsync(
                () -> {
                    try {
                        return SocketOwner.await(sock);
                    } catch (IOException x) {
                        throw new RuntimeException(x);
                    }
                },
                r -> Thread.ofPlatform().start(r));
        // The kernel lists a lock request that waits as "-> OFDLCK ..." on the file's inode: the standby has asked
        // and is held (not merely not started yet, which a fixed pause could not tell apart on a loaded machine).
        long inode = (Long) Files.getAttribute(SocketOwner.lockFile(sock), "unix:ino");
        Await.until(
                Duration.ofSeconds(20),
                "the standby's lock request waiting on " + SocketOwner.lockFile(sock),
                () -> !standby.isDone() && waitingLockRequests(inode) > 0);
        assertFalse(standby.isDone(), "the standby waits while the socket is served");
        first.close();
        try (SocketOwner second = standby.get(60, TimeUnit.SECONDS)) {
            assertNotNull(second);
            assertThrows(IOException.class, () -> SocketOwner.acquire(sock));
        }
        SocketOwner.acquire(sock).close(); // free again
    }

    /** Blocked lock requests on inode {@code inode}, from /proc/locks ("N: -> OFDLCK ADVISORY WRITE -1 MAJ:MIN:INODE ..."). */
    private static long waitingLockRequests(long inode) {
        try {
            return Files.readAllLines(Path.of("/proc/locks")).stream()
                    .map(l -> l.trim().split("\\s+"))
                    .filter(f -> f.length > 6 && f[1].equals("->") && f[6].endsWith(":" + inode))
                    .count();
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    /**
     * A socket in a directory that does not exist (a typo, or /run/iovirt-blk before systemd made it) says which
     * directory and what to do: the errno alone was the whole error line of serve blk, serve net and the daemon.
     */
    @Test
    void aMissingSocketDirectoryIsNamedWithTheRemedy() {
        Path sock = dir.resolve("no-such-dir/blk.sock");
        IOException e = assertThrows(IOException.class, () -> SocketOwner.acquire(sock));
        assertTrue(
                e.getMessage()
                        .endsWith("; its directory " + dir.resolve("no-such-dir") + " does not exist: create it"
                                + " (mkdir -p), or give a socket path in an existing directory"),
                e.getMessage());
    }
}
