// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nvme;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;

import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;

/**
 * The fields of the Identify Controller data structure (CNS 01h, NVMe Base 2.0 figure 275) iovirt uses: the one
 * parser for both the user-space driver (vfio.nvme) and the kernel passthrough (NvmeAdmin, SR-IOV provisioning).
 *
 * @param oacs optional admin command support (bit 7: Virtualization Management)
 * @param mdts maximum data transfer size as a power of two in units of the minimum memory page size (0: no limit)
 * @param sqes required (bits 3:0) and maximum (bits 7:4) submission queue entry sizes, log2
 * @param cqes the same for completion queue entries
 */
public record IdentifyController(
        int vendorId,
        int subsystemVendorId,
        String serial,
        String model,
        String firmware,
        int mdts,
        int controllerId,
        int version,
        int oacs,
        int sqes,
        int cqes,
        long namespaces) {
    public static final long SIZE = 4096;
    /** log2 of the submission queue entry size every NVM I/O queue uses (64 bytes). */
    public static final int SQE_LOG2 = 6;
    /** log2 of the completion queue entry size (16 bytes). */
    public static final int CQE_LOG2 = 4;

    /** Parses the 4 KiB structure as an array (what NVME_IOCTL_ADMIN_CMD returns). */
    public static IdentifyController parse(byte[] data) {
        return parse(MemorySegment.ofArray(data));
    }

    /** Parses the 4 KiB structure in place (a DMA buffer). */
    public static IdentifyController parse(MemorySegment d) {
        if (d.byteSize() < SIZE) {
            throw new IllegalArgumentException("Identify Controller data is 4096 bytes");
        }
        return new IdentifyController(
                Short.toUnsignedInt(d.get(JAVA_SHORT_UNALIGNED, 0)),
                Short.toUnsignedInt(d.get(JAVA_SHORT_UNALIGNED, 2)),
                ascii(d, 4, 20),
                ascii(d, 24, 40),
                ascii(d, 64, 8),
                Byte.toUnsignedInt(d.get(JAVA_BYTE, 77)),
                Short.toUnsignedInt(d.get(JAVA_SHORT_UNALIGNED, 78)),
                d.get(JAVA_INT_UNALIGNED, 80),
                Short.toUnsignedInt(d.get(JAVA_SHORT_UNALIGNED, 256)),
                Byte.toUnsignedInt(d.get(JAVA_BYTE, 512)),
                Byte.toUnsignedInt(d.get(JAVA_BYTE, 513)),
                Integer.toUnsignedLong(d.get(JAVA_INT_UNALIGNED, 516)));
    }

    /**
     * Space-padded ASCII (the spec's string fields): trailing blanks and NULs removed, every other byte outside
     * printable ASCII shown as '?', so a controller cannot put control sequences on a terminal or in a log.
     */
    public static String ascii(MemorySegment d, long offset, int length) {
        byte[] b = d.asSlice(offset, length).toArray(JAVA_BYTE);
        int end = b.length;
        while (end > 0 && (b[end - 1] == ' ' || b[end - 1] == 0)) {
            end--;
        }
        for (int i = 0; i < end; i++) {
            if (b[i] < 0x20 || b[i] > 0x7e) {
                b[i] = '?';
            }
        }
        return new String(b, 0, end, StandardCharsets.US_ASCII);
    }

    /** Whether the controller implements Virtualization Management (OACS bit 7), which SR-IOV provisioning needs. */
    public boolean virtualizationManagement() {
        return (oacs & 1 << 7) != 0;
    }

    /** Whether the controller accepts the 64-byte SQ and 16-byte CQ entries every NVM I/O queue uses. */
    public boolean supportsStandardEntrySizes() {
        return (sqes & 0xf) <= SQE_LOG2
                && (sqes >>> 4) >= SQE_LOG2
                && (cqes & 0xf) <= CQE_LOG2
                && (cqes >>> 4) >= CQE_LOG2;
    }

    /**
     * The largest transfer in bytes the controller accepts, or 0 for no limit. MDTS is a power of two in units of the
     * minimum memory page size (2^12..2^27 bytes); a limit of 2^63 bytes or more (MDTS 51 and up with 4 KiB pages)
     * is no limit, not a shift that wraps around.
     *
     * @param minPageShift log2 of the minimum memory page size (CAP.MPSMIN + 12)
     */
    public long maxTransferBytes(int minPageShift) {
        if (minPageShift < 12 || minPageShift > 27) {
            throw new IllegalArgumentException("minimum memory page shift must be 12..27: " + minPageShift);
        }
        if (mdts == 0 || mdts + minPageShift >= Long.SIZE - 1) {
            return 0;
        }
        return 1L << (mdts + minPageShift);
    }
}
