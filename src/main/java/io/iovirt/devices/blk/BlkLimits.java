// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

/**
 * What the device advertises and enforces per request: segments per request, bytes per segment, discard limits,
 * and the size of the O_DIRECT bounce buffer for unaligned guest buffers.
 */
record BlkLimits(int segMax, int sizeMax, int maxDiscardSectors, int maxDiscardSegments, int bounceBytes) {
    /** Queue size we advertise as the maximum: chains and iovec arrays fit IOV_MAX. */
    static final int MAX_QUEUE_SIZE = 1024;

    static BlkLimits defaults() {
        return new BlkLimits(MAX_QUEUE_SIZE - 2, 1 << 20, (1 << 30) >>> 9, 32, 1 << 20);
    }
}
