// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static io.iovirt.storage.qcow2.QemuTools.check;
import static io.iovirt.storage.qcow2.QemuTools.ok;
import static io.iovirt.storage.qcow2.QemuTools.qemuIoOk;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * SIGKILL of the backend at random points while a client writes: {@code qemu-img check} must never find corruption
 * (leaked clusters are allowed), and data the client flushed before the kill must be there afterwards.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img / qemu-io / an iovirt server process: Failsafe
class Qcow2CrashTest {
    static final int MIB = 1 << 20;

    @TempDir
    Path dir;

    @Test
    void sigkillDuringWritesNeverCorruptsTheImage() throws Exception {
        Path base = dir.resolve("base.raw");
        byte[] b = new byte[32 * MIB];
        new Random(11).nextBytes(b);
        Files.write(base, b);
        Path img = QemuTools.createQcow2(
                dir, "crash.qcow2", "64M", "cluster_size=65536", "backing_file=base.raw", "backing_fmt=raw");
        Path sock = dir.resolve("c.sock");
        String uri = "nbd+unix:///?socket=" + sock;
        Random r = new Random(Long.getLong("iovirt.crash.seed", System.nanoTime()));
        int rounds = Integer.getInteger("iovirt.crash.rounds", 10);
        int leaks = 0;
        for (int round = 0; round < rounds; round++) {
            ChildProcess server = ChildProcess.builder(
                            IovirtCli.command("serve", "nbd", "--image", img.toString(), "--socket", sock.toString()))
                    .name("iovirt serve nbd")
                    .log(dir.resolve("srv" + round + ".log"))
                    .startListening(sock, Duration.ofSeconds(30));
            try {
                // A marker written and flushed before the storm: durable, so it must survive the kill.
                int marker = 0x10 + round;
                long markerOff = (long) (40 + round) * MIB + 4096L * r.nextInt(16);
                qemuIoOk(uri, "raw", "write -P " + marker + " " + markerOff + " 12k", "flush");
                List<String> cmd = new ArrayList<>(List.of("qemu-io", "-f", "raw"));
                for (int i = 0; i < 400; i++) {
                    long off = 512L * r.nextInt(64 * MIB / 512 - 1024);
                    int len = 512 * (1 + r.nextInt(r.nextBoolean() ? 8 : 512));
                    if (off + len > 40L * MIB && off < 52L * MIB) {
                        // keep clear of the markers: a request that starts below 40 MiB may reach into them too
                        // (it overwrote round 0's marker once: "read -P" mismatch at 40 MiB + 56 KiB)
                        off -= 16L * MIB;
                    }
                    cmd.add("-c");
                    cmd.add(
                            switch (r.nextInt(10)) {
                                case 0 -> "flush";
                                case 1 -> "write -z " + off + " " + len;
                                case 2 -> "discard " + off + " " + len;
                                default -> "aio_write -P " + (r.nextInt(255) + 1) + " " + off + " " + len;
                            });
                }
                cmd.add(uri);
                Process writer = new ProcessBuilder(cmd)
                        .redirectErrorStream(true)
                        .redirectOutput(dir.resolve("writer" + round + ".log").toFile())
                        .start();
                Thread.sleep(100 + r.nextInt(1500));
                server.kill(); // SIGKILL: no flush, no close
                writer.waitFor(30, TimeUnit.SECONDS);
                writer.destroyForcibly();
                String out = check(img, true);
                if (out.contains("leaked")) {
                    leaks++;
                }
                qemuIoOk(img, "qcow2", "read -P " + marker + " " + markerOff + " 12k");
            } finally {
                server.close();
            }
        }
        // After all the kills: a full repair-free read of the image works, and qemu-img can still write it.
        ok("qemu-img", "check", "-r", "leaks", img.toString());
        check(img, false);
        System.out.println("crash rounds=" + rounds + " rounds-with-leaks=" + leaks);
        assertTrue(Files.size(img) > 0);
    }
}
