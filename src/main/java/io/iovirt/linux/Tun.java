// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;

/**
 * A TUN/TAP interface (/dev/net/tun): the virtual switch's port to the host network stack. Each read returns one
 * frame, each write sends one. Needs CAP_NET_ADMIN. The interface disappears when the last descriptor closes (unless
 * made persistent).
 */
public final class Tun implements AutoCloseable {
    public static final int IFF_TUN = 0x0001;
    public static final int IFF_TAP = 0x0002;
    public static final int IFF_MULTI_QUEUE = 0x0100;
    public static final int IFF_NO_PI = 0x1000;
    public static final int IFF_VNET_HDR = 0x4000;

    public static final long TUNSETIFF = Ioctl.iow('T', 202, 4);
    public static final long TUNSETPERSIST = Ioctl.iow('T', 203, 4);
    public static final long TUNSETOFFLOAD = Ioctl.iow('T', 208, 4);
    public static final long TUNSETVNETHDRSZ = Ioctl.iow('T', 216, 4);

    private static final int IFNAMSIZ = 16;
    private static final long IFREQ_SIZE = 40;

    private final Fd fd;
    private final String name;

    private Tun(Fd fd, String name) {
        this.fd = fd;
        this.name = name;
    }

    /** A TAP interface without packet information headers; {@code name} may contain {@code %d} or be empty. */
    public static Tun openTap(String name) throws LinuxException {
        return open(name, IFF_TAP | IFF_NO_PI);
    }

    /** Opens /dev/net/tun and attaches to (or creates) interface {@code name} with TUNSETIFF {@code flags}. */
    public static Tun open(String name, int flags) throws LinuxException {
        byte[] n = name.getBytes(StandardCharsets.US_ASCII);
        if (n.length >= IFNAMSIZ) {
            throw new IllegalArgumentException("interface name longer than " + (IFNAMSIZ - 1) + " bytes: " + name);
        }
        Fd fd = FileIo.open(Path.of("/dev/net/tun"), FileIo.O_RDWR);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment ifr = a.allocate(IFREQ_SIZE, 8);
            MemorySegment.copy(n, 0, ifr, JAVA_BYTE, 0, n.length);
            ifr.set(JAVA_SHORT, IFNAMSIZ, (short) flags);
            try {
                Ioctl.call(fd, TUNSETIFF, ifr);
            } catch (LinuxException e) {
                throw new LinuxException("ioctl(TUNSETIFF)", name.isEmpty() ? "new interface" : name, e.errno());
            }
            return new Tun(fd, ifr.getString(0, StandardCharsets.US_ASCII));
        } catch (LinuxException | RuntimeException e) {
            fd.close();
            throw e;
        }
    }

    /** The interface's name as the kernel assigned it. */
    public String name() {
        return name;
    }

    public Fd fd() {
        return fd;
    }

    /** Reads one frame into {@code buf}; returns its length (a longer frame is truncated by the kernel). */
    public int read(MemorySegment buf) throws LinuxException {
        int f = fd.get();
        return (int) Syscalls.check(Syscalls.read(f, buf, buf.byteSize()), "read", name);
    }

    /** Sends one frame of {@code frame.byteSize()} bytes to the host stack. */
    public int write(MemorySegment frame) throws LinuxException {
        int f = fd.get();
        return (int) Syscalls.check(Syscalls.write(f, frame, frame.byteSize()), "write", name);
    }

    /** TUNSETVNETHDRSZ: the virtio-net header size prepended to frames when opened with IFF_VNET_HDR. */
    public void setVnetHeaderSize(int size) throws LinuxException {
        intIoctl(TUNSETVNETHDRSZ, size, "TUNSETVNETHDRSZ");
    }

    /** TUNSETOFFLOAD with TUN_F_* flags. */
    public void setOffload(int flags) throws LinuxException {
        Ioctl.call(fd, TUNSETOFFLOAD, (long) flags);
    }

    private void intIoctl(long request, int value, String what) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocate(JAVA_INT);
            v.set(JAVA_INT, 0, value);
            try {
                Ioctl.call(fd, request, v);
            } catch (LinuxException e) {
                throw new LinuxException("ioctl(" + what + ")", name, e.errno());
            }
        }
    }

    @Override
    public void close() {
        fd.close();
    }
}
