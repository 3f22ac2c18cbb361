// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

import static org.junit.jupiter.api.Assertions.assertTrue;

import com.code_intelligence.jazzer.junit.FuzzTest;
import io.iovirt.testing.GuestFixture;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Fuzzes the device-side walkers of split and packed rings: the fuzzer writes the whole ring memory (descriptor
 * table, available/driver area, indirect tables, starting indices) and the device pops until the ring is empty or
 * broken. Any outcome but a chain or a {@link VirtqueueException} is a bug, and no access may leave guest memory (the
 * fixture's canary guards). Seeds: src/test/resources/io/iovirt/virtio/WalkerFuzzTestInputs/.
 */
class WalkerFuzzTest {
    private static final int SIZE = 16;

    @FuzzTest(maxDuration = "10s")
    void split(byte[] data) throws Exception {
        walk(data, false);
    }

    @FuzzTest(maxDuration = "10s")
    void packed(byte[] data) throws Exception {
        walk(data, true);
    }

    private static void walk(byte[] data, boolean packed) throws Exception {
        if (data.length < 4) {
            return;
        }
        try (GuestFixture g = new GuestFixture(64 * 1024, 16 * 1024)) {
            int flags = data[0];
            boolean eventIdx = (flags & 1) != 0;
            boolean indirect = (flags & 2) != 0;
            int limit = 1 + (Byte.toUnsignedInt(data[1]) % 64);
            // Where the device starts (a reconnect or a migration resumes mid-ring): bits 4-7 pick the position —
            // for a split ring just below the 16-bit wrap of the free-running index, for a packed ring a slot —
            // bits 2 and 3 clear the packed wrap counters (set on a fresh ring).
            int start = (flags >> 4) & 0xf;
            int splitStart = start == 0 ? 0 : 0x10000 - start;
            boolean availWrap = (flags & 4) == 0;
            boolean usedWrap = (flags & 8) == 0;
            // Ring at GPA 0x1000; the rest of the fuzz input is copied over low guest memory from 0x1000 on, so it
            // writes descriptors, rings, indirect tables and buffers alike.
            long ring = 0x1000;
            MemorySegment low = g.at(0, g.lowSize);
            long n = Math.min(data.length - 2, g.lowSize - ring);
            MemorySegment.copy(MemorySegment.ofArray(data), 2, low, ring, n);
            QueueConfig qc = packed
                    ? QueueConfig.packed(
                            0,
                            SIZE,
                            ring,
                            ring + 16 * SIZE,
                            ring + 16 * SIZE + 4,
                            eventIdx,
                            indirect,
                            start,
                            availWrap,
                            start,
                            usedWrap)
                    : QueueConfig.split(
                            0, SIZE, ring, ring + 16 * SIZE, ring + 16 * SIZE + 64, eventIdx, indirect, splitStart);
            Virtqueue q;
            try {
                q = Virtqueue.create(qc, g.holder).limitChain(limit);
            } catch (VirtqueueException e) {
                return;
            }
            MemorySegment sink = MemorySegment.ofArray(new byte[256]);
            try {
                for (int i = 0; i < 2 * SIZE; i++) {
                    DescriptorChain c = q.pop();
                    if (c == null) {
                        break;
                    }
                    assertTrue(c.count() <= limit, "chain longer than its bound");
                    c.copyFromReadable(0, sink);
                    long w = Math.min(c.writableBytes(), 64);
                    c.copyToWritable(0, sink.asSlice(0, w));
                    q.push(c, w);
                }
                q.needsNotification();
                q.enableNotifications();
            } catch (VirtqueueException expected) {
                // the driver broke the rules: the queue failed, as it should
            }
            assertTrue(g.guardsIntact(), "a device access escaped guest memory");
            sink.get(ValueLayout.JAVA_BYTE, 0);
        }
    }
}
