// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;

import io.iovirt.vfio.DmaBuffer;
import io.iovirt.vfio.VfioException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Shows that the IOMMU confines the controller to the DMA mappings: the controller is told to transfer to an IOVA
 * that was never mapped, and afterwards nothing outside the mappings has changed.
 *
 * <ol>
 *   <li>A Read whose data pointer (PRP1) is the first page past the DMA arena: the device's writes to host memory must
 *       be blocked. (A controller may still report success — QEMU's emulated one does — because it cannot tell a
 *       blocked write from a completed one; the IOMMU records the fault, which the kernel logs as a DMAR fault.)</li>
 *   <li>A Read of three pages or more whose PRP list (PRP2) is at that unmapped IOVA: the device cannot even fetch
 *       the list, and the command completes with an error status, typically Data Transfer Error.</li>
 * </ol>
 * Both read whole blocks, at least one: with blocks larger than a page (8 KiB to 64 KiB) the first probe's block spans
 * several pages, all of them unmapped (PRP2 is the next unmapped page, or a list in the arena of unmapped pages).
 * Before both, a canary page outside every mapping and a sentinel buffer inside the arena (never given to the device)
 * are filled with a pattern; both must be intact afterwards, and a normal read must still work.
 */
public final class IommuCheck {
    /**
     * @param unmappedIova        the IOVA the controller was pointed at
     * @param dataPointerStatus   completion status of the Read with PRP1 unmapped (15-bit, 0 = success)
     * @param prpListStatus       completion status of the Read with its PRP list unmapped
     * @param canaryIntact        process memory outside every mapping is unchanged
     * @param sentinelIntact      an arena buffer the device was never told about is unchanged
     * @param controllerHealthy   a normal Read afterwards succeeded
     */
    public record Result(
            long unmappedIova,
            int dataPointerStatus,
            int prpListStatus,
            boolean canaryIntact,
            boolean sentinelIntact,
            boolean controllerHealthy) {
        /** The IOMMU confined the device: nothing outside the mappings changed, and the PRP-list fetch failed. */
        public boolean blocked() {
            return canaryIntact && sentinelIntact && !NvmeStatus.success(prpListStatus) && controllerHealthy;
        }

        public String describe() {
            return String.format(
                    """
                    unmapped IOVA:             0x%x (first page past the DMA arena)
                    read, data at that IOVA:   %s
                    read, PRP list there:      %s
                    canary outside mappings:   %s
                    sentinel in the arena:     %s
                    controller afterwards:     %s
                    verdict:                   %s""",
                    unmappedIova,
                    NvmeStatus.describe(dataPointerStatus)
                            + (NvmeStatus.success(dataPointerStatus)
                                    ? " — the device's writes went nowhere: see 'dmesg | grep -i dmar' for the fault"
                                    : ""),
                    NvmeStatus.describe(prpListStatus),
                    canaryIntact ? "unchanged" : "CHANGED",
                    sentinelIntact ? "unchanged" : "CHANGED",
                    controllerHealthy ? "reads normally" : "FAILED",
                    blocked() ? "the IOMMU blocked DMA outside the mappings" : "NOT CONFINED");
        }
    }

    private static final byte CANARY = (byte) 0x5a;
    private static final byte SENTINEL = (byte) 0xa5;

    private IommuCheck() {}

    /**
     * How many blocks each probe reads: the first at least a page, the second at least three pages (so that PRP2 is a
     * list pointer), both in whole blocks and at least one whatever the block size.
     */
    record Probes(int dataBlocks, int listBlocks) {}

    static Probes probes(long blockSize, long page) {
        if (blockSize < 1 || Long.bitCount(blockSize) != 1) {
            throw new IllegalArgumentException("block size must be a power of two: " + blockSize);
        }
        return new Probes(
                (int) Math.max(1, page / blockSize), (int) Math.max(1, (3 * page + blockSize - 1) / blockSize));
    }

    /** Runs both probes on the controller's first namespace, reading LBA 0 (nothing is written to the disk). */
    public static Result run(NvmeController c) throws VfioException {
        long page = NvmeController.PAGE;
        long unmapped = c.arena().iova() + c.arena().size();
        int blockSize = c.blockSize();
        Probes probes = probes(blockSize, page);
        long dataBytes = (long) probes.dataBlocks() * blockSize;
        long listBytes = (long) probes.listBlocks() * blockSize;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment canary = a.allocate(page, page);
            canary.fill(CANARY);
            DmaBuffer target = c.allocateBuffer(listBytes); // PRP1 of the second probe: mapped, may be written
            DmaBuffer sentinel = c.allocateBuffer(page); // never given to the device
            sentinel.segment().fill(SENTINEL);
            // The first probe's pages are all unmapped; a list for them (blocks over two pages) is in the arena.
            DmaBuffer dataList = c.allocateBuffer(page);
            long[] dataPrp = new long[2];
            Prp.build(unmapped, dataBytes, page, dataList.segment(), dataList.iova(), dataPrp);

            int dataStatus = c.rawIo(NvmeRegs.NVM_READ, 0, probes.dataBlocks(), dataPrp[0], dataPrp[1]);
            int listStatus = c.rawIo(NvmeRegs.NVM_READ, 0, probes.listBlocks(), target.iova(), unmapped);

            boolean canaryOk = all(canary, CANARY);
            boolean sentinelOk = all(sentinel.segment(), SENTINEL);
            boolean healthy;
            try {
                c.read(0, probes.dataBlocks(), target.slice(0, dataBytes));
                healthy = true;
            } catch (NvmeException e) {
                healthy = false;
            }
            return new Result(unmapped, dataStatus, listStatus, canaryOk, sentinelOk, healthy);
        }
    }

    private static boolean all(MemorySegment s, byte value) {
        for (long i = 0; i < s.byteSize(); i++) {
            if (s.get(JAVA_BYTE, i) != value) {
                return false;
            }
        }
        return true;
    }
}
