package io.iovirt.devices.blk;

import java.util.concurrent.atomic.LongAdder;

/** Per-device counters, updated by queue threads without contention (LongAdder cells). */
public final class BlkStats {
    final LongAdder reads = new LongAdder();
    final LongAdder writes = new LongAdder();
    final LongAdder flushes = new LongAdder();
    final LongAdder discards = new LongAdder();
    final LongAdder bytesRead = new LongAdder();
    final LongAdder bytesWritten = new LongAdder();
    final LongAdder ioErrors = new LongAdder();
    final LongAdder requestErrors = new LongAdder();
    final LongAdder queueFailures = new LongAdder();

    @Override
    public String toString() {
        return String.format("reads=%d writes=%d flushes=%d discards=%d read=%dB written=%dB io-errors=%d bad-requests=%d queue-failures=%d",
                reads.sum(), writes.sum(), flushes.sum(), discards.sum(), bytesRead.sum(), bytesWritten.sum(),
                ioErrors.sum(), requestErrors.sum(), queueFailures.sum());
    }
}
