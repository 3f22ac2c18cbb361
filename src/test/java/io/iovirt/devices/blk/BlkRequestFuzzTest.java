// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static org.junit.jupiter.api.Assertions.assertTrue;

import com.code_intelligence.jazzer.junit.FuzzTest;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.storage.RawImage;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.Virtqueue;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;

/**
 * Fuzzes the virtio-blk request parser and executor ({@link BlkQueueHandler}) with well-formed chains of any shape:
 * the fuzzer picks the buffers (count, lengths, directions) and every byte they hold (header type, sector, discard
 * segments...). A request must end with a status byte (OK, IOERR or UNSUPP) or, without a writable byte, an
 * {@link BlkQueueHandler.UnanswerableRequest}; nothing else may escape, and no I/O may leave the 1 MiB image.
 * Input: byte 0 = buffer count (1..8), then per buffer 3 bytes (length: 2 bytes LE, flags: bit 0 writable), then the
 * bytes copied into the buffers. Seeds: src/test/resources/io/iovirt/devices/blk/BlkRequestFuzzTestInputs/.
 */
class BlkRequestFuzzTest {
    static final long RAM = 1 << 20;
    static Path dir;
    static RawImage image;
    static Arena arena;
    static MemorySegment ram;
    static GuestMemoryHolder holder;

    @BeforeAll
    static void setUp() throws Exception {
        dir = Files.createTempDirectory("blkfuzz");
        Path img = dir.resolve("disk.img");
        try (var f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        image = RawImage.open(img, false, false);
        arena = Arena.ofShared();
        ram = arena.allocate(RAM, 4096);
        holder = new GuestMemoryHolder();
        holder.swap(GuestMemory.of(List.of(new MemoryRegion(0, RAM, 0x7000_0000L, 0, ram, null))));
    }

    @AfterAll
    static void tearDown() throws Exception {
        image.close();
        arena.close();
        try (var s = Files.walk(dir)) {
            s.sorted(java.util.Comparator.reverseOrder())
                    .forEach(p -> p.toFile().delete());
        }
    }

    @FuzzTest(maxDuration = "10s")
    void request(byte[] data) throws Exception {
        if (data.length < 1) {
            return;
        }
        int count = 1 + (Byte.toUnsignedInt(data[0]) % 8);
        if (data.length < 1 + 3 * count) {
            return;
        }
        ram.fill((byte) 0);
        SplitDriverRing ring = SplitDriverRing.create(holder.get(), 0, 16, false);
        Virtqueue q = Virtqueue.create(ring.queueConfig(0, false), holder)
                .limitChain(BlkLimits.defaults().segMax() + 2);
        long[] addrs = new long[count];
        int[] lens = new int[count];
        boolean[] writable = new boolean[count];
        long next = 0x10000;
        boolean seenWritable = false;
        for (int i = 0; i < count; i++) {
            int len = Byte.toUnsignedInt(data[1 + 3 * i]) | Byte.toUnsignedInt(data[2 + 3 * i]) << 8;
            boolean w = (data[3 + 3 * i] & 1) != 0 || seenWritable; // readable buffers first, as the walker demands
            seenWritable |= w;
            addrs[i] = next;
            lens[i] = len;
            writable[i] = w;
            next += len + 64;
        }
        int pos = 1 + 3 * count;
        for (int i = 0; i < count && pos < data.length; i++) {
            int k = Math.min(lens[i], data.length - pos);
            MemorySegment.copy(data, pos, ram, ValueLayout.JAVA_BYTE, addrs[i], k);
            pos += k;
        }
        ring.add(addrs, lens, writable, count, DriverRing.NO_INDIRECT);
        DescriptorChain c = q.pop();
        BlkQueueHandler h = new BlkQueueHandler(image, BlkLimits.defaults(), new byte[] {'f'}, new BlkStats());
        try {
            long written = h.process(c);
            assertTrue(written >= 1 && written <= c.writableBytes(), "used length " + written);
            long statusAt = c.writableBytes() - 1;
            MemorySegment status = MemorySegment.ofArray(new byte[1]);
            // the status is the last writable byte: find it through the chain
            long skip = statusAt;
            for (int i = c.readableCount(); i < c.count(); i++) {
                if (skip < c.length(i)) {
                    MemorySegment.copy(c.mapping(i), c.offset(i) + skip, status, 0, 1);
                    break;
                }
                skip -= c.length(i);
            }
            int s = status.get(ValueLayout.JAVA_BYTE, 0);
            assertTrue(s == BlkRequests.S_OK || s == BlkRequests.S_IOERR || s == BlkRequests.S_UNSUPP, "status " + s);
            q.push(c, written);
        } catch (BlkQueueHandler.UnanswerableRequest expected) {
            assertTrue(c.writableBytes() == 0);
        } finally {
            h.close();
            q.releaseMemory();
        }
        assertTrue(image.size() == 1 << 20, "the image did not grow");
    }
}
