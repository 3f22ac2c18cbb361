// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import io.iovirt.linux.Fd;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageIo;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * A real image whose server-side behaviour a test steers where no file system does it on demand: a flush or a write
 * of zeroes that waits for the test's go-ahead (a request held in flight for as long as the test needs), an extent
 * look-up that fails with the test's message. Everything else is the real image's.
 */
final class GatedImage implements DiskImage {
    private final DiskImage image;
    /** Counted down by a held request once it waits for {@link #release}; null when requests are not held. */
    private volatile CountDownLatch held;

    private final CountDownLatch released = new CountDownLatch(1);
    /** The message {@link #extent} fails with, or null. */
    volatile String extentFailure;

    GatedImage(DiskImage image) {
        this.image = image;
    }

    /** From now on a flush or a write of zeroes waits until {@link #release}; the latch tells when one is waiting. */
    CountDownLatch hold() {
        CountDownLatch l = new CountDownLatch(1);
        held = l;
        return l;
    }

    /** Lets held requests (and later ones) go on. */
    void release() {
        released.countDown();
    }

    private void waitIfHeld() throws IOException {
        CountDownLatch l = held;
        if (l != null) {
            l.countDown();
            try {
                if (!released.await(60, TimeUnit.SECONDS)) {
                    throw new IOException("the test never released the held request");
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted while held", e);
            }
        }
    }

    @Override
    public void flush() throws IOException {
        waitIfHeld();
        image.flush();
    }

    @Override
    public long extent(long offset, long len) throws IOException {
        String f = extentFailure;
        if (f != null) {
            throw new IOException(f);
        }
        return image.extent(offset, len);
    }

    @Override
    public Path path() {
        return image.path();
    }

    @Override
    public String format() {
        return image.format();
    }

    @Override
    public long size() {
        return image.size();
    }

    @Override
    public boolean readOnly() {
        return image.readOnly();
    }

    @Override
    public boolean direct() {
        return image.direct();
    }

    @Override
    public int blockSize() {
        return image.blockSize();
    }

    @Override
    public int zeroGranularity() {
        return image.zeroGranularity();
    }

    @Override
    public ImageIo newContext(int maxSegments, int bounceBytes) {
        return image.newContext(maxSegments, bounceBytes);
    }

    @Override
    public ImageIo newContext(IoVec iov, MemorySegment bounce) {
        return image.newContext(iov, bounce);
    }

    @Override
    public boolean submitFlush(IoUring ring, long userData) {
        return image.submitFlush(ring, userData);
    }

    @Override
    public Fd[] ringFiles() {
        return image.ringFiles();
    }

    @Override
    public void flushCompleted(int result) throws IOException {
        image.flushCompleted(result);
    }

    @Override
    public void discard(long offset, long len) throws IOException {
        image.discard(offset, len);
    }

    @Override
    public void writeZeroes(long offset, long len, boolean unmap) throws IOException {
        waitIfHeld();
        image.writeZeroes(offset, len, unmap);
    }

    @Override
    public void readAt(long offset, MemorySegment dst) throws IOException {
        image.readAt(offset, dst);
    }

    @Override
    public void close() {
        image.close();
    }
}
