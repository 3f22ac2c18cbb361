// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.SocketAccess;
import io.iovirt.storage.ImageFormat;
import io.iovirt.testing.Await;
import io.iovirt.testing.OpenFiles;
import io.iovirt.testing.Require;
import io.iovirt.vhostuser.LogCapture;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
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

    Path mount;
    Process fuse;
    Path image;
    Path qemuIo;
    Process client;
    NbdExportEntry entry;
    Fd probe;
    LogCapture log;

    @BeforeEach
    void start() throws Exception {
        Path fuse2fs = Require.program("fuse2fs", "apt-get install fuse2fs fuse3");
        Path mkfs = Require.program("mkfs.ext4", "apt-get install e2fsprogs");
        qemuIo = Require.program("qemu-io", "apt-get install qemu-utils");
        Require.program("fusermount3", "apt-get install fuse3");
        Require.that(Files.isReadable(Path.of("/dev/fuse")), "/dev/fuse is missing (modprobe fuse)");
        Require.that(
                Files.isWritable(Path.of("/proc/sys/vm/drop_caches")),
                "root, to drop the page cache (/proc/sys/vm/drop_caches) so a read reaches the FUSE daemon");
        Path fs = dir.resolve("fs.img");
        try (RandomAccessFile f = new RandomAccessFile(fs.toFile(), "rw")) {
            f.setLength(32 << 20);
        }
        run(List.of(mkfs.toString(), "-q", "-F", fs.toString()));
        mount = Files.createDirectory(dir.resolve("mnt"));
        fuse = new ProcessBuilder(fuse2fs.toString(), fs.toString(), mount.toString(), "-f", "-o", "fakeroot")
                .redirectErrorStream(true)
                .redirectOutput(dir.resolve("fuse2fs.log").toFile())
                .start();
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        while (!mounted()) {
            assertTrue(fuse.isAlive(), "fuse2fs exited: " + Files.readString(dir.resolve("fuse2fs.log")));
            assertTrue(System.nanoTime() < deadline, "fuse2fs did not mount " + mount + " within " + TIMEOUT);
            Thread.sleep(50);
        }
        image = mount.resolve("disk.raw");
        byte[] data = new byte[4 << 20];
        java.util.Arrays.fill(data, (byte) 0x5a);
        Files.write(image, data);
        image = image.toRealPath();
        log = LogCapture.start("io.iovirt");
    }

    @AfterEach
    void stop() throws Exception {
        if (fuse != null) {
            signal("-CONT");
        }
        if (client != null) {
            client.destroyForcibly();
            client.waitFor(10, TimeUnit.SECONDS);
        }
        if (entry != null) {
            entry.close(); // a no-op when the test closed it
        }
        if (fuse != null) {
            // the export lets go of the image once its request ended: then the file system can be unmounted
            Await.until(
                    RELEASED, "the export to close " + image, () -> exportFds().isEmpty());
        }
        if (probe != null) {
            probe.close();
        }
        if (fuse != null) {
            if (mounted()) {
                run(List.of("fusermount3", "-u", mount.toString()));
            }
            fuse.destroy();
            fuse.waitFor(10, TimeUnit.SECONDS);
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
        run(List.of(qemuIo.toString(), "-r", "-f", "raw", uri, "-c", command)); // served while the daemon answers

        signal("-STOP");
        Thread.sleep(1500); // libfuse's cached attributes (1 s) time out
        Files.writeString(Path.of("/proc/sys/vm/drop_caches"), "1"); // the read goes to the daemon, not the cache
        client = new ProcessBuilder(qemuIo.toString(), "-r", "-f", "raw", uri, "-c", command)
                .redirectErrorStream(true)
                .redirectOutput(dir.resolve("qemu-io.log").toFile())
                .start();
        Await.until(TIMEOUT, "a thread of the export to wait for the stopped daemon on " + fds, () -> {
            assertTrue(client.isAlive(), "qemu-io exited: " + log());
            return !blockedOn(fds).isEmpty();
        });

        entry.close(); // returns: the control thread is not held up by the request
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

        signal("-CONT");
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
            run(List.of(
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
        assertTrue(fuse.isAlive());
    }

    /** This process's descriptors of the image, other than the test's probe. */
    private List<Integer> exportFds() {
        List<Integer> out = new ArrayList<>();
        for (int n : OpenFiles.numbers()) {
            if ((probe == null || n != probe.get()) && image.toString().equals(OpenFiles.kind(n))) {
                out.add(n);
            }
        }
        return out;
    }

    /**
     * The threads of this process blocked in a system call whose first argument is one of {@code fds}
     * (/proc/self/task/TID/syscall: the call's number and arguments in hex, or "running").
     */
    private static List<String> blockedOn(List<Integer> fds) {
        List<String> out = new ArrayList<>();
        try (var tasks = Files.list(Path.of("/proc/self/task"))) {
            for (Path t : (Iterable<Path>) tasks::iterator) {
                String[] f;
                try {
                    f = Files.readString(t.resolve("syscall")).strip().split(" ");
                } catch (IOException e) {
                    continue; // the thread ended
                }
                if (f.length > 1 && !f[0].equals("running") && !f[0].equals("-1")) {
                    long arg0 = Long.parseUnsignedLong(f[1].substring(2), 16);
                    if (fds.contains((int) arg0) && arg0 < Integer.MAX_VALUE) {
                        out.add(t.getFileName() + ": " + String.join(" ", f));
                    }
                }
            }
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
        return out;
    }

    private String log() {
        try {
            return Files.readString(dir.resolve("qemu-io.log"));
        } catch (IOException e) {
            return e.toString();
        }
    }

    private boolean mounted() throws IOException {
        return Files.readAllLines(Path.of("/proc/self/mountinfo")).stream()
                .anyMatch(l -> l.contains(" " + mount + " ") && l.contains(" - fuse"));
    }

    private void signal(String sig) throws Exception {
        if (fuse.isAlive()) {
            run(List.of("kill", sig, Long.toString(fuse.pid())));
        }
    }

    private static void run(List<String> command) throws Exception {
        Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), command + " did not finish");
        assertEquals(0, p.exitValue(), command + ": " + out);
    }
}
