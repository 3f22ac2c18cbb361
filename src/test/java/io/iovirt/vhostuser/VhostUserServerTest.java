// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.UnixSocket;
import io.iovirt.memory.GuestMemory;
import io.iovirt.virtio.VirtioFeatures;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** The protocol layer against a real frontend over a real socket, as QEMU 7.2 drives a vhost-user-blk backend. */
@Timeout(60)
class VhostUserServerTest {
    static final Duration TIMEOUT = Duration.ofSeconds(20);
    static final long RING_GPA = 0x100000;
    static final long DESC = RING_GPA;
    static final long AVAIL = RING_GPA + 0x1000;
    static final long USED = RING_GPA + 0x2000;

    @TempDir
    Path dir;

    Path socket;
    RecordingBackend backend;
    VhostUserServer server;
    LogCapture log;

    @BeforeEach
    void start() throws IOException {
        log = LogCapture.start();
        socket = dir.resolve("vub.sock");
        backend = new RecordingBackend(2);
        server = VhostUserServer.start(socket, backend);
    }

    @AfterEach
    void stop() {
        server.close();
        log.close();
    }

    VhostUserFrontend connect() throws IOException {
        return VhostUserFrontend.connect(socket, TIMEOUT);
    }

    /** QEMU's vhost_user_backend_init + vhost_dev_init + realize for vhost-user-blk. */
    static void initLikeQemu(VhostUserFrontend fe, EventFd call, EventFd err) throws IOException {
        assertEquals(
                RecordingBackend.DEVICE_FEATURES | Features.VHOST_USER_F_PROTOCOL_FEATURES | Features.VHOST_F_LOG_ALL,
                fe.getFeatures());
        long pf = fe.getProtocolFeatures();
        assertEquals(Features.CORE_PROTOCOL_FEATURES, pf);
        fe.setProtocolFeatures(pf);
        assertEquals(2, fe.getQueueNum());
        assertEquals(509, fe.getMaxMemSlots());
        fe.setOwner();
        fe.getFeatures();
        fe.setVringCall(0, call);
        fe.setVringErr(0, err);
        byte[] cfg = fe.getConfig(0, RecordingBackend.CONFIG_SIZE);
        assertEquals(2, cfg[2]);
    }

    /** QEMU's vhost_dev_start for one split queue of 256 entries. */
    static void startLikeQemu(
            VhostUserFrontend fe, FrontendMemory low, FrontendMemory high, EventFd kick, EventFd call, long features)
            throws IOException {
        fe.setFeatures(features);
        fe.addMemRegion(low.descriptor());
        fe.addMemRegion(high.descriptor());
        fe.setVringNum(0, 256);
        fe.setVringBase(0, 0);
        fe.setVringAddr(0, high.userAddrOf(DESC), high.userAddrOf(USED), high.userAddrOf(AVAIL));
        fe.setVringKick(0, kick);
        fe.setVringCall(0, call);
        fe.setVringEnable(0, true);
    }

    static final long FEATURES = VirtioFeatures.VIRTIO_F_VERSION_1
            | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
            | Features.VHOST_USER_F_PROTOCOL_FEATURES;

    /** What a QEMU-like session needs: the connection, guest memory below 640 KiB and at the rings, three eventfds. */
    record Session(
            VhostUserFrontend fe, FrontendMemory low, FrontendMemory high, EventFd err, EventFd kick, EventFd call)
            implements AutoCloseable {
        @Override
        public void close() throws Exception {
            try (fe;
                    low;
                    high;
                    err;
                    kick;
                    call) {
                // each closed, the last opened first
            }
        }
    }

    Session session() throws Exception {
        return session(socket);
    }

    /** A {@link Session} with the server listening at {@code socket}. */
    static Session session(Path socket) throws Exception {
        return new Session(
                VhostUserFrontend.connect(socket, TIMEOUT),
                FrontendMemory.allocate(0, 0xa0000),
                FrontendMemory.allocate(RING_GPA, 1 << 20),
                EventFd.create(true),
                EventFd.create(true),
                EventFd.create(true));
    }

    /**
     * A device that throws while stopping a queue at the end of a connection: the rest of the clean-up still runs
     * (before, the first exception skipped the device reset and left guest memory mapped for good).
     */
    @Test
    void aQueueThatFailsToStopDoesNotLeaveTheConnectionBehind() throws Exception {
        backend.failStopOf = 0;
        GuestMemory sessionMemory;
        try (Session q = session()) {
            initLikeQemu(q.fe(), q.call(), q.err());
            startLikeQemu(q.fe(), q.low(), q.high(), q.kick(), q.call(), FEATURES);
            backend.await("queueStarted 0");
            sessionMemory = backend.memories.getLast();
            assertTrue(sessionMemory.live());
        } // the frontend hangs up
        backend.await("queueStopped 0");
        backend.await("reset");
        assertTrue(server.awaitIdle(TIMEOUT));
        assertFalse(sessionMemory.live(), "the connection's guest memory was released");
    }

    /** An err eventfd given while the ring runs, which had none when it started, reaches the device. */
    @Test
    void anErrEventfdGivenWhileTheRingRunsReachesTheDevice() throws Exception {
        try (Session q = session()) {
            q.fe().getFeatures();
            q.fe().setProtocolFeatures(q.fe().getProtocolFeatures());
            startLikeQemu(q.fe(), q.low(), q.high(), q.kick(), q.call(), FEATURES); // no SET_VRING_ERR before it
            backend.await("queueStarted 0");
            q.fe().setVringErr(0, q.err());
            q.fe().getQueueNum(); // a round trip: the SET_VRING_ERR before it has been handled
            backend.running.get(0).err().signal(); // what the device does when the queue fails
            assertEquals(1, q.err().read(), "the frontend's err eventfd was signalled");
        }
    }

    @Test
    void fullBlkSessionAsQemuDrivesIt() throws Exception {
        GuestMemory sessionMemory;
        try (VhostUserFrontend fe = connect();
                FrontendMemory low = FrontendMemory.allocate(0, 0xa0000);
                FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                EventFd initCall = EventFd.create(true);
                EventFd err = EventFd.create(true);
                EventFd kick = EventFd.create(true);
                EventFd call = EventFd.create(true)) {
            initLikeQemu(fe, initCall, err);
            fe.setFeatures(FEATURES);
            fe.addMemRegion(low.descriptor());
            fe.addMemRegion(high.descriptor());
            fe.setVringNum(0, 256);
            fe.setVringBase(0, 0);
            fe.setVringAddr(0, high.userAddrOf(DESC), high.userAddrOf(USED), high.userAddrOf(AVAIL));
            fe.setVringKick(0, kick);
            fe.setVringCall(0, call);
            assertTrue(backend.running.isEmpty(), "protocol features negotiated: the ring waits for SET_VRING_ENABLE");
            fe.setVringEnable(0, true);

            VringSetup s = backend.running.get(0);
            assertNotNull(s);
            assertEquals(256, s.size());
            assertEquals(DESC, s.descGpa());
            assertEquals(AVAIL, s.availGpa());
            assertEquals(USED, s.usedGpa());
            assertEquals(0, s.base());
            assertTrue(s.eventIdx());
            assertFalse(s.packed());
            assertEquals(VirtioFeatures.VIRTIO_F_VERSION_1 | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX, s.features());
            assertNotNull(s.err());

            // guest memory is shared: what the frontend writes, the device reads through its snapshot, and back
            high.segment().set(JAVA_LONG, 0x10, 0x1122_3344_5566_7788L);
            assertEquals(
                    0x1122_3344_5566_7788L,
                    s.memory().get().translate(DESC + 0x10, 8).get(JAVA_LONG, 0));
            s.memory().get().translate(0x9fff8, 8).set(JAVA_LONG, 0, 42);
            assertEquals(42, low.segment().get(JAVA_LONG, 0x9fff8));

            kick.signal(); // the driver's kick reaches the device's descriptor ...
            assertEquals(1, s.kick().read());
            s.call().signal(); // ... and the device's interrupt reaches the driver
            assertEquals(2, call.read(), "the device's, after the one every new call descriptor gets");
            assertEquals(1, initCall.read(), "the call descriptor set at init got its one, then was replaced");

            fe.setStatus(0xf);
            assertEquals(0xf, fe.getStatus());

            backend.stopIndexOffset = 17;
            fe.setVringEnable(0, false); // QEMU 7.2 disables before GET_VRING_BASE
            assertTrue(backend.running.isEmpty());
            assertEquals(17, fe.getVringBase(0));
            assertEquals(17, fe.getVringBase(0), "a stopped ring keeps reporting where it stopped");
            fe.setStatus(0);
            sessionMemory = backend.memories.get(backend.memories.size() - 1);
            assertEquals(2, sessionMemory.regionCount());
        }
        assertTrue(server.awaitIdle(TIMEOUT));
        assertEquals(
                List.of(
                        "readConfig 0+60",
                        "setFeatures 0x" + Long.toHexString(FEATURES & ~Features.VHOST_USER_F_PROTOCOL_FEATURES),
                        "memoryChanged 1",
                        "memoryChanged 2",
                        "queueStarted 0",
                        "setStatus 15",
                        "queueStopped 0",
                        "setStatus 0",
                        "reset",
                        "memoryChanged 0"),
                backend.snapshot());
        MemorySegment unmapped = sessionMemory.regions().get(0).mapping();
        assertThrows(
                IllegalStateException.class, () -> unmapped.get(JAVA_LONG, 0), "the backend unmapped guest memory");
    }

    /**
     * QEMU's vhost-user-net with two queue pairs runs two vhost devices over one connection; each adds (and removes)
     * the same regions. The region is mapped once and unmapped only when the last one removes it.
     */
    @Test
    void theSameRegionAddedByTwoVhostDevicesIsMappedOnceAndReferenceCounted() throws Exception {
        try (VhostUserFrontend fe = connect();
                FrontendMemory ram = FrontendMemory.allocate(RING_GPA, 1 << 20);
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            fe.setFeatures(FEATURES);
            fe.addMemRegion(ram.descriptor());
            fe.addMemRegion(ram.descriptor()); // the second queue pair's vhost device
            GuestMemory mem = backend.memories.get(backend.memories.size() - 1);
            assertEquals(1, mem.regionCount());
            assertEquals(1, backend.memories.size(), "the duplicate changed nothing");
            fe.removeMemRegion(ram.descriptor());
            assertEquals(1, backend.memories.get(backend.memories.size() - 1).regionCount(), "still in use");
            ram.segment().set(JAVA_LONG, 8, 77);
            assertEquals(77, mem.translate(RING_GPA + 8, 8).get(JAVA_LONG, 0), "still mapped");
            fe.removeMemRegion(ram.descriptor());
            assertEquals(0, backend.memories.get(backend.memories.size() - 1).regionCount());
            assertThrows(
                    IllegalStateException.class,
                    () -> mem.translate(RING_GPA, 8).get(JAVA_LONG, 0),
                    "unmapped after the last removal");
        }
    }

    @Test
    void aReconnectingFrontendIsServedFromScratch() throws Exception {
        for (int round = 0; round < 3; round++) {
            try (VhostUserFrontend fe = connect();
                    FrontendMemory low = FrontendMemory.allocate(0, 0xa0000);
                    FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                    EventFd call = EventFd.create(true);
                    EventFd err = EventFd.create(true);
                    EventFd kick = EventFd.create(true)) {
                initLikeQemu(fe, call, err);
                startLikeQemu(fe, low, high, kick, call, FEATURES);
                assertEquals(256, backend.running.get(0).size());
            } // the frontend goes away with the queue running, as when QEMU is killed
            backend.await("queueStopped 0");
            backend.await("reset");
            backend.await("memoryChanged 0");
        }
    }

    @Test
    void aSecondFrontendWaitsInTheBacklogUntilTheFirstGoes() throws Exception {
        VhostUserFrontend first = connect();
        assertTrue(first.getFeatures() != 0);
        assertFalse(server.frontendWaiting());
        // Its connect succeeds (the backlog), its first request is not answered while the first frontend is served.
        try (VhostUserFrontend second = VhostUserFrontend.connect(socket, Duration.ofSeconds(2))) {
            String warning = log.awaitLine("another frontend is connecting");
            assertTrue(warning.contains(socket.toString()) && warning.contains("waits"), warning);
            assertThrows(IOException.class, second::getFeatures, "answered while the first frontend is served");
            assertTrue(server.frontendWaiting());
            assertTrue(server.frontendSummary().contains("another frontend waiting"), server.frontendSummary());
            assertTrue(first.getFeatures() != 0, "the first frontend is unaffected");
        }
        // A waiting frontend that gives up is gone from the backlog when the first one leaves; a new one is served.
        first.close();
        io.iovirt.testing.Await.until(TIMEOUT, "the first frontend's session ends", () -> !server.connected());
        // the session's clean-up ends a moment after it stops counting as connected; then nothing waits any more
        io.iovirt.testing.Await.until(TIMEOUT, "no frontend waiting", () -> !server.frontendWaiting());
        assertEquals(1, server.frontendsWaited());
        try (VhostUserFrontend third = connect()) {
            assertTrue(third.getFeatures() != 0);
        }
    }

    @Test
    void aWaitingFrontendIsServedWhenTheFirstDisconnects() throws Exception {
        VhostUserFrontend first = connect();
        assertTrue(first.getFeatures() != 0);
        try (VhostUserFrontend second = VhostUserFrontend.connect(socket, TIMEOUT)) {
            log.awaitLine("another frontend is connecting");
            Thread closer = Thread.ofPlatform().start(() -> {
                try {
                    Thread.sleep(300);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
                first.close();
            });
            // Sent while the first is still served: answered once it has gone, on the same connection.
            assertTrue(second.getFeatures() != 0);
            closer.join();
            assertTrue(log.awaitLine(" connected").contains("frontend pid"));
        }
    }

    @Test
    void callDescriptorIsSwappedUnderARunningQueueWithoutStoppingIt() throws Exception {
        try (VhostUserFrontend fe = connect();
                FrontendMemory low = FrontendMemory.allocate(0, 0xa0000);
                FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                EventFd call1 = EventFd.create(true);
                EventFd call2 = EventFd.create(true);
                EventFd err = EventFd.create(true);
                EventFd kick = EventFd.create(true)) {
            initLikeQemu(fe, call1, err);
            startLikeQemu(fe, low, high, kick, call1, FEATURES);
            VringSetup s = backend.running.get(0);
            assertEquals(2, call1.read(), "one interrupt for each SET_VRING_CALL that named it");
            int number = s.call().fd().get();
            fe.setVringCall(0, call2); // QEMU does this when the guest masks the queue's MSI-X vector
            assertEquals(s, backend.running.get(0), "the queue kept running");
            assertEquals(number, s.call().fd().get());
            // An interrupt the device sent to call1 just before the swap may be one nobody looks at (QEMU 7.2 checks
            // its masked eventfd without waiting for the backend): the new descriptor gets one at once.
            assertEquals(1, call2.read());
            s.call().signal();
            assertEquals(1, call2.read());
            assertEquals(0, call1.read());
            fe.setVringCall(0, null); // no descriptor: the device's signals go nowhere, harmlessly
            s.call().signal();
            assertEquals(0, call2.read());
        }
    }

    @Test
    void kickWithoutDescriptorMeansPolling() throws Exception {
        try (VhostUserFrontend fe = connect();
                FrontendMemory low = FrontendMemory.allocate(0, 0xa0000);
                FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            startLikeQemu(fe, low, high, null, call, FEATURES);
            assertNull(backend.running.get(0).kick());
        }
    }

    /** QEMU 7.2's vhost-user-net exchanges protocol features but drops bit 30 from SET_FEATURES. */
    @Test
    void protocolFeaturesExchangedButBit30DroppedFromSetFeaturesStillEnablesRings() throws Exception {
        try (VhostUserFrontend fe = connect();
                FrontendMemory low = FrontendMemory.allocate(0, 0xa0000);
                FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true);
                EventFd kick = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            fe.setFeatures(FEATURES & ~Features.VHOST_USER_F_PROTOCOL_FEATURES);
            fe.addMemRegion(low.descriptor());
            fe.addMemRegion(high.descriptor());
            fe.setVringNum(0, 256);
            fe.setVringBase(0, 0);
            fe.setVringAddr(0, high.userAddrOf(DESC), high.userAddrOf(USED), high.userAddrOf(AVAIL));
            fe.setVringKick(0, kick);
            fe.setVringCall(0, call);
            assertTrue(backend.running.isEmpty(), "the protocol-features dialect: the ring waits for SET_VRING_ENABLE");
            fe.setVringEnable(0, true);
            backend.await("queueStarted 0");
            assertEquals(0, fe.getVringBase(0));
        }
    }

    @Test
    void withoutProtocolFeaturesARingStartsOnItsKickAndCannotBeEnabled() throws Exception {
        try (VhostUserFrontend fe = connect();
                FrontendMemory low = FrontendMemory.allocate(0, 0xa0000);
                FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                EventFd call = EventFd.create(true);
                EventFd kick = EventFd.create(true)) {
            // a legacy frontend: no GET_PROTOCOL_FEATURES and no memory slots protocol, plain SET_MEM_TABLE
            fe.setOwner();
            fe.setFeatures(VirtioFeatures.VIRTIO_F_VERSION_1);
            fe.setMemTable(List.of(low.descriptor(), high.descriptor()));
            fe.setVringNum(0, 128);
            fe.setVringBase(0, 3);
            fe.setVringAddr(0, high.userAddrOf(DESC), high.userAddrOf(USED), high.userAddrOf(AVAIL));
            fe.setVringCall(0, call);
            fe.setVringKick(0, kick);
            assertEquals(
                    3,
                    backend.await("queueStarted 0") != null
                            ? backend.running.get(0).base()
                            : -1);
            assertEquals(3, fe.getVringBase(0));
            fe.setVringEnable(0, true);
            assertTrue(log.awaitLine("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES")
                    .contains(socket.toString()));
        }
    }

    @Test
    void packedRingsTakeAnySizeAndAWrapCounterInTheBase() throws Exception {
        try (VhostUserFrontend fe = connect();
                FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true);
                EventFd kick = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            fe.setFeatures(FEATURES | VirtioFeatures.VIRTIO_F_RING_PACKED);
            fe.addMemRegion(high.descriptor());
            fe.setVringNum(1, 100);
            fe.setVringBase(1, 0x8000 | 99);
            fe.setVringAddr(1, high.userAddrOf(DESC), high.userAddrOf(USED), high.userAddrOf(AVAIL));
            fe.setVringKick(1, kick);
            fe.setVringEnable(1, true);
            VringSetup s = backend.running.get(1);
            assertTrue(s.packed());
            assertEquals(100, s.size());
            assertEquals(0x8000 | 99, s.base());
            assertEquals(0x8000 | 99, fe.getVringBase(1));
            fe.setVringBase(1, 100); // position == size: outside the ring
            assertThrows(IOException.class, () -> fe.setVringKick(1, kick)); // still enabled: starts on the kick
            assertTrue(log.awaitLine("points outside its 100-entry packed ring").contains(socket.toString()));
        }
    }

    @Test
    void memoryTableChangesReachRunningQueuesAndUnmapWhatLeft() throws Exception {
        try (VhostUserFrontend fe = connect();
                FrontendMemory low = FrontendMemory.allocate(0, 0xa0000);
                FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                FrontendMemory extra = FrontendMemory.allocate(0x4000_0000L, 1 << 16);
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true);
                EventFd kick = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            startLikeQemu(fe, low, high, kick, call, FEATURES);
            VringSetup s = backend.running.get(0);
            GuestMemory before = s.memory().get();

            fe.addMemRegion(extra.descriptor()); // hot-plugged while the queue runs
            extra.segment().set(JAVA_LONG, 8, 99);
            assertEquals(99, s.memory().get().translate(0x4000_0000L + 8, 8).get(JAVA_LONG, 0));
            assertEquals(
                    before.regions().get(0).mapping().get(JAVA_LONG, 0),
                    low.segment().get(JAVA_LONG, 0),
                    "regions that stayed are still mapped");

            fe.removeMemRegion(low.descriptor());
            MemorySegment gone = before.regions().get(0).mapping(); // GPA 0: the low region
            assertThrows(IllegalStateException.class, () -> gone.get(JAVA_LONG, 0));
            assertThrows(
                    io.iovirt.memory.GuestMemoryFault.class,
                    () -> s.memory().get().translate(0, 8));
            assertEquals(backend.running.get(0), s, "the queue kept running");

            // SET_MEM_TABLE replaces everything at once (frontends without CONFIGURE_MEM_SLOTS)
            GuestMemory beforeTable = s.memory().get();
            fe.setMemTable(List.of(low.descriptor(), high.descriptor()));
            assertEquals(2, s.memory().get().regionCount());
            for (var r : beforeTable.regions()) {
                assertThrows(IllegalStateException.class, () -> r.mapping().get(JAVA_LONG, 0));
            }
            assertEquals(backend.running.get(0), s);
        }
    }

    @Test
    void resetDeviceStopsQueuesButKeepsMemory() throws Exception {
        try (VhostUserFrontend fe = connect();
                FrontendMemory low = FrontendMemory.allocate(0, 0xa0000);
                FrontendMemory high = FrontendMemory.allocate(RING_GPA, 1 << 20);
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true);
                EventFd kick = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            startLikeQemu(fe, low, high, kick, call, FEATURES);
            fe.setConfig(32, new byte[] {0}, 0);
            assertEquals(0, backend.config[32]);
            fe.resetDevice();
            assertTrue(backend.running.isEmpty());
            assertEquals(1, backend.config[32], "the device's configuration reverted");
            // the frontend only re-sends what changed: memory stays, the rings are set up again
            fe.setFeatures(FEATURES);
            fe.setVringNum(0, 64);
            fe.setVringAddr(0, high.userAddrOf(DESC), high.userAddrOf(USED), high.userAddrOf(AVAIL));
            fe.setVringKick(0, kick);
            assertTrue(backend.running.isEmpty(), "reset disabled the ring");
            fe.setVringEnable(0, true);
            assertEquals(64, backend.running.get(0).size());
        }
    }

    @Test
    void refusedRequestsAreAnsweredAndTheConnectionStays() throws Exception {
        try (VhostUserFrontend fe = connect();
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            RequestRejectedException e =
                    assertThrows(RequestRejectedException.class, () -> fe.setConfig(0, new byte[8], 0));
            assertEquals(1, e.status());
            assertThrows(RequestRejectedException.class, () -> fe.getConfig(56, 8)); // past the 60-byte space
            assertTrue(log.awaitLine("SET_CONFIG refused").contains(socket.toString()));

            // SET_LOG_FD: the log is shared memory only; refused without dropping the frontend
            fe.connection()
                    .sendRequest(MessageType.SET_LOG_FD, true, Arena.ofAuto().allocate(0), List.of());
            try (Message ack = fe.connection().receiveReply(MessageType.SET_LOG_FD)) {
                assertEquals(1, Payloads.u64(ack.payload()));
            }
            fe.setConfig(32, new byte[] {0}, 0);
            assertEquals(0, backend.config[32]);
            assertEquals(
                    RecordingBackend.DEVICE_FEATURES
                            | Features.VHOST_USER_F_PROTOCOL_FEATURES
                            | Features.VHOST_F_LOG_ALL,
                    fe.getFeatures());
        }
    }

    @Test
    void closingTheServerDisconnectsResetsAndRemovesTheSocket() throws Exception {
        VhostUserFrontend fe = connect();
        try (fe;
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            server.close();
            assertThrows(IOException.class, fe::getFeatures);
        }
        assertTrue(backend.snapshot().contains("reset"));
        assertFalse(Files.exists(socket));
        server.close(); // idempotent
    }

    /**
     * A stop whose frontend's session is stuck in a device callback (here the device's reset) returns after its
     * bound, naming what the session is in, with the frontend already disconnected; the socket file stays — the path
     * is not free while the old session runs — until finishStop has seen the session end. close() waited for that
     * session without bound: whoever removed the device waited with it.
     */
    @Test
    void aStopWithinItsBoundLeavesASessionStuckInTheDeviceToFinishStop() throws Exception {
        java.util.concurrent.CountDownLatch resetMayEnd = new java.util.concurrent.CountDownLatch(1);
        backend.resetWaitsFor = resetMayEnd;
        VhostUserFrontend fe = connect();
        try (fe;
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            assertNotNull(server.stopWithin(Duration.ofMillis(200)), "the session is stuck in the device's reset");
            assertThrows(IOException.class, fe::getFeatures, "the frontend is disconnected at once");
            // What the session is in when a bound ends: the reset once its thread has seen the hang-up (and the accept
            // thread has ended), which a loaded machine need not have let them do within the first 200 ms — then it
            // named "the device". The stop, under way, says again on each call what it still waits for.
            String left = io.iovirt.testing.Await.value(
                    TIMEOUT,
                    () -> "a stop naming the device's reset: " + log.all(),
                    () -> java.util.Optional.ofNullable(server.stopWithin(Duration.ofMillis(200)))
                            .filter(l -> l.contains("the device's reset")));
            assertTrue(left.startsWith("the session of frontend "), left);
            assertTrue(Files.exists(socket), "the socket file stays while the old session runs");
            assertTrue(
                    log.all().stream().anyMatch(l -> l.startsWith("vhost-user " + socket + ": stopping: after")),
                    "a line names the socket and what its session is in: " + log.all());
            java.util.concurrent.CompletableFuture<Void> finish =
                    java.util.concurrent.CompletableFuture.runAsync(server::finishStop);
            assertFalse(finish.isDone(), "finishStop waits for the session");
            resetMayEnd.countDown();
            finish.get(TIMEOUT.toSeconds(), java.util.concurrent.TimeUnit.SECONDS);
        } finally {
            resetMayEnd.countDown();
        }
        assertFalse(Files.exists(socket), "removed once the session has ended");
        assertTrue(backend.snapshot().contains("reset"));
        assertNull(server.stopWithin(Duration.ofMillis(200)), "stopped: nothing left");
    }

    /**
     * A stop whose bound ends before the accept thread has (held here before its next accept) shuts the frontend's
     * connection down all the same. It shut the connection down only once the accept thread had ended, so the frontend
     * went on being served while the WARNING said it was disconnected.
     */
    @Test
    void aStopWhoseBoundEndsBeforeTheAcceptThreadStillShutsTheConnectionDown() throws Exception {
        java.util.concurrent.CountDownLatch acceptMayGoOn = new java.util.concurrent.CountDownLatch(1);
        server.holdAcceptThread(acceptMayGoOn);
        try (VhostUserFrontend fe = connect();
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true)) {
            initLikeQemu(fe, call, err); // served: the accept thread is back before its next accept, held there
            String left = server.stopWithin(Duration.ofMillis(200));
            assertEquals("its accept thread has not ended", left);
            assertThrows(IOException.class, fe::getFeatures, "the frontend's connection is shut down");
            assertTrue(
                    log.all().stream().anyMatch(l -> l.contains("is shut down and no other is accepted")),
                    "the WARNING says what the stop did: " + log.all());
            acceptMayGoOn.countDown();
            server.finishStop();
        } finally {
            acceptMayGoOn.countDown();
        }
        assertFalse(Files.exists(socket), "removed once the session has ended");
    }

    /**
     * The rest of a stop, waiting for a session stuck in the device as long as it takes, names now and then which
     * frontend's session, what its thread is in, why the socket file is still there and what to do. It said only
     * "still waiting for vhost-user PATH to finish", for as long as the file system did not answer.
     */
    @Test
    void finishStopNamesWhatTheSessionItWaitsForIsIn() throws Exception {
        java.util.concurrent.CountDownLatch resetMayEnd = new java.util.concurrent.CountDownLatch(1);
        backend.resetWaitsFor = resetMayEnd;
        try (VhostUserFrontend fe = connect();
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            assertNotNull(server.stopWithin(Duration.ofMillis(200)), "the session is stuck in the device's reset");
            // in it once its thread has seen the hang-up: a loaded machine may not have let it within the 200 ms, and
            // a line written before then names "the device"
            assertTrue(backend.resetEntered.await(TIMEOUT.toSeconds(), java.util.concurrent.TimeUnit.SECONDS));
            server.stopWarnEvery(Duration.ofMillis(100));
            java.util.concurrent.CompletableFuture<Void> finish =
                    java.util.concurrent.CompletableFuture.runAsync(server::finishStop);
            String line = io.iovirt.testing.Await.value(
                    TIMEOUT,
                    () -> "a line naming the session finishStop waits for: " + log.all(),
                    () -> log.all().stream()
                            .filter(l -> l.startsWith("vhost-user " + socket + ": stopping: still waiting for the"
                                    + " session of frontend pid "))
                            .findFirst());
            assertTrue(line.contains("is still in the device's reset"), line);
            assertTrue(line.contains("The socket file stays until it has ended"), line);
            assertTrue(line.contains("make it answer again"), line);
            resetMayEnd.countDown();
            finish.get(TIMEOUT.toSeconds(), java.util.concurrent.TimeUnit.SECONDS);
        } finally {
            resetMayEnd.countDown();
        }
        assertFalse(Files.exists(socket), "removed once the session has ended");
    }

    /**
     * While a stop waits for a session stuck in the device, the shut-down listener refuses connections, so the path
     * looks free to another process's server (a standalone {@code serve blk}, another daemon), which replaces the
     * socket file with its own. The old server's late finishStop removed whatever file was at the path — the new
     * server's: it went on listening on a file no frontend could find, and QEMU's reconnect failed. Now the old
     * server removes only the socket file it made.
     */
    @Test
    void aLateFinishStopLeavesTheSocketFileOfANewServerOnThePath() throws Exception {
        java.util.concurrent.CountDownLatch resetMayEnd = new java.util.concurrent.CountDownLatch(1);
        backend.resetWaitsFor = resetMayEnd;
        VhostUserServer next = null;
        try (VhostUserFrontend fe = connect();
                EventFd call = EventFd.create(true);
                EventFd err = EventFd.create(true)) {
            initLikeQemu(fe, call, err);
            assertNotNull(server.stopWithin(Duration.ofMillis(200)), "the session is stuck in the device's reset");
            next = VhostUserServer.start(socket, new RecordingBackend(2)); // the path looks free: it is taken over
            resetMayEnd.countDown();
            server.finishStop();
            assertTrue(Files.exists(socket), "the new server's socket file stays: " + log.all());
            try (VhostUserFrontend again = connect();
                    EventFd call2 = EventFd.create(true);
                    EventFd err2 = EventFd.create(true)) {
                initLikeQemu(again, call2, err2); // served by the new server
            }
        } finally {
            resetMayEnd.countDown();
            if (next != null) {
                next.close();
            }
        }
        assertFalse(Files.exists(socket), "the new server removes its own file when it stops");
    }

    @Test
    void aStaleSocketFileIsReplacedButALiveOneOrAFileIsNot() throws Exception {
        Path stale = dir.resolve("stale.sock");
        UnixSocket.listen(stale, 1).close(); // leaves the file, nobody listens
        try (VhostUserServer s = VhostUserServer.start(stale, new RecordingBackend(1));
                VhostUserFrontend fe = VhostUserFrontend.connect(stale, TIMEOUT)) {
            assertTrue(fe.getFeatures() != 0);
            assertTrue(s.connected());
            IOException live =
                    assertThrows(IOException.class, () -> VhostUserServer.start(stale, new RecordingBackend(1)));
            assertTrue(live.getMessage().contains("in use by another running server"), live.getMessage());
        }
        Path file = Files.writeString(dir.resolve("file"), "x");
        IOException notSocket =
                assertThrows(IOException.class, () -> VhostUserServer.start(file, new RecordingBackend(1)));
        assertTrue(notSocket.getMessage().contains("is not a socket"), notSocket.getMessage());
        assertTrue(Files.exists(file));
    }

    @Test
    void netExtrasGoToTheDeviceWhenItOffersThem() throws Exception {
        Path netSocket = dir.resolve("net.sock");
        RecordingBackend net =
                new RecordingBackend(2, Features.bit(Features.PROTOCOL_RARP) | Features.bit(Features.PROTOCOL_NET_MTU));
        try (VhostUserServer s = VhostUserServer.start(netSocket, net);
                VhostUserFrontend fe = VhostUserFrontend.connect(netSocket, TIMEOUT)) {
            long pf = fe.getProtocolFeatures();
            assertEquals(
                    Features.CORE_PROTOCOL_FEATURES
                            | Features.bit(Features.PROTOCOL_RARP)
                            | Features.bit(Features.PROTOCOL_NET_MTU),
                    pf);
            fe.setProtocolFeatures(pf);
            fe.sendRarp(new byte[] {0x52, 0x54, 0, 0x12, 0x34, 0x56});
            fe.setMtu(9000);
            assertThrows(RequestRejectedException.class, () -> fe.setMtu(20));
            assertEquals("rarp 52:54:00:12:34:56", net.await("rarp"));
            assertEquals("mtu 9000", net.await("mtu"));
            assertEquals(netSocket, s.socketPath());
        }
    }
}
