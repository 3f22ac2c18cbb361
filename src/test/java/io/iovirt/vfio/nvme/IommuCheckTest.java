// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.Test;

/** How the IOMMU check sizes its two probes for every block size a namespace may have (512 B to 64 KiB). */
class IommuCheckTest {
    private static final long PAGE = 4096;

    @Test
    void probesReadWholeBlocksOfAtLeastOnePageAndThreePages() {
        assertEquals(new IommuCheck.Probes(8, 24), IommuCheck.probes(512, PAGE));
        assertEquals(new IommuCheck.Probes(1, 3), IommuCheck.probes(4096, PAGE));
        // Blocks larger than a page: one block (never 0, which became NLB 0xffff and an uncaught error).
        assertEquals(new IommuCheck.Probes(1, 2), IommuCheck.probes(8192, PAGE));
        assertEquals(new IommuCheck.Probes(1, 1), IommuCheck.probes(16384, PAGE));
        assertEquals(new IommuCheck.Probes(1, 1), IommuCheck.probes(65536, PAGE));
    }

    @Test
    void theSecondProbeAlwaysNeedsAPrpListAndTheFirstStaysInUnmappedPages() {
        long unmapped = 0x10_0000;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment list = a.allocate(PAGE, PAGE);
            for (int shift = 9; shift <= 16; shift++) {
                long bs = 1L << shift;
                IommuCheck.Probes p = IommuCheck.probes(bs, PAGE);
                assertTrue(p.dataBlocks() >= 1 && p.dataBlocks() <= 65536, bs + ": " + p);
                assertTrue(p.listBlocks() >= 1 && p.listBlocks() <= 65536, bs + ": " + p);
                long[] prp = new long[2];
                // PRP2 is a list pointer only when the transfer needs more than two pages.
                assertTrue(
                        Prp.build(0x20_0000, p.listBlocks() * bs, PAGE, list, 0x30_0000, prp) > 0,
                        bs + ": the second probe's PRP2 would not be a list pointer");
                long dataBytes = p.dataBlocks() * bs;
                int entries = Prp.build(unmapped, dataBytes, PAGE, list, 0x30_0000, prp);
                assertEquals(unmapped, prp[0]);
                if (dataBytes == 2 * PAGE) {
                    assertEquals(unmapped + PAGE, prp[1]);
                }
                for (int i = 0; i < entries; i++) {
                    assertEquals(
                            unmapped + (i + 1) * PAGE, list.getAtIndex(java.lang.foreign.ValueLayout.JAVA_LONG, i));
                }
            }
        }
    }
}
