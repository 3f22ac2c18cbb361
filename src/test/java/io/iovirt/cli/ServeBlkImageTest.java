// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.testing.Fifo;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** serve blk refuses images it would corrupt or misrepresent, before it listens. */
class ServeBlkImageTest {
    @TempDir
    Path tmp;

    @Test
    void anImageOfAFormatNotServedIsRefusedUnlessTheOperatorSaysRaw() throws Exception {
        Path q = tmp.resolve("q.vmdk");
        // A VMDK sparse extent header as qemu-img writes it: magic "KDMV", version 1 (the rest may be zeros).
        ByteBuffer h =
                ByteBuffer.allocate(1 << 20).put("KDMV".getBytes("ISO-8859-1")).putInt(Integer.reverseBytes(1));
        Files.write(q, h.array());
        Path socket = tmp.resolve("blk.sock");
        CliRun r = CliRun.run(List.of("serve", "blk", "--image", q.toString(), "--socket", socket.toString()));
        assertEquals(1, r.exit(), r.err());
        assertTrue(
                r.err()
                        .startsWith(
                                "iovirt serve blk: cannot serve " + q + ": its header says it is a VMware VMDK image"),
                r.err());
        assertTrue(r.err().contains(" — convert it (qemu-img convert -f vmdk -O qcow2"), r.err());
        assertEquals(1, r.err().strip().lines().count(), r.err());
        assertFalse(Files.exists(socket), "refused before listening");
        assertDoesNotThrow(() -> ServeBlkCommand.checkFormat(q, io.iovirt.storage.ImageFormat.RAW));
    }

    @Test
    void aSizeThatIsNotWholeSectorsIsRefusedOrWithTheFlagWarned() throws Exception {
        Path odd = tmp.resolve("odd.raw");
        Files.write(odd, new byte[1000]);
        CliRun r = CliRun.run(List.of(
                "serve",
                "blk",
                "--image",
                odd.toString(),
                "--socket",
                tmp.resolve("s").toString()));
        assertEquals(1, r.exit(), r.err());
        assertTrue(r.err().contains("is 1000 bytes, not a multiple of 512: the guest would see 512 bytes"), r.err());
        assertTrue(r.err().contains("--allow-partial-sector"), r.err());
        assertDoesNotThrow(() -> ServeBlkCommand.checkSize(odd, 1000, true));
    }

    @Test
    void aFormatOtherThanRawIsAUsageError() {
        CliRun r = CliRun.run(List.of("serve", "blk", "--image", "x", "--socket", "y", "--format", "vmdk"));
        assertEquals(2, r.exit(), r.err());
    }

    /**
     * A FIFO as --image is refused at once, before listening, naming the path, what it is and what to do — by serve
     * blk (with the format detected or named, writable or read-only) and serve nbd. Opening it waited for a writer:
     * the command hung before it listened, with nothing said.
     */
    @Test
    void aFifoImageIsRefusedAtOnce() throws Exception {
        try (Fifo fifo = Fifo.make(tmp.resolve("pipe.raw"))) {
            Path socket = tmp.resolve("blk.sock");
            for (List<String> extra :
                    List.of(List.<String>of(), List.of("--readonly"), List.of("--format", "raw", "--readonly"))) {
                for (String command : List.of("blk", "nbd")) {
                    List<String> args = new java.util.ArrayList<>(List.of(
                            "serve", command, "--image", fifo.path().toString(), "--socket", socket.toString()));
                    args.addAll(extra);
                    CliRun r = CliRun.run(args);
                    assertEquals(1, r.exit(), args + ": " + r.err());
                    assertTrue(
                            r.err()
                                    .startsWith("iovirt serve " + command + ": image " + fifo.path()
                                            + " is a FIFO (named pipe), not a regular file or a block device (an image"
                                            + " is one of those; opening a FIFO would wait for a writer): name the"
                                            + " image file or the disk's block device itself"),
                            args + ": " + r.err());
                    assertFalse(Files.exists(socket), "refused before listening");
                }
            }
        }
    }

    /**
     * A character device as --image is refused before it is opened at all: opening some devices acts
     * (/dev/watchdog arms the host's watchdog, which reboots the host unless closed just so). A real serve blk
     * process under strace: no open of the node. It opened it (O_NONBLOCK) and refused it only after fstat.
     */
    @Test
    void aCharacterDeviceImageIsRefusedWithoutBeingOpened() throws Exception {
        Path strace = io.iovirt.testing.Require.program("strace", "apt-get install strace, or scripts/install-deps.sh");
        io.iovirt.testing.Require.that("root".equals(System.getProperty("user.name")), "root, to make a device node");
        Path node = tmp.resolve("watchdog");
        // the device of /dev/null (1,3): harmless when opened, so whether it was opened can be seen safely
        assertEquals(
                0,
                new ProcessBuilder("mknod", node.toString(), "c", "1", "3")
                        .start()
                        .waitFor());
        Path trace = tmp.resolve("openat.trace");
        Path out = tmp.resolve("serve.out");
        List<String> command = new java.util.ArrayList<>(
                List.of(strace.toString(), "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", trace.toString()));
        command.addAll(io.iovirt.vm.IovirtCli.java(
                List.of("-XX:+UseSerialGC"),
                "io.iovirt.cli.Main",
                List.of(
                        "serve",
                        "blk",
                        "--image",
                        node.toString(),
                        "--socket",
                        tmp.resolve("c.sock").toString())));
        Process serve = new ProcessBuilder(command)
                .redirectErrorStream(true)
                .redirectOutput(out.toFile())
                .start();
        assertTrue(serve.waitFor(120, java.util.concurrent.TimeUnit.SECONDS), "serve blk did not exit");
        String said = Files.readString(out);
        assertEquals(1, serve.exitValue(), said);
        assertTrue(
                said.contains("image " + node + " is a character device, not a regular file or a block device"), said);
        List<String> opens = Files.readAllLines(trace).stream()
                .filter(l -> l.contains("\"" + node + "\"") && !l.contains("O_PATH")) // O_PATH: a lookup, no open
                .toList();
        assertEquals(List.of(), opens, "the device node was opened");
    }
}
