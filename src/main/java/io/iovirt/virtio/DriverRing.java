// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

/**
 * The driver side of a virtqueue, as a guest's virtio driver runs it: lays the ring out in guest memory, makes
 * buffers available, reads used ones, and follows both notification-suppression schemes. Used by the Java
 * vhost-user frontend (a driver without a VM) and by tests, where it is also the model of a hostile driver.
 * One thread owns a ring. Nothing is allocated per request except an indirect table's slice.
 */
public sealed interface DriverRing permits SplitDriverRing, PackedDriverRing {
    /** Pass as {@code indirectTable} to {@link #add} for a chain of direct descriptors. */
    long NO_INDIRECT = -1;

    int size();

    /**
     * Makes one request available: buffers {@code 0..count-1} (device-readable first, then device-writable). With an
     * indirect table address the buffers are described there (16 bytes each, the caller provides the memory) and the
     * ring holds one descriptor.
     *
     * @return the request's ID (split: head index; packed: buffer ID), or -1 when the ring has no room now
     * @throws IllegalArgumentException when the request breaks the rules a driver must follow
     */
    int add(long[] addrs, int[] lens, boolean[] writable, int count, long indirectTable);

    /**
     * After a full fence, decides whether the device wants an available-buffer notification (a kick) for what was
     * added since the last call (used.flags or avail_event; packed: device event suppression).
     */
    boolean kickNeeded();

    /**
     * The next used request, encoded as {@code id << 32 | len} (see {@link #usedId}, {@link #usedLen}), or -1.
     *
     * @throws IllegalStateException when the device reports an ID that is not in flight
     */
    long pollUsed();

    /** True when {@link #pollUsed} would return a request (acquire read, consumes nothing). */
    boolean hasUsed();

    static int usedId(long used) {
        return (int) (used >>> 32);
    }

    static long usedLen(long used) {
        return used & 0xffff_ffffL;
    }

    /** Asks the device for used-buffer notifications; returns true when used requests are already waiting. */
    boolean enableInterrupts();

    /** Asks the device not to send used-buffer notifications. */
    void disableInterrupts();

    /** Requests made available and not yet used. */
    int inFlight();

    long descAddr();

    long driverAreaAddr();

    long deviceAreaAddr();

    /** What a device attaching to this ring is told (the frontend sends the same through vhost-user). */
    QueueConfig queueConfig(int index, boolean indirectDesc);
}
