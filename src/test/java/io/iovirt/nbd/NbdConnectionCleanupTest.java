// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.iovirt.nbd.NbdServerTest.RawClient;
import io.iovirt.storage.RawImage;
import io.iovirt.testing.Await;
import io.iovirt.testing.OpenFiles;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A client that disconnects in the middle of a write's payload: its connection is cleaned up at once (the slot the
 * write took goes back, so the disconnect does not wait a minute for a request that never existed, and the
 * connection's socket and image contexts are freed), and the server goes on serving others.
 */
class NbdConnectionCleanupTest {
    static final int MIB = 1 << 20;

    @TempDir
    Path dir;

    @Test
    void aWritePayloadCutShortFreesTheConnectionAtOnce() throws Exception {
        Path img = dir.resolve("w.raw");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(64L * MIB);
        }
        Path sock = dir.resolve("w.sock");
        try (RawImage image = RawImage.open(img, false, false);
                NbdServer s = NbdServer.startUnix(sock, 4)) {
            NbdExport export = new NbdExport("w", image, false);
            s.addExport(export);
            served(sock); // a first full connection: whatever the server opens once is open now
            awaitIdle(s);
            OpenFiles.Snapshot fds = OpenFiles.snapshot();
            // a large write (its buffer comes from the connection's budget) and one a slot's own buffer holds
            for (int length : new int[] {8 * MIB, 256 << 10}) {
                try (RawClient c = RawClient.unix(sock)) {
                    c.go("w");
                    c.send(Nbd.CMD_WRITE, 0, 0, length, null);
                    c.raw(ByteBuffer.allocate(length / 4)); // a quarter of the payload, then the client is gone
                }
                awaitIdle(s);
                assertEquals(0, export.stats().connections.get(), "connections open on the export");
                served(sock);
                awaitIdle(s);
            }
            Await.until(
                    Duration.ofSeconds(20),
                    () -> "the cut-short connections' descriptors to be closed (still open: " + fds.openedSince() + ")",
                    () -> fds.openedSince().isEmpty());
        }
    }

    /** Well under the minute a request still in flight may take: nothing was in flight. */
    private static void awaitIdle(NbdServer s) {
        Await.until(Duration.ofSeconds(20), "the connection to end", () -> s.connectionCount() == 0);
    }

    /** Another client is served: a write and a read of it back. */
    private static void served(Path sock) throws IOException {
        try (RawClient c = RawClient.unix(sock)) {
            c.go("w");
            byte[] data = new byte[4096];
            java.util.Arrays.fill(data, (byte) 0x5c);
            long cookie = c.send(Nbd.CMD_WRITE, 0, MIB, data.length, data);
            ByteBuffer h = c.read(16);
            assertEquals(Nbd.SIMPLE_REPLY_MAGIC, h.getInt());
            assertEquals(0, h.getInt());
            assertEquals(cookie, h.getLong());
            NbdServerTest.Reply r = c.request(Nbd.CMD_READ, 0, MIB, data.length);
            assertEquals(0, r.error());
            org.junit.jupiter.api.Assertions.assertArrayEquals(data, r.data());
        }
    }
}
