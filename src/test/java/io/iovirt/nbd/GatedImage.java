// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ForwardingDiskImage;
import java.io.IOException;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * A real image whose server-side behaviour a test steers where no file system does it on demand: a flush or a write
 * of zeroes that waits for the test's go-ahead (a request held in flight for as long as the test needs), an extent
 * look-up that fails with the test's message. Everything else is the real image's.
 */
final class GatedImage extends ForwardingDiskImage {
    /** Counted down by a held request once it waits for {@link #release}; null when requests are not held. */
    private volatile CountDownLatch held;

    private final CountDownLatch released = new CountDownLatch(1);
    /** The message {@link #extent} fails with, or null. */
    volatile String extentFailure;

    GatedImage(DiskImage image) {
        super(image);
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
        delegate.flush();
    }

    @Override
    public long extent(long offset, long len) throws IOException {
        String f = extentFailure;
        if (f != null) {
            throw new IOException(f);
        }
        return delegate.extent(offset, len);
    }

    @Override
    public void writeZeroes(long offset, long len, boolean unmap) throws IOException {
        waitIfHeld();
        delegate.writeZeroes(offset, len, unmap);
    }
}
