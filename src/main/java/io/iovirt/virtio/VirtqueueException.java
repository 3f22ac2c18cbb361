// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

/**
 * The driver broke the virtqueue rules (VIRTIO 1.2 §2.7/§2.8) or pointed outside guest memory. Guest input, not a
 * backend bug: the caller marks the device NEEDS_RESET and logs the message once. The queue that threw stays
 * failed: every later operation on it throws the same exception.
 */
public final class VirtqueueException extends Exception {
    /** What the driver did wrong. */
    public enum Reason {
        /** Queue size, ring address alignment or starting index the device cannot accept. */
        BAD_CONFIG,
        /** A ring area (descriptor table/ring, driver area, device area) is not inside guest memory. */
        RING_OUTSIDE_MEMORY,
        /** The available index moved more than the queue size past the last one the device consumed. */
        AVAIL_INDEX_OUT_OF_RANGE,
        /** A head index (split) or buffer ID (packed) is not below the queue size. */
        ID_OUT_OF_RANGE,
        /** A head index or buffer ID was made available again while the device still owns it. */
        ID_IN_USE,
        /** A {@code next} field points past the descriptor table or indirect table. */
        NEXT_OUT_OF_RANGE,
        /** A chain revisits a descriptor. */
        LOOP,
        /** A chain has more buffers than the queue size. */
        CHAIN_TOO_LONG,
        /** A chain describes more than 2^32 bytes. */
        CHAIN_TOO_LARGE,
        /** A buffer lies (partly) outside guest memory. */
        BUFFER_OUTSIDE_MEMORY,
        /** A device-readable buffer follows a device-writable one. */
        READABLE_AFTER_WRITABLE,
        /** VIRTQ_DESC_F_INDIRECT used although VIRTIO_F_INDIRECT_DESC was not negotiated. */
        INDIRECT_NOT_NEGOTIATED,
        /** An indirect descriptor with NEXT set, or (packed) inside a NEXT-linked list. */
        INDIRECT_MISPLACED,
        /** An indirect table contains an indirect descriptor. */
        NESTED_INDIRECT,
        /** An indirect table length that is zero, not a multiple of 16, or longer than the queue size. */
        BAD_INDIRECT_TABLE,
        /** An indirect table lies (partly) outside guest memory. */
        INDIRECT_TABLE_OUTSIDE_MEMORY,
        /** Packed: a descriptor in the middle of a list is not marked available for the current lap. */
        CHAIN_INCOMPLETE,
        /** Packed: the driver made more descriptors available than the ring has room for. */
        RING_OVERRUN
    }

    private final int queueIndex;
    private final Reason reason;

    public VirtqueueException(int queueIndex, Reason reason, String detail) {
        super(
                "virtqueue " + queueIndex + ": " + detail + " (" + reason + "); the driver broke the virtqueue rules,"
                        + " the device needs a reset",
                null,
                false,
                false); // hostile input: no stack walk
        this.queueIndex = queueIndex;
        this.reason = reason;
    }

    public int queueIndex() {
        return queueIndex;
    }

    public Reason reason() {
        return reason;
    }
}
