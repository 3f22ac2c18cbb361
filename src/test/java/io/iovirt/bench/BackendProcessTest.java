// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vhostuser.FrontendMemory;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.List;
import java.util.OptionalLong;
import org.junit.jupiter.api.Test;

class BackendProcessTest {

    @Test
    void cpuTicksComeFromFields14And15EvenWithParenthesesInTheName() {
        String stat = "4242 (qemu (x) d) S 1 4242 4242 0 -1 4194560 1176 0 0 0 731 269 0 0 20 0 3 0 1234 0 0";
        assertEquals(731 + 269, BackendProcess.parseCpuTicks(stat));
    }

    @Test
    void ownCpuTimeGrowsWithWork() {
        BackendProcess self = new BackendProcess(ProcessHandle.current().pid());
        OptionalLong before = self.cpuNanos();
        assertTrue(before.isPresent());
        long x = 0;
        long end = System.nanoTime() + 300_000_000L;
        while (System.nanoTime() < end) {
            x += Long.numberOfTrailingZeros(x + System.nanoTime());
        }
        assertTrue(self.cpuNanos().getAsLong() > before.getAsLong(), "CPU time did not advance (" + x + ")");
    }

    @Test
    void sharedGuestRamIsFoundInSmapsByName() throws Exception {
        BackendProcess self = new BackendProcess(ProcessHandle.current().pid());
        try (FrontendMemory ram = FrontendMemory.allocate(0, 8 << 20)) {
            for (long off = 0; off < (4 << 20); off += 4096) {
                ram.segment().set(ValueLayout.JAVA_BYTE, off, (byte) 1); // touch 4 MiB of 8
            }
            BackendProcess.Memory m = self.memory(BlkBench.GUEST_RAM_NAME);
            assertNotNull(m);
            assertTrue(m.guestMappingKiB() >= 4096 && m.guestMappingKiB() <= 8192, "guest RSS " + m.guestMappingKiB());
            assertTrue(m.shmemKiB() >= m.guestMappingKiB(), m.toString());
            assertEquals(m.rssKiB() - m.guestMappingKiB(), m.beyondGuestKiB());
        }
    }

    @Test
    void parsesSmapsAndStatusText() {
        List<String> smaps = List.of(
                "7f0000000000-7f0000200000 rw-s 00000000 00:01 1234   /memfd:iovirt-guest-ram (deleted)",
                "Size:               2048 kB",
                "Rss:                 512 kB",
                "7f0000200000-7f0000300000 rw-p 00000000 00:00 0",
                "Rss:                 100 kB",
                "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0   [vsyscall]",
                "Rss:                   0 kB");
        assertEquals(512, BackendProcess.guestMappingKiB(smaps, BlkBench.GUEST_RAM_NAME));
        assertEquals(2345, BackendProcess.statusKiB(List.of("Name:\tx", "VmRSS:\t    2345 kB"), "VmRSS"));
    }

    @Test
    void aProcessThatIsGoneIsUnknownNotZero() {
        BackendProcess gone = new BackendProcess(1, Path.of("/nonexistent-proc"));
        assertTrue(gone.cpuNanos().isEmpty());
        assertNull(gone.memory(BlkBench.GUEST_RAM_NAME));
        assertEquals("?", gone.name());
    }
}
