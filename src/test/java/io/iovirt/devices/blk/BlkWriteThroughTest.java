// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.S_OK;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ForwardingDiskImage;
import io.iovirt.storage.RawImage;
import io.iovirt.vhostuser.VhostUserServer;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * A driver that does not negotiate VIRTIO_BLK_F_FLUSH (firmware such as SeaBIOS) cannot ask for durability, so the
 * device writes through: each write is flushed before its status is written (virtio-blk, "Device Requirements:
 * Device Operation"). A driver that negotiated FLUSH (Linux's) gets no flush it did not ask for. Before, a write of a
 * driver without FLUSH was answered from the page cache, and a host crash lost it.
 */
class BlkWriteThroughTest {
    @TempDir
    Path dir;

    /** An image whose flushes wait, each, until the test lets one go. */
    static final class HeldFlushImage extends ForwardingDiskImage {
        final Semaphore entered = new Semaphore(0);
        final Semaphore go = new Semaphore(0);

        HeldFlushImage(DiskImage d) {
            super(d);
        }

        @Override
        public void flush() throws IOException {
            entered.release();
            go.acquireUninterruptibly();
            super.flush();
        }
    }

    /** What a test does with a served device: its driver {@code d}, its image {@code img}. */
    private interface OnDevice {
        void run(BlkTestDriver d, HeldFlushImage img) throws Exception;
    }

    /**
     * Serves a 1 MiB raw image on {@code engine} to a {@link BlkTestDriver} that negotiates FLUSH or not, and runs
     * {@code body}; every flush still held is let go after it.
     */
    private void served(BlkDevice.IoEngine engine, boolean flush, OnDevice body) throws Exception {
        io.iovirt.testing.Require.that(
                engine == BlkDevice.IoEngine.SYNC || io.iovirt.linux.IoUring.available(),
                "io_uring (kernel 5.6 or later, not disabled by kernel.io_uring_disabled)");
        Path sock = dir.resolve("blk.sock");
        Path disk = Files.write(dir.resolve("disk.img"), new byte[1 << 20]);
        try (RawImage raw = RawImage.open(disk, false, false)) {
            HeldFlushImage img = new HeldFlushImage(raw);
            try (VhostUserServer server = VhostUserServer.start(sock, new BlkDevice("wt", img, 1, "s", engine));
                    EventFd call = EventFd.create(true);
                    BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call, null, () -> {}, flush)) {
                body.run(d, img);
            } finally {
                img.go.release(100);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(
            value = BlkDevice.IoEngine.class,
            names = {"SYNC", "IO_URING"})
    void aWriteOfADriverWithoutFlushIsFlushedBeforeItIsAnswered(BlkDevice.IoEngine engine) throws Exception {
        served(engine, false, (d, img) -> {
            long data = d.alloc(4096, 4096);
            long st = d.write(data, 4096);
            assertTrue(
                    img.entered.tryAcquire(BlkTestDriver.TIMEOUT.toSeconds(), TimeUnit.SECONDS),
                    "the write is flushed before it is answered");
            assertEquals((byte) 0x7f, d.ram.segment().get(JAVA_BYTE, st), "answered while its flush runs");
            img.go.release();
            assertEquals(S_OK, d.awaitStatus(st));
        });
    }

    @ParameterizedTest
    @EnumSource(
            value = BlkDevice.IoEngine.class,
            names = {"SYNC", "IO_URING"})
    void aDriverThatNegotiatedFlushGetsNoFlushItDidNotAskFor(BlkDevice.IoEngine engine) throws Exception {
        served(engine, true, (d, img) -> {
            img.go.release(100); // a flush, if one came, would not hold the write up
            long data = d.alloc(4096, 4096);
            assertEquals(S_OK, d.awaitStatus(d.write(data, 4096)));
            assertFalse(img.entered.tryAcquire(), "a write-back driver's write was flushed");
        });
    }
}
