// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_SHORT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vfio.DmaBuffer;
import io.iovirt.vfio.MemoryRegions;
import io.iovirt.vfio.MmioRegion;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/**
 * A queue pair's reaction to a controller that posts nonsense or whose doorbells cannot be written, on queue memory
 * in the heap and a BAR in ordinary memory (no device).
 */
class QueuePairTest {
    /** Queue {@code id} of depth 4 on queue memory from an arena, its doorbells in {@code bar}, counting failures. */
    private record Rig(QueuePair q, DmaBuffer cq, AtomicInteger failed) {
        static Rig of(Arena a, int id, MmioRegion bar, int doorbellStride) {
            int depth = 4;
            DmaBuffer sq = new DmaBuffer(a.allocate(depth * Sqe.SIZE, 4096), 0x10000);
            DmaBuffer cq = new DmaBuffer(a.allocate(depth * Cqe.SIZE, 4096), 0x20000);
            AtomicInteger failed = new AtomicInteger();
            return new Rig(new QueuePair(id, depth, sq, cq, bar, doorbellStride, failed::incrementAndGet), cq, failed);
        }
    }

    @Test
    void aCompletionForACommandNotInFlightMarksTheOwnerFailedAndTheQueueUnusable() {
        try (Arena a = Arena.ofConfined()) {
            // No BAR: nothing here may ring a doorbell.
            Rig r = Rig.of(a, 1, null, 0);
            QueuePair q = r.q();
            // The controller posts (phase 1) a completion for command 2, which was never submitted.
            MemorySegment entry = r.cq().segment();
            entry.set(JAVA_SHORT, Cqe.CID, (short) 2);
            entry.set(JAVA_SHORT, Cqe.SQHD, (short) 0);
            entry.set(JAVA_SHORT, Cqe.STATUS, (short) 1);
            NvmeException e = assertThrows(NvmeException.class, () -> q.reap(null));
            assertTrue(
                    e.getMessage().contains("posted a completion for command 2 (SQ head 0) that is not outstanding"),
                    e.getMessage());
            assertEquals(1, r.failed().get(), "the controller was not marked failed");
            // Later use fails at once with the same reason, and the owner is told only once.
            NvmeException again = assertThrows(NvmeException.class, () -> q.reap(null));
            assertEquals(e.getMessage(), again.getMessage());
            int cid = q.allocate();
            IllegalStateException submit = assertThrows(
                    IllegalStateException.class,
                    () -> q.submit(cid, NvmeRegs.NVM_READ, 1, 0x30000, 0, 0, 0, 0, 0, 0, 0));
            assertEquals(e.getMessage(), submit.getMessage());
            assertEquals(1, r.failed().get());
        }
    }

    /** CAP.DSTRD 10: doorbells 4 KiB apart; in an 8 KiB BAR only queue 0's SQ tail doorbell (0x1000) fits. */
    private static final int STRIDE_4K = 4 << 10;

    @Test
    void aSubmissionWhoseDoorbellCannotBeWrittenMarksTheOwnerFailedAndTakesNoMoreSlots() {
        try (Arena a = Arena.ofConfined()) {
            MmioRegion bar = MemoryRegions.overMemory(a, 0x2000);
            Rig r = Rig.of(a, 1, bar, STRIDE_4K);
            QueuePair q = r.q();
            int cid = q.allocate();
            IllegalStateException e = assertThrows(
                    IllegalStateException.class,
                    () -> q.submit(cid, NvmeRegs.NVM_READ, 1, 0x30000, 0, 0, 0, 0, 0, 0, 0));
            assertTrue(
                    e.getMessage()
                            .startsWith("queue 1: writing its SQ tail doorbell at BAR0 offset 0x3000 failed (4-byte "
                                    + "access at 0x3000 outside BAR0 (8192 bytes) or unaligned) — the controller's "
                                    + "state is unknown; reset it"),
                    e.getMessage());
            assertEquals(1, r.failed().get(), "the controller was not marked failed");
            // a retry is refused before it takes a queue slot, and the owner is not told again
            int retry = q.allocate();
            IllegalStateException again = assertThrows(
                    IllegalStateException.class,
                    () -> q.submit(retry, NvmeRegs.NVM_READ, 1, 0x30000, 0, 0, 0, 0, 0, 0, 0));
            assertEquals(e.getMessage(), again.getMessage());
            assertEquals(1, r.failed().get());
            assertEquals(
                    e.getMessage(),
                    assertThrows(NvmeException.class, () -> q.reap(null)).getMessage());
        }
    }

    @Test
    void aCompletionWhoseHeadDoorbellCannotBeWrittenMarksTheOwnerFailed() throws Exception {
        try (Arena a = Arena.ofConfined()) {
            MmioRegion bar = MemoryRegions.overMemory(a, 0x2000);
            Rig r = Rig.of(a, 0, bar, STRIDE_4K);
            QueuePair q = r.q();
            int cid = q.allocate();
            q.submit(cid, NvmeRegs.ADMIN_IDENTIFY, 0, 0x30000, 0, 1, 0, 0, 0, 0, 0); // SQ 0 tail: 0x1000, inside
            assertEquals(1, bar.read32(0x1000), "the SQ tail doorbell was rung");
            MemorySegment entry = r.cq().segment();
            entry.set(JAVA_SHORT, Cqe.CID, (short) cid);
            entry.set(JAVA_SHORT, Cqe.SQHD, (short) 1);
            entry.set(JAVA_SHORT, Cqe.STATUS, (short) 1);
            NvmeException e = assertThrows(NvmeException.class, () -> q.reap(null));
            assertTrue(
                    e.getMessage().startsWith("queue 0: writing its CQ head doorbell at BAR0 offset 0x2000 failed"),
                    e.getMessage());
            assertEquals(1, r.failed().get(), "the controller was not marked failed");
            assertEquals(
                    e.getMessage(),
                    assertThrows(NvmeException.class, () -> q.reap(null)).getMessage());
        }
    }
}
