// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

/**
 * Transport-independent virtio feature bits (VIRTIO 1.2 §6, "Reserved Feature Bits") that the ring code and every
 * device share. Device-specific bits (blk, net) live with their device; vhost-user's own bits (protocol features,
 * VHOST_F_LOG_ALL) live in {@code vhostuser.Features}.
 */
public final class VirtioFeatures {
    /** Indirect descriptors (§2.7.5.3, §2.8.7). */
    public static final long VIRTIO_RING_F_INDIRECT_DESC = 1L << 28;
    /** used_event/avail_event notification suppression (§2.7.7, §2.7.10). */
    public static final long VIRTIO_RING_F_EVENT_IDX = 1L << 29;
    /** Compliance with VIRTIO 1.x (as opposed to legacy). */
    public static final long VIRTIO_F_VERSION_1 = 1L << 32;
    /** Ring addresses are IOVAs translated through an IOMMU (IOTLB). Never offered by a vhost-user backend here. */
    public static final long VIRTIO_F_ACCESS_PLATFORM = 1L << 33;
    /** Packed virtqueue layout (§2.8). */
    public static final long VIRTIO_F_RING_PACKED = 1L << 34;
    /**
     * The device uses buffers in the order they were made available (§2.9), so the driver may allocate and reclaim
     * descriptors in ring order. Offer it only from a device whose every queue pushes in pop order.
     */
    public static final long VIRTIO_F_IN_ORDER = 1L << 35;

    private VirtioFeatures() {}

    /** True when every bit of {@code mask} is set in {@code features}. */
    public static boolean has(long features, long mask) {
        return (features & mask) == mask;
    }
}
