// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** {@code bench blk} against {@code iovirt serve blk}, a separate JVM (so its CPU time and memory are its own). */
class BlkBenchAgainstIovirtTest extends BlkBenchContract {

    @Override
    ChildProcess startBackend(Path image, Path socket, Path dir) {
        return serve(dir, "iovirt", image, socket, "--queues", "2");
    }

    private static ChildProcess serve(Path dir, String name, Path image, Path socket, String... more) {
        List<String> args =
                new ArrayList<>(List.of("serve", "blk", "--image", image.toString(), "--socket", socket.toString()));
        args.addAll(List.of(more));
        return ChildProcess.builder(IovirtCli.command(args))
                .name("iovirt serve blk")
                .log(dir.resolve(name + ".log"))
                .lifetime(Duration.ofMinutes(10))
                .startListening(socket, Duration.ofSeconds(60));
    }

    @Test
    void packedRingWithVerify() throws Exception {
        BlkBenchResult r = run(new BlkBenchOptions(
                socket, BlkBenchOptions.Pattern.RANDWRITE, 4096, 16, 0.5, 0.1, 1, 256, true, false, true, true, 21));
        assertTrue(r.verifiedBlocks() > 0);
    }

    @Test
    void twoQueuesWithVerify() throws Exception {
        BlkBenchResult r = run(new BlkBenchOptions(
                socket, BlkBenchOptions.Pattern.RANDWRITE, 4096, 8, 0.5, 0.1, 2, 256, false, false, true, true, 22));
        assertTrue(r.verifiedBlocks() > 0);
        assertEquals(r.ios(), r.latency().count());
    }

    @Test
    void aReadOnlyDiskRefusesAWriteBenchmarkUpFront() throws Exception {
        Path sock = dir.resolve("ro.sock");
        try (ChildProcess ro = serve(dir, "iovirt-ro", image, sock, "--readonly")) {
            IllegalArgumentException e = assertThrows(
                    IllegalArgumentException.class,
                    () -> BlkBench.run(new BlkBenchOptions(
                            sock,
                            BlkBenchOptions.Pattern.RANDWRITE,
                            4096,
                            1,
                            0.2,
                            0,
                            1,
                            256,
                            false,
                            false,
                            true,
                            false,
                            1)));
            assertTrue(e.getMessage().contains("read-only"), e.getMessage());
        }
    }
}
