// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.code_intelligence.jazzer.junit.FuzzTest;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.MemFd;
import io.iovirt.linux.UnixSocket;
import io.iovirt.testing.OpenFiles;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;

/**
 * Fuzzes the vhost-user message decoder ({@link Connection}) and the protocol state machine ({@link Handler}) with
 * a device behind it, as {@code VhostUserServer} runs them: the fuzzer writes a sequence of messages (headers,
 * payloads) and chooses which file descriptors ride with each one — guest memory (a 1 MiB memfd), a memfd too small
 * for anything, eventfds (blocking or not), and descriptors that are not what a frontend claims: a regular file on
 * a disk, a socket, a directory, /dev/null. So SET_MEM_TABLE / ADD_MEM_REG really map memory, rings get addresses
 * inside it, kicks, calls, log and inflight areas get descriptors, and the state machine runs as far as the
 * messages take it. A frontend may make the backend refuse (a {@link ProtocolException} or another IOException
 * closes the connection); anything else thrown is a bug, and so is a descriptor still open after the connection
 * ended.
 *
 * <p>Input: records of one descriptor byte (bits 0-1: how many descriptors, 0..3; bits 2-4: which kind, see
 * {@link #KINDS}) followed by one message: a 12-byte header and as many payload bytes as its size field says (fewer
 * when the input ends first). Seeds: src/test/resources/io/iovirt/vhostuser/VhostUserFuzzTestInputs/.
 */
class VhostUserFuzzTest {
    /** Bounded so the replies always fit the socket buffer: the handler never blocks on a reply nobody reads. */
    static final int MAX_INPUT = 8192;

    static final long GUEST_MEMORY = 1 << 20;
    static final String[] KINDS = {
        "memfd",
        "eventfd",
        "nonblocking eventfd",
        "directory",
        "regular file on disk",
        "socket",
        "/dev/null",
        "4 KiB memfd"
    };
    static Path dir;

    @BeforeAll
    static void setUp() throws IOException {
        // not tmpfs: a file there would be acceptable guest memory; the point is one that is not
        dir = Files.createTempDirectory(Path.of("target"), "vhostuserfuzz");
        Files.write(dir.resolve("file"), new byte[8192]);
    }

    @AfterAll
    static void tearDown() throws IOException {
        Files.deleteIfExists(dir.resolve("file"));
        Files.deleteIfExists(dir);
    }

    @FuzzTest(maxDuration = "10s")
    void messages(byte[] data) throws Exception {
        int n = Math.min(data.length, MAX_INPUT);
        OpenFiles.Snapshot before = OpenFiles.snapshot();
        List<Fd> mine = new ArrayList<>();
        UnixSocket[] pair = UnixSocket.pair();
        try (Arena a = Arena.ofConfined()) {
            Fd[] kinds = fixtures(mine);
            MemorySegment in = a.allocate(Math.max(n, 1));
            MemorySegment.copy(MemorySegment.ofArray(data), 0, in, 0, n);
            int pos = 0;
            while (pos < n) {
                int spec = Byte.toUnsignedInt(data[pos++]);
                int len = n - pos;
                if (len >= Payloads.HEADER_SIZE) {
                    long size = Integer.toUnsignedLong(in.get(ValueLayout.JAVA_INT_UNALIGNED, pos + 8));
                    len = (int) Math.min(len, Payloads.HEADER_SIZE + size);
                }
                if (len == 0) {
                    break;
                }
                List<Fd> fds = new ArrayList<>();
                for (int i = 0; i < (spec & 3); i++) {
                    fds.add(kinds[(spec >> 2) & 7]);
                }
                pair[0].send(in.asSlice(pos, len), fds);
                pos += len;
            }
            pair[0].shutdown(UnixSocket.SHUT_WR);
            Connection c = new Connection(pair[1], Connection.Role.BACKEND, "fuzz");
            Handler h = new Handler(
                    new RecordingBackend(
                            2,
                            Features.bit(Features.PROTOCOL_RARP)
                                    | Features.bit(Features.PROTOCOL_NET_MTU)
                                    | Features.bit(Features.PROTOCOL_INFLIGHT_SHMFD)),
                    "fuzz",
                    new PeerFile.Quota());
            try {
                Message m;
                while ((m = c.receiveRequest()) != null) {
                    h.handle(m, c);
                }
            } catch (IOException refused) {
                // ProtocolException and friends: the connection would be closed; that is the expected outcome
            } finally {
                h.close();
                c.close();
            }
        } finally {
            pair[0].close();
            pair[1].close();
            Fd.closeAll(mine);
        }
        assertEquals(List.of(), before.openedSince(), "descriptors left open after the connection ended");
    }

    /** One descriptor of each kind in {@link #KINDS}, recorded in {@code mine} to be closed after the input. */
    private static Fd[] fixtures(List<Fd> mine) throws IOException {
        Fd memory = MemFd.allocate("fuzz guest memory", GUEST_MEMORY);
        mine.add(memory);
        Fd small = MemFd.allocate("fuzz small", 4096);
        mine.add(small);
        EventFd blocking = EventFd.create(false);
        EventFd nonBlocking = EventFd.create(true);
        mine.add(blocking.fd());
        mine.add(nonBlocking.fd());
        Fd directory = FileIo.open(dir, FileIo.O_RDONLY | FileIo.O_DIRECTORY | FileIo.O_CLOEXEC);
        mine.add(directory);
        Fd file = FileIo.open(dir.resolve("file"), FileIo.O_RDWR | FileIo.O_CLOEXEC);
        mine.add(file);
        UnixSocket[] sockets = UnixSocket.pair();
        mine.add(sockets[0].fd());
        mine.add(sockets[1].fd());
        Fd devNull = FileIo.open(Path.of("/dev/null"), FileIo.O_RDWR | FileIo.O_CLOEXEC);
        mine.add(devNull);
        return new Fd[] {memory, blocking.fd(), nonBlocking.fd(), directory, file, sockets[0].fd(), devNull, small};
    }
}
