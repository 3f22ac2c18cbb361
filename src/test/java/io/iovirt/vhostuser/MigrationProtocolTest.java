// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.MemFd;
import io.iovirt.linux.Mmap;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The migration and crash-recovery messages (issue 11) over a real socket, in QEMU's order: the dirty log turned on
 * and off while a ring runs (SET_LOG_BASE, SET_FEATURES with LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG), and
 * the in-flight memory handed out and back (GET_INFLIGHT_FD, SET_INFLIGHT_FD) reaching the device's queue.
 */
@Timeout(60)
class MigrationProtocolTest {
    static final Duration TIMEOUT = Duration.ofSeconds(20);
    static final long LOG_ALL = Features.VHOST_F_LOG_ALL;

    @TempDir
    Path dir;

    @Test
    void loggingTogglesWhileTheRingRuns() throws Exception {
        Path socket = dir.resolve("vub.sock");
        RecordingBackend backend = new RecordingBackend(2);
        try (VhostUserServer server = VhostUserServer.start(socket, backend);
                VhostUserServerTest.Session q = VhostUserServerTest.session(socket);
                Fd logFd = MemFd.allocate("log", 4096)) {
            VhostUserFrontend fe = q.fe();
            VhostUserServerTest.initLikeQemu(fe, q.call(), q.err());
            VhostUserServerTest.startLikeQemu(fe, q.low(), q.high(), q.kick(), q.call(), VhostUserServerTest.FEATURES);
            VringSetup setup = backend.running.get(0);
            assertNotNull(setup);
            assertNull(setup.memory().writeLog(), "no log before a migration");

            fe.setLogBase(logFd, 4096, 0); // replied to: returns only once the backend answered
            assertNull(setup.memory().writeLog(), "a log alone does not turn logging on");
            fe.setFeatures(VhostUserServerTest.FEATURES | LOG_ALL);
            assertNotNull(setup.memory().writeLog());
            long used = q.high().userAddrOf(VhostUserServerTest.USED);
            fe.setVringAddr(
                    0,
                    q.high().userAddrOf(VhostUserServerTest.DESC),
                    used,
                    q.high().userAddrOf(VhostUserServerTest.AVAIL),
                    VhostUserServerTest.USED);
            assertEquals(setup, backend.running.get(0), "the ring kept running");
            assertEquals(
                    VhostUserServerTest.FEATURES & ~Features.VHOST_USER_F_PROTOCOL_FEATURES,
                    backend.acked,
                    "the device never sees LOG_ALL");

            setup.memory().writeLog().written(0x5000, 1); // page 5
            setup.memory().writeLog().written(VhostUserServerTest.USED, 2); // the used ring: page 0x102
            MemorySegment bitmap =
                    Mmap.map(logFd, 0, 4096, Mmap.PROT_READ, Mmap.MAP_SHARED, java.lang.foreign.Arena.ofAuto());
            assertEquals(1 << 5, bitmap.get(ValueLayout.JAVA_BYTE, 0));
            long usedPage = VhostUserServerTest.USED >>> 12;
            assertEquals(1 << (usedPage % 8), bitmap.get(ValueLayout.JAVA_BYTE, usedPage / 8));

            fe.setFeatures(VhostUserServerTest.FEATURES);
            assertNull(setup.memory().writeLog(), "logging off again");
            assertEquals(setup, backend.running.get(0));
        }
    }

    /**
     * A frontend that (re)connects while a migration runs starts the device as QEMU 7.2's vhost_dev_start does with
     * logging on: SET_FEATURES with LOG_ALL, the rings, then SET_LOG_BASE. QEMU dropped what the previous
     * connection logged since its last sync, so the first log of such a connection comes back with every page of
     * guest memory marked (and no page beyond it: the log's size is the frontend's choice); a later log (a resize) starts clean, as in a migration that was running all along.
     */
    @Test
    void aLogArrivingWithLoggingOnReportsEveryPage() throws Exception {
        Path socket = dir.resolve("vub.sock");
        RecordingBackend backend = new RecordingBackend(2);
        try (VhostUserServer server = VhostUserServer.start(socket, backend);
                VhostUserServerTest.Session q = VhostUserServerTest.session(socket);
                Fd logFd = MemFd.allocate("log", 4096);
                Fd nextFd = MemFd.allocate("log2", 8192)) {
            VhostUserFrontend fe = q.fe();
            VhostUserServerTest.initLikeQemu(fe, q.call(), q.err());
            VhostUserServerTest.startLikeQemu(
                    fe, q.low(), q.high(), q.kick(), q.call(), VhostUserServerTest.FEATURES | LOG_ALL);
            fe.setLogBase(logFd, 4096, 0);
            MemorySegment bits =
                    Mmap.map(logFd, 0, 4096, Mmap.PROT_READ, Mmap.MAP_SHARED, java.lang.foreign.Arena.ofAuto());
            // every page of guest memory (both regions) and nothing else: the 4096-byte log covers 128 MiB
            for (long page = 0; page < 4096 * 8; page++) {
                long gpa = page << DirtyLog.PAGE_SHIFT;
                boolean ram = gpa < 0xa0000
                        || (gpa >= VhostUserServerTest.RING_GPA && gpa < VhostUserServerTest.RING_GPA + (1 << 20));
                long word = bits.get(ValueLayout.JAVA_LONG_UNALIGNED, (page >>> 6) << 3);
                assertEquals(ram, (word & (1L << (page & 63))) != 0, "page " + page + " (guest memory: " + ram + ")");
            }

            // QEMU's migration thread syncs the log (reading clears it), then guest memory grows: a resize. What the
            // frontend read is not reported again; only what it had not read would be carried over.
            try (Arena qemu = Arena.ofConfined()) {
                assertEquals(
                        (0xa0000 + (1 << 20)) >> 12, sync(logFd, 4096, qemu).size(), "guest memory's pages");
            }
            fe.setLogBase(nextFd, 8192, 0); // the same connection, logging still on
            MemorySegment next =
                    Mmap.map(nextFd, 0, 8192, Mmap.PROT_READ, Mmap.MAP_SHARED, java.lang.foreign.Arena.ofAuto());
            for (long i = 0; i < 8192; i += 8) {
                assertEquals(0L, next.get(ValueLayout.JAVA_LONG_UNALIGNED, i), "resized log word at byte " + i);
            }
        }
    }

    /**
     * SET_LOG_BASE while logging (QEMU resizes the log when guest memory grows during a migration): the ring keeps
     * running (no stop, so a blk export keeps its image lock), a device thread still holding the old log marks into
     * the new one from the moment the frontend has the reply, and no mark is lost in between.
     */
    @Test
    void aLogReplacedWhileLoggingKeepsTheRingRunningAndLosesNoMark() throws Exception {
        Path socket = dir.resolve("vub.sock");
        RecordingBackend backend = new RecordingBackend(2);
        try (VhostUserServer server = VhostUserServer.start(socket, backend);
                VhostUserServerTest.Session q = VhostUserServerTest.session(socket);
                Fd oldFd = MemFd.allocate("log", 4096);
                Fd newFd = MemFd.allocate("log2", 8192)) {
            VhostUserFrontend fe = q.fe();
            VhostUserServerTest.initLikeQemu(fe, q.call(), q.err());
            VhostUserServerTest.startLikeQemu(fe, q.low(), q.high(), q.kick(), q.call(), VhostUserServerTest.FEATURES);
            VringSetup setup = backend.running.get(0);
            fe.setLogBase(oldFd, 4096, 0);
            fe.setFeatures(VhostUserServerTest.FEATURES | LOG_ALL);
            var stale = setup.memory().writeLog(); // what a queue thread read before the swap
            MemorySegment oldBits =
                    Mmap.map(oldFd, 0, 4096, Mmap.PROT_READ, Mmap.MAP_SHARED, java.lang.foreign.Arena.ofAuto());
            MemorySegment newBits =
                    Mmap.map(newFd, 0, 8192, Mmap.PROT_READ, Mmap.MAP_SHARED, java.lang.foreign.Arena.ofAuto());

            // A device thread marking page after page through the log it holds, while the frontend swaps logs.
            java.util.concurrent.atomic.AtomicLong marked = new java.util.concurrent.atomic.AtomicLong();
            java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
            long pages = 4096 * 8;
            Thread device = Thread.ofPlatform().start(() -> {
                for (long n = 0; !stop.get(); n++) {
                    stale.written((n % pages) << 12, 1);
                    marked.set(n + 1);
                }
            });
            while (marked.get() < 100) {
                Thread.onSpinWait();
            }
            fe.setLogBase(newFd, 8192, 0); // returns once the backend replied
            byte[] oldAtReply = oldBits.toArray(ValueLayout.JAVA_BYTE);
            long atReply = marked.get();
            while (marked.get() < atReply + 100) {
                Thread.onSpinWait();
            }
            stop.set(true);
            device.join();
            long total = marked.get();

            assertEquals(
                    java.util.Arrays.toString(oldAtReply),
                    java.util.Arrays.toString(oldBits.toArray(ValueLayout.JAVA_BYTE)),
                    "nothing reached the old log after the reply");
            for (long page = 0; page < Math.min(total, pages); page++) {
                boolean inOld = (oldBits.get(ValueLayout.JAVA_BYTE, page / 8) & (1 << (page % 8))) != 0;
                boolean inNew = (newBits.get(ValueLayout.JAVA_BYTE, page / 8) & (1 << (page % 8))) != 0;
                assertTrue(inOld || inNew, "page " + page + " of " + total + " was marked in neither log");
            }
            assertTrue(total > atReply, "the device went on marking after the swap");
            assertEquals(setup, backend.running.get(0), "the ring kept running");
            assertTrue(backend.events.stream().noneMatch(e -> e.startsWith("queueStopped")), backend.events.toString());
        }
    }

    /**
     * QEMU 7.2 stops and starts a vhost-user-net device during a migration (the guest resets its NIC, say). Stop
     * (vhost_dev_stop, vrings false for net: no SET_VRING_ENABLE 0): GET_VRING_BASE, then QEMU syncs the log and
     * frees it. Start (vhost_dev_start): SET_FEATURES with LOG_ALL, the ring (its kick starts it: it stayed
     * enabled), and only then SET_LOG_BASE with a new log. What the device writes from the kick on is marked in the
     * log installed then — the old one, which QEMU no longer reads. Every page the device reported must reach a log
     * QEMU reads; before, the page written between the kick and the new log was lost (a stale page on the
     * destination: a received frame the guest never sees).
     */
    @Test
    void aDeviceRestartedDuringAMigrationLosesNoMark() throws Exception {
        Path socket = dir.resolve("vub.sock");
        RecordingBackend backend = new RecordingBackend(2);
        try (VhostUserServer server = VhostUserServer.start(socket, backend);
                VhostUserServerTest.Session q = VhostUserServerTest.session(socket);
                Fd oldFd = MemFd.allocate("log", 4096);
                Fd newFd = MemFd.allocate("log2", 4096);
                Arena qemu = Arena.ofConfined()) {
            VhostUserFrontend fe = q.fe();
            VhostUserServerTest.initLikeQemu(fe, q.call(), q.err());
            VhostUserServerTest.startLikeQemu(fe, q.low(), q.high(), q.kick(), q.call(), VhostUserServerTest.FEATURES);
            long desc = q.high().userAddrOf(VhostUserServerTest.DESC);
            long used = q.high().userAddrOf(VhostUserServerTest.USED);
            long avail = q.high().userAddrOf(VhostUserServerTest.AVAIL);
            java.util.Set<Long> read = new java.util.TreeSet<>(); // every page QEMU read from a log

            // The migration starts: log, LOG_ALL, the ring's used-ring log.
            fe.setLogBase(oldFd, 4096, 0);
            fe.setFeatures(VhostUserServerTest.FEATURES | LOG_ALL);
            fe.setVringAddr(0, desc, used, avail, VhostUserServerTest.USED);
            deviceWrites(backend, 5);
            read.addAll(sync(oldFd, 4096, qemu)); // the migration thread's periodic sync

            // vhost_dev_stop: the ring stops; vhost_log_put syncs the log one last time and frees it (QEMU never
            // reads it again; the backend's own mapping keeps the memory).
            fe.getVringBase(0);
            read.addAll(sync(oldFd, 4096, qemu));

            // vhost_dev_start with logging on: the ring runs from its kick, the new log comes last.
            fe.setFeatures(VhostUserServerTest.FEATURES | LOG_ALL);
            fe.setVringNum(0, 256);
            fe.setVringBase(0, 0);
            fe.setVringAddr(0, desc, used, avail, VhostUserServerTest.USED);
            fe.setVringKick(0, q.kick());
            fe.setVringCall(0, q.call());
            assertNotNull(backend.running.get(0), "the ring runs again from its kick");
            deviceWrites(backend, 7); // a frame received before the new log arrived
            fe.setLogBase(newFd, 4096, 0);
            deviceWrites(backend, 9);
            read.addAll(sync(newFd, 4096, qemu));

            assertEquals(java.util.List.of(5L, 7L, 9L), java.util.List.copyOf(read), "pages QEMU read from its logs");
        }
    }

    /**
     * A frontend sending a dirty log too small for the device's writes again and again: each log's "cannot be
     * reported" line goes through the connection's bucket for lines a frontend can repeat at will. Before, each new
     * log made one ERROR line of its own, without bound.
     */
    @Test
    void aFrontendSendingTooSmallLogsInALoopMakesABoundedNumberOfLogLines() throws Exception {
        Path socket = dir.resolve("vub.sock");
        RecordingBackend backend = new RecordingBackend(2);
        int logs = 100;
        try (VhostUserServer server = VhostUserServer.start(socket, backend);
                LogCapture log = LogCapture.start("io.iovirt.vhostuser");
                VhostUserServerTest.Session q = VhostUserServerTest.session(socket)) {
            VhostUserFrontend fe = q.fe();
            VhostUserServerTest.initLikeQemu(fe, q.call(), q.err());
            VhostUserServerTest.startLikeQemu(fe, q.low(), q.high(), q.kick(), q.call(), VhostUserServerTest.FEATURES);
            fe.setFeatures(VhostUserServerTest.FEATURES | LOG_ALL);
            long start = System.nanoTime();
            for (int i = 0; i < logs; i++) {
                try (Fd logFd = MemFd.allocate("log", 4096)) {
                    fe.setLogBase(logFd, 8, 0); // 64 pages
                }
                deviceWrites(backend, 1 << 20); // 4 GiB in: beyond what the log covers
            }
            long seconds = (System.nanoTime() - start) / 1_000_000_000L + 1;
            java.util.List<String> lines = log.all().stream()
                    .filter(l -> l.contains("dirty log covers"))
                    .toList();
            assertTrue(
                    lines.size() <= io.iovirt.util.LogLimiter.BURST + seconds,
                    lines.size() + " lines for " + logs + " logs in " + seconds + " s");
            assertTrue(lines.size() >= 1, "the first one is logged");
        }
    }

    /** A device thread writing guest page {@code page} and reporting it as the queues do (the holder's log). */
    private static void deviceWrites(RecordingBackend backend, long page) {
        var log = backend.running.get(0).memory().writeLog();
        if (log != null) { // logging off: nothing is reported, and the page is missing from what QEMU reads
            log.written(page << DirtyLog.PAGE_SHIFT, 1);
        }
    }

    /** QEMU's vhost_dev_sync_region: reads the log a word at a time, clearing what it read (atomic exchange with 0). */
    private static java.util.Set<Long> sync(Fd log, long size, Arena arena) throws Exception {
        MemorySegment bits = Mmap.map(log, 0, size, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED, arena);
        java.lang.invoke.VarHandle word = ValueLayout.JAVA_LONG.varHandle();
        java.util.Set<Long> pages = new java.util.TreeSet<>();
        for (long offset = 0; offset < size; offset += 8) {
            long w = (long) word.getAndSet(bits, offset, 0L);
            for (int bit = 0; bit < 64; bit++) {
                if ((w & (1L << bit)) != 0) {
                    pages.add(offset * 8 + bit);
                }
            }
        }
        return pages;
    }

    @Test
    void inflightMemoryIsHandedOutAndBackToTheQueues() throws Exception {
        Path socket = dir.resolve("vub.sock");
        RecordingBackend backend = new RecordingBackend(2, Features.bit(Features.PROTOCOL_INFLIGHT_SHMFD));
        try (VhostUserServer server = VhostUserServer.start(socket, backend);
                VhostUserServerTest.Session q = VhostUserServerTest.session(socket)) {
            VhostUserFrontend fe = q.fe();
            fe.getFeatures();
            long pf = fe.getProtocolFeatures();
            assertTrue((pf & Features.bit(Features.PROTOCOL_INFLIGHT_SHMFD)) != 0, Long.toHexString(pf));
            fe.setProtocolFeatures(pf);
            VhostUserFrontend.Inflight inflight = fe.getInflightFd(2, 256);
            try (Fd fd = inflight.fd()) {
                assertEquals(2 * InflightRegion.queueBytes(256), inflight.mmapSize());
                assertEquals(0, inflight.mmapOffset());
                assertEquals(inflight.mmapSize(), FileIo.stat(fd).size(), "a memory file of that size");
                int seals = MemFd.seals(fd);
                assertEquals(
                        MemFd.F_SEAL_SHRINK | MemFd.F_SEAL_GROW | MemFd.F_SEAL_SEAL,
                        seals & (MemFd.F_SEAL_SHRINK | MemFd.F_SEAL_GROW | MemFd.F_SEAL_SEAL),
                        "sealed against shrinking and growing: 0x" + Integer.toHexString(seals));
                org.junit.jupiter.api.Assertions.assertThrows(
                        io.iovirt.linux.LinuxException.class,
                        () -> MemFd.truncate(fd, 4096),
                        "the frontend cannot shrink the file under the backend's mapping");
                fe.setInflightFd(inflight);
                VhostUserServerTest.startLikeQemu(
                        fe, q.low(), q.high(), q.kick(), q.call(), VhostUserServerTest.FEATURES);
                MemorySegment region = backend.running.get(0).inflight();
                assertNotNull(region, "the queue got its region");
                assertEquals(InflightRegion.queueBytes(256), region.byteSize());
            }
        }
    }

    /** A frontend's in-flight description is checked: too many queues, a size that does not match the layout. */
    @Test
    void inflightDescriptionsThatDoNotFitAreRefused() throws Exception {
        Path socket = dir.resolve("vub.sock");
        RecordingBackend backend = new RecordingBackend(2, Features.bit(Features.PROTOCOL_INFLIGHT_SHMFD));
        try (VhostUserServer server = VhostUserServer.start(socket, backend)) {
            try (VhostUserFrontend fe = VhostUserFrontend.connect(socket, TIMEOUT)) {
                fe.setProtocolFeatures(fe.getProtocolFeatures());
                org.junit.jupiter.api.Assertions.assertThrows(
                        java.io.IOException.class,
                        () -> fe.getInflightFd(3, 256),
                        "3 queues on a 2-queue device: the backend closes the connection");
            }
            try (VhostUserFrontend fe = VhostUserFrontend.connect(socket, TIMEOUT);
                    Fd small = MemFd.allocate("inflight", 4096)) {
                fe.setProtocolFeatures(fe.getProtocolFeatures());
                org.junit.jupiter.api.Assertions.assertThrows(
                        java.io.IOException.class,
                        () -> fe.setInflightFd(new VhostUserFrontend.Inflight(4096, 0, 2, 256, small)),
                        "4096 bytes cannot hold 2 queues of 256");
            }
            try (VhostUserFrontend fe = VhostUserFrontend.connect(socket, TIMEOUT)) {
                assertTrue(fe.getFeatures() != 0, "the server goes on serving");
            }
        }
    }
}
