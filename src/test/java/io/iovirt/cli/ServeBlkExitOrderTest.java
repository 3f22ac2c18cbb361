// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.bench.BlkBench;
import io.iovirt.bench.BlkBenchOptions;
import io.iovirt.devices.blk.BlkTestDriver;
import io.iovirt.host.CliRun;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.testing.StoppableFuse;
import io.iovirt.vhostuser.SocketOwner;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code serve blk} lets go of its socket (to a standby, or the next backend started on it) only once the image is
 * flushed, closed and unlocked, also on its ways out that end in an error: a server that could not start, a failed
 * final flush. It let go of the socket first there, and closed the image after.
 *
 * <p>The image is a loop device over a file on a FUSE file system that stops answering ({@link StoppableFuse}): opening
 * the device does not reach the file system, but a flush does (the loop device flushes its backing file), and so does
 * the last close of a device with data in the page cache (written back then); either waits while the file system is
 * stopped, so the test sees the process inside that step and whether it still holds the socket then.
 */
@Tag("peer") // iovirt serve blk processes, fuse2fs, a loop device
@Timeout(value = 240, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class ServeBlkExitOrderTest {
    static final Duration TIMEOUT = Duration.ofSeconds(60);

    @TempDir
    Path dir;

    @Test
    void aServerThatCannotStartFlushesAndClosesTheImageBeforeTheSocketIsLetGo() throws Exception {
        Require.program("losetup", "apt-get install util-linux");
        Path sock = dir.resolve("blk.sock");
        Files.writeString(sock, "not a socket\n"); // the server cannot listen on it: serve blk fails to start
        try (StoppableFuse fs = StoppableFuse.mount(Files.createDirectory(dir.resolve("fuse")))) {
            String loop = attach(fs.file("disk.raw", 4 << 20));
            try {
                fs.stop();
                try (ChildProcess serve = ChildProcess.builder(
                                IovirtCli.serveBlk(Path.of(loop), sock, "--format", "raw"))
                        .name("iovirt serve blk")
                        .log(dir.resolve("serve.log"))
                        .start()) {
                    Await.until(
                            TIMEOUT,
                            "serve blk to flush the image (in the kernel, waiting for the stopped file system) or to"
                                    + " exit",
                            () -> !serve.isAlive() || blockedIn(serve.pid(), "fsync", "fdatasync"));
                    assertTrue(serve.isAlive(), "serve blk exited without flushing the image: " + serve.logTail(20));
                    assertTrue(held(sock), "the socket was let go of while the image was still being flushed");
                    fs.resume();
                    assertTrue(serve.waitFor(TIMEOUT), "serve blk did not exit once its flush could end");
                    assertNotEquals(0, serve.exitValue(), serve.log());
                    assertTrue(serve.log().contains(sock + " exists and is not a socket"), serve.log());
                }
                assertFalse(held(sock), "the socket is free once serve blk has exited");
            } finally {
                fs.resume();
                detach(loop);
            }
        }
    }

    /**
     * A failed final flush: the image is closed, and its lock let go of, before the socket is. serve blk let go of
     * the socket first, and closed the image after: a standby taking over meanwhile found the image still open and
     * locked (its frontend was refused the disk) or, qcow2, about to be written by the process before it.
     *
     * <p>The loop device's file fills its file system: the guest's FLUSH fails (and so, from then on, every flush,
     * the final one included, without reaching the disk). The guest then writes a little more, which stays in the page
     * cache; with the file system stopped, writing it back when the device is closed for the last time (the image's
     * lock descriptor) waits, which shows what serve blk held at that point.
     */
    @Test
    void aFailedFinalFlushClosesAndUnlocksTheImageBeforeTheSocketIsLetGo() throws Exception {
        Require.program("losetup", "apt-get install util-linux");
        Path sock = dir.resolve("blk.sock");
        try (StoppableFuse fs = StoppableFuse.mount(Files.createDirectory(dir.resolve("fuse")))) {
            Path filler = fs.file("filler", 1);
            long free = Files.getFileStore(filler).getUsableSpace();
            Files.write(filler, new byte[(int) Math.max(0, free - (4 << 20))]); // leaves about 4 MiB
            Path backing = filler.resolveSibling("disk.raw");
            try (RandomAccessFile f = new RandomAccessFile(backing.toFile(), "rw")) {
                f.setLength(32 << 20); // sparse: more than the file system still holds
            }
            String loop = attach(backing);
            try {
                try (ChildProcess serve = ChildProcess.builder(
                                IovirtCli.serveBlk(Path.of(loop), sock, "--format", "raw"))
                        .name("iovirt serve blk")
                        .log(dir.resolve("serve.log"))
                        .startListening(sock, TIMEOUT)) {
                    write(sock, BlkBenchOptions.Pattern.WRITE, 1.0); // the whole disk, in the page cache
                    try (EventFd call = EventFd.create(true);
                            BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                        assertEquals(
                                1, d.awaitStatus(d.flush()), "the guest's FLUSH did not fail (VIRTIO_BLK_S_IOERR)");
                    }
                    assertTrue(write(sock, BlkBenchOptions.Pattern.RANDWRITE, 0.1) > 0); // dirty again
                    fs.stop();
                    signal(serve.pid(), "TERM");
                    Await.until(
                            TIMEOUT,
                            "serve blk to close the image (writing it back to the stopped file system) or to let go of"
                                    + " its socket",
                            () -> !held(sock) || blockedIn(serve.pid(), "close"));
                    assertTrue(
                            held(sock),
                            "the socket was let go of while the image was still open (its final flush had failed): "
                                    + serve.logTail(20));
                    fs.resume();
                    assertTrue(serve.waitFor(TIMEOUT), "serve blk did not exit once the image could be closed");
                    assertNotEquals(0, serve.exitValue(), serve.log());
                    assertTrue(serve.log().contains("fdatasync"), serve.log());
                }
                assertFalse(held(sock), "the socket is free once serve blk has exited");
            } finally {
                fs.resume();
                detach(loop);
            }
        }
    }

    /**
     * An error while a queue was given up on (a request stuck in image I/O): the image stays open and locked, as when
     * serving ends normally with such a queue, and serve blk says so and exits 1. It closed the image under the
     * request instead: a descriptor number closed then could be reused by whatever the process opened next and take
     * that request's I/O, and another VM could take the image while the request still ran.
     *
     * <p>In-process, to have serving end in an error: the thread running the command is interrupted while it waits
     * for a termination signal. The image is read-only, so a close would show at once (no final flush to wait for).
     */
    @Test
    void anErrorWhileARequestIsStuckLeavesTheImageOpenAndLocked() throws Exception {
        Path sock = dir.resolve("blk.sock");
        try (StoppableFuse fs = StoppableFuse.mount(Files.createDirectory(dir.resolve("fuse")))) {
            Path image = fs.file("disk.raw", 4 << 20);
            // The command installs handlers for these signals; this process's own (the JVM's) are put back after.
            // Never through SIG_IGN, not even for a moment: HotSpot keeps an ignored INT, TERM or HUP ignored (it
            // will not install a handler over one, for nohup), and every process this JVM starts afterwards would
            // inherit it — in CI every later test that stops a child with SIGTERM failed.
            Map<sun.misc.Signal, sun.misc.SignalHandler> jvmHandlers = new java.util.HashMap<>();
            for (String name : new String[] {"INT", "TERM", "HUP"}) {
                sun.misc.Signal signal = new sun.misc.Signal(name);
                sun.misc.SignalHandler h = sun.misc.Signal.handle(signal, s -> {});
                sun.misc.Signal.handle(signal, h);
                jvmHandlers.put(signal, h);
            }
            CompletableFuture<CliRun> run = new CompletableFuture<>();
            Thread serving = Thread.ofPlatform()
                    .name("serve blk")
                    .start(() -> run.complete(CliRun.run(List.of(
                            "serve",
                            "blk",
                            "--image",
                            image.toString(),
                            "--socket",
                            sock.toString(),
                            "--readonly",
                            "--io-engine",
                            "sync"))));
            Fd probe = null;
            try {
                Await.until(TIMEOUT, "serve blk listening on " + sock, () -> run.isDone() || Files.exists(sock));
                try (EventFd call = EventFd.create(true);
                        BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                    assertEquals(0, d.awaitStatus(d.read(d.alloc(65536, 4096), 65536)), "served while it answers");
                    List<Integer> served = StoppableFuse.descriptorsOf(image, -1);
                    assertEquals(
                            2, served.size(), "the image's and (a frontend runs) its lock's descriptors: " + served);
                    probe = FileIo.open(image, FileIo.O_RDONLY);
                    assertEquals(FileIo.F_RDLCK, FileIo.ofdConflict(probe, FileIo.F_WRLCK), "a read lock is held");
                    fs.stop();
                    d.read(d.alloc(65536, 4096), 65536);
                    Await.until(
                            TIMEOUT,
                            "the queue thread to wait for the stopped file system",
                            () -> !StoppableFuse.blockedOn(served).isEmpty());
                    serving.interrupt(); // serving ends in an error (InterruptedException), with the request stuck
                    int except = probe.get();
                    Await.until(
                            Duration.ofSeconds(120), // the device gives the queue up after 30 s
                            "serve blk to return, or to close the image",
                            () -> run.isDone()
                                    || !StoppableFuse.descriptorsOf(image, except)
                                            .equals(served));
                    assertEquals(
                            served,
                            StoppableFuse.descriptorsOf(image, except),
                            "the image was closed under the stuck request");
                    assertEquals(
                            FileIo.F_RDLCK,
                            FileIo.ofdConflict(probe, FileIo.F_WRLCK),
                            "the image lock was let go of under the stuck request");
                    CliRun r = run.get();
                    assertEquals(1, r.exit(), r.err());
                    fs.resume();
                    Await.until(
                            TIMEOUT,
                            "the stuck request to end",
                            () -> StoppableFuse.blockedOn(served).isEmpty());
                }
            } finally {
                fs.resume();
                serving.join(TIMEOUT.toMillis());
                // serve blk leaves the image to the process's exit; this process goes on: let go of it here (those
                // numbers still naming the image: one closed meanwhile may have been reused)
                for (int fd : StoppableFuse.descriptorsOf(image, probe == null ? -1 : probe.get())) {
                    Fd.adopt(fd).close();
                }
                if (probe != null) {
                    probe.close();
                }
                jvmHandlers.forEach(sun.misc.Signal::handle);
            }
            // what a process started from here on inherits: none of them ignored
            String ignored = Files.readAllLines(Path.of("/proc/self/status")).stream()
                    .filter(l -> l.startsWith("SigIgn:"))
                    .findFirst()
                    .orElseThrow();
            long mask =
                    Long.parseUnsignedLong(ignored.substring("SigIgn:".length()).strip(), 16);
            assertEquals(
                    0,
                    mask & 0x4003L, // bit n-1 for signal n: SIGHUP 1, SIGINT 2, SIGTERM 15
                    "HUP, INT or TERM ignored: " + ignored);
        }
    }

    /** A loop device over {@code file}; its path. */
    static String attach(Path file) throws Exception {
        QemuTools.Result l = QemuTools.run("losetup", "--find", "--show", file.toString());
        Require.that(l.exit() == 0 && l.output().startsWith("/dev/loop"), "a loop device (root): " + l.output());
        return l.output().trim();
    }

    /** Detaches {@code loop} and waits until it has let go of its backing file (which may then be unmounted). */
    static void detach(String loop) throws Exception {
        QemuTools.ok("losetup", "-d", loop);
        Path backing = Path.of("/sys/block", Path.of(loop).getFileName().toString(), "loop", "backing_file");
        Await.until(TIMEOUT, loop + " detached", () -> !Files.exists(backing));
    }

    /** System call numbers as /proc/PID/task/TID/syscall shows them, by architecture. */
    static final Map<String, Map<String, String>> CALLS = Map.of(
            "amd64", Map.of("close", "3", "fsync", "74", "fdatasync", "75"),
            "aarch64", Map.of("close", "57", "fsync", "82", "fdatasync", "83"));

    /**
     * Whether a thread of process {@code pid} waits inside one of the system calls {@code names}, uninterruptibly
     * (state D: for the disk or the file system; a call that merely passes by is not counted).
     */
    static boolean blockedIn(long pid, String... names) {
        Map<String, String> numbers = CALLS.get(System.getProperty("os.arch"));
        Require.that(numbers != null, "the system call numbers of " + System.getProperty("os.arch"));
        Set<String> wanted = new HashSet<>();
        for (String n : names) {
            wanted.add(numbers.get(n));
        }
        try (var tasks = Files.list(Path.of("/proc", Long.toString(pid), "task"))) {
            for (Path t : (Iterable<Path>) tasks::iterator) {
                try {
                    String call = Files.readString(t.resolve("syscall")).split(" ")[0];
                    String stat = Files.readString(t.resolve("stat"));
                    // "tid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ')'
                    if (wanted.contains(call) && stat.charAt(stat.lastIndexOf(')') + 2) == 'D') {
                        return true;
                    }
                } catch (IOException e) {
                    // the thread ended
                }
            }
            return false;
        } catch (IOException e) {
            return false; // the process has exited
        }
    }

    /** Whether another process holds {@code sock}'s lock (serves it). */
    static boolean held(Path sock) {
        try (SocketOwner o = SocketOwner.tryAcquire(sock)) {
            return o == null;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static void signal(long pid, String signal) throws Exception {
        QemuTools.ok("kill", "-" + signal, Long.toString(pid));
    }

    static long write(Path sock, BlkBenchOptions.Pattern pattern, double seconds) throws Exception {
        return BlkBench.run(
                        new BlkBenchOptions(sock, pattern, 4096, 8, seconds, 0, 1, 128, false, true, true, false, 1))
                .ios();
    }
}
