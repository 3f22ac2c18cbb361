// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import java.lang.foreign.MemorySegment;

/** virtio-net definitions (VIRTIO 1.2 §5.1) the device uses. */
final class VirtioNet {
    // feature bits (§5.1.3)
    static final long F_CSUM = 1L << 0;
    static final long F_GUEST_CSUM = 1L << 1;
    static final long F_MTU = 1L << 3;
    static final long F_MAC = 1L << 5;
    static final long F_GUEST_TSO4 = 1L << 7;
    static final long F_HOST_TSO4 = 1L << 11;
    static final long F_MRG_RXBUF = 1L << 15;
    static final long F_STATUS = 1L << 16;
    static final long F_CTRL_VQ = 1L << 17;
    static final long F_MQ = 1L << 22;
    static final long F_ANY_LAYOUT = 1L << 27;

    // struct virtio_net_hdr (§5.1.6)
    static final int HDR_NUM_BUFFERS = 10;
    /** With VIRTIO_F_VERSION_1 or MRG_RXBUF the header has num_buffers: 12 bytes; a legacy one without: 10. */
    static final int HDR_SIZE = 12;

    static final int HDR_SIZE_LEGACY = 10;
    static final int HDR_F_NEEDS_CSUM = 1;

    // struct virtio_net_config (§5.1.4)
    static final int CFG_MAC = 0;
    static final int CFG_STATUS = 6;
    static final int CFG_MAX_VQ_PAIRS = 8;
    static final int CFG_MTU = 10;
    static final int CFG_SPEED = 12;
    static final int CFG_DUPLEX = 16;
    /** Bytes of configuration space defined for the features offered (through duplex). */
    static final int CFG_SIZE = 17;
    /** Reads up to here return zeros beyond {@link #CFG_SIZE} (fields of features not offered). */
    static final int CFG_READ_LIMIT = 256;

    static final int S_LINK_UP = 1;

    /** Largest queue-pair count the spec allows (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX). */
    static final int MAX_QUEUE_PAIRS = 0x8000;

    private VirtioNet() {}

    static int u16(MemorySegment s, long off) {
        return Short.toUnsignedInt(s.get(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, off));
    }
}
