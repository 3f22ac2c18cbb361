// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;

/**
 * A descriptor the frontend sent as shared memory — guest RAM (SET_MEM_TABLE, ADD_MEM_REG), the dirty log
 * (SET_LOG_BASE), the in-flight memory (SET_INFLIGHT_FD) — checked before it is mapped: it must be a regular file
 * that holds the whole range, or a later access past its end would be a SIGBUS.
 */
final class PeerFile {
    private PeerFile() {}

    /**
     * Checks that {@code fd} is a regular file holding [offset, offset+size); both are non-negative.
     *
     * @param what names the message and its values, for the error
     */
    static void requireRange(Fd fd, String what, long offset, long size) throws ProtocolException {
        FileIo.Stat st;
        try {
            st = FileIo.stat(fd);
        } catch (LinuxException e) {
            throw new ProtocolException(what + ": " + e.getMessage(), e);
        }
        if (!st.isRegularFile()) {
            throw new ProtocolException(what + ": the descriptor is not a shared memory file (mode 0"
                    + Integer.toOctalString(st.mode()) + ")");
        }
        if (offset > st.size() - size) {
            throw new ProtocolException(what + ": extends past the end of its " + st.size() + "-byte file");
        }
    }

    /** Maps [offset, offset+size) of a checked file shared, read-write, with {@code extraFlags} (e.g. MAP_NORESERVE). */
    static Mmap.Mapping mapShared(Fd fd, String what, long offset, long size, int extraFlags) throws ProtocolException {
        try {
            return Mmap.map(fd, offset, size, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED | extraFlags);
        } catch (LinuxException e) {
            throw new ProtocolException(what + ": " + e.getMessage(), e);
        }
    }
}
