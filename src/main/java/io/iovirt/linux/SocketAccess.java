// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Set;
import java.util.TreeSet;

/**
 * Who may connect to a listening UNIX socket of ours: the socket file's mode (0600, or 0660 with a group), set
 * between bind and listen so no connection is possible before it is right, whatever the umask; and the peer's uid
 * (SO_PEERCRED), checked on every accepted connection against an allow-list — by default our own uid and root.
 *
 * @param group       the group that may connect too (socket 0660, group-owned), or null (0600)
 * @param allowedUids peer uids served; others are refused with a log line
 */
public record SocketAccess(String group, Set<Integer> allowedUids) {
    public SocketAccess {
        allowedUids = Set.copyOf(allowedUids);
    }

    /** Owner only: mode 0600, peers with our uid or root. */
    public static SocketAccess ownerOnly() {
        return new SocketAccess(null, defaultUids());
    }

    /** Mode 0660 group-owned by {@code group} (null: 0600), and these extra peer uids besides ours and root. */
    public static SocketAccess of(String group, Set<Integer> extraUids) {
        Set<Integer> all = new TreeSet<>(defaultUids());
        all.addAll(extraUids);
        return new SocketAccess(group, all);
    }

    private static Set<Integer> defaultUids() {
        return new TreeSet<>(java.util.List.of(0, ownUid())); // one element when we are root
    }

    /** Our effective uid (the owner of /proc/self). */
    public static int ownUid() {
        try {
            return (Integer) Files.getAttribute(Path.of("/proc/self"), "unix:uid");
        } catch (IOException | RuntimeException e) {
            return 0;
        }
    }

    /** The uid of the user named {@code user} (the system's user database), or -1 when there is no such user. */
    public static int userId(String user) {
        try (java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) {
            return Syscalls.userId(a.allocateFrom(user));
        }
    }

    public boolean allows(int uid) {
        return allowedUids.contains(uid);
    }

    /** Sets the socket file's mode and group; called between bind and listen. */
    void apply(Path socketFile) throws LinuxException {
        try (java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) {
            java.lang.foreign.MemorySegment p = a.allocateFrom(socketFile.toString());
            if (group != null) {
                int gid = Syscalls.groupId(a.allocateFrom(group));
                if (gid < 0) {
                    throw new LinuxException("getgrnam", "socket group '" + group + "' does not exist", Errno.ENOENT);
                }
                Syscalls.check(Syscalls.lchown(p, -1, gid), "lchown", socketFile + " to group " + group);
            }
            Syscalls.check(Syscalls.chmod(p, group != null ? 0660 : 0600), "chmod", socketFile);
        }
    }

    @Override
    public String toString() {
        return (group == null ? "mode 0600" : "mode 0660 group " + group) + ", peer uids " + new TreeSet<>(allowedUids);
    }
}
