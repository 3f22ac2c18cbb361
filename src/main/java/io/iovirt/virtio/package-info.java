// SPDX-License-Identifier: Apache-2.0
/**
 * Virtqueues, VIRTIO 1.2 §2.7 (split) and §2.8 (packed).
 *
 * <p>Device side: {@link io.iovirt.virtio.Virtqueue#create} attaches to a ring described by a
 * {@link io.iovirt.virtio.QueueConfig}; {@code pop} yields {@link io.iovirt.virtio.DescriptorChain}s whose buffers are
 * already bounds-checked host memory; {@code push} returns them; {@code needsNotification},
 * {@code enableNotifications} and {@code disableNotifications} implement notification suppression both ways (flags,
 * EVENT_IDX, packed event structures). Every rule a driver can break is reported as a
 * {@link io.iovirt.virtio.VirtqueueException}; nothing a guest writes can cause another exception or an access outside
 * guest memory.
 *
 * <p>Driver side: {@link io.iovirt.virtio.SplitDriverRing} and {@link io.iovirt.virtio.PackedDriverRing} lay out and
 * drive rings the way a guest driver does, for the Java vhost-user frontend and for tests.
 */
package io.iovirt.virtio;
