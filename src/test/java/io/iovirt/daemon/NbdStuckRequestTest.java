// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.FileIo;
import io.iovirt.linux.SocketAccess;
import io.iovirt.storage.ImageFormat;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.testing.StoppableFuse;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * An NBD export whose image is on a file system that stops answering while a client's request is in image I/O — a
 * real one: fuse2fs serving an ext4 image, stopped with SIGSTOP, and a real client (qemu-io). Removing the export
 * returns (the control thread is not held up), but the image is neither closed nor unlocked under the request: a
 * descriptor closed then could be reused by another open (another tenant's image or socket) and take that request's
 * I/O. Once the file system answers again and the request has ended, the image is closed and its lock let go.
 *
 * <p>The lock is watched with F_OFD_GETLK through a descriptor opened before the stop: a second export of the image
 * would itself wait for the stopped daemon in open(2) (FUSE_OPEN) before it got to the lock. It is started once the
 * daemon answers again, after the image was let go.
 */
@Tag("peer")
@Timeout(value = 240, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class NbdStuckRequestTest {
    static final Duration TIMEOUT = Duration.ofSeconds(20);

    @TempDir
    Path dir;

    StoppedFsImage fx;
    Path qemuIo;
    Process client;
    NbdExportEntry entry;

    @BeforeEach
    void start() throws Exception {
        qemuIo = Require.program("qemu-io", "apt-get install qemu-utils");
        fx = StoppedFsImage.mount(dir, "disk.raw", 4 << 20);
    }

    @AfterEach
    void stop() throws Exception {
        if (fx != null) {
            fx.close(); // ends the client, then closes the export: a no-op when the test closed it
        }
    }

    /**
     * A read the reader thread serves itself (the connection's only request) hangs in the stopped file system: the
     * connection itself outlives the server's wait for it.
     */
    @Test
    void aReadStuckInImageIoKeepsTheImageOpenAndLockedUntilItEnds() throws Exception {
        removedWhileStuck("read 0 64k", true);
    }

    /**
     * A BLOCK_STATUS, which a worker serves (lseek SEEK_DATA, which waits for the stopped daemon's attributes), hangs:
     * the connection ends after its minute's wait for the request and gives its worker up — the export must still
     * not close the image under that worker.
     */
    @Test
    void aWorkerGivenUpOnKeepsTheImageOpenAndLockedUntilItEnds() throws Exception {
        removedWhileStuck("map", false);
    }

    private void removedWhileStuck(String command, boolean reader) throws Exception {
        Path socket = dir.resolve("nbd.sock");
        // read-only: its flush is a no-op, so a close under the request would show at once (the number goes from
        // /proc/self/fd even while close(2) waits for the stopped daemon's FUSE_FLUSH)
        entry = fx.closeFirst(NbdExportEntry.start(
                new NbdExportEntry.Spec("stuck", fx.image, socket, true, ImageFormat.RAW),
                SocketAccess.ownerOnly(),
                false,
                ImageOpens.Wanted.ALWAYS,
                io.iovirt.storage.BackingPolicy.UNRESTRICTED));
        List<Integer> fds = fx.imageFds();
        assertEquals(2, fds.size(), "the export's lock and image descriptors: " + fds);
        fx.openProbe();
        assertEquals(FileIo.F_RDLCK, fx.conflict(FileIo.F_WRLCK), "the export holds a read lock");
        String uri = "nbd+unix:///stuck?socket=" + socket;
        StoppableFuse.run(
                List.of(qemuIo.toString(), "-r", "-f", "raw", uri, "-c", command)); // served while the daemon answers

        fx.fs.stop(); // the read goes to the stopped daemon, not the cache
        client = new ProcessBuilder(qemuIo.toString(), "-r", "-f", "raw", uri, "-c", command)
                .redirectErrorStream(true)
                .redirectOutput(dir.resolve("qemu-io.log").toFile())
                .start();
        fx.closeFirst(() -> {
            client.destroyForcibly();
            client.waitFor(10, TimeUnit.SECONDS);
        });
        Await.until(TIMEOUT, "a thread of the export to wait for the stopped daemon on " + fds, () -> {
            assertTrue(client.isAlive(), "qemu-io exited: " + log());
            return !StoppableFuse.blockedOn(fds).isEmpty();
        });

        // returns within its bound: the control thread is not held up by the request
        String notice = entry.closeAsync().await(Duration.ZERO); // as nbd.remove answers once its 5 s are over
        // what is under way is said as it is: the server still lets its client's request finish (the image's close has
        // not begun). It said the image was still being flushed "(its file system or disk does not answer)", after the
        // server's close had taken up to 15 s, before that close had even started.
        assertTrue(notice != null && notice.contains("its server has not stopped after "), "notice: " + notice);
        assertTrue(
                notice.contains("1 client connection is still finishing the requests it had in flight"),
                "notice: " + notice);
        assertTrue(!notice.contains("still being flushed"), "notice: " + notice);
        fx.stillHeld(fds);
        fx.assertLine(
                "an error line says the image stays open",
                "nbd stuck",
                "the image stays open and locked",
                fx.image.toString());
        if (!reader) {
            // the connection gives up on its worker (after a minute); the image must stay open under it
            Await.until(
                    Duration.ofSeconds(90),
                    "the connection to give its worker up",
                    () -> fx.log.all().stream().anyMatch(l -> l.contains("requests still in image I/O 60 s after")));
            fx.staysHeld(fds);
        }

        fx.resumeAndAwaitRelease("the request");
        fx.log.awaitLine("is flushed, closed and unlocked now");
        // and the image can be exported again, writable: nobody holds it any more
        try (NbdExportEntry again = NbdExportEntry.start(
                new NbdExportEntry.Spec("again", fx.image, dir.resolve("again.sock"), false, ImageFormat.RAW),
                SocketAccess.ownerOnly(),
                false,
                ImageOpens.Wanted.ALWAYS,
                io.iovirt.storage.BackingPolicy.UNRESTRICTED)) {
            StoppableFuse.run(List.of(
                    qemuIo.toString(),
                    "-f",
                    "raw",
                    "nbd+unix:///again?socket=" + dir.resolve("again.sock"),
                    "-c",
                    "read -P 0x5a 0 64k"));
        }
    }

    private String log() {
        try {
            return Files.readString(dir.resolve("qemu-io.log"));
        } catch (IOException e) {
            return e.toString();
        }
    }
}
