// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.SocketAccess;
import io.iovirt.storage.ImageFormat;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.testing.StoppableFuse;
import io.iovirt.vhostuser.LogCapture;
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
    /** Long enough for the request to end, the connection to go and the image to be flushed and closed. */
    static final Duration RELEASED = Duration.ofSeconds(120);

    @TempDir
    Path dir;

    StoppableFuse fs;
    Path image;
    Path qemuIo;
    Process client;
    NbdExportEntry entry;
    Fd probe;
    LogCapture log;

    @BeforeEach
    void start() throws Exception {
        qemuIo = Require.program("qemu-io", "apt-get install qemu-utils");
        fs = StoppableFuse.mount(dir);
        image = fs.file("disk.raw", 4 << 20);
        log = LogCapture.start("io.iovirt");
    }

    @AfterEach
    void stop() throws Exception {
        if (fs != null) {
            fs.resume();
        }
        if (client != null) {
            client.destroyForcibly();
            client.waitFor(10, TimeUnit.SECONDS);
        }
        if (entry != null) {
            entry.close(); // a no-op when the test closed it
        }
        if (fs != null) {
            // the export lets go of the image once its request ended: then the file system can be unmounted
            Await.until(
                    RELEASED, "the export to close " + image, () -> exportFds().isEmpty());
        }
        if (probe != null) {
            probe.close();
        }
        if (fs != null) {
            fs.close();
        }
        if (log != null) {
            log.close();
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
        entry = NbdExportEntry.start(
                new NbdExportEntry.Spec("stuck", image, socket, true, ImageFormat.RAW),
                SocketAccess.ownerOnly(),
                false);
        List<Integer> fds = exportFds();
        assertEquals(2, fds.size(), "the export's lock and image descriptors: " + fds);
        probe = FileIo.open(image, FileIo.O_RDONLY);
        assertEquals(FileIo.F_RDLCK, FileIo.ofdConflict(probe, FileIo.F_WRLCK), "the export holds a read lock");
        String uri = "nbd+unix:///stuck?socket=" + socket;
        StoppableFuse.run(
                List.of(qemuIo.toString(), "-r", "-f", "raw", uri, "-c", command)); // served while the daemon answers

        fs.stop(); // the read goes to the stopped daemon, not the cache
        client = new ProcessBuilder(qemuIo.toString(), "-r", "-f", "raw", uri, "-c", command)
                .redirectErrorStream(true)
                .redirectOutput(dir.resolve("qemu-io.log").toFile())
                .start();
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
        stillHeld(fds);
        assertTrue(
                log.all().stream()
                        .anyMatch(l -> l.contains("nbd stuck")
                                && l.contains("the image stays open and locked")
                                && l.contains(image.toString())),
                "an error line says the image stays open: " + log.all());
        if (!reader) {
            // the connection gives up on its worker (after a minute); the image must stay open under it
            Await.until(
                    Duration.ofSeconds(90),
                    "the connection to give its worker up",
                    () -> log.all().stream().anyMatch(l -> l.contains("requests still in image I/O 60 s after")));
            long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(2); // a close under it would follow at once
            while (System.nanoTime() < until) {
                stillHeld(fds);
                Thread.sleep(50);
            }
        }

        fs.resume();
        Await.until(
                RELEASED,
                () -> "the image to be closed and unlocked once the request ended (open: " + exportFds() + ")",
                () -> exportFds().isEmpty());
        assertEquals(FileIo.F_UNLCK, FileIo.ofdConflict(probe, FileIo.F_WRLCK), "the image lock is let go");
        Await.until(
                TIMEOUT,
                "a line saying the image is closed now",
                () -> log.all().stream().anyMatch(l -> l.contains("is flushed, closed and unlocked now")));
        // and the image can be exported again, writable: nobody holds it any more
        try (NbdExportEntry again = NbdExportEntry.start(
                new NbdExportEntry.Spec("again", image, dir.resolve("again.sock"), false, ImageFormat.RAW),
                SocketAccess.ownerOnly(),
                false)) {
            StoppableFuse.run(List.of(
                    qemuIo.toString(),
                    "-f",
                    "raw",
                    "nbd+unix:///again?socket=" + dir.resolve("again.sock"),
                    "-c",
                    "read -P 0x5a 0 64k"));
        }
    }

    /** The export's image descriptors are all still open, and its lock still keeps writers away. */
    private void stillHeld(List<Integer> fds) throws Exception {
        assertEquals(fds, exportFds(), "the export's descriptors of " + image + " are still open");
        assertEquals(FileIo.F_RDLCK, FileIo.ofdConflict(probe, FileIo.F_WRLCK), "the image lock is still held");
        assertTrue(fs.alive());
    }

    /** This process's descriptors of the image, other than the test's probe. */
    private List<Integer> exportFds() {
        return StoppableFuse.descriptorsOf(image, probe == null ? -1 : probe.get());
    }

    private String log() {
        try {
            return Files.readString(dir.resolve("qemu-io.log"));
        } catch (IOException e) {
            return e.toString();
        }
    }
}
