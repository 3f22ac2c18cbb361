// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.memory.GuestMemory;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.virtio.VirtioFeatures;
import io.iovirt.vm.ChildProcess;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * QEMU 7.2 itself as the frontend: {@code vhost-user-blk-pci} connects to our server, negotiates at start-up, and
 * when the firmware (SeaBIOS) initializes the disk to boot from it, QEMU runs its whole device start sequence
 * (features, memory regions, vrings, enable). Our recording device processes no rings, so the firmware waits; the
 * test then kills QEMU and checks the server cleaned up and serves a second QEMU.
 */
@Tag("guest")
@Timeout(300)
class ServerAgainstQemuTest {
    @TempDir
    Path dir;

    private ChildProcess qemu(Path sock, String name) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("qemu-system-x86_64"));
        cmd.addAll(io.iovirt.vm.Accelerator.system().qemuArgs());
        cmd.addAll(List.of(
                "-machine",
                "q35,memory-backend=mem",
                "-m",
                "64M",
                "-object",
                "memory-backend-memfd,id=mem,size=64M,share=on",
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "none",
                "-monitor",
                "none",
                "-nic",
                "none",
                "-chardev",
                "socket,id=c0,path=" + sock,
                "-device",
                "vhost-user-blk-pci,chardev=c0,num-queues=1"));
        return ChildProcess.builder(cmd)
                .name(name)
                .log(dir.resolve(name + ".log"))
                .directory(dir)
                .start();
    }

    @Test
    void qemuNegotiatesStartsTheQueueAndReconnects() throws Exception {
        Require.program("qemu-system-x86_64", "apt-get install qemu-system-x86");
        Path sock = dir.resolve("vub.sock");
        RecordingBackend backend = new RecordingBackend(1);
        List<String> messages = new ArrayList<>();
        Handler trace = new Handler() {
            @Override
            public void publish(LogRecord r) {
                String m = r.getMessage();
                int i = m.indexOf(": VHOST_USER_");
                if (i >= 0) {
                    synchronized (messages) {
                        messages.add(m.substring(i + 2, m.indexOf('(', i)));
                    }
                }
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        Logger jul = Logger.getLogger("io.iovirt.vhostuser");
        Level before = jul.getLevel();
        jul.setLevel(Level.FINE);
        trace.setLevel(Level.FINE);
        jul.addHandler(trace);
        try (VhostUserServer server = VhostUserServer.start(sock, backend)) {
            for (int run = 1; run <= 2; run++) {
                try (ChildProcess q = qemu(sock, "qemu-" + run)) {
                    Await.until(
                            Duration.ofSeconds(120), "QEMU starts queue 0", q, () -> backend.running.containsKey(0));
                    VringSetup s = backend.running.get(0);
                    GuestMemory mem = s.memory().get();
                    assertTrue(mem.regionCount() >= 1, mem.toString());
                    assertTrue(mem.contains(s.descGpa(), 16L * s.size()), s + " in " + mem);
                    assertTrue(mem.contains(s.availGpa(), 6 + 2L * s.size()));
                    assertTrue(mem.contains(s.usedGpa(), 6 + 8L * s.size()));
                    assertTrue(
                            VirtioFeatures.has(backend.acked, VirtioFeatures.VIRTIO_F_VERSION_1),
                            Long.toHexString(backend.acked));
                    assertTrue(q.isAlive(), "QEMU accepted the backend:\n" + q.log());
                    assertFalse(q.log().contains("vhost"), q.log());
                }
                backend.await("queueStopped 0"); // QEMU was killed with the queue running
                assertTrue(server.awaitIdle(Duration.ofSeconds(30)));
                assertTrue(backend.snapshot().contains("reset"));
                assertEquals(
                        0, backend.memories.get(backend.memories.size() - 1).regionCount());
                backend.events.clear();
            }
        } finally {
            jul.removeHandler(trace);
            jul.setLevel(before);
        }
        synchronized (messages) {
            System.out.println("QEMU 7.2 sent, over two connections: " + String.join(", ", messages));
            for (String required : List.of(
                    "VHOST_USER_GET_FEATURES",
                    "VHOST_USER_GET_PROTOCOL_FEATURES",
                    "VHOST_USER_SET_PROTOCOL_FEATURES",
                    "VHOST_USER_GET_CONFIG",
                    "VHOST_USER_SET_FEATURES",
                    "VHOST_USER_SET_VRING_NUM",
                    "VHOST_USER_SET_VRING_ADDR",
                    "VHOST_USER_SET_VRING_KICK",
                    "VHOST_USER_SET_VRING_CALL")) {
                assertTrue(messages.contains(required), required + " in " + messages);
            }
        }
    }
}
