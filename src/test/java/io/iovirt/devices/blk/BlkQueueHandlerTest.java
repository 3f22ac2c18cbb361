// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.*;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.iovirt.linux.IoUring;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.RawImage;
import io.iovirt.testing.Require;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.DriverRing;
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
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Drives the request handler through a real split ring in (heap-backed) guest memory, as a guest driver would. */
class BlkQueueHandlerTest {
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final long RING = 0x1000;
    private static final long HDR = 0x20000;
    private static final long DATA = 0x40000;
    private static final long STATUS = 0x30000;

    @TempDir
    Path dir;

    private Arena arena;
    private MemorySegment ram;
    private GuestMemory mem;
    private SplitDriverRing driver;
    private Virtqueue queue;
    private Path imagePath;
    private RawImage image;
    private BlkQueueHandler handler;
    private final BlkStats stats = new BlkStats();

    @BeforeEach
    void setUp() throws Exception {
        arena = Arena.ofShared();
        ram = arena.allocate(1 << 20, 4096);
        mem = GuestMemory.of(List.of(new MemoryRegion(0, ram.byteSize(), 0x7000_0000L, 0, ram, null)));
        GuestMemoryHolder holder = new GuestMemoryHolder();
        holder.swap(mem);
        driver = SplitDriverRing.create(mem, RING, 16, true);
        queue = Virtqueue.create(driver.queueConfig(0, true), holder);
        imagePath = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(imagePath.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        openImage(false);
    }

    private void openImage(boolean readOnly) throws Exception {
        if (handler != null) {
            handler.close();
            image.close();
        }
        image = RawImage.open(imagePath, readOnly, false);
        handler = new BlkQueueHandler(
                image, BlkLimits.defaults(), "iovirt-serial-0123456789".getBytes(StandardCharsets.US_ASCII), stats);
    }

    @AfterEach
    void tearDown() {
        handler.close();
        image.close();
        arena.close();
    }

    private void header(int type, long sector) {
        ram.set(LE32, HDR, type);
        ram.set(LE32, HDR + 4, 0);
        ram.set(LE64, HDR + 8, sector);
    }

    /** Submits one request and runs it; returns {status, usedLen}. */
    private long[] run(long[] addrs, int[] lens, boolean[] writable) throws Exception {
        ram.set(ValueLayout.JAVA_BYTE, STATUS, (byte) 0x7f);
        int id = driver.add(addrs, lens, writable, addrs.length, DriverRing.NO_INDIRECT);
        DescriptorChain c = queue.pop();
        assertEquals(id, c.id());
        long written = handler.process(c);
        queue.push(c, written);
        long used = driver.pollUsed();
        long statusAddr = addrs[addrs.length - 1] + lens[lens.length - 1] - 1;
        return new long[] {ram.get(ValueLayout.JAVA_BYTE, statusAddr), DriverRing.usedLen(used)};
    }

    @Test
    void writeThenReadRoundTripsThroughTheImage() throws Exception {
        byte[] data = new byte[4096];
        new Random(1).nextBytes(data);
        MemorySegment.copy(data, 0, ram, ValueLayout.JAVA_BYTE, DATA, data.length);
        header(T_OUT, 8);
        long[] r = run(new long[] {HDR, DATA, STATUS}, new int[] {16, 4096, 1}, new boolean[] {false, false, true});
        assertEquals(S_OK, r[0]);
        assertEquals(1, r[1]);
        assertArrayEquals(data, Arrays.copyOfRange(Files.readAllBytes(imagePath), 4096, 8192));

        ram.asSlice(DATA, 4096).fill((byte) 0);
        header(T_IN, 8);
        r = run(new long[] {HDR, DATA, DATA + 1024, STATUS}, new int[] {16, 1024, 3072, 1}, new boolean[] {
            false, true, true, true
        });
        assertEquals(S_OK, r[0]);
        assertEquals(4097, r[1]);
        assertArrayEquals(data, ram.asSlice(DATA, 4096).toArray(ValueLayout.JAVA_BYTE));
    }

    @Test
    void headerSharingABufferWithDataAndStatusSharingOneWithData() throws Exception {
        byte[] data = new byte[512];
        Arrays.fill(data, (byte) 0x5a);
        MemorySegment.copy(data, 0, ram, ValueLayout.JAVA_BYTE, HDR + 16, 512);
        header(T_OUT, 1);
        long[] r = run(new long[] {HDR, STATUS}, new int[] {16 + 512, 1}, new boolean[] {false, true});
        assertEquals(S_OK, r[0]);
        assertArrayEquals(data, Arrays.copyOfRange(Files.readAllBytes(imagePath), 512, 1024));

        header(T_IN, 1);
        r = run(new long[] {HDR, DATA}, new int[] {16, 513}, new boolean[] {false, true});
        assertEquals(S_OK, ram.get(ValueLayout.JAVA_BYTE, DATA + 512));
        assertEquals(513, r[1]);
        assertArrayEquals(data, ram.asSlice(DATA, 512).toArray(ValueLayout.JAVA_BYTE));
    }

    @Test
    void badRequestsGetAnErrorStatusNotACrash() throws Exception {
        header(T_IN, (1 << 20) / 512); // first sector past the end
        assertEquals(
                S_IOERR,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 512, 1}, new boolean[] {false, true, true})[0]);
        header(T_IN, -1L); // sector 2^64-1
        assertEquals(
                S_IOERR,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 512, 1}, new boolean[] {false, true, true})[0]);
        header(T_IN, 2047); // last sector, two sectors long
        assertEquals(
                S_IOERR,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 1024, 1}, new boolean[] {false, true, true})[0]);
        header(T_OUT, 0); // not a whole sector
        assertEquals(
                S_IOERR,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 100, 1}, new boolean[] {false, false, true})[0]);
        header(T_OUT, 0); // truncated header
        assertEquals(S_IOERR, run(new long[] {HDR, STATUS}, new int[] {8, 1}, new boolean[] {false, true})[0]);
        header(0x7777, 0);
        assertEquals(S_UNSUPP, run(new long[] {HDR, STATUS}, new int[] {16, 1}, new boolean[] {false, true})[0]);
        header(T_DISCARD, 0); // discard payload not a multiple of 16
        assertEquals(
                S_IOERR,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 20, 1}, new boolean[] {false, false, true})[0]);
        header(T_DISCARD, 0); // discard with the unmap flag, which only write-zeroes may carry
        ram.set(LE64, DATA, 0);
        ram.set(LE32, DATA + 8, 8);
        ram.set(LE32, DATA + 12, WRITE_ZEROES_FLAG_UNMAP);
        assertEquals(
                S_UNSUPP,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 16, 1}, new boolean[] {false, false, true})[0]);

        header(T_OUT, 0); // no byte for the status: cannot be answered
        driver.add(new long[] {HDR}, new int[] {16}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT);
        DescriptorChain c = queue.pop();
        assertThrows(BlkQueueHandler.UnanswerableRequest.class, () -> handler.process(c));
    }

    /**
     * An unknown segment flag is UNSUPP even when an earlier segment is also out of range: the spec's "MUST set the
     * status byte to VIRTIO_BLK_S_UNSUPP ... if any unknown flag is set". Before, the earlier segment's range check
     * answered IOERR first.
     */
    @Test
    void anUnknownFlagInAnySegmentIsUnsupportedBeforeOtherErrors() throws Exception {
        header(T_WRITE_ZEROES, 0);
        ram.set(LE64, DATA, (1 << 20) / 512); // past the end
        ram.set(LE32, DATA + 8, 8);
        ram.set(LE32, DATA + 12, 0);
        ram.set(LE64, DATA + 16, 0);
        ram.set(LE32, DATA + 24, 8);
        ram.set(LE32, DATA + 28, 0x2); // unknown
        assertEquals(
                S_UNSUPP,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 32, 1}, new boolean[] {false, false, true})[0]);
    }

    /**
     * A discard or write-zeroes segment of no sectors asks for nothing and gets OK, as from a qcow2 disk (and QEMU).
     * Before, a raw image handed fallocate a length of 0, whose EINVAL answered the guest IOERR.
     */
    @Test
    void aSegmentOfNoSectorsIsAnsweredOk() throws Exception {
        for (int type : new int[] {T_DISCARD, T_WRITE_ZEROES}) {
            header(type, 0);
            ram.set(LE64, DATA, 8);
            ram.set(LE32, DATA + 8, 0);
            ram.set(LE32, DATA + 12, 0);
            assertEquals(
                    S_OK,
                    run(new long[] {HDR, DATA, STATUS}, new int[] {16, 16, 1}, new boolean[] {false, false, true})[0],
                    "type " + type);
        }
    }

    /**
     * A real I/O error from the kernel, not a simulated one: the image is a sparse file on a 1 MiB tmpfs, so writing
     * past what the file system can hold fails with ENOSPC. The guest gets IOERR; the queue keeps serving.
     */
    @Test
    void hostIoErrorsBecomeIoerrAndTheQueueKeepsServing() throws Exception {
        Path mnt = dir.resolve("small-fs");
        Files.createDirectories(mnt);
        Process mount = new ProcessBuilder("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt.toString())
                .redirectErrorStream(true)
                .start();
        Require.that(mount.waitFor() == 0, "needs root to mount a small tmpfs");
        try {
            handler.close();
            image.close();
            imagePath = mnt.resolve("disk.raw");
            try (RandomAccessFile f = new RandomAccessFile(imagePath.toFile(), "rw")) {
                f.setLength(8 << 20); // 8 MiB of sparse image on 1 MiB of file system
            }
            image = RawImage.open(imagePath, false, false);
            handler = new BlkQueueHandler(image, BlkLimits.defaults(), new byte[20], stats);
            long before = stats.ioErrors.sum();
            byte st = S_OK;
            for (int i = 0; i < 4 && st == S_OK; i++) { // 4 x 512 KiB > 1 MiB
                header(T_OUT, i * 1024L);
                st = (byte) run(
                        new long[] {HDR, DATA, STATUS}, new int[] {16, 512 * 1024, 1}, new boolean[] {false, false, true
                        })[0];
            }
            assertEquals(S_IOERR, st);
            assertEquals(before + 1, stats.ioErrors.sum());
            header(T_IN, 0); // the same queue still serves reads
            assertEquals(
                    S_OK,
                    run(new long[] {HDR, DATA, STATUS}, new int[] {16, 4096, 1}, new boolean[] {false, true, true})[0]);
        } finally {
            handler.close();
            image.close();
            handler = null;
            new ProcessBuilder("umount", "-l", mnt.toString()).start().waitFor();
            openImageAt(dir.resolve("disk.raw"));
        }
    }

    private void openImageAt(Path p) throws Exception {
        imagePath = p;
        image = RawImage.open(p, false, false);
        handler = new BlkQueueHandler(image, BlkLimits.defaults(), new byte[20], stats);
    }

    @Test
    void readOnlyDiskRefusesWritesButServesReadsAndFlush() throws Exception {
        openImage(true);
        header(T_OUT, 0);
        assertEquals(
                S_IOERR,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 512, 1}, new boolean[] {false, false, true})[0]);
        header(T_WRITE_ZEROES, 0);
        assertEquals(
                S_IOERR,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 16, 1}, new boolean[] {false, false, true})[0]);
        header(T_IN, 0);
        assertEquals(
                S_OK,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 512, 1}, new boolean[] {false, true, true})[0]);
        header(T_FLUSH, 0);
        assertEquals(S_OK, run(new long[] {HDR, STATUS}, new int[] {16, 1}, new boolean[] {false, true})[0]);
    }

    /**
     * A disk switched to read-only while served (blk.set-readonly) still syncs on a guest FLUSH, synchronous and
     * through io_uring: a write that passed its check before the switch may complete after the switch's own sync,
     * with S_OK, and only the FLUSH that follows makes it durable. The handler skipped the flush of any disk that
     * {@code readOnly()} called read-only. A disk opened read-only queues no fsync (nothing was written through it).
     */
    @Test
    void aFlushAfterTheDiskWasSwitchedToReadOnlyStillReachesTheImage() throws Exception {
        CountingImage counted = new CountingImage(image);
        handler.close();
        handler = new BlkQueueHandler(counted, BlkLimits.defaults(), new byte[20], stats);
        counted.setReadOnly(true);
        header(T_OUT, 0);
        assertEquals(
                S_IOERR,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 512, 1}, new boolean[] {false, false, true})[0],
                "read-only now");
        header(T_FLUSH, 0);
        assertEquals(S_OK, run(new long[] {HDR, STATUS}, new int[] {16, 1}, new boolean[] {false, true})[0]);
        assertEquals(1, counted.flushes, "the synchronous FLUSH reached the image");
        Require.that(IoUring.available(), "io_uring (kernel 5.6 or later, not disabled by kernel.io_uring_disabled)");
        assertEquals(S_OK, flushThroughRing());
        assertEquals(1, counted.queuedFlushes, "the FLUSH queued an fsync on the ring");

        openImage(true); // opened read-only: the image queues nothing, the flush is a no-op
        assertEquals(S_OK, flushThroughRing());
    }

    /** A FLUSH popped, started and submitted as the io_uring engine does it; returns its status. */
    private byte flushThroughRing() throws Exception {
        header(T_FLUSH, 0);
        ram.set(ValueLayout.JAVA_BYTE, STATUS, (byte) 0x7f);
        driver.add(new long[] {HDR, STATUS}, new int[] {16, 1}, new boolean[] {false, true}, 2, DriverRing.NO_INDIRECT);
        BlkLimits limits = BlkLimits.defaults();
        try (IoUring ring = IoUring.create(4)) {
            BlkQueueHandler.Request r = new BlkQueueHandler.Request(
                    0, queue.pop(), handler.image().newContext(limits.segMax(), limits.bounceBytes()));
            try {
                assertEquals(BlkQueueHandler.FLUSH, handler.start(r));
                if (handler.submit(r, ring)) {
                    ring.submitAndWait(1);
                    assertEquals(1, ring.reap((userData, result, flags) -> handler.completed(r, result)));
                }
                queue.push(r.chain, handler.finish(r));
            } finally {
                r.io.close();
            }
        }
        driver.pollUsed();
        return ram.get(ValueLayout.JAVA_BYTE, STATUS);
    }

    /** An image that counts the flushes that reach it. */
    private static final class CountingImage extends io.iovirt.storage.ForwardingDiskImage {
        int flushes;
        int queuedFlushes;

        CountingImage(DiskImage d) {
            super(d);
        }

        @Override
        public void flush() throws IOException {
            flushes++;
            super.flush();
        }

        @Override
        public boolean submitFlush(IoUring ring, long userData) {
            boolean queued = super.submitFlush(ring, userData);
            if (queued) {
                queuedFlushes++;
            }
            return queued;
        }
    }

    @Test
    void getIdAndWriteZeroesAndDiscard() throws Exception {
        header(T_GET_ID, 0);
        long[] r = run(new long[] {HDR, DATA, STATUS}, new int[] {16, 20, 1}, new boolean[] {false, true, true});
        assertEquals(S_OK, r[0]);
        assertEquals(21, r[1]);
        assertEquals(
                "iovirt-serial-012345",
                new String(ram.asSlice(DATA, 20).toArray(ValueLayout.JAVA_BYTE), StandardCharsets.US_ASCII));

        byte[] ones = new byte[1 << 20];
        Arrays.fill(ones, (byte) 1);
        Files.write(imagePath, ones);
        header(T_WRITE_ZEROES, 0);
        ram.set(LE64, DATA, 2); // sectors 2..9
        ram.set(LE32, DATA + 8, 8);
        ram.set(LE32, DATA + 12, 0);
        ram.set(LE64, DATA + 16, 100); // and sector 100, with unmap
        ram.set(LE32, DATA + 24, 1);
        ram.set(LE32, DATA + 28, WRITE_ZEROES_FLAG_UNMAP);
        assertEquals(
                S_OK,
                run(new long[] {HDR, DATA, STATUS}, new int[] {16, 32, 1}, new boolean[] {false, false, true})[0]);
        byte[] after = Files.readAllBytes(imagePath);
        assertEquals(1, after[1023]);
        assertEquals(0, after[1024]);
        assertEquals(0, after[5119]);
        assertEquals(1, after[5120]);
        assertEquals(0, after[100 * 512 + 511]);
        assertEquals(1, after[101 * 512]);
    }
}
