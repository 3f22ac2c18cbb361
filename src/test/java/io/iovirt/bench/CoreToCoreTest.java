// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.iovirt.cli.Main;
import io.iovirt.linux.Affinity;
import io.iovirt.linux.LinuxException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.BitSet;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

class CoreToCoreTest {
    /** Two CPUs this process may use, or the test is skipped (CI may run it under taskset). */
    private static int[] twoCpus() throws LinuxException {
        BitSet allowed = Affinity.ofCurrentThread();
        int a = allowed.nextSetBit(0);
        int b = a < 0 ? -1 : allowed.nextSetBit(a + 1);
        assumeTrue(b >= 0, "needs two CPUs, this process may use " + allowed);
        return new int[] {a, b};
    }

    @Test
    void measuresEverySampleBetweenTheTwoCpus() throws Exception {
        int[] c = twoCpus();
        CoreToCore.Result r = CoreToCore.measure(c[0], c[1], 5, 2000);
        assertEquals(5, r.samplesNs().length);
        for (double s : r.samplesNs()) {
            assertTrue(s > 0, "a round trip takes time: " + s);
        }
        assertTrue(r.min() <= r.median() && r.median() <= r.max(), r.text());
        Map<String, Object> json = r.json();
        assertEquals(List.of(c[0], c[1]), json.get("cpus"));
        assertEquals(5, ((List<?>) json.get("samples_ns")).size());
    }

    @Test
    void oneCpuTwiceIsRejected() {
        assertThrows(IllegalArgumentException.class, () -> CoreToCore.measure(0, 0, 1, 1));
    }

    @Test
    void aCpuItCannotUseFailsWithTheKernelsAnswerAndNoThreadLeftSpinning() throws Exception {
        int cpu = Affinity.ofCurrentThread().nextSetBit(0);
        LinuxException e =
                assertThrows(LinuxException.class, () -> CoreToCore.measure(cpu, Affinity.MAX_CPUS - 1, 3, 100));
        assertTrue(e.getMessage().contains("CPU 1023"), e.getMessage());
        e = assertThrows(LinuxException.class, () -> CoreToCore.measure(Affinity.MAX_CPUS - 1, cpu, 3, 100));
        assertTrue(e.getMessage().contains("CPU 1023"), e.getMessage());
        // measure() joined both threads before it threw
        assertTrue(Thread.getAllStackTraces().keySet().stream()
                .noneMatch(t -> t.getName().startsWith("iovirt c2c")));
    }

    @Test
    void theCommandPrintsJsonAndRejectsOneCpu() throws Exception {
        int[] c = twoCpus();
        CommandLine cl = Main.commandLine();
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        cl.setOut(new PrintWriter(out));
        cl.setErr(new PrintWriter(err));
        int rc = cl.execute(
                "bench", "c2c", "--cpus", c[0] + "," + c[1], "--samples", "3", "--round-trips", "500", "--json");
        assertEquals(0, rc, err.toString());
        Object doc = StrictJson.parse(out.toString());
        assertTrue(doc instanceof Map<?, ?> m && m.get("round_trip_ns") instanceof Map, out.toString());
        assertEquals(2, cl.execute("bench", "c2c", "--cpus", "0"));
        assertTrue(err.toString().contains("--cpus takes two CPU numbers"), err.toString());
        assertEquals(2, cl.execute("bench", "c2c", "--cpus", c[0] + ",1023"));
        assertTrue(err.toString().contains("online CPUs"), err.toString());
    }
}
