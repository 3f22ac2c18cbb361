// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.linux.Fd;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageIo;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;

/** An image that passes everything to another: tests override what they watch or hold up (flushes, say). */
class DelegatingImage implements DiskImage {
    final DiskImage d;

    DelegatingImage(DiskImage d) {
        this.d = d;
    }

    @Override
    public void flush() throws IOException {
        d.flush();
    }

    @Override
    public boolean submitFlush(IoUring ring, long userData) {
        return d.submitFlush(ring, userData);
    }

    @Override
    public void setReadOnly(boolean readOnly) throws IOException {
        d.setReadOnly(readOnly);
    }

    @Override
    public Path path() {
        return d.path();
    }

    @Override
    public String format() {
        return d.format();
    }

    @Override
    public long size() {
        return d.size();
    }

    @Override
    public boolean readOnly() {
        return d.readOnly();
    }

    @Override
    public boolean direct() {
        return d.direct();
    }

    @Override
    public int blockSize() {
        return d.blockSize();
    }

    @Override
    public int zeroGranularity() {
        return d.zeroGranularity();
    }

    @Override
    public ImageIo newContext(int maxSegments, int bounceBytes) {
        return d.newContext(maxSegments, bounceBytes);
    }

    @Override
    public ImageIo newContext(IoVec iov, MemorySegment bounce) {
        return d.newContext(iov, bounce);
    }

    @Override
    public Fd[] ringFiles() {
        return d.ringFiles();
    }

    @Override
    public void flushCompleted(int result) throws IOException {
        d.flushCompleted(result);
    }

    @Override
    public void discard(long offset, long len) throws IOException {
        d.discard(offset, len);
    }

    @Override
    public void writeZeroes(long offset, long len, boolean unmap) throws IOException {
        d.writeZeroes(offset, len, unmap);
    }

    @Override
    public Extent extent(long offset, long len) throws IOException {
        return d.extent(offset, len);
    }

    @Override
    public void readAt(long offset, MemorySegment dst) throws IOException {
        d.readAt(offset, dst);
    }

    @Override
    public void close() {
        d.close();
    }
}
