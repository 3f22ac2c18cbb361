// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.*;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.MemFd;
import io.iovirt.linux.Mmap;
import io.iovirt.linux.UnixSocket;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ForwardingDiskImage;
import io.iovirt.storage.RawImage;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.QueueWorker;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.Virtqueue;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A queue worker on its own thread, driven like a guest driver would: requests in a real split ring in native guest
 * memory, kicks and interrupts through eventfds, I/O through a real io_uring to a real file (buffered or O_DIRECT).
 */
@Timeout(120)
class BlkQueueWorkerTest {
    private static final io.iovirt.util.LogLimiter LINES =
            new io.iovirt.util.LogLimiter(System.getLogger(BlkQueueWorkerTest.class.getName()));
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final int QUEUE_SIZE = 128;
    private static final long RING = 0x1000;
    private static final long HDR = 0x10000;
    private static final long STATUS = 0x20000;
    private static final long DATA = 0x100000; // 4 KiB per request slot, page aligned
    private static final long DISK = 4 << 20;

    @TempDir
    Path dir;

    private Arena arena;
    private MemorySegment ram;
    /** The file behind {@link #ram} when it is a memfd, else null. */
    private Fd ramFile;

    private SplitDriverRing driver;
    private Virtqueue queue;
    private Path imagePath;
    private RawImage image;
    private QueueWorker worker;
    private GuestMemoryHolder holder;
    private EventFd kick;
    private EventFd call;
    private Epoll interrupts;
    private final BlkStats stats = new BlkStats();
    /** Per head index: the request slot k whose header/data/status areas it uses. */
    private final Map<Integer, Integer> slotOfHead = new HashMap<>();

    private int nextSlot;

    private void setUp(boolean direct, boolean async) throws Exception {
        setUpGuest(direct, async);
        worker = newWorker(async);
    }

    /** Guest memory, ring, image and eventfds, without a worker. */
    private void setUpGuest(boolean direct, boolean async) throws Exception {
        setUpGuest(direct, async, false);
    }

    /** As {@link #setUpGuest(boolean, boolean)}; with {@code memFile} guest memory is a memfd, {@link #ramFile}. */
    private void setUpGuest(boolean direct, boolean async, boolean memFile) throws Exception {
        if (async) {
            String why = IoUring.unavailableReason();
            Require.that(why == null, why);
        }
        arena = Arena.ofShared();
        long ramBytes = DATA + 4096L * QUEUE_SIZE * 2;
        if (memFile) { // as a frontend shares it, which can truncate it under the backend
            ramFile = MemFd.allocate("guest", ramBytes);
            ram = Mmap.map(ramFile, 0, ramBytes, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED, arena);
        } else {
            ram = arena.allocate(ramBytes, 4096);
        }
        GuestMemory mem = GuestMemory.of(List.of(new MemoryRegion(0, ram.byteSize(), 0x7000_0000L, 0, ram, null)));
        holder = new GuestMemoryHolder();
        holder.swap(mem);
        driver = SplitDriverRing.create(mem, RING, QUEUE_SIZE, true);
        queue = Virtqueue.create(driver.queueConfig(0, true), holder);
        imagePath = dir.resolve("disk.raw");
        byte[] content = new byte[(int) DISK];
        new Random(5).nextBytes(content);
        Files.write(imagePath, content);
        image = RawImage.open(imagePath, false, direct);
        kick = EventFd.create(true); // non-blocking, as QEMU makes its kick eventfds
        call = EventFd.create(true);
        interrupts = Epoll.create(1);
        interrupts.add(call.fd(), Epoll.EPOLLIN, 0);
    }

    private QueueWorker newWorker(boolean async) throws Exception {
        return newWorker(image, async);
    }

    private QueueWorker newWorker(DiskImage image, boolean async) throws Exception {
        return newWorker(newHandler(image), async ? IoUring.create(UringEngine.ringEntries(QUEUE_SIZE)) : null);
    }

    private BlkQueueHandler newHandler(DiskImage image) {
        return new BlkQueueHandler(
                image, BlkLimits.defaults(), "worker-test".getBytes(StandardCharsets.US_ASCII), stats);
    }

    /** The queue's worker on this handler, and on this ring if not null. */
    private QueueWorker newWorker(BlkQueueHandler handler, IoUring ring) throws Exception {
        return BlkDevice.newWorker(
                "blk test q0",
                queue,
                handler,
                kick,
                call,
                null,
                stats,
                ring,
                0,
                false, // sleeps at once: these tests count kicks and wake-ups
                reason -> {},
                LINES);
    }

    @AfterEach
    void tearDown() {
        if (worker != null) {
            worker.stop();
        }
        for (AutoCloseable c : new AutoCloseable[] {interrupts, kick, call, image, ramFile}) {
            try {
                if (c != null) {
                    c.close();
                }
            } catch (Exception ignored) {
                // best effort
            }
        }
        if (arena != null) {
            arena.close();
        }
    }

    /**
     * A worker that cannot be built around its io_uring engine leaves nothing open: the ring, its completion eventfd
     * and its slot buffers used to leak, one set per failed start. Here epoll refuses the kick (a regular file); in
     * production the same path is taken when the process is out of descriptors for the worker's epoll set.
     */
    @Test
    void aWorkerThatCannotBeBuiltClosesItsRing() throws Exception {
        setUpGuest(false, true);
        kick.close();
        kick = EventFd.adopt(io.iovirt.linux.FileIo.open(imagePath, io.iovirt.linux.FileIo.O_RDONLY));
        BlkQueueHandler handler = newHandler(image);
        io.iovirt.testing.OpenFiles.Snapshot before = io.iovirt.testing.OpenFiles.snapshot();
        io.iovirt.linux.LinuxException e = assertThrows(
                io.iovirt.linux.LinuxException.class,
                () -> newWorker(handler, IoUring.create(UringEngine.ringEntries(QUEUE_SIZE))));
        assertTrue(e.getMessage().contains("epoll"), e.getMessage());
        assertEquals(List.of(), before.openedSince(), "the ring and its eventfd are closed");
        handler.close();
    }

    // ---- a minimal guest driver -------------------------------------------------------------------------------

    /** Makes a request available: header, then {@code buffers} (address, length, device-writable), then status. */
    private int request(int type, long sector, long[] addrs, int[] lens, boolean write) {
        int k = nextSlot++;
        long hdr = HDR + 16L * k;
        ram.set(LE32, hdr, type);
        ram.set(LE32, hdr + 4, 0);
        ram.set(LE64, hdr + 8, sector);
        ram.set(ValueLayout.JAVA_BYTE, STATUS + k, (byte) 0x7f);
        int n = addrs.length + 2;
        long[] a = new long[n];
        int[] l = new int[n];
        boolean[] w = new boolean[n];
        a[0] = hdr;
        l[0] = 16;
        for (int i = 0; i < addrs.length; i++) {
            a[i + 1] = addrs[i];
            l[i + 1] = lens[i];
            w[i + 1] = !write;
        }
        a[n - 1] = STATUS + k;
        l[n - 1] = 1;
        w[n - 1] = true;
        int head = driver.add(a, l, w, n, DriverRing.NO_INDIRECT);
        assertTrue(head >= 0, "ring full");
        slotOfHead.put(head, k);
        return head;
    }

    private static long data(int k) {
        return DATA + 4096L * k;
    }

    private int read(long sector, int k, int len) {
        return request(T_IN, sector, new long[] {data(k)}, new int[] {len}, false);
    }

    private int write(long sector, int k, int len) {
        return request(T_OUT, sector, new long[] {data(k)}, new int[] {len}, true);
    }

    private void kick() throws Exception {
        if (driver.kickNeeded()) {
            kick.signal();
        }
    }

    /** Waits for {@code n} used entries; returns {id, len} in the order the device pushed them. */
    private List<long[]> awaitUsed(int n) throws Exception {
        List<long[]> out = new ArrayList<>();
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (out.size() < n) {
            long u;
            while ((u = driver.pollUsed()) != -1) {
                out.add(new long[] {DriverRing.usedId(u), DriverRing.usedLen(u)});
            }
            if (out.size() >= n) {
                break;
            }
            assertTrue(System.nanoTime() < deadline, "device completed " + out.size() + " of " + n + " requests");
            driver.enableInterrupts();
            if (!driver.hasUsed() && interrupts.wait(100) > 0) {
                call.read();
            }
        }
        return out;
    }

    private byte status(int head) {
        return ram.get(ValueLayout.JAVA_BYTE, STATUS + slotOfHead.get(head));
    }

    private byte[] disk(long offset, int len) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(imagePath.toFile(), "r")) {
            byte[] b = new byte[len];
            f.seek(offset);
            f.readFully(b);
            return b;
        }
    }

    private byte[] guest(long addr, int len) {
        return ram.asSlice(addr, len).toArray(ValueLayout.JAVA_BYTE);
    }

    // ---- tests ------------------------------------------------------------------------------------------------

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void manyReadsAndWritesInFlightCompleteWithTheirOwnData(boolean direct) throws Exception {
        setUp(direct, true);
        worker.start();
        Random rnd = new Random(9);
        // 32 writes of fresh data to distinct 4 KiB blocks, published together and kicked once.
        byte[][] written = new byte[32][4096];
        long[] sector = new long[32];
        for (int k = 0; k < 32; k++) {
            rnd.nextBytes(written[k]);
            MemorySegment.copy(written[k], 0, ram, ValueLayout.JAVA_BYTE, data(k), 4096);
            sector[k] = 8L * (k * 7 % 1024); // distinct blocks, scattered
            write(sector[k], k, 4096);
        }
        kick();
        List<long[]> used = awaitUsed(32);
        for (long[] u : used) {
            assertEquals(1, u[1], "a write reports only its status byte");
            assertEquals(S_OK, status((int) u[0]));
        }
        for (int k = 0; k < 32; k++) {
            assertArrayEquals(written[k], disk(sector[k] << 9, 4096), "block of write " + k);
        }
        // Read them back into other buffers, 32 at once, half of them split over two buffers (READV).
        for (int k = 0; k < 32; k++) {
            int g = 32 + k;
            ram.asSlice(data(g), 4096).fill((byte) 0);
            if (k % 2 == 0) {
                read(sector[k], g, 4096);
            } else {
                request(T_IN, sector[k], new long[] {data(g), data(g) + 1024}, new int[] {1024, 3072}, false);
            }
        }
        kick();
        used = awaitUsed(32);
        for (long[] u : used) {
            assertEquals(4097, u[1], "data plus status");
            assertEquals(S_OK, status((int) u[0]));
        }
        for (int k = 0; k < 32; k++) {
            assertArrayEquals(written[k], guest(data(32 + k), 4096), "read back " + k);
        }
        assertEquals(32, stats.reads.sum());
        assertEquals(32, stats.writes.sum());
        assertNull(worker.failure());
    }

    @Test
    void requestsCompleteOutOfOrder() throws Exception {
        setUp(true, true);
        // Published before the worker starts, so its first batch takes all three: the reads go to the kernel after
        // the batch is popped, while GET_ID needs no I/O and is pushed at once — ahead of the reads before it.
        int r1 = read(0, 0, 4096);
        int r2 = read(8, 1, 4096);
        int id = request(T_GET_ID, 0, new long[] {data(2)}, new int[] {20}, false);
        worker.start();
        kick();
        List<long[]> used = awaitUsed(3);
        assertEquals(id, used.get(0)[0], "GET_ID overtakes the reads made available before it");
        assertEquals(21, used.get(0)[1]);
        assertEquals("worker-test", new String(guest(data(2), 11), StandardCharsets.US_ASCII));
        assertTrue(List.of((long) r1, (long) r2).containsAll(List.of(used.get(1)[0], used.get(2)[0])));
        assertArrayEquals(disk(0, 4096), guest(data(0), 4096));
        assertArrayEquals(disk(4096, 4096), guest(data(1), 4096));
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void flushCompletesAfterTheWritesItCovers(boolean direct) throws Exception {
        setUp(direct, true);
        worker.start();
        byte[] pattern = new byte[4096];
        Arrays.fill(pattern, (byte) 0x3c);
        MemorySegment.copy(pattern, 0, ram, ValueLayout.JAVA_BYTE, data(0), 4096);
        int w = write(64, 0, 4096);
        kick();
        assertEquals(w, awaitUsed(1).get(0)[0]);
        // The write is used: a flush submitted now must cover it (VIRTIO 1.2 §5.2.6.1). It goes to the kernel as an
        // fdatasync through the ring, together with a write it does not cover and need not wait for.
        int w2 = write(128, 1, 4096);
        int f = request(T_FLUSH, 0, new long[0], new int[0], true);
        kick();
        List<long[]> used = awaitUsed(2);
        assertTrue(List.of((long) w2, (long) f).containsAll(List.of(used.get(0)[0], used.get(1)[0])));
        assertEquals(S_OK, status(f));
        assertEquals(S_OK, status(w2));
        assertEquals(1, stats.flushes.sum());
        assertArrayEquals(pattern, disk(64 << 9, 4096));
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void stopWaitsForRequestsInFlightAndLeavesAFinalRingPosition(boolean async) throws Exception {
        setUp(true, async);
        byte[][] written = new byte[40][4096];
        Random rnd = new Random(3);
        for (int k = 0; k < 40; k++) {
            rnd.nextBytes(written[k]);
            MemorySegment.copy(written[k], 0, ram, ValueLayout.JAVA_BYTE, data(k), 4096);
            write(8L * k, k, 4096);
        }
        worker.start(); // its first batch pops (io_uring: up to all 40, synchronous: one batch), stop comes right
        // behind
        Await.until(java.time.Duration.ofSeconds(20), "the first request taken", () -> stats.started.sum() > 0);
        worker.stop();
        int base = queue.vringBase();
        worker = null;
        // The worker looks at the stop request between batches: a flooding guest cannot keep a queue from stopping.
        // io_uring: it takes no more requests once it has seen the stop (the rest stay for the next worker).
        if (async) {
            assertTrue(base >= 1 && base <= 40, "the requests taken before the stop was seen: " + base);
        } else {
            assertTrue(base >= BlkDevice.SYNC_BATCH && base <= 40, "at least the first batch was served: " + base);
        }
        assertEquals(0, queue.inFlight(), "and pushed before stop returned");
        List<long[]> used = new ArrayList<>();
        long u;
        while ((u = driver.pollUsed()) != -1) {
            used.add(new long[] {DriverRing.usedId(u), DriverRing.usedLen(u)});
        }
        assertEquals(base, used.size());
        for (long[] e : used) {
            assertEquals(S_OK, status((int) e[0]));
        }
        for (int k = 0; k < base; k++) {
            assertArrayEquals(
                    written[k], disk(4096L * k, 4096), "write " + k + " reached the image before stop returned");
        }
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void badRequestsGetAnErrorStatusNextToGoodOnes(boolean direct) throws Exception {
        setUp(direct, true);
        worker.start();
        int good = read(16, 0, 4096);
        int past = read(DISK / 512, 1, 512); // first sector past the end
        int huge = read(-1L, 2, 512); // sector 2^64-1
        int odd = write(0, 3, 100); // not a whole sector
        int type = request(0x7777, 0, new long[0], new int[0], true);
        int getId = request(T_GET_ID, 0, new long[] {data(5)}, new int[] {20}, false);
        int good2 = write(24, 6, 4096);
        kick();
        List<long[]> used = awaitUsed(7);
        Map<Long, Long> len = new HashMap<>();
        for (long[] u : used) {
            len.put(u[0], u[1]);
        }
        assertEquals(S_OK, status(good));
        assertEquals(4097, len.get((long) good));
        assertEquals(S_IOERR, status(past));
        assertEquals(1, len.get((long) past), "a failed read reports no data");
        assertEquals(S_IOERR, status(huge));
        assertEquals(S_IOERR, status(odd));
        assertEquals(S_UNSUPP, status(type));
        assertEquals(S_OK, status(getId));
        assertEquals(S_OK, status(good2));
        assertEquals(3, stats.requestErrors.sum());
        assertNull(worker.failure(), "bad requests do not fail the queue");
    }

    @Test
    void unalignedGuestBuffersInDirectModeAreBouncedNextToAsynchronousRequests() throws Exception {
        setUp(true, true);
        worker.start();
        byte[] pattern = new byte[4096];
        new Random(1).nextBytes(pattern);
        // A write from a buffer at an odd address: O_DIRECT cannot take it, the bounce path does.
        MemorySegment.copy(pattern, 0, ram, ValueLayout.JAVA_BYTE, data(0) + 1, 4096);
        int w = request(T_OUT, 40, new long[] {data(0) + 1}, new int[] {4096}, true);
        int r = read(48, 2, 4096); // an aligned one in the same batch goes through the ring
        kick();
        awaitUsed(2);
        assertEquals(S_OK, status(w));
        assertEquals(S_OK, status(r));
        assertArrayEquals(pattern, disk(40 << 9, 4096));
        assertArrayEquals(disk(48 << 9, 4096), guest(data(2), 4096));
        int back = request(T_IN, 40, new long[] {data(4) + 3}, new int[] {4096}, false);
        kick();
        awaitUsed(1);
        assertEquals(S_OK, status(back));
        assertArrayEquals(pattern, guest(data(4) + 3, 4096));
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void aSuccessorWorkerTakesOverWhereTheStoppedOneLeftOff(boolean async) throws Exception {
        setUp(true, true);
        worker.start();
        int first = read(0, 0, 4096);
        kick();
        assertEquals(first, awaitUsed(1).get(0)[0]);
        // What BlkDevice does when the memory table changes: stop (drained), then a new queue object from the ring
        // position and a new worker on the same kick eventfd; here alternately synchronous and through io_uring.
        worker.stop();
        int base = queue.vringBase();
        queue = Virtqueue.create(driver.queueConfig(0, true).withVringBase(base), holder);
        worker = newWorker(async);
        worker.start();
        for (int i = 0; i < 20; i++) { // one request per kick: each kick must reach the new worker
            int h = read(8L * i, 1 + i % 8, 4096);
            kick();
            List<long[]> used = awaitUsed(1);
            assertEquals(h, used.get(0)[0]);
            assertEquals(S_OK, status(h));
            assertArrayEquals(disk(4096L * i, 4096), guest(data(1 + i % 8), 4096));
        }
        assertNull(worker.failure());
    }

    /**
     * io_uring_enter may take fewer SQEs than it was given, or none (EAGAIN, EBUSY: the kernel is short of memory),
     * leaving the rest in the SQ for the next enter. What the worker asks the engine before it sleeps must count them
     * as work: no completion will wake it for them, so with nothing else in flight a request among them (a lone FLUSH
     * the guest waits on) waited for the guest's next kick. A real EAGAIN cannot be provoked here (it is an allocation
     * failure in the kernel), so the ring is put in the state one leaves: an entry prepared that the kernel has not
     * taken.
     */
    @Test
    void sqEntriesTheKernelHasNotTakenAreWorkNotASleep() throws Exception {
        setUpGuest(false, true);
        IoUring ring = IoUring.create(UringEngine.ringEntries(QUEUE_SIZE));
        BlkQueueHandler handler = newHandler(image);
        UringEngine engine = new UringEngine(queue, handler, call, new RequestLog("blk test q0"), ring);
        worker = QueueWorker.builder("blk test q0").build(engine); // attached, not started: this thread asks
        try {
            assertFalse(engine.hasWork(), "idle");
            assertFalse(engine.prepareToSleep(), "idle: the worker may sleep");
            ring.nop(1L << 40);
            assertEquals(1, ring.unsubmitted());
            assertTrue(engine.hasWork(), "an SQE the kernel has not taken is work");
            assertTrue(engine.prepareToSleep(), "an SQE the kernel has not taken keeps the worker awake");
            ring.submitAndWait(1);
            assertEquals(1, ring.reap((userData, result, flags) -> {}));
            assertFalse(engine.hasWork(), "submitted and reaped: idle again");
        } finally {
            engine.stopped(false); // closes the ring and the handler
        }
    }

    @Test
    void aCorruptRingFailsTheQueueAfterItsIoInFlightIsDone() throws Exception {
        setUp(true, true);
        worker.start();
        int ok = read(0, 0, 4096);
        kick();
        awaitUsed(1);
        assertEquals(S_OK, status(ok));
        // A request whose buffer lies outside guest memory breaks the ring: the queue fails, the process goes on.
        request(T_IN, 0, new long[] {ram.byteSize() + 4096}, new int[] {4096}, false);
        kick();
        Await.until(java.time.Duration.ofSeconds(60), "the queue fails", () -> worker.failure() != null);
        assertTrue(worker.failure().contains("outside guest memory"), worker.failure());
        assertEquals(1, stats.queueFailures.sum());
    }

    /**
     * A request the kernel still holds when its queue fails is dropped, unanswered, once the kernel is done with it:
     * it is not in flight any more. It stayed counted in the in-flight gauge for good (started, never finished), so a
     * guest that fails its queue on purpose, again and again, raised the gauge as it liked. Here a FLUSH is a socket
     * read in the kernel when a request whose buffer lies outside guest memory fails the queue.
     */
    @Test
    void aRequestAFailedQueueDropsLeavesTheInFlightGauge() throws Exception {
        setUpGuest(false, true);
        UnixSocket[] a = UnixSocket.pair();
        try {
            worker = newWorker(new SocketFlushImage(image, ram, data(0), a[1]), true);
            int flush = request(T_FLUSH, 0, new long[0], new int[0], true);
            worker.start();
            kick();
            Await.until(Duration.ofSeconds(20), "the FLUSH taken", () -> stats.started.sum() == 1);
            assertEquals(1, stats.snapshot().inFlight(), "the FLUSH is in flight");

            failTheQueueUnderTheFlush(a[0], flush, "the failed queue's thread ends once the FLUSH is over");
            assertEquals(0, stats.snapshot().inFlight(), "nothing is in flight once the queue failed");
        } finally {
            a[0].close();
            a[1].close();
        }
    }

    /**
     * A request whose handling throws after it was counted as started (its queue fails with it) is not in flight any
     * more once the queue has stopped: nothing answers it and nothing of it is in the kernel. It stayed in the
     * in-flight gauge for good: only finishing a request, or dropping one the kernel returned, took it out. Here the
     * frontend truncated its memory file under the request's header, so reading the header raises SIGBUS, which
     * HotSpot turns into an InternalError; both engines.
     */
    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void aRequestWhoseHandlingThrowsLeavesTheInFlightGauge(boolean async) throws Exception {
        setUpGuest(false, async, true);
        worker = newWorker(async);
        long doomed = ram.byteSize() - 4096; // the page the frontend will cut off: the request's header
        ram.set(LE32, doomed, T_IN);
        ram.set(LE64, doomed + 8, 0);
        int k = nextSlot++;
        ram.set(ValueLayout.JAVA_BYTE, STATUS + k, (byte) 0x7f);
        int head = driver.add(
                new long[] {doomed, data(k), STATUS + k},
                new int[] {16, 4096, 1},
                new boolean[] {false, true, true},
                3,
                DriverRing.NO_INDIRECT);
        slotOfHead.put(head, k);
        MemFd.truncate(ramFile, doomed); // the frontend cuts its memory file short
        worker.start();
        kick();
        Await.until(Duration.ofSeconds(20), "the queue fails", () -> worker.failure() != null);
        assertTrue(worker.stop(Duration.ofSeconds(30)), "the failed queue's thread ends");
        String failure = worker.failure();
        worker = null;
        assertTrue(failure.contains("fault"), failure);
        assertEquals(1, stats.started.sum(), "the request was taken and counted");
        assertEquals(0x7f, status(head), "never answered");
        assertEquals(0, stats.snapshot().inFlight(), "nothing is in flight once the queue failed");
        assertEquals(0, stats.dropped.sum() + stats.completed.sum() - 1, "taken out of the gauge once");
    }

    /**
     * A queue whose engine gives up on writes still in the kernel (io_uring_enter fails while its stop waits for them,
     * and it closes the ring: the kernel may still carry them out) must not count as drained for a switch to
     * read-only, which makes the image lock shared once the writes in flight have ended: such a write may land under
     * the shared lock. Its handler was closed all the same, and a closed handler counted as drained. Here the ring is
     * told nothing of the two writes (their submit only says queued), so the stop's wait on the ring fails as a
     * failing io_uring_enter would.
     */
    @Test
    void writesGivenUpOnInTheKernelNeverCountAsDrained() throws Exception {
        setUpGuest(false, true);
        BlkQueueHandler handler = takeTwoWrites(writesQueuedOnNoRing(image, () -> {}));
        assertFalse(handler.mutationsEnded(), "two writes in flight");

        assertTrue(worker.stop(Duration.ofSeconds(30)), "the stop gives up on the ring and ends");
        worker = null;
        assertFalse(handler.mutationsEnded(), "writes given up on in the kernel may still land: never drained");
        assertTrue(handler.mutationsAbandoned(), "the switch is told, to say why the lock stays exclusive");
    }

    /**
     * The writes a stop gives up on in the kernel may land on a qcow2 image's host clusters at any time: a cluster a
     * discard freed under them must never be handed out again while the image is open. The stop closed their
     * contexts, which counted them as over: the next flushes freed the cluster, the next allocation took it, and the
     * late writes would put the guest's 0x55 bytes into another guest offset's data. Here the contexts queue the
     * writes on a second ring, which the stop does not know of (it gives up as when io_uring_enter fails): the next
     * allocation must grow the file instead of taking the discarded cluster.
     */
    @Test
    @org.junit.jupiter.api.Tag("peer") // qemu-img makes the image
    void aQcow2ClusterUnderWritesGivenUpOnInTheKernelIsNeverReused() throws Exception {
        setUpGuest(false, true);
        Path path = io.iovirt.storage.qcow2.QemuTools.createQcow2(dir, "disk.qcow2", "16M");
        try (io.iovirt.storage.qcow2.Qcow2Image q = io.iovirt.storage.qcow2.Qcow2Image.open(path, false);
                IoUring late = IoUring.create(4)) {
            giveUpOnTwoWrites(q, late);

            q.discard(0, 65536);
            q.handOver(); // two flushes: a free deferred to the first lands at the second
            long before = Files.size(path);
            writeImage(q, 9L << 20, 0x66); // in the same L2 table: a cluster freed meanwhile would be taken
            assertTrue(
                    Files.size(path) > before,
                    "the cluster the writes given up on may land on was handed out again (the file did not grow)");
        } // the second ring closes with the writes never entered: their iovecs went with the stopped queue
    }

    /**
     * The writes a stop gave up on in the kernel leak the qcow2 clusters they may land on, no more: their contexts
     * quarantine those and then go as any other. Before, the contexts stayed counted in flight for ever and every
     * later free waited for them: each round of a guest's write, discard and FLUSH took a new cluster at the end of
     * the file, leaked, for as long as the image stayed open.
     */
    @Test
    @org.junit.jupiter.api.Tag("peer") // qemu-img makes the image
    void writesGivenUpOnInTheKernelNoLongerHoldUpLaterQcow2Frees() throws Exception {
        setUpGuest(false, true);
        Path path = io.iovirt.storage.qcow2.QemuTools.createQcow2(dir, "disk.qcow2", "16M");
        try (io.iovirt.storage.qcow2.Qcow2Image q = io.iovirt.storage.qcow2.Qcow2Image.open(path, false);
                IoUring late = IoUring.create(4)) {
            giveUpOnTwoWrites(q, late);
            q.discard(0, 65536); // the cluster the writes may land on: it stays allocated
            writeImage(q, 9L << 20, 0x66);
            long size = Files.size(path);
            for (int i = 0; i < 16; i++) {
                q.discard(9L << 20, 65536);
                q.flush(); // the guest's FLUSH: its discard's free is applied, the cluster taken again below
                writeImage(q, 9L << 20, i);
            }
            assertEquals(size, Files.size(path), "the rounds grew the file: the frees waited for the writes");
        } // the second ring closes with the writes never entered: their iovecs went with the stopped queue
        String out = io.iovirt.storage.qcow2.QemuTools.check(path, true);
        assertTrue(out.contains("1 leaked clusters were found"), "the writes' cluster alone:\n" + out);
    }

    /**
     * Writes guest cluster 0 of {@code q}, then serves two writes into it on a queue whose contexts queue them on
     * {@code late}, which the stop does not know of: it gives up on them as when io_uring_enter fails, and they stay
     * in {@code late}'s submission queue, never entered unless the caller does.
     */
    private void giveUpOnTwoWrites(io.iovirt.storage.qcow2.Qcow2Image q, IoUring late) throws Exception {
        writeImage(q, 0, 0x33); // guest cluster 0 allocated: the writes below go to the ring
        DiskImage lost = new ForwardingDiskImage(q) {
            @Override
            public io.iovirt.storage.ImageIo newContext(io.iovirt.linux.IoVec iov, MemorySegment bounce) {
                return new ForwardingImageIo(delegate.newContext(iov, bounce)) {
                    @Override
                    public boolean submitWrite(IoUring ring, long offset, long userData)
                            throws io.iovirt.linux.LinuxException {
                        return super.submitWrite(late, offset, userData); // "in the kernel", for the engine
                    }
                };
            }
        };
        takeTwoWrites(lost);
        assertTrue(worker.stop(Duration.ofSeconds(30)), "the stop gives up on the ring and ends");
        worker = null;
    }

    /**
     * Starts a worker with the io_uring engine on {@code disk} and waits until it has taken two writes at once (the
     * first is not a lone write run on the queue thread); returns its handler.
     */
    private BlkQueueHandler takeTwoWrites(DiskImage disk) throws Exception {
        BlkQueueHandler handler = newHandler(disk);
        worker = newWorker(handler, IoUring.create(UringEngine.ringEntries(QUEUE_SIZE)));
        write(0, 0, 4096);
        write(8, 1, 4096);
        worker.start();
        kick();
        Await.until(Duration.ofSeconds(20), "both writes taken", () -> stats.started.sum() == 2);
        return handler;
    }

    /**
     * {@code image}, whose writes are queued on no ring: "in the kernel", as far as the engine knows, for good. Each
     * of its contexts runs {@code abandoned} when it is told it was given up on in the kernel.
     */
    private static DiskImage writesQueuedOnNoRing(DiskImage image, Runnable abandoned) {
        return new ForwardingDiskImage(image) {
            @Override
            public io.iovirt.storage.ImageIo newContext(io.iovirt.linux.IoVec iov, MemorySegment bounce) {
                return new ForwardingImageIo(delegate.newContext(iov, bounce)) {
                    @Override
                    public boolean submitWrite(IoUring ring, long offset, long userData) {
                        return true;
                    }

                    @Override
                    public void abandon() {
                        abandoned.run();
                        super.abandon();
                    }
                };
            }
        };
    }

    /**
     * With a FLUSH, {@code flush}, a socket read in the kernel: fails the queue by a request whose buffer lies outside
     * guest memory, waits until the failed queue waits for the ring, ends the read through {@code peer} (the failed
     * queue drops the FLUSH) and stops the worker, which must end ({@code stopped}).
     */
    private void failTheQueueUnderTheFlush(UnixSocket peer, int flush, String stopped) throws Exception {
        request(T_IN, 0, new long[] {ram.byteSize() + 4096}, new int[] {4096}, false);
        kick();
        awaitTheQueueThreadInTheRing("the failed queue waits for the ring", () -> worker.failure() != null);
        try (Arena scratch = Arena.ofConfined()) {
            peer.send(scratch.allocate(4096));
        }
        assertTrue(worker.stop(Duration.ofSeconds(30)), stopped);
        assertTrue(worker.failure().contains("outside guest memory"), worker.failure());
        worker = null;
        assertEquals(0x7f, status(flush), "dropped, not answered");
    }

    /**
     * Waits until the queue thread waits in io_uring_enter (system call 426 on x86_64 and aarch64) while {@code also}
     * holds.
     */
    private static void awaitTheQueueThreadInTheRing(String what, java.util.function.BooleanSupplier also) {
        Await.until(Duration.ofSeconds(20), what, () -> {
            try {
                long tid = taskNamed("iovirt blk test q0");
                return also.getAsBoolean()
                        && tid > 0
                        && Files.readString(Path.of("/proc/self/task/" + tid + "/syscall"))
                                .startsWith("426 ");
            } catch (IOException gone) {
                return false;
            }
        });
    }

    /**
     * A request a failed queue dropped once the kernel was done with it is out of the kernel: when the stop then
     * gives up on the requests still there, its context is not told it was given up on (a qcow2 context would
     * quarantine the host clusters its last request found, leaked if freed while the image is open). The engine
     * knows which slots are still in the kernel by the free list, where a dropped request's slot goes back. Here a
     * FLUSH is a socket read in the kernel (the real ring) when a request outside guest memory fails the queue; the
     * write next to it is queued on no ring, so that once the FLUSH was dropped the stop's wait fails as a failing
     * io_uring_enter would, and the stop gives up on the write.
     */
    @Test
    void aRequestAFailedQueueDroppedIsNotGivenUpOnInTheKernel() throws Exception {
        setUpGuest(false, true);
        UnixSocket[] a = UnixSocket.pair();
        java.util.concurrent.atomic.AtomicInteger givenUp = new java.util.concurrent.atomic.AtomicInteger();
        DiskImage disk =
                writesQueuedOnNoRing(new SocketFlushImage(image, ram, data(4), a[1]), givenUp::incrementAndGet);
        try {
            worker = newWorker(disk, true);
            write(0, 0, 4096);
            int flush = request(T_FLUSH, 0, new long[0], new int[0], true);
            worker.start();
            kick();
            Await.until(Duration.ofSeconds(20), "the write and the FLUSH taken", () -> stats.started.sum() == 2);

            failTheQueueUnderTheFlush(a[0], flush, "the stop gives up on the write and ends");
            assertEquals(1, givenUp.get(), "given up on in the kernel: the write alone, not the dropped FLUSH");
        } finally {
            a[0].close();
            a[1].close();
        }
    }

    /**
     * A request stranded by a failed queue (its handling threw before it was queued on the ring) is not in the
     * kernel: when the stop gives up on the requests that are, its context is not told it was given up on (a qcow2
     * context would quarantine the host clusters its request found, leaked if freed while the image is open).
     * Before, every slot not free was given up on, the stranded one too. Here the first write is "in the kernel" as
     * far as the engine knows, queued on no ring, so that the stop's wait fails as a failing io_uring_enter would;
     * the second write's submit throws (a bug) and fails the queue.
     */
    @Test
    void aRequestStrandedByAFailedQueueIsNotGivenUpOnInTheKernel() throws Exception {
        setUpGuest(false, true);
        java.util.concurrent.atomic.AtomicInteger submits = new java.util.concurrent.atomic.AtomicInteger();
        java.util.concurrent.atomic.AtomicInteger givenUp = new java.util.concurrent.atomic.AtomicInteger();
        DiskImage disk = new ForwardingDiskImage(image) {
            @Override
            public io.iovirt.storage.ImageIo newContext(io.iovirt.linux.IoVec iov, MemorySegment bounce) {
                return new ForwardingImageIo(delegate.newContext(iov, bounce)) {
                    @Override
                    public boolean submitWrite(IoUring ring, long offset, long userData) {
                        if (submits.getAndIncrement() == 0) {
                            return true; // "in the kernel", as far as the engine knows
                        }
                        throw new IllegalStateException("a bug in the second write's submit");
                    }

                    @Override
                    public void abandon() {
                        givenUp.incrementAndGet();
                        super.abandon();
                    }
                };
            }
        };
        worker = newWorker(disk, true);
        int first = write(0, 0, 4096);
        int second = write(8, 1, 4096);
        worker.start();
        kick();
        Await.until(Duration.ofSeconds(20), "the second write fails the queue", () -> worker.failure() != null);
        assertTrue(worker.stop(Duration.ofSeconds(30)), "the stop gives up on the first write and ends");
        assertTrue(worker.failure().contains("a bug in the second write's submit"), worker.failure());
        worker = null;
        assertEquals(0x7f, status(first), "not answered");
        assertEquals(0x7f, status(second), "dropped, not answered");
        assertEquals(1, givenUp.get(), "given up on in the kernel: the first write alone, not the stranded one");
    }

    /**
     * A context whose abandon throws (out of memory while a qcow2 image records its quarantine) does not end the
     * stop: the other requests in the kernel are given up on too, and the ring is closed. Before, the throw left the
     * stop at once: the second context was never told, and the ring, the guest memory and the handler were left as
     * they were. Both writes are "in the kernel" as far as the engine knows, queued on no ring, so that the stop's
     * wait fails as a failing io_uring_enter would.
     */
    @Test
    void aContextWhoseAbandonThrowsDoesNotEndTheStop() throws Exception {
        setUpGuest(false, true);
        java.util.concurrent.atomic.AtomicInteger givenUp = new java.util.concurrent.atomic.AtomicInteger();
        DiskImage disk = new ForwardingDiskImage(image) {
            @Override
            public io.iovirt.storage.ImageIo newContext(io.iovirt.linux.IoVec iov, MemorySegment bounce) {
                return new ForwardingImageIo(delegate.newContext(iov, bounce)) {
                    @Override
                    public boolean submitWrite(IoUring ring, long offset, long userData) {
                        return true; // "in the kernel", as far as the engine knows
                    }

                    @Override
                    public void abandon() {
                        if (givenUp.getAndIncrement() == 0) {
                            throw new OutOfMemoryError("no memory to record the quarantine (a test)");
                        }
                        super.abandon();
                    }
                };
            }
        };
        worker = newWorker(disk, true);
        write(0, 0, 4096);
        write(8, 1, 4096);
        worker.start();
        kick();
        Await.until(Duration.ofSeconds(20), "both writes in the kernel", () -> stats.started.sum() == 2);
        assertTrue(worker.stop(Duration.ofSeconds(30)), "the stop gives up on both writes and ends");
        worker = null;
        assertEquals(2, givenUp.get(), "the second write was given up on too");
    }

    /** Writes one 64 KiB cluster of {@code value} bytes at {@code offset}, synchronously. */
    private static void writeImage(DiskImage img, long offset, int value) throws IOException {
        try (Arena a = Arena.ofConfined();
                io.iovirt.storage.ImageIo io = img.newContext(8, 0)) {
            MemorySegment b = a.allocate(65536);
            b.fill((byte) value);
            io.add(b);
            io.write(offset);
        }
    }

    /**
     * A disk whose FLUSHes are reads of sockets into guest memory, each in the kernel until the test writes to its
     * socket: I/O in flight for as long as the test wants, through the real ring. The n-th FLUSH reads
     * {@code sockets[n]} into the guest page at {@code guestOffset + 4096 n}.
     */
    private static final class SocketFlushImage extends ForwardingDiskImage {
        private final MemorySegment guest;
        private final long guestOffset;
        private final UnixSocket[] sockets;
        private int next;

        SocketFlushImage(DiskImage image, MemorySegment guest, long guestOffset, UnixSocket... sockets) {
            super(image);
            this.guest = guest;
            this.guestOffset = guestOffset;
            this.sockets = sockets;
        }

        @Override
        public boolean submitFlush(IoUring ring, long userData) {
            int n = next++;
            ring.read(sockets[n].fd(), guest, guestOffset + 4096L * n, 4096, 0, userData);
            return true;
        }

        @Override
        public void flushCompleted(int result) throws IOException {
            IoUring.check(IoUring.OP_READ, result, "flush socket");
        }
    }

    /** The kernel thread id of this JVM's thread whose name starts with {@code prefix} (its 15-byte comm), or -1. */
    private static long taskNamed(String prefix) throws IOException {
        String comm = prefix.substring(0, Math.min(15, prefix.length()));
        try (var tasks = Files.list(Path.of("/proc/self/task"))) {
            for (Path t : tasks.toList()) {
                try {
                    if (Files.readString(t.resolve("comm")).strip().equals(comm)) {
                        return Long.parseLong(t.getFileName().toString());
                    }
                } catch (IOException gone) {
                    // the thread ended meanwhile
                }
            }
        }
        return -1;
    }

    /**
     * The stop of the io_uring engine waits until the kernel is done with every request in flight: their buffers are
     * guest memory, unpinned (and once the frontend's memory table goes, unmapped, its addresses free for reuse) when
     * the engine returns. Pushing one of the completions while it waits can fail — here the frontend truncated its
     * memory file under the status byte of one FLUSH, so writing it raises SIGBUS, which HotSpot turns into an
     * InternalError. The engine used to catch only a VirtqueueException there: the error ended the wait, the ring was
     * closed and guest memory released while the kernel still had the other FLUSH's read into guest memory in flight.
     */
    @Test
    void aFaultPushingACompletionDuringTheStopDoesNotEndTheWaitForIoStillInFlight() throws Exception {
        setUpGuest(false, true, true);
        UnixSocket[] a = UnixSocket.pair();
        UnixSocket[] b = UnixSocket.pair();
        try (Arena scratch = Arena.ofConfined()) {
            worker = newWorker(new SocketFlushImage(image, ram, data(0), a[1], b[1]), true);
            int flushA = request(T_FLUSH, 0, new long[0], new int[0], true);
            long doomed = ram.byteSize() - 4096; // the page the frontend will cut off
            ram.set(ValueLayout.JAVA_BYTE, doomed, (byte) 0x7f);
            int header = (int) (HDR + 16L * nextSlot++);
            ram.set(LE32, header, T_FLUSH);
            ram.set(LE64, header + 8, 0);
            driver.add(
                    new long[] {header, doomed},
                    new int[] {16, 1},
                    new boolean[] {false, true},
                    2,
                    DriverRing.NO_INDIRECT);
            worker.start(); // its first batch takes both: two socket reads in the kernel
            kick();
            Await.until(java.time.Duration.ofSeconds(20), "both FLUSHes taken", () -> stats.started.sum() == 2);

            MemFd.truncate(ramFile, doomed); // the frontend cuts its memory file short
            CompletableFuture<Boolean> stop = CompletableFuture.supplyAsync(() -> worker.stop(Duration.ofSeconds(60)));
            awaitTheQueueThreadInTheRing("the queue thread waits for the ring", () -> true); // for both FLUSHes

            MemorySegment one = scratch.allocate(1);
            b[0].send(one); // FLUSH B completes: its status byte is on the page that is gone
            assertThrows(
                    TimeoutException.class,
                    () -> stop.get(1, TimeUnit.SECONDS),
                    "the stop still waits: FLUSH A's read into guest memory is in the kernel");

            byte[] late = new byte[4096];
            new Random(7).nextBytes(late);
            MemorySegment lateData = scratch.allocate(4096);
            MemorySegment.copy(late, 0, lateData, ValueLayout.JAVA_BYTE, 0, 4096);
            a[0].send(lateData);
            assertTrue(stop.get(30, TimeUnit.SECONDS), "the stop ends once the kernel is done");
            worker = null;
            assertArrayEquals(late, guest(data(0), 4096), "the read landed in guest memory before the stop returned");
            assertEquals(0x7f, status(flushA), "dropped, not pushed: the queue failed while stopping");
        } finally {
            for (UnixSocket s : new UnixSocket[] {a[0], a[1], b[0], b[1]}) {
                s.close();
            }
        }
    }
}
