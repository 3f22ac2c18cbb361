// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.io.IOException;

/**
 * A system call failed. The message names the call, what it was applied to, the errno name and its description,
 * e.g. {@code "bind(/run/x.sock) failed: EADDRINUSE (Address already in use)"}.
 */
public class LinuxException extends IOException {
    private final String call;
    private final int errno;

    public LinuxException(String call, int errno) {
        this(call, null, errno);
    }

    /**
     * @param what the object of the call (a path, an fd, a request number), or null
     */
    public LinuxException(String call, String what, int errno) {
        super(format(call, what, errno));
        this.call = call;
        this.errno = errno;
    }

    /** The failed call, e.g. {@code "recvmsg"}. */
    public String call() {
        return call;
    }

    public int errno() {
        return errno;
    }

    /** The errno's symbolic name, e.g. {@code "EAGAIN"}. */
    public String errnoName() {
        return Errno.name(errno);
    }

    private static String format(String call, String what, int errno) {
        String desc = Errno.describe(errno);
        return call + (what == null ? "" : "(" + what + ")") + " failed: " + Errno.name(errno)
                + (desc.isEmpty() ? "" : " (" + desc + ")");
    }
}
