// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.bench.BlkBench;
import io.iovirt.bench.BlkBenchOptions;
import io.iovirt.bench.BlkBenchResult;
import io.iovirt.util.Json;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.Callable;
import java.util.concurrent.ThreadLocalRandom;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code iovirt bench blk}: a vhost-user-blk driver without a VM (like DPDK's virtio-user) that drives any
 * vhost-user-blk backend — {@code iovirt serve blk}, qemu-storage-daemon — the same way, for side-by-side numbers.
 */
@Command(
        name = "blk",
        footerHeading = "%nExamples:%n",
        footer = {
            "  iovirt bench blk --socket /run/iovirt/blk0.sock",
            "  iovirt bench blk --socket blk.sock --rw randwrite --bs 4096 --qd 32 --queues 2 --json"
        },
        mixinStandardHelpOptions = true,
        sortOptions = false,
        description = {
            "Drive a vhost-user-blk backend directly (no VM) and report IOPS, latency percentiles, the "
                    + "backend's CPU time per I/O and its memory.",
            "The backend is found through the socket's peer credentials; its CPU time and RSS are read from /proc.",
            "The load is a closed loop (a request is made when one completes): latency is each request's submit to"
                    + " completion, so above --qd 1 a stall of the backend delays requests instead of being recorded"
                    + " as a tail of late ones (coordinated omission).",
            "Any request that does not complete with VIRTIO_BLK_S_OK fails the run (exit 1)."
        })
public final class BlkBenchCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--socket", required = true, paramLabel = "PATH", description = "The backend's vhost-user socket.")
    Path socket;

    @Option(
            names = "--rw",
            defaultValue = "randread",
            paramLabel = "PATTERN",
            description = "randread, randwrite, read or write (default ${DEFAULT-VALUE}). Random patterns visit every "
                    + "block once per pass over the disk, in a seeded order.")
    String rw;

    @Option(
            names = "--bs",
            defaultValue = "4k",
            paramLabel = "BYTES",
            converter = SizeConverter.class,
            description = "Request size, a multiple of 512; k/m suffixes allowed (default ${DEFAULT-VALUE}).")
    int bs;

    @Option(
            names = "--qd",
            defaultValue = "1",
            paramLabel = "N",
            description = "Requests in flight per queue (default ${DEFAULT-VALUE}).")
    int qd;

    @Option(
            names = "--seconds",
            defaultValue = "10",
            paramLabel = "S",
            description = "Measured time (default ${DEFAULT-VALUE}).")
    double seconds;

    @Option(
            names = "--warmup",
            defaultValue = "1",
            paramLabel = "S",
            description = "Unmeasured time before it (default ${DEFAULT-VALUE}).")
    double warmup;

    @Option(
            names = "--queues",
            defaultValue = "1",
            paramLabel = "N",
            description = "Queues, one thread each (default ${DEFAULT-VALUE}).")
    int queues;

    @Option(
            names = "--queue-size",
            defaultValue = "256",
            paramLabel = "N",
            description = "Ring size (default ${DEFAULT-VALUE}).")
    int queueSize;

    @Option(names = "--packed", description = "Use packed rings (VIRTIO_F_RING_PACKED) instead of split rings.")
    boolean packed;

    @Option(
            names = "--interrupts",
            description = "Sleep on the call eventfd (epoll) for completions instead of busy-polling the used ring.")
    boolean interrupts;

    @Option(
            names = "--no-indirect",
            description = "Chain direct descriptors even when the backend offers indirect ones.")
    boolean noIndirect;

    @Option(
            names = "--verify",
            description = "With write/randwrite: write a pattern stamped with each sector's number, "
                    + "then read back every block written and compare.")
    boolean verify;

    @Option(
            names = "--seed",
            paramLabel = "N",
            description = "Seed of the random order and the verify pattern (default: random).")
    Long seed;

    @Option(names = "--json", description = "Print the result as JSON.")
    boolean json;

    @Override
    public Integer call() throws Exception {
        BlkBenchOptions.Pattern pattern;
        try {
            pattern = BlkBenchOptions.Pattern.valueOf(rw.toUpperCase(Locale.ROOT));
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(
                    spec.commandLine(), "--rw must be randread, randwrite, read or write, got '" + rw + "'");
        }
        BlkBenchOptions options;
        try {
            options = new BlkBenchOptions(
                    socket,
                    pattern,
                    bs,
                    qd,
                    seconds,
                    warmup,
                    queues,
                    queueSize,
                    packed,
                    interrupts,
                    !noIndirect,
                    verify,
                    seed != null ? seed : ThreadLocalRandom.current().nextLong());
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(spec.commandLine(), e.getMessage());
        }
        BlkBenchResult result = BlkBench.run(options);
        spec.commandLine().getOut().print(json ? Json.write(result.json()) + "\n" : result.text());
        spec.commandLine().getOut().flush();
        return 0;
    }

    /** "4096", "4k", "1m" (binary multiples). */
    static final class SizeConverter implements CommandLine.ITypeConverter<Integer> {
        @Override
        public Integer convert(String value) {
            String v = value.trim().toLowerCase(Locale.ROOT);
            long mult = 1;
            if (v.endsWith("k")) {
                mult = 1 << 10;
            } else if (v.endsWith("m")) {
                mult = 1 << 20;
            }
            if (mult != 1) {
                v = v.substring(0, v.length() - 1);
            }
            long n;
            try {
                n = Math.multiplyExact(Long.parseLong(v), mult);
            } catch (NumberFormatException | ArithmeticException e) {
                throw new CommandLine.TypeConversionException("'" + value + "' is not a size (e.g. 4096, 4k, 1m)");
            }
            if (n <= 0 || n > Integer.MAX_VALUE) {
                throw new CommandLine.TypeConversionException("size '" + value + "' is out of range");
            }
            return (int) n;
        }
    }
}
