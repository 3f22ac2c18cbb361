// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.MemFd;
import io.iovirt.linux.UnixSocket;
import io.iovirt.testing.OpenFiles;
import io.iovirt.virtio.VirtioFeatures;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A frontend that breaks the protocol: every malformed or out-of-state message must give one logged protocol error
 * naming the socket, close that connection (and every descriptor it sent), and leave the server serving the next
 * frontend.
 */
@Timeout(120)
class HostileFrontendTest {
    static final Duration TIMEOUT = Duration.ofSeconds(20);
    static final int V = Header.VERSION;

    @TempDir
    Path dir;

    Path socket;
    RecordingBackend backend;
    VhostUserServer server;
    LogCapture log;
    /** The descriptors open once the server listens: those opened later must all be closed at the end. */
    OpenFiles.Snapshot fdsBefore;

    interface Attack {
        void run(VhostUserFrontend fe) throws Exception;
    }

    @BeforeEach
    void start() throws IOException {
        log = LogCapture.start();
        socket = dir.resolve("vub.sock");
        backend = new RecordingBackend(2);
        server = VhostUserServer.start(socket, backend);
        fdsBefore = OpenFiles.snapshot();
    }

    @AfterEach
    void stop() throws Exception {
        assertTrue(server.awaitIdle(TIMEOUT)); // the last session's thread has closed what it held, and ended
        // what the frontends sent, the server's ends of their connections, the rings' eventfds: opened since, and
        // closed again — not a count of the process's descriptors, which other threads of a shared test JVM change
        // meanwhile (see OpenFiles)
        assertEquals(
                List.of(),
                fdsBefore.openedSince(),
                "descriptors the rejected frontends sent, or the server opened for them, still open");
        server.close();
        log.close();
    }

    private void assertRejected(String reason, Attack attack) throws Exception {
        try (VhostUserFrontend fe = VhostUserFrontend.connect(socket, TIMEOUT)) {
            attack.run(fe);
            assertClosedByServer(fe);
        }
        String line = log.awaitLine("protocol error");
        assertTrue(line.contains(socket.toString()), line);
        assertTrue(line.contains(reason), "expected '" + reason + "' in: " + line);
        assertTrue(server.awaitIdle(TIMEOUT));
        try (VhostUserFrontend next = VhostUserFrontend.connect(socket, TIMEOUT)) { // the server still serves
            assertEquals(
                    RecordingBackend.DEVICE_FEATURES
                            | Features.VHOST_USER_F_PROTOCOL_FEATURES
                            | Features.VHOST_F_LOG_ALL,
                    next.getFeatures());
            next.setProtocolFeatures(next.getProtocolFeatures());
            assertEquals(2, next.getQueueNum());
        }
        assertTrue(server.awaitIdle(TIMEOUT));
    }

    private static void assertClosedByServer(VhostUserFrontend fe) throws IOException {
        try (Arena a = Arena.ofConfined()) {
            UnixSocket.Received r = fe.connection().socket().recv(a.allocate(64), 8);
            assertTrue(r.eof(), "the server closed the connection without answering");
        } catch (LinuxException e) {
            assertEquals(io.iovirt.linux.Errno.ECONNRESET, e.errno(), e.getMessage());
        }
    }

    private static MemorySegment u64(long v) {
        MemorySegment p = Arena.ofAuto().allocate(8);
        Payloads.u64(p, v);
        return p;
    }

    private static MemorySegment log(long size, long offset) {
        MemorySegment p = Arena.ofAuto().allocate(Payloads.LOG_SIZE);
        Payloads.Log.write(p, size, offset);
        return p;
    }

    private static MemorySegment state(int index, int num) {
        MemorySegment p = Arena.ofAuto().allocate(8);
        Payloads.VringState.write(p, index, num);
        return p;
    }

    private static MemorySegment table(long[]... regions) {
        MemorySegment p = Arena.ofAuto().allocate(Payloads.MemoryTable.sizeFor(regions.length));
        Payloads.MemoryTable.writeCount(p, regions.length);
        for (int i = 0; i < regions.length; i++) {
            long[] r = regions[i];
            Payloads.Region.write(Payloads.MemoryTable.region(p, i), r[0], r[1], r[2], r[3]);
        }
        return p;
    }

    private static MemorySegment single(long gpa, long size, long uva, long offset) {
        MemorySegment p = Arena.ofAuto().allocate(Payloads.SINGLE_REGION_SIZE);
        Payloads.Region.write(Payloads.SingleRegion.region(p), gpa, size, uva, offset);
        return p;
    }

    private static void raw(VhostUserFrontend fe, MessageType t, MemorySegment payload, Fd... fds) throws IOException {
        fe.connection().sendRaw(t.code(), V, (int) payload.byteSize(), payload, List.of(fds));
    }

    private static void negotiate(VhostUserFrontend fe, long features) throws IOException {
        fe.getFeatures();
        fe.setProtocolFeatures(fe.getProtocolFeatures());
        fe.setFeatures(features);
    }

    private static final long FEATURES = VirtioFeatures.VIRTIO_F_VERSION_1 | Features.VHOST_USER_F_PROTOCOL_FEATURES;
    private static final MemorySegment EMPTY = MemorySegment.ofArray(new byte[0]);

    @Test
    void badHeaders() throws Exception {
        assertRejected(
                "announces a 65536-byte payload, more than the largest message",
                fe -> fe.connection().sendRaw(1, V, 0x10000, EMPTY, List.of()));
        assertRejected(
                "announces a 4294967295-byte payload", fe -> fe.connection().sendRaw(2, V, -1, EMPTY, List.of()));
        assertRejected(
                "SET_VRING_NUM has a 4-byte payload, expected 8",
                fe -> fe.connection()
                        .sendRaw(
                                MessageType.SET_VRING_NUM.code(),
                                V,
                                4,
                                Arena.ofAuto().allocate(4),
                                List.of()));
        assertRejected(
                "SET_FEATURES has a 16-byte payload, expected 8",
                fe -> fe.connection()
                        .sendRaw(
                                MessageType.SET_FEATURES.code(),
                                V,
                                16,
                                Arena.ofAuto().allocate(16),
                                List.of()));
        assertRejected(
                "GET_FEATURES has a 8-byte payload, expected 0", fe -> raw(fe, MessageType.GET_FEATURES, u64(0)));
        assertRejected("unknown request code 99", fe -> fe.connection().sendRaw(99, V, 0, EMPTY, List.of()));
        assertRejected("unknown request code 0", fe -> fe.connection().sendRaw(0, V, 0, EMPTY, List.of()));
        assertRejected("unknown request code 4294967295", fe -> fe.connection().sendRaw(-1, V, 0, EMPTY, List.of()));
        assertRejected("protocol version 2", fe -> fe.connection().sendRaw(1, 2, 0, EMPTY, List.of()));
        assertRejected("invalid flags 0x5", fe -> fe.connection().sendRaw(1, V | Header.REPLY, 0, EMPTY, List.of()));
        assertRejected("hung up in the middle of a message header", fe -> {
            MemorySegment part = Arena.ofAuto().allocate(6);
            fe.connection().socket().send(part);
            fe.connection().socket().shutdown(UnixSocket.SHUT_WR);
        });
    }

    @Test
    void descriptorsWhereNoneOrFewerBelong() throws Exception {
        try (EventFd e1 = EventFd.create(true);
                EventFd e2 = EventFd.create(true);
                Fd mem = MemFd.allocate("ram", 1 << 20)) {
            assertRejected(
                    "SET_VRING_NUM came with 1 file descriptor, expected 0",
                    fe -> raw(fe, MessageType.SET_VRING_NUM, state(0, 256), e1.fd()));
            assertRejected(
                    "GET_FEATURES came with 2 file descriptors, expected 0",
                    fe -> fe.connection()
                            .sendRaw(
                                    MessageType.GET_FEATURES.code(),
                                    V,
                                    0,
                                    Arena.ofAuto().allocate(1).asSlice(0, 0),
                                    List.of(e1.fd(), e2.fd())));
            assertRejected(
                    "SET_MEM_TABLE came with 2 file descriptors, expected 1",
                    fe -> raw(
                            fe,
                            MessageType.SET_MEM_TABLE,
                            table(new long[] {0, 1 << 20, 0x7000_0000L, 0}),
                            mem,
                            e1.fd()));
            assertRejected("more than 8 file descriptors", fe -> {
                List<Fd> nine = new ArrayList<>();
                for (int i = 0; i < 9; i++) {
                    nine.add(e1.fd());
                }
                fe.connection()
                        .sendRaw(
                                MessageType.SET_MEM_TABLE.code(),
                                V,
                                8,
                                Arena.ofAuto().allocate(8),
                                nine);
            });
            assertRejected(
                    "SET_VRING_KICK came with 1 file descriptor, expected 0",
                    fe -> raw(fe, MessageType.SET_VRING_KICK, u64(Payloads.VRING_NOFD_MASK), e1.fd()));
            assertRejected(
                    "SET_VRING_CALL came with 0 file descriptors, expected 1",
                    fe -> raw(fe, MessageType.SET_VRING_CALL, u64(0)));
            assertRejected(
                    "SET_VRING_KICK has reserved bits set: 0x200",
                    fe -> raw(fe, MessageType.SET_VRING_KICK, u64(1 << 9), e1.fd()));
            assertRejected("ADD_MEM_REG came with 0 file descriptors, expected 1", fe -> {
                negotiate(fe, FEATURES);
                raw(fe, MessageType.ADD_MEM_REG, single(0, 1 << 20, 0x7000_0000L, 0));
            });
        }
    }

    @Test
    void memoryTablesThatOverlapOverflowOrLie() throws Exception {
        try (Fd mem = MemFd.allocate("ram", 2 << 20);
                Fd small = MemFd.allocate("small", 1 << 20);
                EventFd notMemory = EventFd.create(true)) {
            assertRejected(
                    "overlap in guest physical space",
                    fe -> raw(
                            fe,
                            MessageType.SET_MEM_TABLE,
                            table(
                                    new long[] {0, 1 << 20, 0x7000_0000L, 0},
                                    new long[] {0x80000, 1 << 20, 0x7100_0000L, 1 << 20}),
                            mem,
                            mem));
            assertRejected(
                    "overlap in frontend address space",
                    fe -> raw(
                            fe,
                            MessageType.SET_MEM_TABLE,
                            table(
                                    new long[] {0, 1 << 20, 0x7000_0000L, 0},
                                    new long[] {0x1000_0000L, 1 << 20, 0x7008_0000L, 1 << 20}),
                            mem,
                            mem));
            assertRejected(
                    "guest physical range wraps around",
                    fe -> raw(
                            fe,
                            MessageType.SET_MEM_TABLE,
                            table(new long[] {0xffff_ffff_ffff_f000L, 0x2000, 0x7000_0000L, 0}),
                            mem));
            assertRejected(
                    "frontend address range wraps around",
                    fe -> raw(fe, MessageType.SET_MEM_TABLE, table(new long[] {0, 0x2000, -0x1000L, 0}), mem));
            assertRejected(
                    "size must be positive",
                    fe -> raw(fe, MessageType.SET_MEM_TABLE, table(new long[] {0, 0, 0x7000_0000L, 0}), mem));
            assertRejected(
                    "file offset overflows",
                    fe -> raw(
                            fe,
                            MessageType.SET_MEM_TABLE,
                            table(new long[] {0, 0x2000, 0x7000_0000L, Long.MAX_VALUE - 0x1000}),
                            mem));
            assertRejected(
                    "extends past the end of its 1048576-byte file",
                    fe -> raw(fe, MessageType.SET_MEM_TABLE, table(new long[] {0, 2 << 20, 0x7000_0000L, 0}), small));
            assertRejected(
                    "is not a shared memory file",
                    fe -> raw(
                            fe,
                            MessageType.SET_MEM_TABLE,
                            table(new long[] {0, 0x1000, 0x7000_0000L, 0}),
                            notMemory.fd()));
            assertRejected("SET_MEM_TABLE with 9 regions, at most 8 allowed", fe -> {
                MemorySegment p = Arena.ofAuto().allocate(8);
                Payloads.MemoryTable.writeCount(p, 9);
                raw(fe, MessageType.SET_MEM_TABLE, p);
            });
            assertRejected("SET_MEM_TABLE with 2 regions has a 40-byte payload, expected 72", fe -> {
                MemorySegment p = table(new long[] {0, 0x1000, 0x7000_0000L, 0});
                Payloads.MemoryTable.writeCount(p, 2);
                raw(fe, MessageType.SET_MEM_TABLE, p, mem, mem);
            });
            assertRejected("ADD_MEM_REG: regions overlap in guest physical space", fe -> {
                negotiate(fe, FEATURES);
                raw(fe, MessageType.ADD_MEM_REG, single(0, 1 << 20, 0x7000_0000L, 0), mem);
                raw(fe, MessageType.ADD_MEM_REG, single(0xff000, 0x1000, 0x7800_0000L, 0), mem);
            });
            assertRejected("REM_MEM_REG of a region that is not mapped", fe -> {
                negotiate(fe, FEATURES);
                raw(fe, MessageType.ADD_MEM_REG, single(0, 1 << 20, 0x7000_0000L, 0), mem);
                raw(fe, MessageType.REM_MEM_REG, single(0, 0x1000, 0x7000_0000L, 0));
            });
        }
    }

    /**
     * An ADD_MEM_REG refused for overlapping an earlier region in the frontend's address space (not in guest physical
     * space) once built the new table before the check, and that table's references kept every earlier region mapped
     * after the connection ended — a whole guest's RAM per attempt.
     */
    @Test
    void aRefusedRegionLeavesNoMappingBehind() throws Exception {
        String name = "hostile-add-" + ProcessHandle.current().pid() + "-" + System.nanoTime();
        try (Fd mem = MemFd.allocate(name, 2 << 20)) {
            assertRejected("ADD_MEM_REG: regions overlap in frontend address space", fe -> {
                negotiate(fe, FEATURES);
                raw(fe, MessageType.ADD_MEM_REG, single(0, 1 << 20, 0x7000_0000L, 0), mem);
                raw(fe, MessageType.ADD_MEM_REG, single(0x1_0000_0000L, 1 << 20, 0x7000_0000L, 1 << 20), mem);
            });
        }
        List<String> left = Files.readAllLines(Path.of("/proc/self/maps")).stream()
                .filter(l -> l.contains(name))
                .toList();
        assertEquals(List.of(), left, "mappings of the refused connection's memory still in place");
    }

    @Test
    void ringsOutsideTheDeviceOrItsMemory() throws Exception {
        try (FrontendMemory ram = FrontendMemory.allocate(0x100000, 1 << 20);
                EventFd kick = EventFd.create(true)) {
            long base = ram.userAddr();
            assertRejected(
                    "SET_VRING_NUM for queue 2, but the device has 2",
                    fe -> raw(fe, MessageType.SET_VRING_NUM, state(2, 256)));
            assertRejected("SET_VRING_ENABLE for queue 4294967295", fe -> {
                negotiate(fe, FEATURES);
                raw(fe, MessageType.SET_VRING_ENABLE, state(-1, 1));
            });
            assertRejected(
                    "SET_VRING_KICK for queue 200", fe -> raw(fe, MessageType.SET_VRING_KICK, u64(200), kick.fd()));
            assertRejected(
                    "queue 0 size 100 is not a power of two", fe -> raw(fe, MessageType.SET_VRING_NUM, state(0, 100)));
            assertRejected(
                    "queue 1 size 512 is outside 1..256", fe -> raw(fe, MessageType.SET_VRING_NUM, state(1, 512)));
            assertRejected("queue 0 size 0 is outside", fe -> raw(fe, MessageType.SET_VRING_NUM, state(0, 0)));
            assertRejected("is not a 16-bit ring index", fe -> raw(fe, MessageType.SET_VRING_BASE, state(0, 0x10000)));
            assertRejected("no memory table yet", fe -> {
                MemorySegment p = Arena.ofAuto().allocate(Payloads.VRING_ADDR_SIZE);
                Payloads.VringAddr.write(p, 0, 0, base, base + 0x2000, base + 0x1000, 0);
                raw(fe, MessageType.SET_VRING_ADDR, p);
            });
            assertRejected("is outside guest memory", fe -> {
                negotiate(fe, FEATURES);
                fe.addMemRegion(ram.descriptor());
                fe.setVringNum(0, 256);
                MemorySegment p = Arena.ofAuto().allocate(Payloads.VRING_ADDR_SIZE);
                // the used ring (6 + 8 * 256 bytes) would run 8 bytes past the end of the region
                Payloads.VringAddr.write(p, 0, 0, base, base + (1 << 20) - 6 - 8 * 256 + 8, base + 0x1000, 0);
                raw(fe, MessageType.SET_VRING_ADDR, p);
            });
            assertRejected("has unknown flags 0x2", fe -> {
                negotiate(fe, FEATURES);
                fe.addMemRegion(ram.descriptor());
                MemorySegment p = Arena.ofAuto().allocate(Payloads.VRING_ADDR_SIZE);
                Payloads.VringAddr.write(p, 0, 2, base, base + 0x2000, base + 0x1000, 0x100000);
                raw(fe, MessageType.SET_VRING_ADDR, p);
            });
            // migration's dirty log (issue 11): the log description and its descriptor are checked before mapping
            try (Fd logFd = MemFd.allocate("log", 4096)) {
                assertRejected("SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD negotiated", fe -> {
                    fe.getFeatures();
                    raw(fe, MessageType.SET_LOG_BASE, log(4096, 0), logFd);
                });
                assertRejected("the descriptor is not a shared memory file", fe -> {
                    negotiate(fe, FEATURES);
                    raw(fe, MessageType.SET_LOG_BASE, log(4096, 0), kick.fd());
                });
                assertRejected("extends past the end of its 4096-byte file", fe -> {
                    negotiate(fe, FEATURES);
                    raw(fe, MessageType.SET_LOG_BASE, log(8192, 0), logFd);
                });
                // a file on a disk file system (the temporary directory is on one here, as /tmp usually is): the
                // queue threads mark the log, and such a file can be truncated under them or served by FUSE
                Path onDisk = Files.createTempFile(Path.of("target"), "log", ".bin");
                Files.write(onDisk, new byte[4096]);
                try (Fd diskFd = FileIo.open(onDisk, FileIo.O_RDWR)) {
                    assertRejected("not tmpfs or hugetlbfs; the dirty log must be a memfd", fe -> {
                        negotiate(fe, FEATURES);
                        raw(fe, MessageType.SET_LOG_BASE, log(4096, 0), diskFd);
                    });
                } finally {
                    Files.deleteIfExists(onDisk);
                }
                assertRejected("needs a 16-byte log description and one descriptor, got 16 bytes and 0", fe -> {
                    negotiate(fe, FEATURES);
                    raw(fe, MessageType.SET_LOG_BASE, log(4096, 0));
                });
            }
            assertRejected("descriptor table at GPA 0x100008 is not 16-byte aligned", fe -> {
                negotiate(fe, FEATURES);
                fe.addMemRegion(ram.descriptor());
                fe.setVringNum(0, 256);
                fe.setVringAddr(0, base + 8, base + 0x2000, base + 0x1000);
                fe.setVringKick(0, kick);
                raw(fe, MessageType.SET_VRING_ENABLE, state(0, 1));
            });
            assertRejected("SET_VRING_NUM for queue 0 while it is started", fe -> {
                negotiate(fe, FEATURES);
                fe.addMemRegion(ram.descriptor());
                fe.setVringNum(0, 256);
                fe.setVringAddr(0, base, base + 0x2000, base + 0x1000);
                fe.setVringKick(0, kick);
                fe.setVringEnable(0, true);
                raw(fe, MessageType.SET_VRING_NUM, state(0, 128));
            });
            assertRejected("SET_VRING_ENABLE for queue 0 with 2, expected 0 or 1", fe -> {
                negotiate(fe, FEATURES);
                raw(fe, MessageType.SET_VRING_ENABLE, state(0, 2));
            });
            assertRejected("queue 0 started without SET_VRING_ADDR", fe -> {
                negotiate(fe, FEATURES);
                fe.setVringNum(0, 256);
                fe.setVringEnable(0, true);
                raw(fe, MessageType.SET_VRING_KICK, u64(0), kick.fd());
            });
        }
    }

    @Test
    void negotiationViolations() throws Exception {
        try (EventFd e = EventFd.create(true)) {
            assertRejected(
                    "SET_FEATURES acknowledges 0x10000000000, which was not offered",
                    fe -> raw(fe, MessageType.SET_FEATURES, u64(VirtioFeatures.VIRTIO_F_VERSION_1 | (1L << 40))));
            assertRejected(
                    "SET_FEATURES acknowledges 0x200000000, which was not offered",
                    fe -> raw(fe, MessageType.SET_FEATURES, u64(VirtioFeatures.VIRTIO_F_ACCESS_PLATFORM)));
            assertRejected(
                    "SET_PROTOCOL_FEATURES acknowledges 0x1000, which was not offered",
                    fe -> raw(
                            fe,
                            MessageType.SET_PROTOCOL_FEATURES,
                            u64(Features.bit(Features.PROTOCOL_INFLIGHT_SHMFD))));
            assertRejected("GET_CONFIG needs protocol feature 9, which was not negotiated", fe -> {
                MemorySegment p = Arena.ofAuto().allocate(Payloads.CONFIG_HEADER_SIZE + 4);
                Payloads.Config.writeHeader(p, 0, 4, 0);
                raw(fe, MessageType.GET_CONFIG, p);
            });
            assertRejected("GET_CONFIG says 300 bytes of configuration in a 268-byte payload", fe -> {
                fe.setProtocolFeatures(fe.getProtocolFeatures());
                MemorySegment p = Arena.ofAuto().allocate(Payloads.CONFIG_MAX_SIZE);
                Payloads.Config.writeHeader(p, 0, 300, 0);
                raw(fe, MessageType.GET_CONFIG, p);
            });
            assertRejected("SET_INFLIGHT_FD needs protocol feature 12", fe -> {
                fe.setProtocolFeatures(fe.getProtocolFeatures());
                raw(fe, MessageType.SET_INFLIGHT_FD, Arena.ofAuto().allocate(Payloads.INFLIGHT_SIZE), e.fd());
            });
            assertRejected(
                    "IOTLB_MSG is not supported by this backend",
                    fe -> raw(fe, MessageType.IOTLB_MSG, Arena.ofAuto().allocate(Payloads.IOTLB_SIZE)));
            assertRejected("SEND_RARP needs protocol feature 2", fe -> {
                fe.setProtocolFeatures(fe.getProtocolFeatures());
                raw(fe, MessageType.SEND_RARP, u64(0));
            });
            assertRejected("SET_STATUS 256 is not a device status byte", fe -> {
                fe.setProtocolFeatures(fe.getProtocolFeatures());
                raw(fe, MessageType.SET_STATUS, u64(0x100));
            });
        }
    }
}
