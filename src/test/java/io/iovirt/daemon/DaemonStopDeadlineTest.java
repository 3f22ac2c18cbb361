// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.vhostuser.LogCapture;
import java.io.IOException;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The daemon's stop has one deadline, taken where the stop starts (the signal, {@link Daemon#stopStarts}), not when
 * {@link Daemon#close} begins: the control socket's and /metrics' closes before it (up to 10 s each) count against it,
 * so that the whole stop stays below the unit's TimeoutStopSec.
 */
@Timeout(value = 120, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class DaemonStopDeadlineTest {
    @TempDir
    Path dir;

    /**
     * The stop begins, and what comes before the daemon's close (here: the test waiting) takes the stop's whole time;
     * the close then does not wait afresh for an NBD export whose client is still sending a write's payload (its server
     * lets it finish for 5 s): it names the export as what the daemon exits without. The close took its deadline when
     * it began, and waited for that export as long again as the whole stop may take.
     */
    @Test
    void theStopsDeadlineCountsFromWhereTheStopStarted() throws Exception {
        stopWithAWriteInFlight(Duration.ofSeconds(10), daemon -> {
            long deadline = daemon.stopStarts(); // the signal
            Await.until(Duration.ofSeconds(30), "the stop's deadline to pass", () -> System.nanoTime() > deadline);
        });
    }

    /**
     * A SIGTERM that arrived while a reload ran is handled only once that reload has ended: the stop's deadline counts
     * from its arrival, not from when it was handled. Here it arrived a whole stop's time ago, so the close does not
     * wait for the NBD export whose client is still sending a write's payload: it names it as what the daemon exits
     * without. With the deadline taken when the signal is handled, the close waited for it and the export closed.
     */
    @Test
    void aSignalHandledLateCountsFromItsArrival() throws Exception {
        Duration stopWait = Duration.ofSeconds(10);
        stopWithAWriteInFlight(
                stopWait, daemon -> daemon.stopStarts(System.nanoTime() - stopWait.toNanos())); // a stop's time ago
    }

    /**
     * A daemon with one NBD export whose client has sent a write's header but not its payload; {@code signal} starts
     * the stop (and lets its deadline pass, or not); then the stop must name the export as what it exits without,
     * in its ERROR line and in {@link Daemon#leftAtStop} (the daemon's last words).
     */
    private void stopWithAWriteInFlight(Duration stopWait, java.util.function.Consumer<Daemon> signal)
            throws Exception {
        Path image = dir.resolve("disk.raw");
        java.nio.file.Files.write(image, new byte[1 << 20]);
        Path socket = dir.resolve("nbd.sock");
        try (LogCapture log = LogCapture.start("io.iovirt");
                Daemon daemon = new Daemon(null)) {
            daemon.stopWait(stopWait); // longer than the NBD server's grace for its client (5 s)
            Map<String, Object> add = new LinkedHashMap<>();
            add.put("id", "n");
            add.put("image", image.toString());
            add.put("socket", socket.toString());
            daemon.call("nbd.add", add);
            try (SocketChannel client = SocketChannel.open(UnixDomainSocketAddress.of(socket))) {
                writeInFlight(client, "n");
                signal.accept(daemon);
                daemon.close();
                assertTrue(
                        log.all().stream()
                                .anyMatch(l -> l.startsWith("nbd n: stopping: ")
                                        && l.contains("the daemon exits without the final flush")),
                        "an ERROR line names the export the stop exits without: " + log.all());
                // and the daemon's last words do not say "every image synced"
                assertEquals(java.util.List.of("nbd n"), daemon.leftAtStop());
            }
        }
    }

    /**
     * A switch whose close does not end (here: its switch's lock held by the test, as by a port that does not let go)
     * holds neither the exports' closes nor the stop past its deadline: the export is closed meanwhile, and the stop
     * names the switch it exits without. The switches were closed one after another, without a bound, before any
     * export's close had begun: the stop waited for that switch for ever, and the export was never closed.
     */
    @Test
    void aSwitchWhoseCloseHangsHoldsNeitherTheExportsNorTheStop() throws Exception {
        Path image = dir.resolve("disk.raw");
        java.nio.file.Files.write(image, new byte[1 << 20]);
        try (LogCapture log = LogCapture.start("io.iovirt");
                io.iovirt.linux.Fd probe = io.iovirt.linux.FileIo.open(image, io.iovirt.linux.FileIo.O_RDONLY)) {
            Daemon daemon = new Daemon(null);
            // the bound the export's close must meet (its image flushed, closed and unlocked) while the switch's close
            // runs it out: 2 s was met on an idle machine only; a loaded one took longer and the stop named the export
            daemon.stopWait(Duration.ofSeconds(10));
            daemon.call("net.add", new LinkedHashMap<>(Map.of("id", "lan")));
            Map<String, Object> add = new LinkedHashMap<>();
            add.put("id", "n");
            add.put("image", image.toString());
            add.put("socket", dir.resolve("nbd.sock").toString());
            daemon.call("nbd.add", add);
            NetSwitch lan = daemon.locked(() -> daemon.netsLocked().get("lan"));
            assertFalse(unlocked(probe), "the export holds its image's lock");
            java.util.concurrent.CompletableFuture<Void> stop;
            synchronized (lan.sw) { // the switch's close waits for this
                stop = java.util.concurrent.CompletableFuture.runAsync(daemon::close);
                Await.until(
                        Duration.ofSeconds(30),
                        () -> "the export's image to be closed and unlocked while the switch's close waits",
                        () -> unlocked(probe));
                stop.get(30, java.util.concurrent.TimeUnit.SECONDS); // the stop ends at its deadline
            }
            assertTrue(
                    log.all().stream().anyMatch(l -> l.startsWith("net lan: stopping: its ports have not all stopped")),
                    "an ERROR line names the switch the stop exits without: " + log.all());
            assertEquals(java.util.List.of("net lan"), daemon.leftAtStop(), "the export was closed, the switch not");
        }
    }

    /** Whether nobody holds a lock on the image {@code probe} is open on (the export let go of it). */
    private static boolean unlocked(io.iovirt.linux.Fd probe) {
        try {
            return io.iovirt.linux.FileIo.ofdConflict(probe, io.iovirt.linux.FileIo.F_WRLCK)
                    == io.iovirt.linux.FileIo.F_UNLCK;
        } catch (io.iovirt.linux.LinuxException e) {
            throw new AssertionError("F_OFD_GETLK on the image failed", e);
        }
    }

    /** Opens export {@code name} (fixed newstyle, NBD_OPT_GO) and sends a write's header but not its payload. */
    private static void writeInFlight(SocketChannel c, String name) throws IOException {
        ByteBuffer greeting = read(c, 18);
        assertEquals(0x4e42444d41474943L, greeting.getLong(), "NBDMAGIC");
        assertEquals(0x49484156454f5054L, greeting.getLong(), "IHAVEOPT");
        write(c, ByteBuffer.allocate(4).putInt(3)); // FIXED_NEWSTYLE | NO_ZEROES
        byte[] n = name.getBytes(StandardCharsets.UTF_8);
        ByteBuffer go = ByteBuffer.allocate(16 + 4 + n.length + 2);
        go.putLong(0x49484156454f5054L)
                .putInt(7)
                .putInt(4 + n.length + 2)
                .putInt(n.length)
                .put(n)
                .putShort((short) 0);
        write(c, go);
        while (true) {
            ByteBuffer h = read(c, 20);
            assertEquals(0x3e889045565a9L, h.getLong(), "option reply magic");
            h.getInt();
            int type = h.getInt();
            int len = h.getInt();
            read(c, len);
            if (type == 1) { // NBD_REP_ACK: transmission
                break;
            }
            assertTrue(type == 3, "NBD_REP_INFO or NBD_REP_ACK, got " + Integer.toHexString(type));
        }
        ByteBuffer req = ByteBuffer.allocate(28);
        req.putInt(0x25609513)
                .putShort((short) 0)
                .putShort((short) 1)
                .putLong(1)
                .putLong(0)
                .putInt(4096);
        write(c, req); // NBD_CMD_WRITE of 4 KiB, its payload not sent: in flight until the grace ends
    }

    private static void write(SocketChannel c, ByteBuffer b) throws IOException {
        b.flip();
        while (b.hasRemaining()) {
            c.write(b);
        }
    }

    private static ByteBuffer read(SocketChannel c, int n) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(n);
        while (b.hasRemaining()) {
            if (c.read(b) < 0) {
                throw new IOException("the server closed the connection");
            }
        }
        return b.flip();
    }
}
