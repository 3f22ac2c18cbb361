// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.lang.foreign.Arena;

/** Anonymous shared memory files (memfd_create): guest RAM for the frontend side and tests, sealable. */
public final class MemFd {
    public static final int MFD_CLOEXEC = 0x1;
    public static final int MFD_ALLOW_SEALING = 0x2;
    public static final int MFD_HUGETLB = 0x4;

    public static final int F_SEAL_SEAL = 0x1;
    public static final int F_SEAL_SHRINK = 0x2;
    public static final int F_SEAL_GROW = 0x4;
    public static final int F_SEAL_WRITE = 0x8;

    private static final int F_ADD_SEALS = 1033;
    private static final int F_GET_SEALS = 1034;

    private MemFd() {}

    /** A new memfd; {@code name} only shows up in /proc/PID/fd links. */
    public static Fd create(String name, int flags) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            return Fd.adopt(Syscalls.check(Syscalls.memfdCreate(a.allocateFrom(name), flags), "memfd_create", name));
        }
    }

    /** A close-on-exec, sealable memfd of {@code size} bytes (zero-filled, allocated on first touch). */
    public static Fd allocate(String name, long size) throws LinuxException {
        Fd fd = create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        try {
            truncate(fd, size);
            return fd;
        } catch (LinuxException e) {
            fd.close();
            throw e;
        }
    }

    /** Sets the file's size (ftruncate). */
    public static void truncate(Fd fd, long size) throws LinuxException {
        if (size < 0) {
            throw new IllegalArgumentException("negative size: " + size);
        }
        int f = fd.get();
        Syscalls.check(Syscalls.ftruncate(f, size), "ftruncate", "fd " + f + ", " + size);
    }

    public static void addSeals(Fd fd, int seals) throws LinuxException {
        int f = fd.get();
        Syscalls.check(Syscalls.fcntl(f, F_ADD_SEALS, seals), "fcntl", "F_ADD_SEALS, fd " + f);
    }

    public static int seals(Fd fd) throws LinuxException {
        int f = fd.get();
        return Syscalls.check(Syscalls.fcntl(f, F_GET_SEALS, 0), "fcntl", "F_GET_SEALS, fd " + f);
    }
}
