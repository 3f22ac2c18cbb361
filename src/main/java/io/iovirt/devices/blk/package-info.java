// SPDX-License-Identifier: Apache-2.0
/**
 * The virtio-blk device (virtio 1.2 §5.2) behind vhost-user: configuration space, request parsing and validation,
 * the queue workers that serve requests from {@link io.iovirt.storage} images, and per-queue statistics.
 */
package io.iovirt.devices.blk;
