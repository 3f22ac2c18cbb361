// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import java.nio.file.Path;
import java.util.Objects;

/**
 * One {@code bench blk} run.
 *
 * @param queueDepth requests kept in flight per queue
 * @param queueSize  ring size (descriptors) per queue
 * @param indirect   use indirect descriptors when the backend offers them (a Linux guest does)
 * @param seed       seeds the random block order and the verify pattern
 */
public record BlkBenchOptions(
        Path socket,
        Pattern pattern,
        int blockBytes,
        int queueDepth,
        double seconds,
        double warmupSeconds,
        int queues,
        int queueSize,
        boolean packed,
        boolean interrupts,
        boolean indirect,
        boolean verify,
        long seed) {

    /** The access pattern (fio's names). */
    public enum Pattern {
        RANDREAD(false, true),
        RANDWRITE(true, true),
        READ(false, false),
        WRITE(true, false);

        private final boolean write;
        private final boolean random;

        Pattern(boolean write, boolean random) {
            this.write = write;
            this.random = random;
        }

        public boolean write() {
            return write;
        }

        public boolean random() {
            return random;
        }

        public String fioName() {
            return name().toLowerCase(java.util.Locale.ROOT);
        }
    }

    public BlkBenchOptions {
        Objects.requireNonNull(socket, "socket");
        Objects.requireNonNull(pattern, "pattern");
        if (blockBytes < 512 || blockBytes % 512 != 0) {
            throw new IllegalArgumentException("--bs must be a positive multiple of 512 bytes, got " + blockBytes);
        }
        if (queueDepth < 1) {
            throw new IllegalArgumentException("--qd must be at least 1, got " + queueDepth);
        }
        if (!(seconds > 0) || seconds > 86_400) {
            throw new IllegalArgumentException("--seconds must be in (0, 86400], got " + seconds);
        }
        if (!(warmupSeconds >= 0) || warmupSeconds > 3600) {
            throw new IllegalArgumentException("--warmup must be in [0, 3600] seconds, got " + warmupSeconds);
        }
        if (queues < 1 || queues > 64) {
            throw new IllegalArgumentException("--queues must be 1..64, got " + queues);
        }
        if (queueSize < 1 || queueSize > 32768 || (!packed && Integer.bitCount(queueSize) != 1)) {
            throw new IllegalArgumentException("--queue-size must be "
                    + (packed ? "1..32768" : "a power of two up to 32768") + ", got " + queueSize);
        }
        if (verify && !pattern.write()) {
            throw new IllegalArgumentException(
                    "--verify checks data this run writes: use it with --rw write or randwrite");
        }
    }
}
