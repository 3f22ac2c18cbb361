// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_SHORT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vfio.DmaBuffer;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/** A queue pair's reaction to a controller that posts nonsense, on queue memory in the heap (no device). */
class QueuePairTest {
    @Test
    void aCompletionForACommandNotInFlightMarksTheOwnerFailedAndTheQueueUnusable() {
        try (Arena a = Arena.ofConfined()) {
            int depth = 4;
            DmaBuffer sq = new DmaBuffer(a.allocate(depth * Sqe.SIZE, 4096), 0x10000);
            DmaBuffer cq = new DmaBuffer(a.allocate(depth * Cqe.SIZE, 4096), 0x20000);
            AtomicInteger failed = new AtomicInteger();
            // No BAR: nothing here may ring a doorbell.
            QueuePair q = new QueuePair(1, depth, sq, cq, null, 0, failed::incrementAndGet);
            // The controller posts (phase 1) a completion for command 2, which was never submitted.
            MemorySegment entry = cq.segment();
            entry.set(JAVA_SHORT, Cqe.CID, (short) 2);
            entry.set(JAVA_SHORT, Cqe.SQHD, (short) 0);
            entry.set(JAVA_SHORT, Cqe.STATUS, (short) 1);
            NvmeException e = assertThrows(NvmeException.class, () -> q.reap(null));
            assertTrue(
                    e.getMessage().contains("posted a completion for command 2 (SQ head 0) that is not outstanding"),
                    e.getMessage());
            assertEquals(1, failed.get(), "the controller was not marked failed");
            // Later use fails at once with the same reason, and the owner is told only once.
            NvmeException again = assertThrows(NvmeException.class, () -> q.reap(null));
            assertEquals(e.getMessage(), again.getMessage());
            int cid = q.allocate();
            IllegalStateException submit = assertThrows(
                    IllegalStateException.class,
                    () -> q.submit(cid, NvmeRegs.NVM_READ, 1, 0x30000, 0, 0, 0, 0, 0, 0, 0));
            assertEquals(e.getMessage(), submit.getMessage());
            assertEquals(1, failed.get());
        }
    }
}
