// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import java.lang.foreign.MemorySegment;

/** A piece of DMA-mapped memory: what the CPU sees ({@code segment}) and the address the device uses ({@code iova}). */
public record DmaBuffer(MemorySegment segment, long iova) {
    public long size() {
        return segment.byteSize();
    }

    /** The sub-buffer {@code [offset, offset+length)}. */
    public DmaBuffer slice(long offset, long length) {
        return new DmaBuffer(segment.asSlice(offset, length), iova + offset);
    }
}
