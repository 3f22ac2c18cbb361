// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;

class FioTerseTest {
    /** fio 3.33 --minimal --percentile_list=50:99, 4 KiB randread for 1 s (recorded on this machine). */
    private static final String READ = "3;fio-3.33;x;0;0;538384;537309;134327;1002;1;24014;4.070990;102.531838;5;24070;"
            + "25.120279;221.799845;50.000000%=12;99.000000%=88;0%=0;0%=0;0%=0;0%=0;0%=0;0%=0;0%=0;0%=0;0%=0;0%=0;0%=0;"
            + "0%=0;0%=0;0%=0;0%=0;0%=0;0%=0;0%=0;13;24073;29.191269;244.429630;502552;574184;100.000000%;538368.000000;"
            + "50651.472950;0;0;0;0;0;0;0.000000;0.000000;0;0;0.000000;0.000000;50.000000%=0;99.000000%=0;0%=0";

    @Test
    void readsIopsCountAndPercentilesOfTheRightDirection() {
        FioTerse r = FioTerse.parse(READ, false, 4096);
        assertEquals(134327, r.iops(), 0.5);
        assertEquals(538384L * 1024 / 4096, r.ios());
        assertEquals(12, r.p50Micros());
        assertEquals(88, r.p99Micros());
        assertEquals(1002, r.runtimeMillis());
        FioTerse w = FioTerse.parse(READ, true, 4096);
        assertEquals(0, w.ios());
    }

    @Test
    void somethingElseIsRefusedWithTheLineInTheMessage() {
        IllegalArgumentException e =
                assertThrows(IllegalArgumentException.class, () -> FioTerse.parse("fio: bad option", false, 4096));
        assertEquals(true, e.getMessage().contains("fio: bad option"));
    }
}
