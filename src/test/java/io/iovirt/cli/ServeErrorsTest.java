// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.linux.UnixSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine.Model.CommandSpec;

/**
 * The servers' errors about their sockets name the options the command has — serve net has no --socket — and a
 * port configuration that cannot work (two ports on one path) is a usage error at parse time.
 */
class ServeErrorsTest {
    @TempDir
    Path tmp;

    @Test
    void twoPortsOnOneSocketPathAreAUsageErrorNamingBoth() {
        Path sock = tmp.resolve("x.sock");
        for (List<String> ports : List.of(
                List.of("stream:" + sock, "vhost-user:" + sock),
                List.of("vhost-user:" + sock + ",queues=2", "stream:" + tmp.resolve("./x.sock")),
                List.of("stream:" + sock, "stream:" + sock))) {
            List<String> args = new ArrayList<>(List.of("serve", "net"));
            for (String p : ports) {
                args.add("--port");
                args.add(p);
            }
            CliRun r = CliRun.run(args);
            assertEquals(2, r.exit(), r.err());
            assertEquals(1, r.err().strip().lines().count(), r.err());
            assertTrue(
                    r.err()
                            .startsWith("iovirt serve net: --port " + ports.get(0) + " and --port " + ports.get(1)
                                    + " both use socket " + sock + ": each port needs its own socket path"),
                    r.err());
            assertOnlyOwnOptions("serve net", r.err());
            assertTrue(!Files.exists(sock), "nothing was started");
        }
    }

    @Test
    void pollThreadsOutOfRangeIsAUsageError() {
        Path sock = tmp.resolve("p.sock");
        for (String n : List.of("-1", "257")) {
            CliRun r = CliRun.run(List.of("serve", "net", "--poll-threads", n, "--port", "vhost-user:" + sock));
            assertEquals(2, r.exit(), r.err());
            assertTrue(r.err().startsWith("iovirt serve net: --poll-threads must be 0..256"), r.err());
            assertTrue(!Files.exists(sock), "nothing was started");
        }
    }

    @Test
    void aLiveSocketIsRefusedNamingOnlyOptionsTheCommandHas() throws Exception {
        Path sock = tmp.resolve("live.sock");
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[1 << 20]);
        try (UnixSocket other = UnixSocket.listen(sock, 1)) {
            for (List<String> args : List.of(
                    List.of("serve", "net", "--port", "vhost-user:" + sock),
                    List.of("serve", "net", "--port", "stream:" + sock),
                    List.of("serve", "blk", "--image", image.toString(), "--socket", sock.toString()),
                    List.of("serve", "nbd", "--image", image.toString(), "--socket", sock.toString()))) {
                CliRun r = CliRun.run(args);
                assertEquals(1, r.exit(), args + ": " + r.err());
                assertTrue(r.err().contains(sock.toString()), r.err());
                assertOnlyOwnOptions(String.join(" ", args.subList(0, 2)), r.err());
            }
        }
    }

    /** serve nbd owns a writable image as the daemon's NBD exports and serve blk do: a locked image is refused. */
    @Test
    void aWritableNbdExportOfAnImageInUseIsRefused() throws Exception {
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[1 << 20]);
        try (io.iovirt.storage.ImageLock other = io.iovirt.storage.ImageLock.open(image, false)) {
            assertEquals(null, other.acquire(), "the test holds the image, as a QEMU would");
            List<String> args = List.of(
                    "serve",
                    "nbd",
                    "--image",
                    image.toString(),
                    "--socket",
                    tmp.resolve("n.sock").toString());
            CliRun r = CliRun.run(args);
            assertEquals(1, r.exit(), args + ": " + r.err());
            assertTrue(
                    r.err()
                            .contains("is in use by pid "
                                    + ProcessHandle.current().pid()),
                    r.err());
            assertTrue(r.err().contains("a second writer would corrupt it"), r.err());
            assertTrue(Files.notExists(tmp.resolve("n.sock")), "nothing listens");
        }
    }

    /** serve nbd --readonly keeps writers away: an image a QEMU writer (qemu-io) holds is refused, naming it. */
    @Test
    @org.junit.jupiter.api.Timeout(120) // not an expectation on time: an export that is not refused serves for ever
    void aReadOnlyNbdExportOfAnImageBeingWrittenIsRefused() throws Exception {
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[1 << 20]);
        Process qemu = io.iovirt.storage.qcow2.QemuTools.writerHolding(image);
        try {
            List<String> args = List.of(
                    "serve",
                    "nbd",
                    "--image",
                    image.toString(),
                    "--readonly",
                    "--socket",
                    tmp.resolve("n.sock").toString());
            CliRun r = CliRun.run(args);
            assertEquals(1, r.exit(), args + ": " + r.err());
            assertTrue(
                    r.err().contains("is in use for writing by pid " + qemu.pid())
                            && r.err().contains("qemu-io"),
                    r.err());
            assertTrue(r.err().contains("a read-only export would serve data that changes under its clients"), r.err());
            assertTrue(Files.notExists(tmp.resolve("n.sock")), "nothing listens");
        } finally {
            qemu.destroyForcibly().waitFor();
        }
    }

    @Test
    void aRegularFileWhereTheSocketGoesIsNeverDeleted() throws Exception {
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[1 << 20]);
        Path notASocket = tmp.resolve("precious.raw");
        Files.write(notASocket, new byte[] {42});
        for (List<String> args : List.of(
                List.of("serve", "nbd", "--image", image.toString(), "--socket", notASocket.toString()),
                List.of("serve", "blk", "--image", image.toString(), "--socket", notASocket.toString()),
                List.of("serve", "net", "--port", "stream:" + notASocket))) {
            CliRun r = CliRun.run(args);
            assertEquals(1, r.exit(), args + ": " + r.err());
            assertTrue(r.err().contains("exists and is not a socket"), r.err());
            assertOnlyOwnOptions(String.join(" ", args.subList(0, 2)), r.err());
            assertEquals(1, Files.size(notASocket), "the file is untouched");
        }
    }

    /** Every --option an error line names exists on that command. */
    static void assertOnlyOwnOptions(String command, String err) {
        CommandSpec spec = CliContractTest.spec(command);
        Matcher m = Pattern.compile("(?<![\\w-])--[a-z][a-z-]*").matcher(err);
        while (m.find()) {
            assertTrue(
                    spec.findOption(m.group()) != null || m.group().equals("--help"),
                    "'" + command + "' has no option " + m.group() + ": " + err);
        }
    }
}
