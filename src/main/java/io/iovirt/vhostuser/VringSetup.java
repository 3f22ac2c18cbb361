// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.EventFd;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.virtio.QueueConfig;
import io.iovirt.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;

/**
 * Everything a device needs to run one virtqueue, validated by the protocol layer: the ring areas are guest
 * physical addresses that lay inside guest memory, properly aligned and sized for {@code size} entries, when the
 * queue started (the memory table may change later; translate through {@code memory} per batch).
 *
 * <p>The descriptors belong to the protocol layer: the device uses them until {@link VhostUserBackend#queueStopped}
 * returns (for a queue it gave up on, until that thread has ended: {@link VhostUserBackend#stillRunning}) and never
 * closes them. {@code call}'s descriptor number stays valid while the queue runs even when the frontend replaces the
 * eventfd (the new one is swapped in under the same number).
 *
 * @param index      queue index
 * @param size       number of ring entries (split: a power of two; packed: any value up to 32768)
 * @param descGpa    descriptor table (split) or descriptor ring (packed)
 * @param availGpa   available ring (split) or driver event suppression area (packed)
 * @param usedGpa    used ring (split) or device event suppression area (packed)
 * @param base       where to resume: split, the next available index to process; packed, bits 0..14 the next
 *                   descriptor ring position and bit 15 its wrap counter, bits 16..31 the used side the same way
 *                   (as VHOST_USER_SET_VRING_BASE gave it; see {@link QueueConfig#withVringBase})
 * @param features   the virtio features the driver acknowledged (ring layout, EVENT_IDX, indirect, device bits)
 * @param kick       readable when the driver adds buffers; null when the frontend asked for polling
 * @param call       signal to interrupt the driver; never null (a private eventfd when the frontend gave none)
 * @param err        signal for queue errors, or null
 * @param memory     the device's guest memory, swapped when the memory table changes
 * @param inflight   this queue's region of the frontend-kept in-flight memory (INFLIGHT_SHMFD), or null; mapped as
 *                   long as the descriptors are the device's (for a queue given up on, until its thread has ended)
 */
public record VringSetup(
        int index,
        int size,
        long descGpa,
        long availGpa,
        long usedGpa,
        int base,
        long features,
        EventFd kick,
        EventFd call,
        EventFd err,
        GuestMemoryHolder memory,
        MemorySegment inflight) {

    /** The same queue resuming at {@code newBase} (a device restarting it). */
    public VringSetup withBase(int newBase) {
        return new VringSetup(
                index, size, descGpa, availGpa, usedGpa, newBase, features, kick, call, err, memory, inflight);
    }

    /** The queue as the virtio layer takes it: its layout, areas and ring features, resuming at {@code base}. */
    public QueueConfig queueConfig() {
        QueueConfig c = packed()
                ? QueueConfig.packed(index, size, descGpa, availGpa, usedGpa, eventIdx(), indirect(), 0, true, 0, true)
                : QueueConfig.split(index, size, descGpa, availGpa, usedGpa, eventIdx(), indirect(), 0);
        return c.withVringBase(base).withInOrder(inOrder());
    }

    public boolean packed() {
        return (features & VirtioFeatures.VIRTIO_F_RING_PACKED) != 0;
    }

    public boolean eventIdx() {
        return (features & VirtioFeatures.VIRTIO_RING_F_EVENT_IDX) != 0;
    }

    public boolean indirect() {
        return (features & VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC) != 0;
    }

    public boolean inOrder() {
        return (features & VirtioFeatures.VIRTIO_F_IN_ORDER) != 0;
    }

    @Override
    public String toString() {
        return String.format(
                "vring %d: %s size %d desc 0x%x avail 0x%x used 0x%x base %d%s",
                index,
                packed() ? "packed" : "split",
                size,
                descGpa,
                availGpa,
                usedGpa,
                base,
                kick == null ? " (polling)" : "");
    }
}
