// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * The virtio-blk configuration space (VIRTIO 1.2 §5.2.4, {@code struct virtio_blk_config}) as the driver reads it.
 * Built once per device; the driver may only write {@code writeback} (CONFIG_WCE), which we do not offer.
 */
public final class BlkConfig {
    /** Bytes up to and including the write-zeroes fields (the secure-erase tail is not offered). */
    public static final int SIZE = 60;

    static final int CAPACITY = 0;
    static final int SIZE_MAX = 8;
    static final int SEG_MAX = 12;
    static final int BLK_SIZE = 20;
    static final int PHYSICAL_BLOCK_EXP = 24;
    static final int MIN_IO_SIZE = 26;
    static final int OPT_IO_SIZE = 28;
    static final int NUM_QUEUES = 34;
    static final int MAX_DISCARD_SECTORS = 36;
    static final int MAX_DISCARD_SEG = 40;
    static final int DISCARD_SECTOR_ALIGNMENT = 44;
    static final int MAX_WRITE_ZEROES_SECTORS = 48;
    static final int MAX_WRITE_ZEROES_SEG = 52;
    static final int WRITE_ZEROES_MAY_UNMAP = 56;

    private final byte[] bytes;

    /**
     * @param capacitySectors image size in 512-byte sectors
     * @param blockSize       logical block size the driver should use (512 or 4096)
     * @param segMax          most data segments per request (queue size minus header and status)
     * @param sizeMax         largest single segment in bytes
     * @param numQueues       request queues
     * @param maxDiscardSectors per DISCARD/WRITE_ZEROES segment
     */
    public BlkConfig(
            long capacitySectors,
            int blockSize,
            int segMax,
            int sizeMax,
            int numQueues,
            int maxDiscardSectors,
            int maxDiscardSegments) {
        ByteBuffer b = ByteBuffer.allocate(SIZE).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(CAPACITY, capacitySectors);
        b.putInt(SIZE_MAX, sizeMax);
        b.putInt(SEG_MAX, segMax);
        b.putInt(BLK_SIZE, blockSize);
        b.put(PHYSICAL_BLOCK_EXP, (byte) 0);
        b.putShort(MIN_IO_SIZE, (short) 1);
        b.putInt(OPT_IO_SIZE, 0);
        b.putShort(NUM_QUEUES, (short) numQueues);
        b.putInt(MAX_DISCARD_SECTORS, maxDiscardSectors);
        b.putInt(MAX_DISCARD_SEG, maxDiscardSegments);
        b.putInt(DISCARD_SECTOR_ALIGNMENT, blockSize / 512);
        b.putInt(MAX_WRITE_ZEROES_SECTORS, maxDiscardSectors);
        b.putInt(MAX_WRITE_ZEROES_SEG, maxDiscardSegments);
        b.put(WRITE_ZEROES_MAY_UNMAP, (byte) 1);
        this.bytes = b.array();
    }

    /**
     * Reads {@code len} bytes at {@code offset}; reads past our layout return zeros, as a device with a shorter
     * config space would (QEMU asks for the full struct it knows).
     */
    public synchronized byte[] read(int offset, int len) {
        if (offset < 0 || len < 0 || len > 256 || offset > 256) {
            throw new IllegalArgumentException("config read out of range: offset " + offset + " len " + len);
        }
        byte[] out = new byte[len];
        if (offset < SIZE) {
            System.arraycopy(bytes, offset, out, 0, Math.min(len, SIZE - offset));
        }
        return out;
    }

    /** A resize: the capacity the driver reads from now on (it re-reads after a configuration change notice). */
    public synchronized void setCapacitySectors(long sectors) {
        ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).putLong(CAPACITY, sectors);
    }

    public synchronized long capacitySectors() {
        return ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).getLong(CAPACITY);
    }
}
