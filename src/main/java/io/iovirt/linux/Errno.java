// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * errno values the project tests for (x86_64 and aarch64 share the asm-generic numbering) and their names.
 * Names and descriptions come from glibc's {@code strerrorname_np}/{@code strerrordesc_np}: thread-safe, static
 * strings; on a libc without them we fall back to the number.
 */
@SuppressWarnings("restricted") // the linux package is where native access is meant to happen
public final class Errno {
    public static final int EPERM = 1;
    public static final int ENOENT = 2;
    public static final int EINTR = 4;
    public static final int EIO = 5;
    public static final int ENXIO = 6;
    public static final int EBADF = 9;
    public static final int EAGAIN = 11;
    public static final int ENOMEM = 12;
    public static final int EACCES = 13;
    public static final int EFAULT = 14;
    public static final int EBUSY = 16;
    public static final int EEXIST = 17;
    public static final int ENODEV = 19;
    public static final int ENOTDIR = 20;
    public static final int EINVAL = 22;
    public static final int EMFILE = 24;
    public static final int ENOTTY = 25;
    public static final int EFBIG = 27;
    public static final int ENOSPC = 28;
    public static final int EROFS = 30;
    public static final int EPIPE = 32;
    public static final int ERANGE = 34;
    public static final int ENAMETOOLONG = 36;
    public static final int ENOSYS = 38;
    public static final int ENOTSOCK = 88;
    public static final int EOPNOTSUPP = 95;
    public static final int EADDRINUSE = 98;
    public static final int ECONNRESET = 104;
    public static final int ENOBUFS = 105;
    public static final int EISCONN = 106;
    public static final int ENOTCONN = 107;
    public static final int ETIMEDOUT = 110;
    public static final int ECONNREFUSED = 111;
    public static final int EALREADY = 114;
    public static final int ECANCELED = 125;

    private static final MethodHandle NAME = lookup("strerrorname_np");
    private static final MethodHandle DESC = lookup("strerrordesc_np");

    private Errno() {}

    /** The symbolic name, e.g. {@code "EINVAL"}, or {@code "errno 1234"} when unknown. */
    public static String name(int errno) {
        String s = call(NAME, errno);
        return s != null ? s : "errno " + errno;
    }

    /** The C library's description, e.g. {@code "Invalid argument"}, or the empty string when unknown. */
    public static String describe(int errno) {
        String s = call(DESC, errno);
        return s != null ? s : "";
    }

    private static String call(MethodHandle mh, int errno) {
        if (mh == null) {
            return null;
        }
        try {
            MemorySegment p = (MemorySegment) mh.invokeExact(errno);
            return p.equals(MemorySegment.NULL) ? null : p.reinterpret(256).getString(0);
        } catch (Throwable t) {
            return null;
        }
    }

    private static MethodHandle lookup(String name) {
        Linker linker = Linker.nativeLinker();
        return linker.defaultLookup()
                .find(name)
                .map(addr ->
                        linker.downcallHandle(addr, FunctionDescriptor.of(ValueLayout.ADDRESS, ValueLayout.JAVA_INT)))
                .orElse(null);
    }
}
