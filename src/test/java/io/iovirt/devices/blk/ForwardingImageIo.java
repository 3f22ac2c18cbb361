// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.linux.IoUring;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.ImageIo;
import java.io.IOException;
import java.lang.foreign.MemorySegment;

/** An {@link ImageIo} that hands every call to another; a test overrides the calls it changes. */
class ForwardingImageIo implements ImageIo {
    protected final ImageIo io;

    ForwardingImageIo(ImageIo io) {
        this.io = io;
    }

    @Override
    public void clear() {
        io.clear();
    }

    @Override
    public boolean add(MemorySegment memory, long offset, long length) {
        return io.add(memory, offset, length);
    }

    @Override
    public long bytes() {
        return io.bytes();
    }

    @Override
    public void read(long offset) throws IOException {
        io.read(offset);
    }

    @Override
    public void write(long offset) throws IOException {
        io.write(offset);
    }

    @Override
    public boolean submitRead(IoUring ring, long offset, long userData) throws LinuxException {
        return io.submitRead(ring, offset, userData);
    }

    @Override
    public boolean submitWrite(IoUring ring, long offset, long userData) throws LinuxException {
        return io.submitWrite(ring, offset, userData);
    }

    @Override
    public void completed(boolean write, long offset, int result) throws IOException {
        io.completed(write, offset, result);
    }

    @Override
    public void abandon() {
        io.abandon();
    }

    @Override
    public void close() {
        io.close();
    }
}
