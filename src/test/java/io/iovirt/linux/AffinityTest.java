// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.BitSet;
import org.junit.jupiter.api.Test;

class AffinityTest {
    /** Runs {@code body} on a new platform thread (pinning the test runner's own thread would outlive the test). */
    private static void onNewThread(ThrowingRunnable body) throws Exception {
        // Throwable, not Exception: an assertion failure is an Error, and one that ended the thread unseen would
        // leave the test green
        Throwable[] failed = new Throwable[1];
        Thread t = Thread.ofPlatform().start(() -> {
            try {
                body.run();
            } catch (Throwable e) {
                failed[0] = e;
            }
        });
        t.join();
        if (failed[0] instanceof Exception e) {
            throw e;
        }
        if (failed[0] instanceof Error e) {
            throw e;
        }
    }

    private interface ThrowingRunnable {
        void run() throws Exception;
    }

    @Test
    void aPinnedThreadMayRunOnItsCpuOnly() throws Exception {
        int cpu = Affinity.ofCurrentThread().nextSetBit(0); // one this process may use (CI may run under taskset)
        onNewThread(() -> {
            Affinity.pinCurrentThread(cpu);
            BitSet expected = new BitSet();
            expected.set(cpu);
            assertEquals(expected, Affinity.ofCurrentThread());
        });
    }

    @Test
    void aCpuThatIsNotOnlineIsEinval() throws Exception {
        assumeFalse(Files.exists(Path.of("/sys/devices/system/cpu/cpu1023")), "this machine has CPU 1023");
        onNewThread(() -> {
            LinuxException e =
                    assertThrows(LinuxException.class, () -> Affinity.pinCurrentThread(Affinity.MAX_CPUS - 1));
            assertEquals(Errno.EINVAL, e.errno());
            assertEquals(true, e.getMessage().contains("CPU 1023"), e.getMessage());
        });
    }

    @Test
    void numbersOutsideTheMaskAreRejectedBeforeTheCall() {
        assertThrows(IllegalArgumentException.class, () -> Affinity.pinCurrentThread(-1));
        assertThrows(IllegalArgumentException.class, () -> Affinity.pinCurrentThread(Affinity.MAX_CPUS));
    }
}
