// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.testing.GuestFixture;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** The order of a RingHandler batch, seen from the driver's side of a real split ring. */
class RingHandlerTest {
    private static final int SIZE = 16;
    private final GuestFixture g = new GuestFixture();

    @AfterEach
    void close() {
        g.close();
    }

    /**
     * The device ends its batch (net: forwards the pending burst, counts it) before the driver can see any chain of
     * the batch returned; then every chain comes back, in the order it was made available, with one used index.
     */
    @Test
    void theDeviceEndsItsBatchBeforeTheDriverSeesAnyOfItReturned() throws Exception {
        SplitDriverRing d =
                SplitDriverRing.create(g.memory, g.alloc(SplitDriverRing.bytesNeeded(SIZE), 16), SIZE, false);
        Virtqueue q = Virtqueue.create(d.queueConfig(1, false), g.holder);
        List<Integer> made = new ArrayList<>();
        for (int i = 0; i < 5; i++) {
            long buf = g.alloc(64, 8);
            made.add(d.add(new long[] {buf}, new int[] {64}, new boolean[] {false}, 1, DriverRing.NO_INDIRECT));
        }
        List<Integer> processed = new ArrayList<>();
        long[] seenAtBatchEnd = {Long.MIN_VALUE};
        RingHandler h = new RingHandler(q, null, 8, new RingHandler.Device() {
            @Override
            public long process(DescriptorChain chain) {
                processed.add(chain.id());
                return 0;
            }

            @Override
            public void batchDone() {
                seenAtBatchEnd[0] = d.pollUsed();
            }
        });
        try (EventFd kick = EventFd.create(true)) {
            QueueWorker w = QueueWorker.builder("ring-handler-test").kick(kick).build(h);
            try {
                assertFalse(h.process(), "5 chains, a batch of 8: the ring ran dry");
                assertEquals(-1, seenAtBatchEnd[0], "nothing of the batch was visible when the device ended it");
                assertEquals(made, processed);
                List<Integer> returned = new ArrayList<>();
                for (long u; (u = d.pollUsed()) != -1; ) {
                    returned.add(DriverRing.usedId(u));
                }
                assertEquals(made, returned, "all of them, in the order made available");
                assertTrue(g.guardsIntact());
            } finally {
                w.stop();
            }
        }
    }
}
