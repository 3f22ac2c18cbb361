// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.testing.Await;
import io.iovirt.testing.StoppableFuse;
import io.iovirt.vhostuser.LogCapture;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.Deque;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The set-up the tests of an export whose image's file system stops answering share: an image on a {@link
 * StoppableFuse} file system, a log capture of "io.iovirt", and a probe — a descriptor of the image opened before the
 * stop (opening it then would wait for the stopped daemon too) through which F_OFD_GETLK sees the image lock. {@link
 * #close} lets the file system answer, closes what the test registered ({@link #closeFirst}: its exports, a client),
 * waits for the export to let go of the image (then the file system can be unmounted), and closes the probe, the file
 * system and the log capture in that order.
 */
final class StoppedFsImage implements AutoCloseable {
    /** Long enough for a request or read given up on to end once the file system answers, and the image to close. */
    static final Duration RELEASED = Duration.ofSeconds(120);

    final StoppableFuse fs;
    /** The image's real path: a file of 0x5a bytes on {@link #fs}. */
    final Path image;

    final LogCapture log;
    private final Deque<AutoCloseable> first = new ArrayDeque<>();
    private Fd probe;

    private StoppedFsImage(StoppableFuse fs, Path image) {
        this.fs = fs;
        this.image = image;
        this.log = LogCapture.start("io.iovirt");
    }

    /** Mounts a stoppable file system in {@code dir} with the image {@code name} of {@code bytes} bytes on it. */
    static StoppedFsImage mount(Path dir, String name, int bytes) throws Exception {
        StoppableFuse fs = StoppableFuse.mount(dir);
        try {
            return new StoppedFsImage(fs, fs.file(name, bytes));
        } catch (Exception | Error e) {
            fs.close();
            throw e;
        }
    }

    /** Closes {@code c} first on {@link #close}, before the wait for the image; the last registered first. */
    <T extends AutoCloseable> T closeFirst(T c) {
        first.push(c);
        return c;
    }

    /** Opens the probe: to be called before {@link StoppableFuse#stop} (an open then would wait for the daemon). */
    void openProbe() throws LinuxException {
        probe = FileIo.open(image, FileIo.O_RDONLY);
    }

    /** The lock of another descriptor that keeps a lock of {@code type} off the image, as the probe sees it. */
    short conflict(short type) throws LinuxException {
        return FileIo.ofdConflict(probe, type);
    }

    /** This process's descriptors of the image, other than the probe. */
    List<Integer> imageFds() {
        return StoppableFuse.descriptorsOf(image, probe == null ? -1 : probe.get());
    }

    /** The export's image descriptors {@code fds} are all still open, and its read lock still keeps writers away. */
    void stillHeld(List<Integer> fds) throws Exception {
        assertEquals(fds, imageFds(), "the export's descriptors of " + image + " are still open");
        assertEquals(FileIo.F_RDLCK, conflict(FileIo.F_WRLCK), "the image lock is still held");
        assertTrue(fs.alive());
    }

    /** {@link #stillHeld} for two seconds: a close under the stuck request would follow at once. */
    void staysHeld(List<Integer> fds) throws Exception {
        long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(2);
        while (System.nanoTime() < until) {
            stillHeld(fds);
            Thread.sleep(50);
        }
    }

    /**
     * Lets the file system answer again and waits for the image to be closed and unlocked once {@code what} (that
     * held it) has ended.
     */
    void resumeAndAwaitRelease(String what) throws Exception {
        fs.resume();
        Await.until(
                RELEASED,
                () -> "the image to be closed and unlocked once " + what + " ended (open: " + imageFds() + ")",
                () -> imageFds().isEmpty());
        assertEquals(FileIo.F_UNLCK, conflict(FileIo.F_WRLCK), "the image lock is let go");
    }

    /** Asserts that a log line holds all of {@code parts}; {@code what} says what that line is for. */
    void assertLine(String what, String... parts) {
        assertTrue(
                log.all().stream().anyMatch(l -> Arrays.stream(parts).allMatch(l::contains)),
                what + " " + List.of(parts) + ": " + log.all());
    }

    @Override
    public void close() throws Exception {
        try {
            fs.resume();
            while (!first.isEmpty()) {
                first.pop().close();
            }
            Await.until(
                    RELEASED, "the export to close " + image, () -> imageFds().isEmpty());
        } finally {
            try {
                if (probe != null) {
                    probe.close();
                }
            } finally {
                try {
                    fs.close();
                } finally {
                    log.close();
                }
            }
        }
    }
}
