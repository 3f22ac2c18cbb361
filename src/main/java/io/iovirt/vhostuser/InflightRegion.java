// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.MemFd;
import io.iovirt.linux.Mmap;
import java.lang.foreign.MemorySegment;

/**
 * The shared memory of vhost-user {@code VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD}: the backend creates it on
 * GET_INFLIGHT_FD and hands it to the frontend, which keeps it across backend restarts and gives it back with
 * SET_INFLIGHT_FD to the next backend process; each queue records its requests in flight there (see
 * {@link io.iovirt.virtio.InflightQueue}).
 *
 * <p>One region per queue, {@link #queueBytes} apart: room for the spec's packed layout ({@code QueueRegionPacked}:
 * a 32-byte header and 32 bytes per descriptor), which also holds the split one. The size has to be chosen at
 * GET_INFLIGHT_FD, before the frontend says which layout the rings use (QEMU asks before SET_FEATURES).
 */
final class InflightRegion implements AutoCloseable {
    /** Regions start 64-byte aligned (a cache line each). */
    static final int ALIGN = 64;

    private final Mmap.Mapping mapping;
    private final Fd fd;
    private final int queues;
    private final int queueSize;
    // Guarded by this: the pins of queue threads given up on (see pin), and whether the owner closed the region.
    private int pins;
    private boolean closed;

    private InflightRegion(Mmap.Mapping mapping, Fd fd, int queues, int queueSize) {
        this.mapping = mapping;
        this.fd = fd;
        this.queues = queues;
        this.queueSize = queueSize;
    }

    /** Bytes one queue of {@code queueSize} takes (packed layout, aligned). */
    static long queueBytes(int queueSize) {
        long packed = 32 + 32L * queueSize;
        return (packed + ALIGN - 1) & -ALIGN;
    }

    static long totalBytes(int queues, int queueSize) {
        return queues * queueBytes(queueSize);
    }

    /** GET_INFLIGHT_FD: a new zeroed region (all queues uninitialised: version 0). */
    static InflightRegion create(String name, int queues, int queueSize) throws LinuxException {
        long size = totalBytes(queues, queueSize);
        Fd fd = MemFd.allocate("iovirt-inflight", size);
        try {
            // The frontend keeps the descriptor (to hand it to the next backend after a crash): it must not be able
            // to shrink the file under our mapping (a SIGBUS on a queue thread) or to grow it.
            MemFd.addSeals(fd, MemFd.F_SEAL_SHRINK | MemFd.F_SEAL_GROW | MemFd.F_SEAL_SEAL);
            Mmap.Mapping m = Mmap.map(fd, 0, size, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED);
            return new InflightRegion(m, fd, queues, queueSize);
        } catch (LinuxException | RuntimeException e) {
            fd.close();
            throw e;
        }
    }

    /**
     * SET_INFLIGHT_FD: maps what the frontend kept. The descriptor is consumed.
     *
     * @throws ProtocolException the description does not match the layout for its queue count and size, or the fd
     *                           is not a shared memory file that large
     */
    static InflightRegion map(PeerFile.Quota checks, Fd fd, long mmapSize, long mmapOffset, int queues, int queueSize)
            throws ProtocolException {
        try (fd) {
            String what = String.format(
                    "SET_INFLIGHT_FD (size %d, offset %d, %d queues of %d)", mmapSize, mmapOffset, queues, queueSize);
            if (mmapSize != totalBytes(queues, queueSize)) {
                throw new ProtocolException(
                        what + ": expected " + totalBytes(queues, queueSize) + " bytes for that layout");
            }
            if (mmapOffset < 0 || mmapOffset % Mmap.pageSize() != 0) {
                throw new ProtocolException(what + ": the offset must be page aligned");
            }
            PeerFile.requireSharedMemory(
                    checks,
                    fd,
                    what,
                    mmapOffset,
                    mmapSize,
                    "the in-flight memory must be a memfd, or a file on tmpfs or hugetlbfs");
            return new InflightRegion(PeerFile.mapShared(fd, what, mmapOffset, mmapSize, 0), null, queues, queueSize);
        }
    }

    int queues() {
        return queues;
    }

    int queueSize() {
        return queueSize;
    }

    long size() {
        return mapping.segment().byteSize();
    }

    /** The descriptor to hand the frontend (GET_INFLIGHT_FD only), or null. */
    Fd fd() {
        return fd;
    }

    /** Queue {@code index}'s region, or null when the frontend's description does not cover that queue and size. */
    MemorySegment queue(int index, int ringSize) {
        if (index >= queues || ringSize != queueSize) {
            return null;
        }
        return mapping.segment().asSlice(index * queueBytes(queueSize), queueBytes(queueSize));
    }

    /**
     * Keeps the region mapped for a queue thread the device gave up on ({@link VhostUserBackend#stillRunning}): that
     * thread still records the completions of the requests it took in its queue's part, so the frontend, which keeps
     * the memory, does not resubmit them after a reconnect. Unmapped under it (SET_INFLIGHT_FD, a disconnect), the
     * thread failed with an IllegalStateException instead. The pin goes with the thread's other parked resources
     * ({@link io.iovirt.virtio.QueueWorker#closeWhenEnded}); the region is unmapped once it is closed and unpinned.
     */
    synchronized AutoCloseable pin() {
        if (closed) {
            throw new IllegalStateException(this + " is closed");
        }
        pins++;
        boolean[] once = {false};
        return () -> {
            synchronized (this) {
                if (once[0]) {
                    return;
                }
                once[0] = true;
                if (--pins == 0 && closed) {
                    unmap();
                }
            }
        };
    }

    /** The owner is done with it: unmapped now, or once the last {@link #pin} is closed. */
    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        closed = true;
        if (pins == 0) {
            unmap();
        }
    }

    private void unmap() {
        mapping.close();
        if (fd != null) {
            fd.close();
        }
    }

    @Override
    public String toString() {
        return "in-flight region of " + size() + " bytes (" + queues + " queues of " + queueSize + ")";
    }
}
