// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.S_OK;
import static io.iovirt.devices.blk.BlkRequests.T_FLUSH;
import static io.iovirt.devices.blk.BlkRequests.T_OUT;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.IoUring;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.storage.RawImage;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.InflightPacked;
import io.iovirt.virtio.InflightQueue;
import io.iovirt.virtio.PackedDriverRing;
import io.iovirt.virtio.QueueConfig;
import io.iovirt.virtio.QueueWorker;
import io.iovirt.virtio.RingHandler;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.Virtqueue;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashSet;
import java.util.List;
import java.util.Random;
import java.util.Set;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A backend restarted with more requests to resubmit than one batch, and a stop at once (a migration's switch-over,
 * docs/migration.md "A backend restart during a migration"). GET_VRING_BASE reports a position after every request
 * the previous backend took, so the ones still to be resubmitted are served before the queue stops: a migration's
 * destination starts at that position with no in-flight record and would never serve them — the guest would wait
 * for them for ever. Before, the synchronous engine served one batch (it looks at the stop after each) and the
 * io_uring engine none (it takes nothing once it has seen a stop).
 *
 * <p>The queue thread is played here, so the stop comes exactly where it hurt: it is requested before the thread's
 * first batch, which the thread runs anyway, then the thread ends (the handler's stopped).
 */
@Timeout(60)
class BlkResubmitStopTest {
    private static final io.iovirt.util.LogLimiter LINES =
            new io.iovirt.util.LogLimiter(System.getLogger(BlkResubmitStopTest.class.getName()));

    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final int QUEUE_SIZE = 128; // 3 descriptors a request
    private static final int REQUESTS = 40; // more than BlkDevice.SYNC_BATCH
    private static final long RING = 0x1000;
    private static final long HDR = 0x10000;
    private static final long STATUS = 0x20000;
    private static final long DATA = 0x100000;

    @TempDir
    Path dir;

    @ParameterizedTest(name = "{0}, {1}")
    @CsvSource({"split, sync", "split, io_uring", "packed, sync", "packed, io_uring"})
    void requestsLeftToResubmitAreServedBeforeTheQueueStops(String layout, String engine) throws Exception {
        boolean async = engine.equals("io_uring");
        if (async) {
            String why = IoUring.unavailableReason();
            Require.that(why == null, why);
        }
        try (Crashed guest = new Crashed(layout.equals("packed"), false);
                RawImage image = RawImage.open(guest.imagePath, false, false);
                EventFd call = EventFd.create(true)) {
            Virtqueue queue = guest.restart();
            BlkQueueHandler handler = new BlkQueueHandler(
                    image, BlkLimits.defaults(), "resubmit-test".getBytes(StandardCharsets.US_ASCII), new BlkStats());
            RequestLog log = new RequestLog("blk test q0");
            QueueWorker.Handler h = async
                    ? new UringEngine(queue, handler, call, log, IoUring.create(UringEngine.ringEntries(QUEUE_SIZE)))
                    : new RingHandler(queue, call, BlkDevice.SYNC_BATCH, new SyncEngine(handler, log));
            QueueWorker worker = QueueWorker.builder("blk test q0").build(h); // attached; its thread is played here

            worker.stop(); // the stop comes at once (before the thread's first batch)
            h.process(); // the thread's first batch, which it runs whatever came before
            h.stopped(false); // then it sees the stop and ends
            int base = queue.vringBase(); // GET_VRING_BASE

            assertNull(worker.failure());
            assertEquals(0, queue.resubmitsPending(), "every request to resubmit was taken");
            assertEquals(0, queue.inFlight(), "and finished");
            assertEquals(
                    guest.heads,
                    guest.used(),
                    "every request the guest made is returned (once) before the ring is handed back");
            if (layout.equals("packed")) {
                assertEquals(
                        base & 0xffff,
                        base >>> 16,
                        "avail and used positions (with wrap) meet: 0x" + Integer.toHexString(base));
            } else {
                assertEquals(REQUESTS, base, "the position after them, with nothing before it left undone");
            }
            for (int k = 0; k < REQUESTS; k++) {
                assertEquals(S_OK, guest.ram.get(ValueLayout.JAVA_BYTE, STATUS + k), "status of request " + k);
                assertArrayEquals(guest.data[k], guest.disk(k), "request " + k + " reached the image");
            }
        }
    }

    /**
     * A queue thread given up on (held in a request past the stop's limit) takes none of the requests still to be
     * resubmitted when it comes back, as it takes no new ones: the ring went back to the frontend already, and the
     * device reports NEEDS_RESET (a reset drops them, as it drops anything else in the ring). It finishes the batch
     * it had taken.
     */
    @ParameterizedTest
    @ValueSource(strings = {"split", "packed"})
    void aQueueGivenUpOnTakesNoMoreOfThem(String layout) throws Exception {
        try (Crashed guest = new Crashed(layout.equals("packed"), true);
                RawImage raw = RawImage.open(guest.imagePath, false, false);
                EventFd kick = EventFd.create(true);
                EventFd call = EventFd.create(true)) {
            HostileBlkFrontendTest.SlowFlushImage image = new HostileBlkFrontendTest.SlowFlushImage(raw);
            Virtqueue queue = guest.restart();
            BlkStats stats = new BlkStats();
            BlkQueueHandler handler = new BlkQueueHandler(
                    image, BlkLimits.defaults(), "resubmit-test".getBytes(StandardCharsets.US_ASCII), stats);
            QueueWorker worker = BlkDevice.newWorker(
                    "blk test q0", queue, handler, kick, call, null, stats, null, 0, false, reason -> {}, LINES);
            worker.start();
            image.entered.await(); // the first batch taken, its first request (a FLUSH) held in the image
            try {
                assertFalse(worker.stopAndWait(Duration.ofMillis(100)), "held: given up on");
                assertTrue(worker.givenUp());
            } finally {
                image.release.countDown();
            }
            Await.until(Duration.ofSeconds(20), "the thread given up on ends", worker::reap);

            assertEquals(
                    REQUESTS - 2 - BlkDevice.SYNC_BATCH,
                    queue.resubmitsPending(),
                    "the batch taken before the stop was finished, nothing taken after");
            assertEquals(2 + BlkDevice.SYNC_BATCH, guest.used().size());
        }
    }

    /**
     * Guest memory with {@link #REQUESTS} writes made available (the first a FLUSH when asked), taken by a backend
     * that recorded them in flight, finished the last two first (out of order: the ones left are not the last ones
     * taken, so no ring position short of the end names them) and died.
     */
    private final class Crashed implements AutoCloseable {
        final Arena arena = Arena.ofShared();
        final Path imagePath = dir.resolve("disk.raw");
        final MemorySegment ram = arena.allocate(DATA + 4096L * REQUESTS, 4096);
        final GuestMemoryHolder holder = new GuestMemoryHolder();
        final DriverRing driver;
        final QueueConfig config;
        final MemorySegment inflight =
                arena.allocate(Math.max(InflightPacked.bytes(QUEUE_SIZE), InflightQueue.splitBytes(QUEUE_SIZE)), 64);
        final byte[][] data = new byte[REQUESTS][];
        final Set<Integer> heads = new HashSet<>();

        Crashed(boolean packed, boolean flushFirst) throws Exception {
            Files.write(imagePath, new byte[REQUESTS * 4096]);
            GuestMemory mem = GuestMemory.of(List.of(new MemoryRegion(0, ram.byteSize(), 0x7000_0000L, 0, ram, null)));
            holder.swap(mem);
            driver = packed
                    ? PackedDriverRing.create(mem, RING, QUEUE_SIZE, true)
                    : SplitDriverRing.create(mem, RING, QUEUE_SIZE, true);
            config = driver.queueConfig(0, true); // where QEMU last started the ring
            Random rnd = new Random(11);
            for (int k = 0; k < REQUESTS; k++) {
                boolean flush = flushFirst && k == 0;
                data[k] = new byte[4096];
                if (!flush) {
                    rnd.nextBytes(data[k]);
                }
                MemorySegment.copy(data[k], 0, ram, ValueLayout.JAVA_BYTE, DATA + 4096L * k, 4096);
                ram.set(LE32, HDR + 16L * k, flush ? T_FLUSH : T_OUT);
                ram.set(LE64, HDR + 16L * k + 8, flush ? 0 : 8L * k);
                ram.set(ValueLayout.JAVA_BYTE, STATUS + k, (byte) 0x7f);
                int head = flush
                        ? driver.add(
                                new long[] {HDR + 16L * k, STATUS + k},
                                new int[] {16, 1},
                                new boolean[] {false, true},
                                2,
                                DriverRing.NO_INDIRECT)
                        : driver.add(
                                new long[] {HDR + 16L * k, DATA + 4096L * k, STATUS + k},
                                new int[] {16, 4096, 1},
                                new boolean[] {false, false, true},
                                3,
                                DriverRing.NO_INDIRECT);
                assertTrue(head >= 0 && heads.add(head), "head " + head);
            }
            Virtqueue before = Virtqueue.create(config, holder, inflight);
            DescriptorChain[] taken = new DescriptorChain[REQUESTS];
            for (int k = 0; k < REQUESTS; k++) {
                taken[k] = before.newChain();
                assertTrue(before.pop(taken[k]), "request " + k);
            }
            for (int k = REQUESTS - 2; k < REQUESTS; k++) {
                try (RandomAccessFile f = new RandomAccessFile(imagePath.toFile(), "rw")) {
                    f.seek(4096L * k);
                    f.write(data[k]);
                }
                ram.set(ValueLayout.JAVA_BYTE, STATUS + k, S_OK);
                before.push(taken[k], 1);
            }
        }

        /** The restarted backend's queue: the record hands out again the ones in flight. */
        Virtqueue restart() throws Exception {
            Virtqueue queue = Virtqueue.create(config, holder, inflight);
            assertEquals(REQUESTS - 2, queue.resubmitsPending());
            return queue;
        }

        /** The heads the driver got back so far. */
        Set<Integer> used() {
            Set<Integer> used = new HashSet<>();
            long u;
            while ((u = driver.pollUsed()) != -1) {
                assertTrue(used.add(DriverRing.usedId(u)), "used once: " + DriverRing.usedId(u));
            }
            return used;
        }

        byte[] disk(int k) throws Exception {
            try (RandomAccessFile f = new RandomAccessFile(imagePath.toFile(), "r")) {
                byte[] b = new byte[4096];
                f.seek(4096L * k);
                f.readFully(b);
                return b;
            }
        }

        @Override
        public void close() {
            arena.close();
        }
    }
}
