// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;

/**
 * The child JVM of the allocation tests (blk, net, NBD): runs a test class's {@code main(DIR, ARG)} with escape
 * analysis off — so an allocation the JIT happens to remove today still counts — and checks that it exited 0 (no case
 * over its bound) after printing one {@code alloc ...} line per case. Its output is echoed into the test's log.
 */
public final class AllocationRun {
    private AllocationRun() {}

    /**
     * Runs {@code measuring}'s main with {@code DIR ARG}; {@code what} says what exceeding the bound means in a
     * failure message.
     */
    public static void check(Class<?> measuring, Path dir, String arg, int cases, Duration timeout, String what)
            throws Exception {
        Path log = dir.resolve("alloc.log");
        try (ChildProcess p = ChildProcess.builder(IovirtCli.java(
                        List.of("-XX:-DoEscapeAnalysis"), measuring.getName(), List.of(dir.toString(), arg)))
                .name("alloc")
                .log(log)
                .start()) {
            assertTrue(p.waitFor(timeout), "the allocation run did not finish: " + p.logTail(20));
            String out = Files.readString(log);
            System.out.print(out);
            assertEquals(0, p.exitValue(), what + ":\n" + out);
            assertEquals(cases, out.lines().filter(l -> l.startsWith("alloc ")).count(), out);
        }
    }
}
