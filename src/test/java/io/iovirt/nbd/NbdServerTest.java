// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.ok;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static io.iovirt.storage.qcow2.QemuTools.run;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** iovirt's NBD server against QEMU's NBD client (qemu-io, qemu-img) and against hand-made hostile clients. */
@org.junit.jupiter.api.Tag("peer") // qemu-img / qemu-io / an iovirt server process: Failsafe
class NbdServerTest {
    static final int MIB = 1 << 20;

    @TempDir
    Path dir;

    private ChildProcess serve(Path image, String... extra) {
        List<String> args = new ArrayList<>(List.of(
                "serve",
                "nbd",
                "--image",
                image.toString(),
                "--socket",
                dir.resolve("nbd.sock").toString(),
                "--name",
                "disk"));
        args.addAll(List.of(extra));
        return ChildProcess.builder(IovirtCli.command(args))
                .name("iovirt serve nbd")
                .log(dir.resolve("iovirt-nbd.log"))
                .startListening(dir.resolve("nbd.sock"), Duration.ofSeconds(30));
    }

    private String uri() {
        return "nbd+unix:///disk?socket=" + dir.resolve("nbd.sock");
    }

    @Test
    void qemuIoQemuImgCompareAndConvertReadAndWriteAQcow2ThroughServeNbd() throws Exception {
        Path img = dir.resolve("a.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", img.toString(), "64M");
        qemuIoOk(img, "qcow2", "write -P 0x61 4M 2M");
        byte[] data = new byte[8 * MIB];
        new Random(5).nextBytes(data);
        Path src = dir.resolve("src.raw");
        Files.write(src, data);
        try (ChildProcess p = serve(img)) {
            qemuIoOk(
                    uri(),
                    "raw",
                    "read -P 0x61 4M 2M",
                    "write -P 0x62 20M 64k",
                    "read -P 0x62 20M 64k",
                    "write -z 30M 1M",
                    "read -P 0 30M 1M",
                    "discard 40M 1M",
                    "flush");
            // qemu-img convert writes into the export (-n: the target exists), compare reads it back
            ok("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src.toString(), uri());
            Path want = dir.resolve("want.raw");
            byte[] w = new byte[64 * MIB];
            System.arraycopy(data, 0, w, 0, data.length);
            java.util.Arrays.fill(w, 20 * MIB, 20 * MIB + 65536, (byte) 0x62);
            Files.write(want, w);
            ok("qemu-img", "compare", "-f", "raw", "-F", "raw", uri(), want.toString());
            // and out of it again
            Path copy = dir.resolve("copy.raw");
            ok("qemu-img", "convert", "-f", "raw", "-O", "raw", uri(), copy.toString());
            assertArrayEquals(w, Files.readAllBytes(copy));
            // holes: unallocated clusters of the qcow2 are reported as such by base:allocation
            String map = ok("qemu-img", "map", "--output=json", "-f", "raw", uri());
            assertTrue(
                    map.contains("\"start\": 50331648") || map.matches("(?s).*\"zero\": true, \"data\": false.*"), map);
            assertTrue(map.contains("\"data\": true"), map);
            assertTrue(map.lines().anyMatch(l -> l.contains("\"data\": false") && l.contains("\"zero\": true")), map);
            p.stop(Duration.ofSeconds(20));
            assertTrue(p.log().contains("image synced"), p.log());
        }
        check(img, false);
        ok(
                "qemu-img",
                "compare",
                "-f",
                "qcow2",
                "-F",
                "raw",
                img.toString(),
                dir.resolve("want.raw").toString());
    }

    @Test
    void tcpListenerAndExportList() throws Exception {
        Path img = dir.resolve("b.raw");
        Files.write(img, new byte[4 * MIB]);
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startTcp("127.0.0.1", 0, 4)) {
            s.addExport(new NbdExport("one", image, false));
            String u = "nbd://127.0.0.1:" + s.port() + "/one";
            qemuIoOk(u, "raw", "write -P 0x44 0 1M", "read -P 0x44 0 1M");
            // LIST through a raw client
            try (RawClient c = RawClient.tcp(s.port())) {
                c.option(Nbd.OPT_LIST, new byte[0]);
                Reply r = c.optionReply();
                assertEquals(Nbd.REP_SERVER, r.type);
                int nameLength = ByteBuffer.wrap(r.data).getInt();
                assertEquals("one", new String(r.data, 4, nameLength, StandardCharsets.UTF_8));
                assertEquals( // the description follows the name
                        "raw image " + img,
                        new String(r.data, 4 + nameLength, r.data.length - 4 - nameLength, StandardCharsets.UTF_8));
                assertEquals(Nbd.REP_ACK, c.optionReply().type);
                c.option(Nbd.OPT_ABORT, new byte[0]);
                assertEquals(Nbd.REP_ACK, c.optionReply().type);
            }
            assertEquals(1, s.exports().iterator().next().stats().writes.sum());
        }
        IOException e = org.junit.jupiter.api.Assertions.assertThrows(
                IOException.class, () -> NbdServer.startTcp("8.8.8.8", 0, 1));
        assertTrue(e.getMessage().contains("loopback"), e.getMessage());
    }

    /**
     * A description longer than the protocol's 4096 bytes (it is made from the image's path, which can be that long)
     * reaches the peer cut at a character boundary, in the LIST reply and in NBD_INFO_DESCRIPTION: the protocol's
     * strings are UTF-8, and a cut at byte 4096 fell inside a 3-byte character here.
     */
    @Test
    void anOverLongDescriptionIsCutAtACharacterBoundary() throws Exception {
        Path img = dir.resolve("d.raw");
        Files.write(img, new byte[MIB]);
        String description = "€".repeat(1366); // 4098 bytes: byte 4096 is inside the 1366th character
        String sent = "€".repeat(1364) + "…"; // 4095 bytes
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startTcp("127.0.0.1", 0, 4)) {
            s.addExport(new NbdExport("d", image, false, description, new NbdExportStats()));
            try (RawClient c = RawClient.tcp(s.port())) {
                c.option(Nbd.OPT_LIST, new byte[0]);
                Reply r = c.optionReply();
                assertEquals(Nbd.REP_SERVER, r.type);
                int nameLength = ByteBuffer.wrap(r.data).getInt();
                assertEquals(sent, strictUtf8(r.data, 4 + nameLength, r.data.length - 4 - nameLength));
                assertEquals(Nbd.REP_ACK, c.optionReply().type);
                byte[] n = "d".getBytes(StandardCharsets.UTF_8);
                c.option(
                        Nbd.OPT_INFO,
                        ByteBuffer.allocate(8 + n.length)
                                .putInt(n.length)
                                .put(n)
                                .putShort((short) 1)
                                .putShort((short) Nbd.INFO_DESCRIPTION)
                                .array());
                String info = null;
                for (Reply i = c.optionReply(); i.type != Nbd.REP_ACK; i = c.optionReply()) {
                    assertEquals(Nbd.REP_INFO, i.type);
                    if (ByteBuffer.wrap(i.data).getShort() == Nbd.INFO_DESCRIPTION) {
                        info = strictUtf8(i.data, 2, i.data.length - 2);
                    }
                }
                assertEquals(sent, info);
                c.option(Nbd.OPT_ABORT, new byte[0]);
                assertEquals(Nbd.REP_ACK, c.optionReply().type);
            }
        }
    }

    /** Decodes UTF-8, failing on malformed input (String's constructor would replace it). */
    private static String strictUtf8(byte[] b, int off, int len) throws IOException {
        return StandardCharsets.UTF_8
                .newDecoder()
                .onMalformedInput(java.nio.charset.CodingErrorAction.REPORT)
                .onUnmappableCharacter(java.nio.charset.CodingErrorAction.REPORT)
                .decode(ByteBuffer.wrap(b, off, len))
                .toString();
    }

    /** Waits until the server has finished with every earlier connection (their threads end asynchronously). */
    private static void awaitNoConnections(NbdServer s) {
        io.iovirt.testing.Await.until(
                Duration.ofSeconds(20), "the earlier test connections to close", () -> s.connectionCount() == 0);
    }

    @Test
    void hostileClientsGetErrorsAndNeverTakeTheServerDown() throws Exception {
        Path img = dir.resolve("h.raw");
        Files.write(img, new byte[MIB]);
        Path sock = dir.resolve("h.sock");
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startUnix(sock, 3)) {
            s.addExport(new NbdExport("x", image, false));
            // unknown option, then a GO for an unknown export, then a good GO; then bad requests
            awaitNoConnections(s); // the limit is 3: earlier connections' threads end asynchronously
            try (RawClient c = RawClient.unix(sock)) {
                c.option(12345, new byte[3]);
                assertEquals(Nbd.REP_ERR_UNSUP, c.optionReply().type);
                c.option(Nbd.OPT_SET_META_CONTEXT, c.metaContextData("x", "base:allocation"));
                assertEquals(Nbd.REP_ERR_INVALID, c.optionReply().type, "meta context before structured replies");
                c.option(Nbd.OPT_GO, c.goData("nope"));
                assertEquals(Nbd.REP_ERR_UNKNOWN, c.optionReply().type);
                byte[] bad = c.goData("x");
                bad[3] = 100; // name length past the data
                c.option(Nbd.OPT_GO, bad);
                assertEquals(Nbd.REP_ERR_INVALID, c.optionReply().type);
                c.go("x");
                assertEquals(Nbd.EINVAL, c.request(Nbd.CMD_READ, 0, MIB - 512, 1024).error, "read past the end");
                assertEquals(Nbd.EINVAL, c.request(Nbd.CMD_READ, 0, 0, 64 << 20).error, "oversized read");
                assertEquals(Nbd.EINVAL, c.request(Nbd.CMD_READ, 0, 0, 0).error, "zero-length read");
                assertEquals(Nbd.EINVAL, c.request(77, 0, 0, 512).error, "unknown command");
                assertEquals(Nbd.EINVAL, c.request(Nbd.CMD_READ, 0x8000, 0, 512).error, "unknown flag");
                assertEquals(Nbd.EINVAL, c.request(Nbd.CMD_BLOCK_STATUS, 0, 0, 512).error, "no meta context");
                assertEquals(Nbd.ENOSPC, c.request(Nbd.CMD_WRITE_ZEROES, 0, MIB, 512).error, "zeroes past the end");
                Reply ok = c.request(Nbd.CMD_READ, 0, 4096, 512);
                assertEquals(0, ok.error);
                assertEquals(512, ok.data.length);
            }
            // a half-sent request, then the client vanishes
            awaitNoConnections(s); // the limit is 3: earlier connections' threads end asynchronously
            try (RawClient c = RawClient.unix(sock)) {
                c.go("x");
                c.raw(ByteBuffer.allocate(10)
                        .putInt(Nbd.REQUEST_MAGIC)
                        .putShort((short) 0)
                        .flip());
            }
            // an oversized write: error reply, then the server drops the connection (the payload cannot be skipped)
            awaitNoConnections(s); // the limit is 3: earlier connections' threads end asynchronously
            try (RawClient c = RawClient.unix(sock)) {
                c.go("x");
                Reply r = c.request(Nbd.CMD_WRITE, 0, 0, 0x7fff_0000);
                assertEquals(Nbd.EINVAL, r.error);
                assertTrue(c.closedByPeer());
            }
            // garbage instead of a request magic: disconnected
            awaitNoConnections(s); // the limit is 3: earlier connections' threads end asynchronously
            try (RawClient c = RawClient.unix(sock)) {
                c.go("x");
                c.raw(ByteBuffer.wrap(new byte[28]));
                assertTrue(c.closedByPeer());
            }
            // too many connections: three held open, the fourth is refused in the handshake with a reason
            // (first the server must have finished with the clients above: their threads end asynchronously)
            awaitNoConnections(s);
            List<RawClient> held = new ArrayList<>();
            try {
                for (int i = 0; i < 3; i++) {
                    RawClient c = RawClient.unix(sock);
                    c.go("x");
                    held.add(c);
                }
                try (RawClient c = RawClient.unix(sock)) {
                    c.option(Nbd.OPT_GO, c.goData("x"));
                    Reply r = c.optionReply();
                    assertEquals(Nbd.REP_ERR_POLICY, r.type);
                    assertTrue(new String(r.data, StandardCharsets.UTF_8).contains("too many connections"));
                }
            } finally {
                for (RawClient c : held) {
                    c.close();
                }
            }
            // the server still serves a real client
            io.iovirt.testing.Await.until(
                    Duration.ofSeconds(20), "the held connections to close", () -> s.connectionCount() == 0);
            qemuIoOk("nbd+unix:///x?socket=" + sock, "raw", "write -P 0x12 0 64k", "read -P 0x12 0 64k");
            assertNotEquals(0, s.exports().iterator().next().stats().errors.sum());
        }
    }

    /**
     * A flood of connections over the limit costs the server no thread and no lasting descriptor: none gets a
     * thread, the server closes every one (after its refusal, or at once past the refusals under way), the clients
     * within the limit go on being served, and a well-behaved client over the limit (qemu-io) gets the error naming
     * the limit — over a UNIX socket and over TCP.
     */
    @Test
    void aFloodOfConnectionsOverTheLimitCostsNoThreadAndIsClosed() throws Exception {
        Path img = dir.resolve("f.raw");
        Files.write(img, new byte[MIB]);
        Path sock = dir.resolve("f.sock");
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer unix = NbdServer.startUnix(sock, 2);
                NbdServer tcp = NbdServer.startTcp("127.0.0.1", 0, 2)) {
            unix.addExport(new NbdExport("x", image, false));
            tcp.addExport(new NbdExport("x", image, false));
            flood(unix, () -> RawClient.unix(sock), "nbd+unix:///x?socket=" + sock);
            flood(tcp, () -> RawClient.tcp(tcp.port()), "nbd://127.0.0.1:" + tcp.port() + "/x");
        }
    }

    private interface Connect {
        RawClient open() throws IOException;
    }

    /** The names of the server's connection threads (one per connection; not their workers), sorted. */
    private static List<String> threads(NbdServer s) {
        String name = java.util.regex.Pattern.quote("nbd " + s.address() + " #") + "\\d+";
        return Thread.getAllStackTraces().keySet().stream()
                .map(Thread::getName)
                .filter(n -> n.matches(name))
                .sorted()
                .toList();
    }

    private static void flood(NbdServer s, Connect connect, String uri) throws Exception {
        List<RawClient> held = new ArrayList<>();
        List<SocketChannel> flood = new ArrayList<>();
        try {
            for (int i = 0; i < 2; i++) {
                held.add(connect.open());
                held.getLast().go("x");
            }
            List<String> before = threads(s);
            for (int i = 0; i < 200; i++) {
                SocketChannel ch = s.port() < 0
                        ? SocketChannel.open(
                                UnixDomainSocketAddress.of(s.address().substring("unix:".length())))
                        : SocketChannel.open(new java.net.InetSocketAddress("127.0.0.1", s.port()));
                flood.add(ch); // never sends a byte
            }
            // every one accepted: it got the greeting (a refusal under way) or was closed at once
            for (SocketChannel ch : flood) {
                ByteBuffer greeting = ByteBuffer.allocate(18);
                while (greeting.hasRemaining() && ch.read(greeting) >= 0) {}
            }
            assertEquals(before, threads(s), "the server's connection threads: the two within the limit");
            assertTrue(s.pendingRefusals() <= NbdRefusals.MAX_PENDING, s.pendingRefusals() + " refusals at once");
            for (SocketChannel ch : flood) { // the server closes each, whatever the client does
                ByteBuffer b = ByteBuffer.allocate(64);
                int n;
                do {
                    n = ch.read(b.clear());
                } while (n >= 0);
            }
            io.iovirt.testing.Await.until(
                    Duration.ofSeconds(20), "the refusals to end", () -> s.pendingRefusals() == 0);
            assertEquals(0, held.getFirst().request(Nbd.CMD_READ, 0, 0, 4096).error, "a client within the limit");
            var refused = run("qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", uri);
            assertNotEquals(0, refused.exit(), refused.output());
            assertTrue(
                    refused.output().contains("too many connections: this server accepts 2 at once"), refused.output());
        } finally {
            for (SocketChannel ch : flood) {
                ch.close();
            }
            for (RawClient c : held) {
                c.close();
            }
        }
        awaitNoConnections(s);
        qemuIoOk(uri, "raw", "read -P 0 0 4k");
    }

    /**
     * Several requests in flight on one connection: QEMU's client with asynchronous writes and a flush among them,
     * a raw client that pipelines writes, a flush and reads before reading any reply (replies may come in any
     * order; each is matched by its cookie), and a client that sends reads without ever reading the replies — it
     * stalls only itself: another client is served meanwhile, and its connection ends cleanly when it goes.
     */
    @Test
    void requestsInFlightOnOneConnection() throws Exception {
        Path img = dir.resolve("p.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", img.toString(), "256M");
        Path sock = dir.resolve("p.sock");
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startUnix(sock, 4)) {
            s.addExport(new NbdExport("p", image, false));
            String u = "nbd+unix:///p?socket=" + sock;
            List<String> cmds = new ArrayList<>();
            for (int i = 0; i < 32; i++) {
                cmds.add("aio_write -P " + (0x20 + i) + " " + i * 256 + "k 192k");
            }
            cmds.add("aio_flush");
            for (int i = 0; i < 32; i++) {
                cmds.add("aio_read -P " + (0x20 + i) + " " + i * 256 + "k 192k");
            }
            cmds.add("aio_flush");
            String out = qemuIoOk(u, "raw", cmds.toArray(String[]::new));
            assertTrue(!out.contains("Pattern verification failed"), out);

            // raw pipelining: 48 writes (a few larger than a slot keeps), a flush and 48 reads, replies read afterwards
            int n = 48;
            java.util.Map<Long, Integer> lengths = new java.util.HashMap<>();
            java.util.Map<Long, Integer> patterns = new java.util.HashMap<>();
            try (RawClient c = RawClient.unix(sock)) {
                c.go("p");
                for (int i = 0; i < n; i++) {
                    int len = i % 8 == 0 ? 3 * MIB : 64 << 10;
                    byte[] data = new byte[len];
                    java.util.Arrays.fill(data, (byte) (0x40 + i));
                    c.send(Nbd.CMD_WRITE, 0, (long) i * 4 * MIB, len, data);
                }
                long flush = c.send(Nbd.CMD_FLUSH, 0, 0, 0, null);
                for (int i = 0; i < n; i++) {
                    int len = i % 8 == 0 ? 3 * MIB : 64 << 10;
                    long ck = c.send(Nbd.CMD_READ, 0, (long) i * 4 * MIB, len, null);
                    lengths.put(ck, len);
                    patterns.put(ck, 0x40 + i);
                }
                java.util.Set<Long> seen = new java.util.HashSet<>();
                for (int i = 0; i < 2 * n + 1; i++) {
                    ByteBuffer h = c.read(16);
                    assertEquals(Nbd.SIMPLE_REPLY_MAGIC, h.getInt());
                    int err = h.getInt();
                    long ck = h.getLong();
                    assertEquals(0, err, "request " + ck);
                    assertTrue(seen.add(ck), "one reply per cookie: " + ck);
                    if (lengths.containsKey(ck)) {
                        byte[] got = c.read(lengths.get(ck)).array();
                        byte[] want = new byte[got.length];
                        java.util.Arrays.fill(want, (byte) (int) patterns.get(ck));
                        assertArrayEquals(want, got, "read " + ck);
                    }
                }
                assertTrue(seen.contains(flush));
                assertEquals(2L * n + 1, seen.size());
            }

            // a client that never reads its replies: it fills its own socket, the others go on
            RawClient stalled = RawClient.unix(sock);
            try {
                stalled.go("p");
                // 64 reads of 1 MiB in one write (small writes would fill the client's own socket buffer first)
                ByteBuffer req = ByteBuffer.allocate(64 * 28);
                for (int i = 0; i < 64; i++) {
                    req.putInt(Nbd.REQUEST_MAGIC)
                            .putShort((short) 0)
                            .putShort((short) Nbd.CMD_READ)
                            .putLong(i)
                            .putLong(0)
                            .putInt(MIB);
                }
                stalled.raw(req.flip());
                qemuIoOk(u, "raw", "write -P 0x77 250M 1M", "read -P 0x77 250M 1M", "flush");
            } finally {
                stalled.close();
            }
            io.iovirt.testing.Await.until(
                    Duration.ofSeconds(60), "the stalled client's connection to end", () -> s.connectionCount() == 0);
            qemuIoOk(u, "raw", "read -P 0x41 4M 64k");
        }
        check(img, false);
    }

    /** {@code serve nbd --direct} on a qcow2 image: QEMU's client reads and writes it; the image checks clean. */
    @Test
    void directQcow2Export() throws Exception {
        Path img = dir.resolve("d.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", img.toString(), "32M");
        qemuIoOk(img, "qcow2", "write -P 0x71 1M 1M");
        try (ChildProcess p = serve(img, "--direct")) {
            qemuIoOk(
                    uri(),
                    "raw",
                    "read -P 0x71 1M 1M",
                    "write -P 0x72 8M 256k",
                    "write -z 16M 1M",
                    "read -P 0x72 8M 256k",
                    "read -P 0 16M 1M",
                    "flush");
            p.stop(Duration.ofSeconds(20));
            assertTrue(p.log().contains("O_DIRECT") || p.log().contains("direct"), p.log());
        }
        check(img, false);
        qemuIoOk(img, "qcow2", "read -P 0x71 1M 1M", "read -P 0x72 8M 256k");
    }

    /**
     * The UNIX listener's access control, shared with the vhost-user servers: the socket file is 0600 (0660 and
     * group-owned with a socket group) from the moment it listens, and a peer whose uid is not allowed is closed
     * before the handshake while allowed peers keep being served.
     */
    @Test
    void unixSocketModeAndPeerUidCheck() throws Exception {
        Path img = dir.resolve("acc.raw");
        Files.write(img, new byte[MIB]);
        Path owner = dir.resolve("owner.sock");
        Path group = dir.resolve("group.sock");
        Path none = dir.resolve("none.sock");
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer a = NbdServer.startUnix(owner, 4);
                NbdServer b =
                        NbdServer.startUnix(group, 4, io.iovirt.linux.SocketAccess.of("root", java.util.Set.of()));
                NbdServer c =
                        NbdServer.startUnix(none, 4, new io.iovirt.linux.SocketAccess(null, java.util.Set.of(54321)))) {
            for (NbdServer s : List.of(a, b, c)) {
                s.addExport(new NbdExport("x", image, false));
            }
            assertEquals(
                    "rw-------",
                    java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(owner)));
            assertEquals(
                    "rw-rw----",
                    java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(group)));
            assertEquals("root", Files.getOwner(group).getName());
            qemuIoOk("nbd+unix:///x?socket=" + owner, "raw", "write -P 0x5c 0 4k", "read -P 0x5c 0 4k");
            qemuIoOk("nbd+unix:///x?socket=" + group, "raw", "read -P 0x5c 0 4k");
            var refused = run("qemu-io", "-f", "raw", "-c", "read 0 4k", "nbd+unix:///x?socket=" + none);
            assertNotEquals(0, refused.exit(), refused.output());
            try (RawClient r = RawClient.unix(none)) {
                ByteBuffer greeting = ByteBuffer.allocate(16);
                assertTrue(r.ch.read(greeting) <= 0, "a refused peer gets no greeting");
            } catch (IOException expected) {
                // reset by the server: refused
            }
            assertEquals(0, c.connectionCount());
            qemuIoOk("nbd+unix:///x?socket=" + owner, "raw", "read -P 0x5c 0 4k"); // others still served
        }
        assertTrue(!Files.exists(owner), "the socket file stays after close");
    }

    /** serve nbd --socket-group: the socket is 0660 and group-owned as soon as it listens; served as before. */
    @Test
    void serveNbdTakesTheSocketAccessOptions() throws Exception {
        Path img = dir.resolve("g.raw");
        Files.write(img, new byte[MIB]);
        try (ChildProcess p = serve(img, "--socket-group", "root", "--allow-uid", "54321")) {
            Path sock = dir.resolve("nbd.sock");
            assertEquals(
                    "rw-rw----",
                    java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(sock)));
            qemuIoOk(uri(), "raw", "write -P 0x3c 0 4k", "read -P 0x3c 0 4k");
        }
    }

    /**
     * NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_NO_HOLE (what QEMU's client sends for a write of zeroes that may not
     * unmap: qemu-io's {@code write -z} without {@code -u}) must leave the range allocated — doc/proto.md: "the area
     * MUST be fully provisioned". On a file system without FALLOC_FL_ZERO_RANGE (tmpfs, here /dev/shm) a raw image
     * fell back to punching a hole, so the range lost its blocks. A write of zeroes that may unmap still punches one.
     */
    @Test
    void writeZeroesWithNoHoleKeepsTheRangeAllocatedWhereTheFileSystemCannotZeroARange() throws Exception {
        Path shm = Path.of("/dev/shm");
        io.iovirt.testing.Require.that(
                Files.isDirectory(shm) && Files.isWritable(shm),
                "a writable tmpfs at /dev/shm (a file system without FALLOC_FL_ZERO_RANGE)");
        Path img = Files.createTempFile(shm, "iovirt-nohole-", ".raw");
        try {
            byte[] data = new byte[4 * MIB];
            java.util.Arrays.fill(data, (byte) 0x5a);
            Files.write(img, data);
            long allocated = io.iovirt.linux.FileIo.stat(img).blocks();
            try (DiskImage image = Images.open(img, null, false, false);
                    NbdServer s = NbdServer.startUnix(dir.resolve("z.sock"), 4)) {
                s.addExport(new NbdExport("z", image, false));
                String u = "nbd+unix:///z?socket=" + dir.resolve("z.sock");
                qemuIoOk(u, "raw", "write -z 1M 1M", "read -P 0 1M 1M", "read -P 0x5a 0 1M", "read -P 0x5a 2M 2M");
                assertEquals(
                        allocated,
                        io.iovirt.linux.FileIo.stat(img).blocks(),
                        "blocks after a write of zeroes with NO_HOLE");
                qemuIoOk(u, "raw", "write -z -u 2M 1M", "read -P 0 2M 1M");
                assertTrue(
                        io.iovirt.linux.FileIo.stat(img).blocks() < allocated,
                        "a write of zeroes that may unmap punches a hole");
                assertEquals(0, s.exports().iterator().next().stats().errors.sum());
            }
        } finally {
            Files.deleteIfExists(img);
        }
    }

    /**
     * A read-only export refuses its clients' writes and, while it runs, keeps other writers of its image away (the
     * shared image lock, which QEMU's image locking sees): its clients never see the data change under them. QEMU
     * readers of the image are still welcome.
     */
    @Test
    void readOnlyExportRefusesWrites() throws Exception {
        Path img = dir.resolve("r.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", img.toString(), "16M");
        try (ChildProcess p = serve(img, "--readonly")) {
            var written = run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 4k", img.toString());
            assertNotEquals(0, written.exit(), written.output());
            assertTrue(written.output().contains("Failed to get \"write\" lock"), written.output());
            ok("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0 0 4k", img.toString());
            var r = run("qemu-io", "-f", "raw", "-c", "write 0 4k", uri());
            assertTrue(
                    r.output().contains("Operation not permitted")
                            || r.output().contains("read-only")
                            || r.output().contains("Permission denied"),
                    r.output());
            String out = ok("qemu-io", "-r", "-f", "raw", "-c", "read -P 0 0 1M", uri());
            assertTrue(!out.contains("Pattern verification failed"), out);
        }
        check(img, false);
    }

    // ---- a minimal raw NBD client for the hostile cases ----

    record Reply(int type, int error, byte[] data) {}

    /** A transmission reply: the request's cookie, its error, and a READ's data (a BLOCK_STATUS's descriptors). */
    record Answer(long cookie, int error, byte[] data) {}

    static final class RawClient implements AutoCloseable {
        final SocketChannel ch;
        long cookie;

        RawClient(SocketChannel ch) throws IOException {
            this.ch = ch;
            ByteBuffer g = read(18);
            assertEquals(Nbd.NBDMAGIC, g.getLong());
            assertEquals(Nbd.IHAVEOPT, g.getLong());
            raw(ByteBuffer.allocate(4)
                    .putInt(Nbd.FLAG_FIXED_NEWSTYLE | Nbd.FLAG_NO_ZEROES)
                    .flip());
        }

        static RawClient unix(Path p) throws IOException {
            SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX);
            ch.connect(UnixDomainSocketAddress.of(p));
            return new RawClient(ch);
        }

        /** Over TCP, without Nagle's delay: a request header and its payload go in separate writes. */
        static RawClient tcp(int port) throws IOException {
            SocketChannel ch = SocketChannel.open(new java.net.InetSocketAddress("127.0.0.1", port));
            ch.setOption(java.net.StandardSocketOptions.TCP_NODELAY, true);
            return new RawClient(ch);
        }

        void raw(ByteBuffer b) throws IOException {
            while (b.hasRemaining()) {
                ch.write(b);
            }
        }

        ByteBuffer read(int n) throws IOException {
            ByteBuffer b = ByteBuffer.allocate(n);
            while (b.hasRemaining()) {
                if (ch.read(b) < 0) {
                    throw new java.io.EOFException("server closed after " + b.position() + " of " + n);
                }
            }
            return b.flip();
        }

        boolean closedByPeer() throws IOException {
            try {
                ByteBuffer b = ByteBuffer.allocate(1);
                return ch.read(b) < 0;
            } catch (IOException e) {
                return true;
            }
        }

        void option(int opt, byte[] data) throws IOException {
            raw(ByteBuffer.allocate(16 + data.length)
                    .putLong(Nbd.IHAVEOPT)
                    .putInt(opt)
                    .putInt(data.length)
                    .put(data)
                    .flip());
        }

        Reply optionReply() throws IOException {
            ByteBuffer h = read(20);
            assertEquals(Nbd.OPT_REPLY_MAGIC, h.getLong());
            h.getInt();
            int type = h.getInt();
            int len = h.getInt();
            return new Reply(type, 0, read(len).array());
        }

        byte[] goData(String name) {
            byte[] n = name.getBytes(StandardCharsets.UTF_8);
            return ByteBuffer.allocate(6 + n.length)
                    .putInt(n.length)
                    .put(n)
                    .putShort((short) 0)
                    .array();
        }

        byte[] metaContextData(String name, String query) {
            byte[] n = name.getBytes(StandardCharsets.UTF_8);
            byte[] q = query.getBytes(StandardCharsets.UTF_8);
            return ByteBuffer.allocate(12 + n.length + q.length)
                    .putInt(n.length)
                    .put(n)
                    .putInt(1)
                    .putInt(q.length)
                    .put(q)
                    .array();
        }

        /** NBD_OPT_STRUCTURED_REPLY (before GO): replies come as chunks, see {@link #answer}. */
        void structuredReplies() throws IOException {
            option(Nbd.OPT_STRUCTURED_REPLY, new byte[0]);
            assertEquals(Nbd.REP_ACK, optionReply().type, "structured replies refused");
        }

        /** Sets base:allocation for export {@code name} (after {@link #structuredReplies}, before GO). */
        void baseAllocation(String name) throws IOException {
            option(Nbd.OPT_SET_META_CONTEXT, metaContextData(name, Nbd.BASE_ALLOCATION));
            assertEquals(Nbd.REP_META_CONTEXT, optionReply().type, "base:allocation not set");
            assertEquals(Nbd.REP_ACK, optionReply().type);
        }

        /**
         * Reads one reply: a simple one (followed by {@code readLength} bytes of data when it answers a READ without
         * error: pass 0 for any other command), or every chunk of a structured one up to the chunk flagged DONE.
         */
        Answer answer(boolean structured, int readLength) throws IOException {
            if (!structured) {
                ByteBuffer h = read(16);
                assertEquals(Nbd.SIMPLE_REPLY_MAGIC, h.getInt());
                int err = h.getInt();
                long c = h.getLong();
                return new Answer(
                        c, err, err == 0 && readLength > 0 ? read(readLength).array() : new byte[0]);
            }
            long c = 0;
            int err = 0;
            byte[] data = new byte[0];
            int flags;
            do {
                ByteBuffer h = read(20);
                assertEquals(Nbd.STRUCTURED_REPLY_MAGIC, h.getInt());
                flags = Short.toUnsignedInt(h.getShort());
                int type = Short.toUnsignedInt(h.getShort());
                c = h.getLong();
                ByteBuffer p = read(h.getInt());
                switch (type) {
                    case Nbd.REPLY_TYPE_NONE -> {}
                    case Nbd.REPLY_TYPE_OFFSET_DATA -> {
                        p.getLong();
                        data = new byte[p.remaining()];
                        p.get(data);
                    }
                    case Nbd.REPLY_TYPE_BLOCK_STATUS -> data = p.array();
                    case Nbd.REPLY_TYPE_ERROR -> err = p.getInt();
                    default -> throw new AssertionError("unexpected reply chunk type " + type);
                }
            } while ((flags & Nbd.REPLY_FLAG_DONE) == 0);
            return new Answer(c, err, data);
        }

        void go(String name) throws IOException {
            option(Nbd.OPT_GO, goData(name));
            while (true) {
                Reply r = optionReply();
                if (r.type == Nbd.REP_ACK) {
                    return;
                }
                assertEquals(Nbd.REP_INFO, r.type);
            }
        }

        /** Sends a request (and a write's payload) without waiting for its reply; returns its cookie. */
        long send(int type, int flags, long offset, long length, byte[] payload) throws IOException {
            long c = ++cookie;
            raw(ByteBuffer.allocate(28)
                    .putInt(Nbd.REQUEST_MAGIC)
                    .putShort((short) flags)
                    .putShort((short) type)
                    .putLong(c)
                    .putLong(offset)
                    .putInt((int) length)
                    .flip());
            if (payload != null) {
                raw(ByteBuffer.wrap(payload));
            }
            return c;
        }

        /** A request with simple replies; a READ's data is read when the reply is not an error. */
        Reply request(int type, int flags, long offset, long length) throws IOException {
            long c = ++cookie;
            ByteBuffer b = ByteBuffer.allocate(28)
                    .putInt(Nbd.REQUEST_MAGIC)
                    .putShort((short) flags)
                    .putShort((short) type)
                    .putLong(c)
                    .putLong(offset)
                    .putInt((int) length)
                    .flip();
            raw(b);
            ByteBuffer h = read(16);
            assertEquals(Nbd.SIMPLE_REPLY_MAGIC, h.getInt());
            int err = h.getInt();
            assertEquals(c, h.getLong());
            byte[] data = err == 0 && type == Nbd.CMD_READ ? read((int) length).array() : new byte[0];
            return new Reply(0, err, data);
        }

        @Override
        public void close() throws IOException {
            ch.close();
        }
    }
}
