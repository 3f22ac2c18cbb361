// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.lang.foreign.MemorySegment;

/**
 * ioctl(2) in its three argument shapes (int, long, pointer), and the {@code _IO/_IOR/_IOW/_IOWR} request number
 * encoding shared by x86_64 and aarch64 (dir:2 | size:14 | type:8 | nr:8, bits 31..0).
 *
 * <p>Calls are never retried on EINTR (not every request is idempotent). Request numbers are passed zero-extended,
 * as the kernel's {@code unsigned int cmd} expects.
 */
public final class Ioctl {
    public static final int DIR_NONE = 0;
    public static final int DIR_WRITE = 1;
    public static final int DIR_READ = 2;

    private Ioctl() {}

    /** {@code _IOC(dir, type, nr, size)}. */
    public static long ioc(int dir, int type, int nr, long size) {
        if ((dir & ~3) != 0 || (type & ~0xff) != 0 || (nr & ~0xff) != 0 || size < 0 || size > 0x3fff) {
            throw new IllegalArgumentException(
                    "ioctl number out of range: dir " + dir + " type " + type + " nr " + nr + " size " + size);
        }
        return ((long) dir << 30 | size << 16 | (long) type << 8 | nr) & 0xffff_ffffL;
    }

    public static long io(int type, int nr) {
        return ioc(DIR_NONE, type, nr, 0);
    }

    /** The kernel writes {@code size} bytes to user space. */
    public static long ior(int type, int nr, long size) {
        return ioc(DIR_READ, type, nr, size);
    }

    /** The kernel reads {@code size} bytes from user space. */
    public static long iow(int type, int nr, long size) {
        return ioc(DIR_WRITE, type, nr, size);
    }

    public static long iowr(int type, int nr, long size) {
        return ioc(DIR_READ | DIR_WRITE, type, nr, size);
    }

    /** A request without an argument; returns the call's non-negative result. */
    public static int call(Fd fd, long request) throws LinuxException {
        return call(fd, request, 0L);
    }

    public static int call(Fd fd, long request, int arg) throws LinuxException {
        int f = fd.get();
        int r = Syscalls.ioctl(f, request, arg);
        return r < 0 ? fail(r, f, request) : r;
    }

    public static int call(Fd fd, long request, long arg) throws LinuxException {
        int f = fd.get();
        int r = Syscalls.ioctl(f, request, arg);
        return r < 0 ? fail(r, f, request) : r;
    }

    /** A request whose argument points at {@code arg} (a struct the kernel reads and/or writes). */
    public static int call(Fd fd, long request, MemorySegment arg) throws LinuxException {
        int f = fd.get();
        int r = Syscalls.ioctl(f, request, arg);
        return r < 0 ? fail(r, f, request) : r;
    }

    private static int fail(int r, int fd, long request) throws LinuxException {
        throw new LinuxException("ioctl", "fd " + fd + ", 0x" + Long.toHexString(request), -r);
    }
}
