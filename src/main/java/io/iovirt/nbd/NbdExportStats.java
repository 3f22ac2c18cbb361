// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.LongAdder;

/** Counters of one export, summed over its connections (for the CLI's exit line and the daemon's metrics). */
public final class NbdExportStats {
    public final AtomicInteger connections = new AtomicInteger();
    public final LongAdder connectionsTotal = new LongAdder();
    public final LongAdder reads = new LongAdder();
    public final LongAdder writes = new LongAdder();
    public final LongAdder bytesRead = new LongAdder();
    public final LongAdder bytesWritten = new LongAdder();
    public final LongAdder flushes = new LongAdder();
    public final LongAdder trims = new LongAdder();
    public final LongAdder writeZeroes = new LongAdder();
    public final LongAdder blockStatus = new LongAdder();
    /** Requests answered with an error (bad request or I/O error). */
    public final LongAdder errors = new LongAdder();

    @Override
    public String toString() {
        return "connections=" + connectionsTotal.sum() + " reads=" + reads.sum() + " writes=" + writes.sum()
                + " read_bytes=" + bytesRead.sum() + " written_bytes=" + bytesWritten.sum() + " flushes="
                + flushes.sum()
                + " trims=" + trims.sum() + " write_zeroes=" + writeZeroes.sum() + " block_status=" + blockStatus.sum()
                + " errors=" + errors.sum();
    }
}
