// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.cli.Main;
import io.iovirt.testing.Require;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.QemuStorageDaemon;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;

/** {@code bench blk} against qemu-storage-daemon, QEMU's own vhost-user-blk backend: the reference peer. */
class BlkBenchAgainstQemuStorageDaemonTest extends BlkBenchContract {

    @Override
    ChildProcess startBackend(Path image, Path socket, Path dir) {
        Require.that(installed(), "qemu-storage-daemon is not installed (scripts/install-deps.sh installs it)");
        return QemuStorageDaemon.builder(image, socket)
                .cacheDirect(false)
                .log(dir.resolve("qsd.log"))
                .start()
                .process();
    }

    private static boolean installed() {
        for (String d : System.getenv().getOrDefault("PATH", "/usr/bin").split(":")) {
            if (Files.isExecutable(Path.of(d, QemuStorageDaemon.PROGRAM))) {
                return true;
            }
        }
        return false;
    }

    /** QEMU's blkdebug driver fails every read with EIO: the bench must stop with the request and the status. */
    @Test
    void aFailedRequestEndsTheRunWithItsStatus() throws Exception {
        Path sock = dir.resolve("eio.sock");
        List<String> cmd = List.of(
                QemuStorageDaemon.PROGRAM,
                "--blockdev",
                "driver=file,node-name=file0,filename=" + image,
                "--blockdev",
                "driver=blkdebug,node-name=dbg,image=file0,inject-error.0.event=read_aio,inject-error.0.errno=5",
                "--blockdev",
                "driver=raw,node-name=disk0,file=dbg",
                "--export",
                "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=" + sock
                        + ",writable=on,num-queues=1");
        try (ChildProcess eio = ChildProcess.builder(cmd)
                .name("qsd-eio")
                .log(dir.resolve("eio.log"))
                .directory(dir)
                .lifetime(Duration.ofMinutes(5))
                .startListening(sock, Duration.ofSeconds(30))) {
            IOException e = assertThrows(
                    IOException.class,
                    () -> BlkBench.run(new BlkBenchOptions(
                            sock,
                            BlkBenchOptions.Pattern.RANDREAD,
                            4096,
                            4,
                            1,
                            0,
                            1,
                            256,
                            false,
                            false,
                            true,
                            false,
                            5)));
            assertTrue(
                    e.getMessage().contains("read of 4096 bytes at sector")
                            && e.getMessage().contains("VIRTIO_BLK_S_IOERR"),
                    e.getMessage());

            StringWriter err = new StringWriter();
            int rc = Main.commandLine()
                    .setOut(new PrintWriter(new StringWriter()))
                    .setErr(new PrintWriter(err))
                    .execute("bench", "blk", "--socket", sock.toString(), "--seconds", "1", "--warmup", "0");
            assertEquals(1, rc);
            assertTrue(err.toString().startsWith("iovirt bench blk: queue 0: read of 4096 bytes"), err.toString());
        }
    }

    @Test
    void packedRingIsRefusedWithAReasonWhenNotOffered() {
        IOException e = assertThrows(
                IOException.class,
                () -> BlkBench.run(new BlkBenchOptions(
                        socket,
                        BlkBenchOptions.Pattern.RANDREAD,
                        4096,
                        1,
                        0.2,
                        0,
                        1,
                        256,
                        true,
                        false,
                        true,
                        false,
                        1)));
        assertTrue(e.getMessage().contains("VIRTIO_F_RING_PACKED"), e.getMessage());
    }
}
