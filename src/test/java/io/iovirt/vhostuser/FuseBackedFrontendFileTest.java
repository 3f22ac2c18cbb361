// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.MemFd;
import io.iovirt.linux.UnixSocket;
import io.iovirt.testing.StoppableFuse;
import io.iovirt.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A frontend that sends, as its dirty log, a file on a FUSE mount — here a real one, fuse2fs serving an ext4 image.
 * Answering, the file is refused for its file system (queue threads would take page faults its daemon serves); with
 * the daemon stopped (SIGSTOP: a FUSE daemon that never answers), the descriptor checks themselves would wait for ever
 * (statx and fstatfs go to the daemon): the message is refused after {@link PeerFile#CHECK_TIMEOUT}, the session thread
 * never waits on the frontend's file system, and the server serves the next frontend.
 */
@Tag("peer")
@Timeout(120)
class FuseBackedFrontendFileTest {
    static final Duration TIMEOUT = Duration.ofSeconds(20);
    static final long FUSE_SUPER_MAGIC = 0x65735546L;

    @TempDir
    Path dir;

    Path socket;
    StoppableFuse fs;
    VhostUserServer server;
    LogCapture log;

    @BeforeEach
    void start() throws Exception {
        fs = StoppableFuse.mount(dir);
        log = LogCapture.start();
        socket = dir.resolve("vub.sock");
        server = VhostUserServer.start(socket, new RecordingBackend(2));
    }

    @AfterEach
    void stop() throws Exception {
        if (fs != null) {
            fs.close();
        }
        if (server != null) {
            assertTrue(server.awaitIdle(TIMEOUT));
            server.close();
        }
        if (log != null) {
            log.close();
        }
    }

    @Test
    void aLogOnFuseIsRefusedAndADaemonThatNeverAnswersHoldsNoSessionThread() throws Exception {
        Path file = fs.file("log", 4096);
        try (Fd fd = FileIo.open(file, FileIo.O_RDWR)) {
            assertEquals(FUSE_SUPER_MAGIC, FileIo.filesystemType(fd), "the file is on FUSE");
            // the daemon answers: refused for its file system
            String line = refused(fd);
            assertTrue(line.contains("file system of type 0x65735546, not tmpfs or hugetlbfs"), line);

            fs.stop(); // the daemon stops answering (and its cached attributes time out)
            long started = System.nanoTime();
            line = refused(fd);
            long tookMs = (System.nanoTime() - started) / 1_000_000;
            assertTrue(line.contains("did not answer statx/fstatfs within 5 s"), line);
            assertTrue(tookMs < TIMEOUT.toMillis(), "refused after " + tookMs + " ms");
            try (VhostUserFrontend next = VhostUserFrontend.connect(socket, TIMEOUT)) { // the server still serves
                next.getFeatures();
                next.setProtocolFeatures(next.getProtocolFeatures());
                assertEquals(2, next.getQueueNum());
            }
            fs.resume(); // before the descriptor is closed: a close on FUSE waits for the daemon too
        }
    }

    /**
     * A frontend of one device keeps sending FUSE files whose daemon never answers. Each leaves a check waiting; past
     * {@link PeerFile#MAX_CHECKS_PER_DEVICE} the device's next descriptor is refused at once, for that device, and
     * another device's frontend (another tenant) still gets its shared memory checked and mapped — the process-wide
     * limit is not one tenant's to use up.
     */
    @Test
    void aDeviceWhoseChecksHangCannotTakeTheChecksOfOtherDevices() throws Exception {
        Path otherSocket = dir.resolve("other.sock");
        try (VhostUserServer other = VhostUserServer.start(otherSocket, new RecordingBackend(2))) {
            Path file = fs.file("log", 4096);
            try (Fd fd = FileIo.open(file, FileIo.O_RDWR)) {
                fs.stop();
                for (int i = 0; i < PeerFile.MAX_CHECKS_PER_DEVICE; i++) {
                    String line = refused(fd);
                    assertTrue(line.contains("did not answer statx/fstatfs within 5 s"), line);
                }
                String line = refused(fd);
                assertTrue(
                        line.contains(PeerFile.MAX_CHECKS_PER_DEVICE + " earlier descriptor checks of this device's"
                                + " frontend are still waiting"),
                        line);
                try (VhostUserFrontend fe = VhostUserFrontend.connect(otherSocket, TIMEOUT);
                        Fd memfd = MemFd.allocate("other-log", 4096)) {
                    fe.getFeatures();
                    fe.setProtocolFeatures(fe.getProtocolFeatures());
                    fe.setFeatures(VirtioFeatures.VIRTIO_F_VERSION_1 | Features.VHOST_USER_F_PROTOCOL_FEATURES);
                    fe.setLogBase(memfd, 4096, 0);
                    assertEquals(2, fe.getQueueNum());
                }
                fs.resume();
            }
            assertTrue(other.awaitIdle(TIMEOUT));
        }
    }

    /** Sends SET_LOG_BASE with {@code fd}; returns the server's protocol error line once it closed the connection. */
    private String refused(Fd fd) throws Exception {
        try (VhostUserFrontend fe = VhostUserFrontend.connect(socket, TIMEOUT)) {
            fe.getFeatures();
            fe.setProtocolFeatures(fe.getProtocolFeatures());
            fe.setFeatures(VirtioFeatures.VIRTIO_F_VERSION_1 | Features.VHOST_USER_F_PROTOCOL_FEATURES);
            MemorySegment p = Arena.ofAuto().allocate(Payloads.LOG_SIZE);
            Payloads.Log.write(p, 4096, 0);
            fe.connection()
                    .sendRaw(MessageType.SET_LOG_BASE.code(), Header.VERSION, (int) p.byteSize(), p, List.of(fd));
            try (Arena a = Arena.ofConfined()) {
                UnixSocket.Received r = fe.connection().socket().recv(a.allocate(64), 8);
                assertTrue(r.eof(), "the server closed the connection without answering");
            } catch (LinuxException e) {
                assertEquals(io.iovirt.linux.Errno.ECONNRESET, e.errno(), e.getMessage());
            }
        }
        String line = log.awaitLine("protocol error");
        assertTrue(server.awaitIdle(TIMEOUT));
        return line;
    }
}
