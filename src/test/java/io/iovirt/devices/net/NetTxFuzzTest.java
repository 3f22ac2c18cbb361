// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.code_intelligence.jazzer.junit.FuzzTest;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.GuestMemoryHolder;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.net.Switch;
import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.Virtqueue;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;

/**
 * Fuzzes the virtio-net transmit parser ({@link NetTxQueue#handle}): the fuzzer picks the chain's buffers and every
 * byte of header and frame; the frame goes through the switch of a real port. Whatever the guest sends, the request
 * is consumed (forwarded or counted as dropped) and nothing is thrown. Input: byte 0 = buffer count (1..8), then per
 * buffer 2 bytes of length (LE), then the bytes copied into the buffers. Seeds:
 * src/test/resources/io/iovirt/devices/net/NetTxFuzzTestInputs/.
 */
class NetTxFuzzTest {
    static final long RAM = 1 << 20;
    static Path dir;
    static Switch sw;
    static VirtioNetPort port;
    static NetTxQueue tx;
    static Arena arena;
    static MemorySegment ram;
    static GuestMemoryHolder holder;

    @BeforeAll
    static void setUp() throws Exception {
        dir = Files.createTempDirectory("netfuzz");
        sw = new Switch(Switch.Config.defaults());
        port = sw.addPort(new VirtioNetPort(VirtioNetPort.Options.of(dir.resolve("p.sock"))));
        tx = new NetTxQueue(port, 1, port.ingress(0), VirtioNet.HDR_SIZE, 1518);
        arena = Arena.ofShared();
        ram = arena.allocate(RAM, 4096);
        holder = new GuestMemoryHolder();
        holder.swap(GuestMemory.of(List.of(new MemoryRegion(0, RAM, 0x7000_0000L, 0, ram, null))));
    }

    @AfterAll
    static void tearDown() throws Exception {
        sw.close();
        arena.close();
        Files.deleteIfExists(dir.resolve("p.sock"));
        Files.deleteIfExists(dir);
    }

    @FuzzTest(maxDuration = "10s")
    void frame(byte[] data) throws Exception {
        if (data.length < 1) {
            return;
        }
        int count = 1 + (Byte.toUnsignedInt(data[0]) % 8);
        if (data.length < 1 + 2 * count) {
            return;
        }
        SplitDriverRing ring = SplitDriverRing.create(holder.get(), 0, 16, false);
        Virtqueue q = Virtqueue.create(ring.queueConfig(1, false), holder).limitChain(VirtioNetPort.MAX_CHAIN);
        long[] addrs = new long[count];
        int[] lens = new int[count];
        long next = 0x10000;
        int pos = 1 + 2 * count;
        for (int i = 0; i < count; i++) {
            lens[i] = (Byte.toUnsignedInt(data[1 + 2 * i]) | Byte.toUnsignedInt(data[2 + 2 * i]) << 8) % 70000;
            addrs[i] = next;
            next += lens[i] + 64;
            int k = Math.max(0, Math.min(lens[i], data.length - pos));
            MemorySegment.copy(data, pos, ram, ValueLayout.JAVA_BYTE, addrs[i], k);
            pos += k;
        }
        ring.add(addrs, lens, new boolean[count], count, DriverRing.NO_INDIRECT);
        DescriptorChain c = q.pop();
        long before = port.stats().rxPackets() + port.stats().rxDropped();
        assertEquals(0, tx.process(c));
        tx.batchDone();
        q.push(c, 0);
        q.releaseMemory();
        assertEquals(
                before + 1, port.stats().rxPackets() + port.stats().rxDropped(), "every frame forwarded or counted");
    }
}
