// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.Fd;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.IoVec;
import io.iovirt.linux.LinuxException;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;

/**
 * An image that passes every call to another: the base of a wrapper that changes one or two of them (the
 * registration of a writable image until it is closed; tests that watch or hold up flushes).
 */
public class ForwardingDiskImage implements DiskImage {
    protected final DiskImage delegate;

    public ForwardingDiskImage(DiskImage delegate) {
        this.delegate = java.util.Objects.requireNonNull(delegate);
    }

    @Override
    public Path path() {
        return delegate.path();
    }

    @Override
    public Fd dupFile() throws LinuxException {
        return delegate.dupFile();
    }

    @Override
    public String format() {
        return delegate.format();
    }

    @Override
    public long size() {
        return delegate.size();
    }

    @Override
    public void resize(long newSize) throws IOException {
        delegate.resize(newSize);
    }

    @Override
    public void refresh() throws IOException {
        delegate.refresh();
    }

    @Override
    public void handOver() throws IOException {
        delegate.handOver();
    }

    @Override
    public void setReadOnly(boolean readOnly) throws IOException {
        delegate.setReadOnly(readOnly);
    }

    @Override
    public boolean readOnly() {
        return delegate.readOnly();
    }

    @Override
    public boolean direct() {
        return delegate.direct();
    }

    @Override
    public int blockSize() {
        return delegate.blockSize();
    }

    @Override
    public int zeroGranularity() {
        return delegate.zeroGranularity();
    }

    @Override
    public ImageIo newContext(int maxSegments, int bounceBytes) {
        return delegate.newContext(maxSegments, bounceBytes);
    }

    @Override
    public ImageIo newContext(IoVec iov, MemorySegment bounce) {
        return delegate.newContext(iov, bounce);
    }

    @Override
    public Fd[] ringFiles() {
        return delegate.ringFiles();
    }

    @Override
    public void flush() throws IOException {
        delegate.flush();
    }

    @Override
    public boolean submitFlush(IoUring ring, long userData) {
        return delegate.submitFlush(ring, userData);
    }

    @Override
    public void flushCompleted(int result) throws IOException {
        delegate.flushCompleted(result);
    }

    @Override
    public void discard(long offset, long len) throws IOException {
        delegate.discard(offset, len);
    }

    @Override
    public void writeZeroes(long offset, long len, boolean unmap) throws IOException {
        delegate.writeZeroes(offset, len, unmap);
    }

    @Override
    public long extent(long offset, long len) throws IOException {
        return delegate.extent(offset, len);
    }

    @Override
    public void readAt(long offset, MemorySegment dst) throws IOException {
        delegate.readAt(offset, dst);
    }

    @Override
    public void close() {
        delegate.close();
    }
}
