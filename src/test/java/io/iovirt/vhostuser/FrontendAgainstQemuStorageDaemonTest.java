// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Epoll;
import io.iovirt.linux.EventFd;
import io.iovirt.testing.Require;
import io.iovirt.virtio.VirtioFeatures;
import io.iovirt.vm.ChildProcess;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Our frontend drives qemu-storage-daemon's vhost-user-blk export, the reference backend: negotiation, memory
 * regions, ring setup, and real block I/O through a minimal split ring written here by hand (the project's ring
 * driver lives in io.iovirt.virtio). Proves the frontend's messages are what a real backend expects.
 */
@Timeout(120)
@Tag("peer") // a real qemu-storage-daemon / iovirt backend process: Failsafe
class FrontendAgainstQemuStorageDaemonTest {
    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final int QUEUE_SIZE = 16;
    private static final long DESC = 0x0, AVAIL = 0x1000, USED = 0x2000;
    private static final int VIRTIO_BLK_T_IN = 0, VIRTIO_BLK_T_OUT = 1;
    private static final short F_NEXT = 1, F_WRITE = 2;
    private static final long DISK = 8 << 20;

    @TempDir
    Path dir;

    @Test
    void negotiatesAndMovesDataThroughARealBackend() throws Exception {
        Require.program("qemu-storage-daemon", "apt-get install qemu-system-x86");
        Path image = dir.resolve("disk.raw");
        byte[] sector0 = new byte[512];
        for (int i = 0; i < 512; i++) {
            sector0[i] = (byte) (i * 7 + 3);
        }
        try (var ch = java.nio.channels.FileChannel.open(
                image, java.nio.file.StandardOpenOption.CREATE_NEW, java.nio.file.StandardOpenOption.WRITE)) {
            ch.write(ByteBuffer.wrap(sector0), 0);
            ch.truncate(DISK);
            ch.write(ByteBuffer.wrap(new byte[1]), DISK - 1);
        }
        Path sock = dir.resolve("qsd.sock");
        try (ChildProcess qsd = ChildProcess.builder(List.of(
                        "qemu-storage-daemon",
                        "--blockdev",
                        "driver=file,node-name=file0,filename=" + image,
                        "--blockdev",
                        "driver=raw,node-name=disk0,file=file0",
                        "--export",
                        "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=" + sock
                                + ",writable=on,num-queues=1"))
                .name("qemu-storage-daemon")
                .log(dir.resolve("qsd.log"))
                .directory(dir)
                // the socket file exists from bind(), before listen(): a connect in between is refused (seen in CI)
                .startListening(sock, Duration.ofSeconds(60))) {
            try (VhostUserFrontend fe = VhostUserFrontend.connect(sock, Duration.ofSeconds(30));
                    FrontendMemory ram = FrontendMemory.allocate(0, 1 << 20);
                    EventFd kick = EventFd.create(true);
                    EventFd call = EventFd.create(true);
                    Epoll ep = Epoll.create(1)) {
                long features = fe.getFeatures();
                assertTrue(
                        VirtioFeatures.has(
                                features, VirtioFeatures.VIRTIO_F_VERSION_1 | Features.VHOST_USER_F_PROTOCOL_FEATURES),
                        Long.toHexString(features));
                long pf = fe.getProtocolFeatures();
                assertTrue(
                        VirtioFeatures.has(
                                pf, Features.bit(Features.PROTOCOL_CONFIG) | Features.bit(Features.PROTOCOL_MQ)),
                        Long.toHexString(pf));
                long wanted = pf & Features.CORE_PROTOCOL_FEATURES;
                fe.setProtocolFeatures(wanted);
                assertEquals(1, fe.getQueueNum());
                byte[] config = fe.getConfig(0, 36);
                ByteBuffer cfg = ByteBuffer.wrap(config).order(ByteOrder.LITTLE_ENDIAN);
                assertEquals(DISK / 512, cfg.getLong(0), "capacity in sectors");
                assertEquals(1, cfg.getShort(34), "num_queues");
                fe.setOwner();
                fe.setVringCall(0, call);
                fe.setFeatures(VirtioFeatures.VIRTIO_F_VERSION_1 | Features.VHOST_USER_F_PROTOCOL_FEATURES);
                if ((wanted & Features.bit(Features.PROTOCOL_CONFIGURE_MEM_SLOTS)) != 0) {
                    assertTrue(fe.getMaxMemSlots() >= 8);
                    fe.addMemRegion(ram.descriptor());
                } else {
                    fe.setMemTable(List.of(ram.descriptor()));
                }
                fe.setVringNum(0, QUEUE_SIZE);
                fe.setVringBase(0, 0);
                fe.setVringAddr(0, ram.userAddrOf(DESC), ram.userAddrOf(USED), ram.userAddrOf(AVAIL));
                fe.setVringKick(0, kick);
                fe.setVringCall(0, call);
                fe.setVringEnable(0, true);
                ep.add(call.fd(), Epoll.EPOLLIN, 0);

                MemorySegment m = ram.segment();
                // request 1: read sector 0; request 2: write a new pattern to sector 1
                byte[] sector1 = new byte[512];
                Arrays.fill(sector1, (byte) 0x5a);
                request(m, 0, 0, VIRTIO_BLK_T_IN, 0, 0x10000, null);
                request(m, 1, 3, VIRTIO_BLK_T_OUT, 1, 0x11000, sector1);
                publish(m, 2);
                kick.signal();
                awaitUsed(m, ep, call, 2);
                assertEquals(0, m.get(ValueLayout.JAVA_BYTE, 0x20000), "read status VIRTIO_BLK_S_OK");
                assertEquals(0, m.get(ValueLayout.JAVA_BYTE, 0x20003), "write status VIRTIO_BLK_S_OK");
                assertArrayEquals(sector0, m.asSlice(0x10000, 512).toArray(ValueLayout.JAVA_BYTE));
                for (int i = 0; i < 2; i++) { // completions may come in any order
                    int id = m.get(U32, USED + 4 + 8L * i);
                    int len = m.get(U32, USED + 8 + 8L * i);
                    assertEquals(id == 0 ? 513 : 1, len, "used length of chain " + id + " (device-written bytes)");
                }

                fe.setVringEnable(0, false);
                assertEquals(2, fe.getVringBase(0), "the backend stopped after both requests");
            }
            byte[] onDisk = Files.readAllBytes(image);
            byte[] expected = new byte[512];
            Arrays.fill(expected, (byte) 0x5a);
            assertArrayEquals(expected, Arrays.copyOfRange(onDisk, 512, 1024), "the write reached the image file");
        }
    }

    /** Chain of three descriptors starting at {@code head}: header, data, status. */
    private static void request(MemorySegment m, int slot, int head, int type, long sector, long data, byte[] out) {
        long hdr = 0x30000 + slot * 16L;
        m.set(U32, hdr, type);
        m.set(U32, hdr + 4, 0);
        m.set(U64, hdr + 8, sector);
        if (out != null) {
            MemorySegment.copy(out, 0, m, ValueLayout.JAVA_BYTE, data, out.length);
        }
        long status = 0x20000 + head;
        m.set(ValueLayout.JAVA_BYTE, status, (byte) 0xff);
        descriptor(m, head, hdr, 16, F_NEXT, head + 1);
        descriptor(m, head + 1, data, 512, (short) (F_NEXT | (out == null ? F_WRITE : 0)), head + 2);
        descriptor(m, head + 2, status, 1, F_WRITE, 0);
        m.set(U16, AVAIL + 4 + 2L * slot, (short) head);
    }

    private static void descriptor(MemorySegment m, int i, long addr, int len, short flags, int next) {
        long d = DESC + 16L * i;
        m.set(U64, d, addr);
        m.set(U32, d + 8, len);
        m.set(U16, d + 12, flags);
        m.set(U16, d + 14, (short) next);
    }

    private static void publish(MemorySegment m, int availIdx) {
        VarHandle.releaseFence(); // descriptors before the index, as a driver must
        m.set(U16, AVAIL + 2, (short) availIdx);
        VarHandle.fullFence();
    }

    private static void awaitUsed(MemorySegment m, Epoll ep, EventFd call, int idx) throws Exception {
        for (int i = 0; i < 600; i++) {
            VarHandle.acquireFence();
            if (Short.toUnsignedInt(m.get(U16, USED + 2)) == idx) {
                return;
            }
            if (ep.wait(100) > 0) {
                call.read();
            }
        }
        throw new AssertionError("the backend did not complete the requests; used.idx = " + m.get(U16, USED + 2));
    }
}
