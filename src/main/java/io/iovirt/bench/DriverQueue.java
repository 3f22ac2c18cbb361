// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import io.iovirt.linux.EventFd;
import io.iovirt.virtio.DriverRing;
import java.lang.foreign.MemorySegment;

/**
 * One request queue of the driver: its ring, kick and call eventfds, and a fixed set of request slots. Slot
 * {@code s} owns a 16-byte header, a data buffer (split into descriptors of at most {@code size_max} bytes), a status
 * byte and, with indirect descriptors, its own indirect table — all laid out once, so making a request only writes
 * the header and hands the slot's prepared descriptor arrays to the ring.
 */
final class DriverQueue {
    private final int index;
    private final DriverRing ring;
    private final EventFd kick;
    private final EventFd call;
    private final MemorySegment control;
    private final MemorySegment data;
    private final int descriptors;
    private final int blockBytes;

    // per slot: descriptor arrays in DriverRing.add's form, and offsets into the two regions
    final long[][] addrs;
    final int[][] lens;
    final boolean[][] writable;
    final long[] headerOffset;
    final long[] statusOffset;
    final long[] dataOffset;
    final long[] indirectTable;

    DriverQueue(
            int index,
            DriverRing ring,
            EventFd kick,
            EventFd call,
            MemorySegment control,
            MemorySegment data,
            int slots,
            int dataSegments,
            int blockBytes,
            long sizeMax,
            long headersGpa,
            long statusGpa,
            long indirectGpa,
            long buffersGpa,
            long bufferStride) {
        this.index = index;
        this.ring = ring;
        this.kick = kick;
        this.call = call;
        this.control = control;
        this.data = data;
        this.descriptors = dataSegments + 2;
        this.blockBytes = blockBytes;
        this.addrs = new long[slots][descriptors];
        this.lens = new int[slots][descriptors];
        this.writable = new boolean[slots][descriptors];
        this.headerOffset = new long[slots];
        this.statusOffset = new long[slots];
        this.dataOffset = new long[slots];
        this.indirectTable = new long[slots];
        for (int s = 0; s < slots; s++) {
            long header = headersGpa + (long) VhostUserBlkDriver.HEADER_BYTES * s;
            long status = statusGpa + s;
            long buffer = buffersGpa + bufferStride * s;
            headerOffset[s] = header; // the control region starts at GPA 0
            statusOffset[s] = status;
            dataOffset[s] = buffer - VhostUserBlkDriver.DATA_GPA;
            indirectTable[s] = indirectGpa < 0 ? DriverRing.NO_INDIRECT : indirectGpa + 16L * descriptors * s;
            addrs[s][0] = header;
            lens[s][0] = VhostUserBlkDriver.HEADER_BYTES;
            long left = blockBytes;
            for (int i = 1; i <= dataSegments; i++) {
                int n = (int) (sizeMax > 0 ? Math.min(left, sizeMax) : left);
                addrs[s][i] = buffer + (blockBytes - left);
                lens[s][i] = n;
                left -= n;
            }
            addrs[s][descriptors - 1] = status;
            lens[s][descriptors - 1] = 1;
            writable[s][descriptors - 1] = true;
        }
    }

    int index() {
        return index;
    }

    DriverRing ring() {
        return ring;
    }

    EventFd kick() {
        return kick;
    }

    EventFd call() {
        return call;
    }

    /** The region holding rings, headers and status bytes (GPA 0). */
    MemorySegment control() {
        return control;
    }

    /** The region holding data buffers. */
    MemorySegment data() {
        return data;
    }

    /** Descriptors per request: header, data segments, status. */
    int descriptors() {
        return descriptors;
    }

    int blockBytes() {
        return blockBytes;
    }

    /** Marks the data descriptors of slot {@code s} device-writable (a read) or device-readable (a write). */
    void setDirection(int s, boolean read) {
        for (int i = 1; i < descriptors - 1; i++) {
            writable[s][i] = read;
        }
    }
}
