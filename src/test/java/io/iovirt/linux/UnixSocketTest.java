// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.OpenFiles;
import java.io.EOFException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.net.SocketTimeoutException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

@Timeout(30)
class UnixSocketTest {
    private static MemorySegment bytes(Arena a, String s) {
        return a.allocateFrom(s).asSlice(0, s.length());
    }

    @Test
    void passesAnEventfdAndAMemfdAndTheReceivedDescriptorsWork() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket a = p[0];
                UnixSocket b = p[1];
                Arena arena = Arena.ofConfined();
                EventFd kick = EventFd.create(true);
                Fd ram = MemFd.allocate("ram", 4096)) {
            a.send(bytes(arena, "hello"), kick.fd(), ram);
            MemorySegment buf = arena.allocate(5);
            UnixSocket.Received r = b.recvFully(buf, 2);
            assertEquals(5, r.bytes());
            assertEquals("hello", new String(buf.toArray(JAVA_BYTE)));
            assertEquals(2, r.fds().size());
            try (EventFd got = EventFd.adopt(r.fds().get(0));
                    Fd gotRam = r.fds().get(1)) {
                assertTrue(got.fd().isCloseOnExec(), "received descriptors must not leak into child processes");
                got.write(3); // through the received descriptor ...
                assertEquals(3, kick.read()); // ... seen on the original
                try (Mmap.Mapping m1 = Mmap.map(gotRam, 0, 4096, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED);
                        Mmap.Mapping m2 = Mmap.map(ram, 0, 4096, Mmap.PROT_READ, Mmap.MAP_SHARED)) {
                    m1.segment().set(JAVA_LONG, 64, 0x0123_4567_89ab_cdefL);
                    assertEquals(0x0123_4567_89ab_cdefL, m2.segment().get(JAVA_LONG, 64));
                }
            }
        }
    }

    @Test
    void moreDescriptorsThanAcceptedAreAllClosedAndReported() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket a = p[0];
                UnixSocket b = p[1];
                Arena arena = Arena.ofConfined()) {
            EventFd[] e = {EventFd.create(true), EventFd.create(true), EventFd.create(true), EventFd.create(true)};
            OpenFiles.Snapshot before = OpenFiles.snapshot();
            a.send(bytes(arena, "x"), e[0].fd(), e[1].fd(), e[2].fd(), e[3].fd());
            // Accepting 1: CMSG_SPACE rounding leaves room for 2, so the kernel delivers 2 and truncates the rest.
            TooManyFdsException ex = assertThrows(TooManyFdsException.class, () -> b.recv(arena.allocate(1), 1));
            assertEquals(1, ex.max());
            assertTrue(ex.getMessage().contains("at most 1"), ex.getMessage());
            assertEquals(List.of(), before.openedSince(), "every received descriptor was closed; still open");
            for (EventFd x : e) {
                x.close();
            }
        }
    }

    @Test
    void descriptorsOnAMessageThatTakesNoneAreRefused() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket a = p[0];
                UnixSocket b = p[1];
                Arena arena = Arena.ofConfined();
                EventFd e = EventFd.create(true)) {
            OpenFiles.Snapshot before = OpenFiles.snapshot();
            a.send(bytes(arena, "abcd"), e.fd());
            assertThrows(TooManyFdsException.class, () -> b.recvFully(arena.allocate(4), 0));
            assertEquals(List.of(), before.openedSince(), "the refused descriptors were closed; still open");
        }
    }

    @Test
    void slackFromCmsgRoundingIsNotAcceptedSilently() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket a = p[0];
                UnixSocket b = p[1];
                Arena arena = Arena.ofConfined();
                EventFd e1 = EventFd.create(true);
                EventFd e2 = EventFd.create(true)) {
            OpenFiles.Snapshot before = OpenFiles.snapshot();
            a.send(bytes(arena, "y"), e1.fd(), e2.fd()); // exactly fills CMSG_SPACE(4): no MSG_CTRUNC from the kernel
            assertThrows(TooManyFdsException.class, () -> b.recv(arena.allocate(1), 1));
            assertEquals(List.of(), before.openedSince(), "the refused descriptors were closed; still open");
        }
    }

    @Test
    void recvFullyCollectsDescriptorsAcrossPartialSends() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket a = p[0];
                UnixSocket b = p[1];
                Arena arena = Arena.ofConfined();
                EventFd e1 = EventFd.create(true);
                EventFd e2 = EventFd.create(true)) {
            a.send(bytes(arena, "ab"), e1.fd());
            a.send(bytes(arena, "cd"), e2.fd());
            MemorySegment buf = arena.allocate(4);
            UnixSocket.Received r = b.recvFully(buf, 2);
            assertEquals("abcd", new String(buf.toArray(JAVA_BYTE)));
            assertEquals(2, r.fds().size());
            Fd.closeAll(r.fds());
        }
    }

    @Test
    void endOfStreamBeforeAndInsideAMessage() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket a = p[0];
                UnixSocket b = p[1];
                Arena arena = Arena.ofConfined()) {
            a.send(bytes(arena, "abc"));
            a.shutdown(UnixSocket.SHUT_WR);
            assertTrue(b.peerHungUp());
            assertThrows(EOFException.class, () -> b.recvFully(arena.allocate(8), 0));
            assertTrue(b.recvFully(arena.allocate(8), 0).eof());
        }
    }

    @Test
    void listenAcceptConnectOverAPathAndPeerCredentials(@TempDir Path dir) throws Exception {
        Path path = dir.resolve("s.sock");
        try (UnixSocket listener = UnixSocket.listen(path, 4);
                UnixSocket client = UnixSocket.connect(path);
                UnixSocket server = listener.accept();
                Arena arena = Arena.ofConfined()) {
            assertFalse(server.peerHungUp());
            assertEquals(ProcessHandle.current().pid(), server.peerCredentials().pid());
            client.send(bytes(arena, "ping"));
            MemorySegment buf = arena.allocate(4);
            assertTrue(server.recvFully(buf, 0).fds().isEmpty());
            assertArrayEquals("ping".getBytes(), buf.toArray(JAVA_BYTE));
            client.shutdown(UnixSocket.SHUT_RDWR); // as a close would, without the descriptor going away
            assertTrue(server.peerHungUp());
            assertTrue(server.recv(buf, 0).eof());

            LinuxException busy = assertThrows(LinuxException.class, () -> UnixSocket.listen(path, 1));
            assertEquals(Errno.EADDRINUSE, busy.errno());
            assertTrue(busy.getMessage().startsWith("bind(" + path + ") failed: EADDRINUSE"), busy.getMessage());
        }
        LinuxException refused = assertThrows(LinuxException.class, () -> UnixSocket.connect(dir.resolve("none.sock")));
        assertEquals(Errno.ENOENT, refused.errno());
    }

    @Test
    void shutdownWakesAThreadBlockedInAccept(@TempDir Path dir) throws Exception {
        try (UnixSocket listener = UnixSocket.listen(dir.resolve("l.sock"), 1)) {
            AtomicReference<Throwable> result = new AtomicReference<>();
            Thread t = Thread.ofPlatform().start(() -> {
                try {
                    listener.accept().close();
                } catch (Throwable e) {
                    result.set(e);
                }
            });
            // Whether the thread is already blocked or not, shutdown makes accept fail with EINVAL.
            listener.shutdown(UnixSocket.SHUT_RDWR);
            assertTrue(t.join(Duration.ofSeconds(20)));
            LinuxException e = (LinuxException) result.get();
            assertEquals(Errno.EINVAL, e.errno());
        }
    }

    @Test
    void shutdownWakesAThreadBlockedInReceive() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket b = p[1]) {
            AtomicReference<Object> result = new AtomicReference<>();
            Thread t = Thread.ofPlatform().start(() -> {
                try (Arena arena = Arena.ofConfined()) {
                    result.set(b.recv(arena.allocate(16), 4));
                } catch (Throwable e) {
                    result.set(e);
                }
            });
            b.shutdown(UnixSocket.SHUT_RDWR);
            assertTrue(t.join(Duration.ofSeconds(20)));
            assertTrue(((UnixSocket.Received) result.get()).eof());
        } finally {
            p[0].close();
        }
    }

    /**
     * A shutdown from another thread (NbdServer.close, RpcServer.close, VhostUserServer's session end: waking the
     * connection's thread) racing the owner's close. It read the descriptor number, the owner closed it, a new socket
     * took the number, and the shutdown then hit that socket: another client's connection, cut. Each round here has a
     * fresh thread shut the socket down (its first system call sets up per-thread state between reading the number
     * and the call, as a server's closing thread's may) while this thread closes it and opens a new pair, which gets
     * the lowest free number: the one just closed. Before the fix 100 to 220 of the 1500 rounds cut the new pair.
     */
    @Test
    void aShutdownRacingTheOwnersCloseNeverHitsTheSocketThatReusesTheNumber() throws Exception {
        int cut = 0;
        int rounds = 1500;
        for (int i = 0; i < rounds; i++) {
            UnixSocket[] old = UnixSocket.pair();
            int number = old[0].fd().get();
            CountDownLatch go = new CountDownLatch(1);
            Thread closer = Thread.ofPlatform().start(() -> {
                try {
                    go.await();
                    old[0].shutdown(UnixSocket.SHUT_RDWR);
                } catch (InterruptedException | LinuxException e) {
                    throw new AssertionError(e);
                }
            });
            go.countDown();
            long until = System.nanoTime() + ThreadLocalRandom.current().nextInt(60_000); // sweep the window
            while (System.nanoTime() < until) {
                Thread.onSpinWait();
            }
            old[0].close();
            UnixSocket[] fresh = UnixSocket.pair();
            assertTrue(closer.join(Duration.ofSeconds(20)));
            try {
                if (fresh[0].fd().get() == number && (fresh[0].peerHungUp() || fresh[1].peerHungUp())) {
                    cut++;
                }
            } finally {
                old[1].close();
                fresh[0].close();
                fresh[1].close();
            }
        }
        assertEquals(0, cut, "new connections shut down by a shutdown meant for the closed socket, of " + rounds);
    }

    @Test
    void receiveTimeoutGivesSocketTimeoutException() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket b = p[1];
                Arena arena = Arena.ofConfined()) {
            b.setReceiveTimeout(Duration.ofMillis(50));
            assertThrows(SocketTimeoutException.class, () -> b.recv(arena.allocate(4), 0));
        } finally {
            p[0].close();
        }
    }

    @Test
    void pathsTooLongForSunPathAreRefusedClearly() {
        Path p = Path.of("/tmp/" + "x".repeat(120));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> UnixSocket.listen(p, 1));
        assertTrue(e.getMessage().contains("1..107 bytes"), e.getMessage());
    }

    @Test
    void sendingToAClosedPeerIsEpipeNotASignal() throws Exception {
        UnixSocket[] p = UnixSocket.pair();
        try (UnixSocket b = p[1]) {
            b.shutdown(UnixSocket.SHUT_RDWR);
        }
        try (UnixSocket a = p[0];
                Arena arena = Arena.ofConfined()) {
            LinuxException e = assertThrows(LinuxException.class, () -> a.send(bytes(arena, "z"), List.of()));
            assertEquals(Errno.EPIPE, e.errno());
        }
    }

    /**
     * A TCP listener on each loopback address (IPv4 and IPv6): the port the kernel picked, a connection from a JDK
     * client accepted and carrying bytes both ways, and the socket named with that port.
     */
    @Test
    void aTcpListenerOnEitherLoopbackAddressAcceptsAndCarriesBytes() throws Exception {
        for (java.net.InetAddress host :
                List.of(java.net.InetAddress.getByName("127.0.0.1"), java.net.InetAddress.getByName("::1"))) {
            try (UnixSocket l = UnixSocket.listenTcp(host, 0, 1);
                    java.nio.channels.SocketChannel c =
                            java.nio.channels.SocketChannel.open(new java.net.InetSocketAddress(host, l.localPort()));
                    UnixSocket s = l.accept();
                    Arena arena = Arena.ofConfined()) {
                assertTrue(l.localPort() > 0, host + ": " + l.localPort());
                assertEquals(l.localPort(), s.localPort(), host + ": the connection's port");
                assertTrue(l.toString().contains(":" + l.localPort() + "("), l.toString());
                c.write(java.nio.ByteBuffer.wrap(new byte[] {1, 2, 3}));
                MemorySegment in = arena.allocate(3);
                for (long got = 0; got < 3; ) {
                    long n = s.read(in.asSlice(got));
                    assertTrue(n > 0, host + ": the stream ended");
                    got += n;
                }
                assertArrayEquals(new byte[] {1, 2, 3}, in.toArray(JAVA_BYTE));
                s.setNoDelay();
                s.send(bytes(arena, "ok"), List.of());
                java.nio.ByteBuffer got = java.nio.ByteBuffer.allocate(2);
                while (got.hasRemaining()) {
                    assertTrue(c.read(got) > 0, host + ": the stream ended");
                }
                assertEquals("ok", new String(got.array(), java.nio.charset.StandardCharsets.US_ASCII));
            }
        }
    }
}
