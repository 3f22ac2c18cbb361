// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

/** virtio-blk wire constants (VIRTIO 1.2 §5.2). */
final class BlkRequests {
    static final int T_IN = 0;
    static final int T_OUT = 1;
    static final int T_FLUSH = 4;
    static final int T_GET_ID = 8;
    static final int T_DISCARD = 11;
    static final int T_WRITE_ZEROES = 13;

    static final byte S_OK = 0;
    static final byte S_IOERR = 1;
    static final byte S_UNSUPP = 2;

    /** struct virtio_blk_outhdr: le32 type, le32 reserved, le64 sector. */
    static final int HEADER_BYTES = 16;
    /** struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags. */
    static final int DISCARD_SEGMENT_BYTES = 16;

    static final int WRITE_ZEROES_FLAG_UNMAP = 1;
    static final int ID_BYTES = 20;
    static final int SECTOR_SHIFT = 9;

    // Feature bits (§5.2.3).
    static final int F_SIZE_MAX = 1;
    static final int F_SEG_MAX = 2;
    static final int F_RO = 5;
    static final int F_BLK_SIZE = 6;
    static final int F_FLUSH = 9;
    static final int F_TOPOLOGY = 10;
    static final int F_MQ = 12;
    static final int F_DISCARD = 13;
    static final int F_WRITE_ZEROES = 14;

    private BlkRequests() {}
}
