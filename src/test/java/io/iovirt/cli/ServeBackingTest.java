// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static io.iovirt.storage.qcow2.QemuTools.ok;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code --backing-dir} / {@code --backing-devices} of serve blk and serve nbd: a tenant's image naming a backing
 * file outside the directories is refused before anything serves, and one inside serves its backing file's data to a
 * real NBD client (qemu-io). Before, the options did not exist (a usage error) and any backing file was served.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img, qemu-io, iovirt serve nbd in a process of its own: Failsafe
@Timeout(value = 240, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class ServeBackingTest {
    static final Duration TIMEOUT = Duration.ofSeconds(60);

    @TempDir
    Path dir;

    Path bases;
    Path secret;
    Path evil;
    Path good;

    @BeforeEach
    void images() throws Exception {
        Require.program("qemu-img", "apt-get install qemu-utils");
        bases = Files.createDirectories(dir.resolve("bases"));
        Path tenant = Files.createDirectories(dir.resolve("tenant"));
        secret = Files.createDirectories(dir.resolve("outside")).resolve("secret.raw");
        Files.write(secret, new byte[1 << 20]);
        Path base = bases.resolve("base.raw");
        byte[] data = new byte[1 << 20];
        java.util.Arrays.fill(data, (byte) 0x5a);
        Files.write(base, data);
        evil = tenant.resolve("evil.qcow2");
        good = tenant.resolve("good.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", "-b", secret.toString(), "-F", "raw", evil.toString());
        ok("qemu-img", "create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "raw", good.toString());
    }

    @Test
    void anImageWhoseBackingFileIsOutsideIsRefusedBeforeAnythingServes() throws Exception {
        Path sock = dir.resolve("s.sock");
        for (String kind : List.of("blk", "nbd")) {
            CliRun r = CliRun.run(List.of(
                    "serve",
                    kind,
                    "--image",
                    evil.toString(),
                    "--socket",
                    sock.toString(),
                    "--readonly",
                    "--backing-dir",
                    bases.toString()));
            assertEquals(1, r.exit(), kind + ": " + r.err());
            assertTrue(
                    r.err()
                            .contains("backing file " + secret + " of " + evil + " is outside the allowed backing"
                                    + " directories"),
                    kind + ": " + r.err());
            assertTrue(
                    r.err().contains("refuse the image")
                            && r.err().contains("--backing-dir")
                            && !r.err().contains("qemu-img convert"),
                    kind + ": " + r.err());
            assertTrue(r.noStackTrace(), r.err());
            assertFalse(Files.exists(sock), "nothing was served");
        }
        // neither a regular file nor a block device: refused as such whatever the options, without a detour through
        // --backing-devices (which would not let it through)
        Path onNull = dir.resolve("tenant/null.qcow2");
        ok("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/dev/null", "-F", "raw", onNull.toString(), "1M");
        for (boolean devices : new boolean[] {false, true}) {
            List<String> args = new java.util.ArrayList<>(List.of(
                    "serve",
                    "nbd",
                    "--image",
                    onNull.toString(),
                    "--socket",
                    sock.toString(),
                    "--backing-dir",
                    bases.toString()));
            if (devices) {
                args.add("--backing-devices");
            }
            CliRun r = CliRun.run(args);
            assertEquals(1, r.exit(), r.err());
            assertTrue(
                    r.err().contains("is a character device, not a regular file or a block device"),
                    devices + ": " + r.err());
            assertFalse(r.err().contains("backing devices are not allowed"), devices + ": " + r.err());
        }
        // a directory that does not exist is the operator's mistake: a usage error
        CliRun r = CliRun.run(List.of(
                "serve",
                "nbd",
                "--image",
                good.toString(),
                "--socket",
                sock.toString(),
                "--backing-dir",
                dir.resolve("missing").toString(),
                "--backing-dir",
                bases.toString()));
        assertEquals(2, r.exit(), r.err());
        assertTrue(r.err().contains("--backing-dir: backing directory " + dir.resolve("missing")), r.err());
        assertFalse(r.err().contains("Exception"), r.err()); // a plain message, not the exception's toString
    }

    @Test
    void anImageWhoseBackingFileIsInsideServesItsDataOverNbd() throws Exception {
        Path qemuIo = Require.program("qemu-io", "apt-get install qemu-utils");
        Path sock = dir.resolve("nbd.sock");
        try (ChildProcess serve = ChildProcess.builder(IovirtCli.command(
                        "serve",
                        "nbd",
                        "--image",
                        good.toString(),
                        "--socket",
                        sock.toString(),
                        "--readonly",
                        "--backing-dir",
                        bases.toString()))
                .name("iovirt serve nbd")
                .log(dir.resolve("serve.log"))
                .start()) {
            // the socket file may be there before the export is: the first read that succeeds
            String[] read = {
                qemuIo.toString(), "-r", "-f", "raw", "nbd+unix:///?socket=" + sock, "-c", "read -P 0x5a 0 1M"
            };
            Await.until(TIMEOUT, "serve nbd to serve on " + sock, serve, () -> {
                try {
                    return Files.exists(sock) && QemuTools.run(read).exit() == 0;
                } catch (java.io.IOException e) {
                    throw new java.io.UncheckedIOException(e);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return false;
                }
            });
            String out = ok(read);
            assertTrue(out.contains("read 1048576/1048576 bytes"), out);
        }
        // the same, served from outside: the process exits naming the file and the remedy
        try (ChildProcess serve = ChildProcess.builder(IovirtCli.command(
                        "serve",
                        "nbd",
                        "--image",
                        evil.toString(),
                        "--socket",
                        sock.toString(),
                        "--readonly",
                        "--backing-dir",
                        bases.toString()))
                .name("iovirt serve nbd")
                .log(dir.resolve("serve-evil.log"))
                .start()) {
            assertTrue(serve.waitFor(TIMEOUT), serve.logTail(20));
            assertEquals(1, serve.exitValue(), serve.log());
            assertTrue(serve.log().contains("is outside the allowed backing directories"), serve.log());
            assertTrue(serve.log().contains("refuse the image"), serve.log());
        }
    }
}
