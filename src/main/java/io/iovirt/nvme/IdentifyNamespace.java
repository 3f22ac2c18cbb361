// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nvme;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * The fields of Identify Namespace (CNS 00h, NVM Command Set spec 1.0 figure 97) this driver uses: size in logical
 * blocks, the LBA formats with the one in use, which gives the block size and the metadata size, where that metadata
 * travels (FLBAS bit 4) and the end-to-end data protection in use (DPS).
 *
 * @param extendedLba FLBAS bit 4: each block's metadata travels with its data, as one extended block of block size +
 *     metadata size bytes; otherwise it travels in a separate buffer the command's metadata pointer names
 * @param dps         Data Protection Type Settings: bits 2:0 the protection information type (0 none), bit 3 whether
 *     it sits in the first rather than the last 8 bytes of the metadata
 */
public record IdentifyNamespace(
        int nsid,
        long size,
        long capacity,
        long utilization,
        int formatIndex,
        List<LbaFormat> formats,
        boolean extendedLba,
        int dps) {
    public IdentifyNamespace {
        formats = List.copyOf(formats);
    }

    /** One LBA format: metadata bytes per block, block size as log2, relative performance (0 best). */
    public record LbaFormat(int metadataSize, int dataSizeLog2, int relativePerformance) {
        public long blockSize() {
            return 1L << dataSizeLog2;
        }

        /** "512 B", "4 KiB + 8 B metadata". */
        public String describe() {
            long bs = blockSize();
            String data = bs >= 1024 ? bs / 1024 + " KiB" : bs + " B";
            return metadataSize == 0 ? data : data + " + " + metadataSize + " B metadata";
        }
    }

    /**
     * Parses the 4 KiB structure.
     *
     * @throws IllegalArgumentException when the data describes no usable format (more than 64 LBA formats, a format
     *     index beyond them, a block size outside 512 B..64 KiB)
     */
    public static IdentifyNamespace parse(int nsid, MemorySegment d) {
        if (d.byteSize() < 4096) {
            throw new IllegalArgumentException("Identify Namespace data is 4096 bytes");
        }
        int nlbaf = Byte.toUnsignedInt(d.get(JAVA_BYTE, 25)) + 1; // zero-based
        int flbas = Byte.toUnsignedInt(d.get(JAVA_BYTE, 26));
        int index = (flbas & 0xf) | ((flbas >>> 5) & 0x3) << 4; // bits 3:0, and 6:5 as the upper bits (2.0)
        if (nlbaf > 64) {
            throw new IllegalArgumentException(
                    "namespace " + nsid + " reports " + nlbaf + " LBA formats; at most 64 exist");
        }
        List<LbaFormat> formats = new ArrayList<>();
        for (int i = 0; i < nlbaf; i++) {
            int f = d.get(JAVA_INT_UNALIGNED, 128 + 4L * i);
            formats.add(new LbaFormat(f & 0xffff, (f >>> 16) & 0xff, (f >>> 24) & 0x3));
        }
        if (index >= nlbaf) {
            throw new IllegalArgumentException(
                    "namespace " + nsid + " is formatted with LBA format " + index + " of " + nlbaf);
        }
        int lbads = formats.get(index).dataSizeLog2();
        if (lbads < 9 || lbads > 16) {
            throw new IllegalArgumentException("namespace " + nsid + " has an unsupported block size 2^" + lbads);
        }
        return new IdentifyNamespace(
                nsid,
                d.get(JAVA_LONG_UNALIGNED, 0),
                d.get(JAVA_LONG_UNALIGNED, 8),
                d.get(JAVA_LONG_UNALIGNED, 16),
                index,
                formats,
                (flbas & 0x10) != 0,
                Byte.toUnsignedInt(d.get(JAVA_BYTE, 29)));
    }

    /** DPS bits 2:0: the end-to-end protection information type in use, 0 for none. */
    public int protectionType() {
        return dps & 0x7;
    }

    public LbaFormat format() {
        return formats.get(formatIndex);
    }

    public int blockSize() {
        return (int) format().blockSize();
    }

    public long bytes() {
        return size * blockSize();
    }
}
