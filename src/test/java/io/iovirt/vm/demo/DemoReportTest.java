// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.bench.BackendProcess;
import io.iovirt.bench.StrictJson;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;
import org.junit.jupiter.api.Test;

/** The demo's reports without guests: what each number is when it is known, and when it is not. */
class DemoReportTest {
    /**
     * A phase with no I/O, or whose CPU time could not be read, has no CPU per I/O: the JSON says null (it said NaN,
     * which no JSON parser takes), and a platform string with a quote or backslash stays a string.
     */
    @Test
    void diskJsonIsJsonWhenANumberIsUnknown() {
        DiskDemo.Report report = new DiskDemo.Report(
                new DiskDemo.Platform("TCG (\"no\" \\dev\\kvm)", "tsc", ""),
                List.of(
                        new DiskDemo.Result("PV  x", "randread 4KiB qd1", 0, 0, 0, 0, 5_000_000, 1_000_000, 1.01, 1.0),
                        new DiskDemo.Result(
                                "FV  y", "randread 4KiB qd1", 1000, 50, 90, 2000, 8_000_000, 2_000_000, 1.01, 1.0)));
        @SuppressWarnings("unchecked")
        Map<String, Object> doc = (Map<String, Object>) StrictJson.parse(DiskDemo.json(report));
        @SuppressWarnings("unchecked")
        Map<String, Object> platform = (Map<String, Object>) doc.get("platform");
        assertEquals("TCG (\"no\" \\dev\\kvm)", platform.get("accel"));
        @SuppressWarnings("unchecked")
        List<Map<String, Object>> disk = (List<Map<String, Object>>) doc.get("disk");
        assertNull(disk.get(0).get("cpu_us_per_io"), "no I/O: no CPU per I/O");
        assertEquals(5.0, ((Number) disk.get(1).get("cpu_us_per_io")).doubleValue(), 1e-9);
        assertEquals(2000L, disk.get(1).get("ios"));
    }

    /**
     * A process whose CPU time could not be read at one end of a phase (-1) leaves the phase's CPU unknown: it was
     * subtracted and added as if it were a time, giving a CPU per I/O off by the whole other reading.
     */
    @Test
    void anUnreadableCpuTimeIsUnknownNotANumber() {
        DiskDemo.Result disk =
                new DiskDemo.Result("PV  x", "randread 4KiB qd1", 1000, 50, 90, 2000, -1, 2_000_000, 1.01, 1.0);
        assertTrue(Double.isNaN(disk.cpuMicrosPerIo()), "CPU per I/O " + disk.cpuMicrosPerIo());
        @SuppressWarnings("unchecked")
        Map<String, Object> doc = (Map<String, Object>) StrictJson.parse(
                DiskDemo.json(new DiskDemo.Report(new DiskDemo.Platform("KVM", "kvm-clock", ""), List.of(disk))));
        @SuppressWarnings("unchecked")
        Map<String, Object> row = ((List<Map<String, Object>>) doc.get("disk")).getFirst();
        assertNull(row.get("qemu_cpu_ns"));
        assertNull(row.get("cpu_us_per_io"));
        NetDemo.Result net =
                new NetDemo.Result(NetDemo.PV, "TCP send 16 MiB", 12.5, "MiB/s", 1000, 16 << 20, -1, 1.28, 1.27);
        assertTrue(Double.isNaN(net.cpuMicrosPerPacket()), "CPU per packet " + net.cpuMicrosPerPacket());
        assertEquals(OptionalLong.empty(), BackendProcess.elapsed(OptionalLong.of(5), OptionalLong.empty()));
        assertEquals(OptionalLong.of(3), BackendProcess.elapsed(OptionalLong.of(5), OptionalLong.of(8)));
    }

    @Test
    void netJsonIsJsonWhenANumberIsUnknown() {
        List<NetDemo.Result> results = List.of(
                new NetDemo.Result(NetDemo.PV, "ping RTT avg (min 300)", 532.0, "us", 0, 0, 1_000_000, 1.2, 1.19),
                new NetDemo.Result(
                        NetDemo.FV, "TCP send 16 MiB", 12.5, "MiB/s", 1000, 16 << 20, 2_000_000, 1.28, 1.27));
        @SuppressWarnings("unchecked")
        List<Map<String, Object>> doc = (List<Map<String, Object>>) StrictJson.parse(NetDemo.json(results));
        assertNull(doc.get(0).get("cpu_us_per_packet"));
        assertEquals(2.0, ((Number) doc.get(1).get("cpu_us_per_packet")).doubleValue(), 1e-9);
        assertTrue(doc.get(1).get("path").toString().startsWith("FV"));
    }
}
