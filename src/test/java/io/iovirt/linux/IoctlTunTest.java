// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

@Timeout(60)
class IoctlTunTest {
    private static final ValueLayout.OfShort U16_BE = JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    @Test
    void requestNumbersMatchTheKernelHeaders() {
        assertEquals(0x400454caL, Ioctl.iow('T', 202, 4)); // TUNSETIFF
        assertEquals(0x400454caL, Tun.TUNSETIFF);
        assertEquals(0x3b64L, Ioctl.io(';', 100)); // VFIO_GET_API_VERSION
        assertEquals(0x3b71L, Ioctl.io(';', 113)); // VFIO_IOMMU_MAP_DMA
        assertEquals(0x80081272L, Ioctl.ior(0x12, 114, 8)); // BLKGETSIZE64
        assertEquals(0x80081272L, FileIo.BLKGETSIZE64);
        assertEquals(0x1277L, FileIo.BLKDISCARD);
        assertEquals(0x1268L, FileIo.BLKSSZGET);
        assertEquals(0x800454d2L, Ioctl.ior('T', 210, 4)); // TUNGETIFF
        assertEquals(0xc0484e41L, Ioctl.iowr('N', 0x41, 72)); // NVME_IOCTL_ADMIN_CMD: unsigned, not sign-extended
        assertThrows(IllegalArgumentException.class, () -> Ioctl.ioc(0, 256, 0, 0));
        assertThrows(IllegalArgumentException.class, () -> Ioctl.ioc(0, 1, 0, 1 << 14));
    }

    @Test
    void aRequestTheDeviceDoesNotKnowIsEnotty() throws Exception {
        try (EventFd e = EventFd.create(true);
                Arena a = Arena.ofConfined()) {
            LinuxException ex =
                    assertThrows(LinuxException.class, () -> Ioctl.call(e.fd(), Tun.TUNSETIFF, a.allocate(40)));
            assertEquals(Errno.ENOTTY, ex.errno());
            assertTrue(ex.getMessage().contains("0x400454ca"), ex.getMessage());
            assertThrows(LinuxException.class, () -> Ioctl.call(e.fd(), Ioctl.io(';', 100)));
            assertThrows(LinuxException.class, () -> Ioctl.call(e.fd(), Ioctl.io(';', 100), 0));
        }
    }

    @Test
    void tapInterfaceAnswersAnArpRequestWrittenToIt() throws Exception {
        Require.that(Files.isWritable(Path.of("/dev/net/tun")), "/dev/net/tun is not accessible");
        String name = "iovt" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000, 0xfffff));
        Tun tap;
        try {
            tap = Tun.openTap(name);
        } catch (LinuxException e) {
            Require.that(e.errno() != Errno.EPERM, "no CAP_NET_ADMIN: " + e.getMessage());
            throw e;
        }
        // 198.18.0.0/15 is reserved for benchmarking: a /32 on our own interface cannot disturb anything else.
        int host = ThreadLocalRandom.current().nextInt(1, 0xfffe);
        byte[] ip = {(byte) 198, 18, (byte) (host >> 8), (byte) host};
        String ipText = (ip[0] & 0xff) + "." + ip[1] + "." + (ip[2] & 0xff) + "." + (ip[3] & 0xff);
        try (tap;
                Arena a = Arena.ofConfined()) {
            assertEquals(name, tap.name());
            assertTrue(Files.exists(Path.of("/sys/class/net", name)));
            run("ip", "link", "set", name, "up");
            run("ip", "addr", "add", ipText + "/32", "dev", name);
            byte[] mac = {0x02, 0x00, 0x5e, 0x11, 0x22, 0x33};
            MemorySegment frame = a.allocate(42);
            // Ethernet: broadcast destination, our MAC, ARP
            for (int i = 0; i < 6; i++) {
                frame.set(JAVA_BYTE, i, (byte) 0xff);
                frame.set(JAVA_BYTE, 6 + i, mac[i]);
                frame.set(JAVA_BYTE, 22 + i, mac[i]); // sender hardware address
            }
            frame.set(U16_BE, 12, (short) 0x0806);
            frame.set(U16_BE, 14, (short) 1); // hardware type ethernet
            frame.set(U16_BE, 16, (short) 0x0800); // protocol IPv4
            frame.set(JAVA_BYTE, 18, (byte) 6);
            frame.set(JAVA_BYTE, 19, (byte) 4);
            frame.set(U16_BE, 20, (short) 1); // request
            byte[] sender = {(byte) 198, 18, (byte) (host >> 8), (byte) (host + 1)};
            for (int i = 0; i < 4; i++) {
                frame.set(JAVA_BYTE, 28 + i, sender[i]);
                frame.set(JAVA_BYTE, 38 + i, ip[i]); // target: the address on the tap
            }
            assertEquals(42, tap.write(frame));

            MemorySegment buf = a.allocate(2048);
            for (int tries = 0; tries < 1000; tries++) { // skip IPv6 chatter the kernel may send on link-up
                int n = tap.read(buf);
                if (n >= 42 && buf.get(U16_BE, 12) == 0x0806 && buf.get(U16_BE, 20) == 2) {
                    for (int i = 0; i < 6; i++) {
                        assertEquals(mac[i], buf.get(JAVA_BYTE, i), "reply goes to our MAC");
                    }
                    for (int i = 0; i < 4; i++) {
                        assertEquals(ip[i], buf.get(JAVA_BYTE, 28 + i), "reply is for the tap's address");
                    }
                    return;
                }
            }
            throw new AssertionError("no ARP reply on " + name);
        }
    }

    private static void run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            assertTrue(p.waitFor(30, TimeUnit.SECONDS), String.join(" ", cmd) + " timed out");
            assertEquals(
                    0,
                    p.exitValue(),
                    String.join(" ", cmd) + ": " + new String(p.getInputStream().readAllBytes()));
        } finally {
            p.destroyForcibly();
        }
    }
}
