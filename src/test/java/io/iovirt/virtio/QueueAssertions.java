// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.GuestFixture;
import io.iovirt.virtio.VirtqueueException.Reason;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

final class QueueAssertions {
    private QueueAssertions() {}

    /** Pop fails with {@code reason}; afterwards the queue stays failed with the same error. */
    static VirtqueueException assertPopFails(Virtqueue q, Reason reason) {
        VirtqueueException e = assertThrows(VirtqueueException.class, q::pop);
        assertEquals(reason, e.reason(), e.getMessage());
        assertEquals(q.index(), e.queueIndex());
        assertTrue(e.getMessage().startsWith("virtqueue " + q.index() + ": "), e.getMessage());
        assertSame(e, q.failure());
        assertSame(e, assertThrows(VirtqueueException.class, q::pop));
        assertSame(e, assertThrows(VirtqueueException.class, q::needsNotification));
        assertSame(e, assertThrows(VirtqueueException.class, q::enableNotifications));
        return e;
    }

    static VirtqueueException assertCreateFails(QueueConfig cfg, GuestFixture g, Reason reason) {
        VirtqueueException e = assertThrows(VirtqueueException.class, () -> Virtqueue.create(cfg, g.holder));
        assertEquals(reason, e.reason(), e.getMessage());
        return e;
    }

    static void fill(MemorySegment s, int seed) {
        for (long i = 0; i < s.byteSize(); i++) {
            s.set(ValueLayout.JAVA_BYTE, i, (byte) (seed + i * 31));
        }
    }

    static byte[] bytes(MemorySegment s) {
        return s.toArray(ValueLayout.JAVA_BYTE);
    }
}
