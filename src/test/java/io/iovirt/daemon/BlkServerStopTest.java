// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.devices.blk.BlkDeviceLimits;
import io.iovirt.devices.blk.BlkTestDriver;
import io.iovirt.linux.EventFd;
import io.iovirt.testing.Await;
import io.iovirt.testing.StoppableFuse;
import io.iovirt.vhostuser.LogCapture;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Stopping a blk export whose frontend's vhost-user session is stuck in a device callback: the session thread stops
 * the queues once the frontend is disconnected, and a queue's stop waits for its worker's request, here a read stuck
 * on a file system that does not answer (fuse2fs, stopped with SIGSTOP, as a hung NFS server or FUSE daemon). The
 * device's stop wait is set longer than the test, so that the session stays in that stop until the file system is
 * resumed (SIGCONT), as it would with any callback that waits without bound. The server's stop joined that thread
 * without bound: blk.remove, a reload's removal and the daemon's stop did not answer until it ended; and the daemon's
 * stop stopped its exports' servers one after another.
 */
@Tag("peer")
@Timeout(value = 300, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class BlkServerStopTest {
    /** How long a step is waited for: the export's bounded stop (5 s) and then some. */
    static final Duration TIMEOUT = Duration.ofSeconds(60);

    @TempDir
    Path dir;

    Daemon daemon;
    boolean daemonStopped;
    StoppableFuse fs;
    LogCapture log;
    final ExecutorService threads = Executors.newCachedThreadPool();
    /** The images on {@link #fs}: the exports let go of them before it is unmounted. */
    final List<Path> images = new ArrayList<>();
    /** The frontends and their call eventfds, closed after the test. */
    final List<AutoCloseable> frontends = new ArrayList<>();

    @BeforeEach
    void start() throws Exception {
        log = LogCapture.start("io.iovirt");
        daemon = new Daemon(null);
        fs = StoppableFuse.mount(dir);
    }

    @AfterEach
    void stop() throws Exception {
        try {
            if (fs != null) {
                fs.resume();
            }
            for (AutoCloseable f : frontends.reversed()) {
                f.close();
            }
            if (!daemonStopped) {
                daemon.close();
            }
            Await.until(
                    TIMEOUT,
                    "the exports to let go of " + images,
                    () -> images.stream()
                            .allMatch(i -> StoppableFuse.descriptorsOf(i, -1).isEmpty()));
        } finally {
            threads.shutdownNow();
            if (fs != null) {
                fs.close();
            }
            log.close();
        }
    }

    /**
     * blk.remove of an export whose frontend's session is stuck answers — removed, with a notice naming the server's
     * socket and what its session is still in — while that session is still stuck: the server has not logged its
     * stop's end and its socket file is still there. Until the session has ended, the export's id and socket stay
     * taken (a re-add is refused as being removed); once the file system answers again, the session ends, the old
     * server closes its listener and removes its socket file, and only then is the re-add on the same id and socket
     * served.
     */
    @Test
    void aRemoveWhoseFrontendSessionIsStuckAnswersAndKeepsItsSocketUntilTheSessionEnds() throws Exception {
        Path socket = dir.resolve("a.sock");
        BlkTestDriver d = frontendOfANewExport("a", socket);
        fs.stop();
        stuckRead("a", d);

        Future<Object> removal = threads.submit(() -> daemon.call("blk.remove", Map.of("id", "a")));
        Await.until(TIMEOUT, "blk.remove to answer while its frontend's session is stuck", removal::isDone);
        Map<?, ?> removed = (Map<?, ?>) removal.get();
        assertEquals(true, removed.get("removed"), removed.toString());
        String notice = String.valueOf(removed.get("notice"));
        assertTrue(notice.contains("its server has not stopped"), notice);
        assertTrue(notice.contains(socket.toString()), "names the stuck session's server: " + notice);
        String stopped = "vhost-user " + socket + ": stopped";
        assertFalse(log.all().contains(stopped), "answered while the session is still stuck: " + log.all());
        assertTrue(Files.exists(socket), "the old server's socket file stays while its session runs");
        assertTrue(
                log.all().stream()
                        .anyMatch(l -> l.startsWith("vhost-user " + socket + ": stopping: after ")
                                && l.contains("the session of frontend")),
                "the server names what is stuck: " + log.all());

        Path other = image("other.raw");
        RpcException sameId = assertThrows(RpcException.class, () -> add("a", other, dir.resolve("c.sock")));
        assertEquals(RpcException.EXISTS, sameId.code(), sameId.getMessage());
        assertTrue(sameId.getMessage().contains("blk 'a' (being removed"), sameId.getMessage());
        RpcException sameSocket = assertThrows(RpcException.class, () -> add("c", other, socket));
        assertEquals(RpcException.EXISTS, sameSocket.code(), sameSocket.getMessage());
        assertTrue(sameSocket.getMessage().contains("blk 'a' (being removed"), sameSocket.getMessage());

        fs.resume(); // the read ends, the queue stops, the session ends
        ReAdd.onceTheClaimGoes("being removed", () -> add("a", other, socket));
        List<String> lines = log.all();
        assertTrue(
                lines.indexOf(stopped) >= 0
                        && lines.indexOf(stopped) < lines.lastIndexOf("vhost-user " + socket + ": listening"),
                "the old server stopped (its socket file removed) before the new one listened: " + lines);
    }

    /**
     * The daemon's stop with two exports whose frontends' sessions are stuck at once returns, both stops having begun
     * before either had waited out its bound: each export's server stop starts on a thread of its own. One after
     * another, N such exports added up N bounds (or, unbounded, never ended). What is left of each is named.
     */
    @Test
    void aStopWithTwoStuckExportsStopsThemTogether() throws Exception {
        Path socketA = dir.resolve("a.sock");
        Path socketB = dir.resolve("b.sock");
        BlkTestDriver a = frontendOfANewExport("a", socketA);
        BlkTestDriver b = frontendOfANewExport("b", socketB);
        fs.stop();
        stuckRead("a", a);
        stuckRead("b", b);

        daemon.stopWait(Duration.ofSeconds(10)); // past the exports' bounded stop (5 s), short of the test's patience
        Future<?> stopping = threads.submit(daemon::close);
        Await.until(TIMEOUT, "the daemon's stop to return while both sessions are stuck", stopping::isDone);
        stopping.get();
        daemonStopped = true;

        List<String> lines = log.all();
        int firstBound = -1;
        for (int i = 0; i < lines.size() && firstBound < 0; i++) {
            if (lines.get(i).contains(": its server has not stopped yet: ")) {
                firstBound = i;
            }
        }
        assertTrue(firstBound >= 0, "a line names a server still stopping: " + lines);
        for (Path s : List.of(socketA, socketB)) {
            int began = lines.indexOf("vhost-user " + s + ": stopping");
            assertTrue(
                    began >= 0 && began < firstBound,
                    "both exports' stops began before either had waited out its bound (" + s + "): " + lines);
        }
        for (String id : List.of("a", "b")) {
            assertTrue(
                    lines.stream().anyMatch(l -> l.startsWith("blk " + id + ": its server has not stopped yet")),
                    "blk " + id + " is named as still stopping: " + lines);
            // the stop's own line says what the daemon exits without, not (as a removal's answer) that it ends later
            String left = lines.stream()
                    .filter(l -> l.startsWith("blk " + id + ": stopping: "))
                    .findFirst()
                    .orElseThrow(() -> new AssertionError("the stop names what blk " + id + " left: " + lines));
            assertTrue(left.contains("the daemon exits without the final flush of"), left);
            assertFalse(left.contains("adding it again is refused") || left.contains("is removed"), left);
        }
    }

    /**
     * Adds export {@code id} — read-only, raw, synchronous I/O, one queue — on a new image on {@link #fs} whose queue
     * stop waits longer than the test, and connects a frontend that reads once: served while the file system answers.
     */
    private BlkTestDriver frontendOfANewExport(String id, Path socket) throws Exception {
        Path image = fs.file(id + ".raw", 4 << 20);
        images.add(image);
        add(id, image, socket);
        BlkExport e = daemon.blkExports().stream()
                .filter(x -> x.spec.id().equals(id))
                .findFirst()
                .orElseThrow();
        BlkDeviceLimits.stopWaitLimit(e.device, Duration.ofMinutes(10));
        EventFd call = EventFd.create(true);
        frontends.add(call);
        BlkTestDriver d = new BlkTestDriver(socket, 1 << 20, call);
        frontends.add(d);
        assertEquals(0 /* S_OK */, d.awaitStatus(d.read(d.alloc(65536, 4096), 65536)), "served while it answers");
        return d;
    }

    /** With {@link #fs} stopped: {@code d} reads again and the queue thread of export {@code id} waits for it. */
    private void stuckRead(String id, BlkTestDriver d) throws Exception {
        d.read(d.alloc(65536, 4096), 65536);
        Path image = images.stream()
                .filter(i -> i.getFileName().toString().equals(id + ".raw"))
                .findFirst()
                .orElseThrow();
        Await.until(
                TIMEOUT,
                "the queue thread of blk " + id + " to wait for the stopped file system",
                () -> !StoppableFuse.blockedOn(StoppableFuse.descriptorsOf(image, -1))
                        .isEmpty());
    }

    private void add(String id, Path image, Path socket) throws RpcException {
        daemon.call(
                "blk.add",
                Map.of(
                        "id",
                        id,
                        "image",
                        image.toString(),
                        "socket",
                        socket.toString(),
                        "readonly",
                        true,
                        "format",
                        "raw",
                        "io-engine",
                        "sync"));
    }

    private Path image(String name) throws Exception {
        Path f = dir.resolve(name);
        try (RandomAccessFile r = new RandomAccessFile(f.toFile(), "rw")) {
            r.setLength(1 << 20);
        }
        return f;
    }
}
