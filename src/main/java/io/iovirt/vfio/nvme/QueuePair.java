// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import io.iovirt.vfio.DmaBuffer;
import io.iovirt.vfio.MmioRegion;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;

/**
 * One submission queue and its completion queue, both in DMA memory, plus the host's view of them: SQ tail, CQ head,
 * expected phase, and per-command-identifier state. Command identifiers are indexes 0..depth-2 handed out from a
 * free list, so at most depth-1 commands are outstanding and neither queue can overflow.
 *
 * <p>Single-threaded: one thread submits and reaps. Nothing here allocates after construction.
 */
final class QueuePair {
    /** Receives each completion drained by {@link #reap}. */
    interface CompletionHandler {
        void completed(int cid, int status, int dw0);
    }

    private static final VarHandle STATUS_WORD = JAVA_SHORT.varHandle();
    private static final VarHandle PUBLISHED;

    static {
        try {
            PUBLISHED = java.lang.invoke.MethodHandles.lookup().findVarHandle(QueuePair.class, "published", int.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    final int qid;
    final int depth;
    final DmaBuffer sq;
    final DmaBuffer cq;
    private final MmioRegion bar;
    private final long sqDoorbell;
    private final long cqDoorbell;
    private final MemorySegment sqMem;
    private final MemorySegment cqMem;

    private int sqTail;
    private int sqHead;
    private int cqHead;
    private int phase = 1;

    private final int[] freeCids;
    private int freeTop;
    private final boolean[] inFlight;
    /** {@link #outstanding()} as last published (release store) for another thread: the one shutting down. */
    @SuppressWarnings("unused") // accessed through PUBLISHED
    private int published;
    // the last completion of each cid, for synchronous callers
    final int[] lastStatus;
    final int[] lastDw0;
    final boolean[] completed;

    /** Told once the controller has posted a completion that makes no sense: its owner must stop using it. */
    private final Runnable onConfused;
    /** Why this queue pair is unusable (a nonsensical completion, a failed doorbell write), or null. */
    private String confusion;

    /**
     * @param onConfused run when the controller posts a completion for a command that is not outstanding, or a
     *     doorbell write fails: the controller's state is unknown from then on, and only a reset makes it usable
     */
    QueuePair(int qid, int depth, DmaBuffer sq, DmaBuffer cq, MmioRegion bar, int doorbellStride, Runnable onConfused) {
        if (depth < 2 || depth > 65536) {
            throw new IllegalArgumentException("queue depth must be 2..65536: " + depth);
        }
        if (sq.size() < depth * Sqe.SIZE || cq.size() < depth * Cqe.SIZE) {
            throw new IllegalArgumentException("queue memory too small for " + depth + " entries");
        }
        this.qid = qid;
        this.depth = depth;
        this.sq = sq;
        this.cq = cq;
        this.bar = bar;
        this.sqMem = sq.segment();
        this.cqMem = cq.segment();
        this.sqDoorbell = NvmeRegs.sqTailDoorbell(qid, doorbellStride);
        this.cqDoorbell = NvmeRegs.cqHeadDoorbell(qid, doorbellStride);
        int cids = depth - 1;
        this.freeCids = new int[cids];
        for (int i = 0; i < cids; i++) {
            freeCids[i] = cids - 1 - i;
        }
        this.freeTop = cids;
        this.inFlight = new boolean[cids];
        this.lastStatus = new int[cids];
        this.lastDw0 = new int[cids];
        this.completed = new boolean[cids];
        this.onConfused = onConfused;
    }

    /** Command identifiers available (commands that may still be submitted). */
    int free() {
        return freeTop;
    }

    int outstanding() {
        return depth - 1 - freeTop;
    }

    /**
     * Commands in flight as seen from another thread (the owner publishes after each submit and each reap; a plain
     * store on x86, no fence on the I/O path).
     */
    int outstandingFromOtherThread() {
        return (int) PUBLISHED.getAcquire(this);
    }

    int maxOutstanding() {
        return depth - 1;
    }

    /** Takes a free command identifier; -1 when depth-1 commands are outstanding. */
    int allocate() {
        if (freeTop == 0) {
            return -1;
        }
        int cid = freeCids[--freeTop];
        completed[cid] = false;
        return cid;
    }

    /** Returns an identifier that was allocated but never submitted. */
    void release(int cid) {
        if (inFlight[cid]) {
            throw new IllegalStateException("command " + cid + " is in flight");
        }
        freeCids[freeTop++] = cid;
    }

    /** Writes the command into the next SQ slot and rings the SQ tail doorbell. */
    void submit(
            int cid,
            int opcode,
            int nsid,
            long prp1,
            long prp2,
            int cdw10,
            int cdw11,
            int cdw12,
            int cdw13,
            int cdw14,
            int cdw15) {
        if (confusion != null) {
            throw new IllegalStateException(confusion);
        }
        if (cid < 0 || cid >= inFlight.length || inFlight[cid]) {
            throw new IllegalStateException("command identifier " + cid + " is not allocated or already in flight");
        }
        Sqe.write(sqMem, sqTail * Sqe.SIZE, opcode, cid, nsid, prp1, prp2, cdw10, cdw11, cdw12, cdw13, cdw14, cdw15);
        inFlight[cid] = true;
        sqTail = sqTail + 1 == depth ? 0 : sqTail + 1;
        try {
            bar.write32(sqDoorbell, sqTail); // volatile store: the entry's plain stores are visible before it
        } catch (RuntimeException e) {
            throw new IllegalStateException(doorbellFailed("SQ tail", sqDoorbell, e), e);
        }
        PUBLISHED.setRelease(this, outstanding());
    }

    /**
     * Drains every completion the controller has posted, hands each to {@code handler}, and tells the controller
     * (one CQ head doorbell write) how far the host has consumed. Returns the number drained.
     */
    int reap(CompletionHandler handler) throws NvmeException {
        if (confusion != null) {
            throw new NvmeException(confusion);
        }
        int n = 0;
        while (true) {
            long off = (long) cqHead * Cqe.SIZE;
            int word = Short.toUnsignedInt((short) STATUS_WORD.getVolatile(cqMem, off + Cqe.STATUS));
            if ((word & 1) != phase) {
                break;
            }
            // the acquire load of the status word orders the reads of the rest of the entry after it
            int cid = Short.toUnsignedInt(cqMem.get(JAVA_SHORT, off + Cqe.CID));
            int sqhd = Short.toUnsignedInt(cqMem.get(JAVA_SHORT, off + Cqe.SQHD));
            int dw0 = cqMem.get(JAVA_INT, off + Cqe.DW0);
            if (cid >= inFlight.length || !inFlight[cid] || sqhd >= depth) {
                confusion = String.format(
                        "queue %d: the controller posted a completion for command %d "
                                + "(SQ head %d) that is not outstanding — the controller is confused; reset it "
                                + "(reopening it does)",
                        qid, cid, sqhd);
                onConfused.run();
                throw new NvmeException(confusion);
            }
            cqHead++;
            if (cqHead == depth) {
                cqHead = 0;
                phase ^= 1;
            }
            sqHead = sqhd;
            inFlight[cid] = false;
            int status = NvmeStatus.fromCqeWord(word);
            lastStatus[cid] = status;
            lastDw0[cid] = dw0;
            completed[cid] = true;
            freeCids[freeTop++] = cid;
            n++;
            if (handler != null) {
                handler.completed(cid, status, dw0);
            }
        }
        if (n > 0) {
            try {
                bar.write32(cqDoorbell, cqHead);
            } catch (RuntimeException e) {
                NvmeException x = new NvmeException(doorbellFailed("CQ head", cqDoorbell, e));
                x.initCause(e);
                throw x;
            }
            PUBLISHED.setRelease(this, outstanding());
        }
        return n;
    }

    /**
     * A doorbell write that failed (outside the BAR, an unmapped BAR, a failed pwrite) leaves the controller's view of
     * this queue unknown — the entry is in the queue and the command counted in flight, or the completions consumed,
     * and the controller may or may not have seen the write — so this queue pair refuses further use and its owner is
     * told, instead of each retry taking another slot. Returns the reason.
     */
    private String doorbellFailed(String which, long offset, RuntimeException e) {
        confusion = String.format(
                "queue %d: writing its %s doorbell at BAR0 offset 0x%x failed (%s) — the controller's state is unknown; "
                        + "reset it (reopening it does)",
                qid, which, offset, e.getMessage());
        onConfused.run();
        return confusion;
    }

    /** The SQ head as last reported by the controller. */
    int sqHead() {
        return sqHead;
    }

    @Override
    public String toString() {
        return "queue " + qid + " (depth " + depth + ", SQ at 0x" + Long.toHexString(sq.iova()) + ", CQ at 0x"
                + Long.toHexString(cq.iova()) + ")";
    }
}
