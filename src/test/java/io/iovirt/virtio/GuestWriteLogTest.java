// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.GuestFixture;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** The dirty-logging hook reports every device write: the writable buffers at push, and the used ring entry. */
class GuestWriteLogTest {
    private static final int SIZE = 8;
    private final GuestFixture g = new GuestFixture();

    @AfterEach
    void close() {
        g.close();
    }

    @Test
    void pushReportsWritableBuffersAndTheUsedRing() throws Exception {
        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, true);
        Virtqueue q = Virtqueue.create(d.queueConfig(0, true), g.holder);
        List<long[]> writes = new ArrayList<>();
        q.setWriteLog((gpa, len) -> writes.add(new long[] {gpa, len}));
        long r = g.alloc(16, 8);
        long w1 = g.alloc(100, 8);
        long w2 = g.allocHigh(1, 1);
        d.add(
                new long[] {r, w1, w2},
                new int[] {16, 100, 1},
                new boolean[] {false, true, true},
                3,
                DriverRing.NO_INDIRECT);
        DescriptorChain c = q.pop();
        writes.clear(); // pop may move avail_event; the push is what matters here
        q.push(c, 1);
        assertTrue(writes.stream().anyMatch(e -> e[0] == w1 && e[1] == 100), "first writable buffer");
        assertTrue(
                writes.stream().anyMatch(e -> e[0] == w2 && e[1] == 1),
                "status-like last buffer, though only 1 byte was reported");
        long used = d.queueConfig(0, true).deviceArea();
        assertTrue(writes.stream().anyMatch(e -> e[0] == used + 4 && e[1] == 8), "used element 0");
        assertTrue(writes.stream().anyMatch(e -> e[0] == used + 2 && e[1] == 2), "used index");
        assertEquals(0, writes.stream().filter(e -> e[0] == r).count(), "readable buffers are not written");
    }
}
