// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
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
        try (Arena a = Arena.ofConfined()) {
            return Syscalls.userId(a.allocateFrom(user));
        }
    }

    public boolean allows(int uid) {
        return allowedUids.contains(uid);
    }

    private static final int AT_FDCWD = -100;
    private static final int AT_EMPTY_PATH = 0x1000;
    private static final int AT_SYMLINK_NOFOLLOW = 0x100;
    private static final int O_PATH = 010000000;
    private static final int STATX_BASIC_STATS = 0x7ff;
    private static final int S_IFMT = 0170000;
    private static final int S_IFSOCK = 0140000;
    /** SIOCPROTOPRIVATE + 0 on AF_UNIX (linux/un.h): an O_PATH descriptor of the file the socket is bound to. */
    static final long SIOCUNIXFILE = 0x89E0;

    /**
     * Sets the mode and group of the socket file {@code socket} was just bound to at {@code path}; called between
     * bind and listen. Done on the file's inode, never by path: whoever may write the socket's directory could
     * replace the socket with a symlink (or another file) between bind and chmod, and a chmod by path would then
     * change the mode of whatever that names, as root. A path that no longer names our socket fails the listen.
     */
    void apply(Fd socket, Path path) throws LinuxException {
        apply(socket, path, true);
    }

    /** As {@link #apply(Fd, Path)}; {@code askKernel} false takes the way used without CAP_NET_ADMIN (tests). */
    void apply(Fd socket, Path path, boolean askKernel) throws LinuxException {
        try (Arena a = Arena.ofConfined();
                Fd file = boundFile(a, socket, path, askKernel)) {
            if (group != null) {
                int gid = Syscalls.groupId(a.allocateFrom(group));
                if (gid < 0) {
                    throw new LinuxException("getgrnam", "socket group '" + group + "' does not exist", Errno.ENOENT);
                }
                Syscalls.check(
                        Syscalls.fchownat(file.get(), a.allocateFrom(""), -1, gid, AT_EMPTY_PATH),
                        "fchownat",
                        path + " to group " + group);
            }
            // chmod has no AT_EMPTY_PATH before fchmodat2 (Linux 6.6): the descriptor's /proc link names the inode
            Syscalls.check(
                    Syscalls.fchmodat(
                            AT_FDCWD, a.allocateFrom("/proc/self/fd/" + file.get()), group != null ? 0660 : 0600, 0),
                    "chmod",
                    path);
        }
    }

    /**
     * An O_PATH descriptor of the socket file {@code socket} is bound to. The kernel says which inode that is
     * (SIOCUNIXFILE) when we may ask (CAP_NET_ADMIN, i.e. as root: the case where a swap does harm); otherwise
     * {@code path} is opened without following a symlink and must be a socket of ours (which cannot tell our socket
     * from another socket of our user renamed into its place). Either way {@code path} must still name that inode.
     * Any failure of the ioctl (a kernel without it, a user without the capability: EPERM) takes the second way.
     */
    private static Fd boundFile(Arena a, Fd socket, Path path, boolean askKernel) throws LinuxException {
        MemorySegment p = a.allocateFrom(path.toString());
        MemorySegment empty = a.allocateFrom("");
        MemorySegment atPath = a.allocate(256, 8);
        int r = askKernel ? Syscalls.ioctl(socket.get(), SIOCUNIXFILE, 0) : -Errno.EPERM;
        if (r < 0) {
            r = Syscalls.check(
                    Syscalls.openat(AT_FDCWD, p, O_PATH | FileIo.O_NOFOLLOW | FileIo.O_CLOEXEC, 0), "open", path);
        }
        Fd file = Fd.adopt(r);
        try {
            MemorySegment st = a.allocate(256, 8);
            Syscalls.check(Syscalls.statx(file.get(), empty, AT_EMPTY_PATH, STATX_BASIC_STATS, st), "statx", path);
            Syscalls.check(Syscalls.statx(AT_FDCWD, p, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, atPath), "statx", path);
            int mode = Short.toUnsignedInt(st.get(JAVA_SHORT, 28));
            int uid = st.get(JAVA_INT, 20);
            if ((mode & S_IFMT) != S_IFSOCK || uid != Syscalls.geteuid() || !sameInode(st, atPath)) {
                throw new LinuxException(
                        "bind",
                        path + " (the socket file was replaced by another file after bind: the directory is writable"
                                + " by another user; use a directory only the daemon's user can write)",
                        Errno.EADDRINUSE);
            }
            return file;
        } catch (LinuxException | RuntimeException e) {
            file.close();
            throw e;
        }
    }

    private static final int S_IFDIR = 0040000;

    /**
     * Gives the directory {@code dir}, just created by us (mode 0700), the access its sockets need: group-owned and
     * mode 0750 with a group (so that group's QEMU can reach the sockets in it), 0700 otherwise. Done on the inode, as
     * {@link #apply(Fd, Path)} does for a socket, never by path: whoever may write the parent could swap the directory
     * for a symlink between its creation and a chmod by path, which would then change whatever the link names. A
     * symlink at {@code dir} is not followed, and {@code dir} must be a directory of ours still at that path.
     */
    public void applyToDirectory(Path dir) throws LinuxException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment p = a.allocateFrom(dir.toString());
            // O_DIRECTORY with O_NOFOLLOW: a symlink fails (ENOTDIR) rather than being opened or followed
            Fd file = Fd.adopt(Syscalls.check(
                    Syscalls.openat(AT_FDCWD, p, O_PATH | FileIo.O_DIRECTORY | FileIo.O_NOFOLLOW | FileIo.O_CLOEXEC, 0),
                    "open",
                    dir + " (not a directory, or a symlink: the run directory must be one we created)"));
            try (file) {
                MemorySegment st = a.allocate(256, 8);
                MemorySegment atPath = a.allocate(256, 8);
                MemorySegment empty = a.allocateFrom("");
                Syscalls.check(Syscalls.statx(file.get(), empty, AT_EMPTY_PATH, STATX_BASIC_STATS, st), "statx", dir);
                Syscalls.check(
                        Syscalls.statx(AT_FDCWD, p, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, atPath), "statx", dir);
                int mode = Short.toUnsignedInt(st.get(JAVA_SHORT, 28));
                if ((mode & S_IFMT) != S_IFDIR
                        || st.get(JAVA_INT, 20) != Syscalls.geteuid()
                        || !sameInode(st, atPath)) {
                    throw new LinuxException(
                            "mkdir",
                            dir + " (the directory was replaced after it was created: its parent is writable by"
                                    + " another user; use a parent only our user can write)",
                            Errno.EEXIST);
                }
                if (group != null) {
                    int gid = Syscalls.groupId(a.allocateFrom(group));
                    if (gid < 0) {
                        throw new LinuxException("getgrnam", "group '" + group + "' does not exist", Errno.ENOENT);
                    }
                    Syscalls.check(
                            Syscalls.fchownat(file.get(), empty, -1, gid, AT_EMPTY_PATH),
                            "fchownat",
                            dir + " to group " + group);
                }
                Syscalls.check(
                        Syscalls.fchmodat(
                                AT_FDCWD,
                                a.allocateFrom("/proc/self/fd/" + file.get()),
                                group != null ? 0750 : 0700,
                                0),
                        "chmod",
                        dir);
            }
        }
    }

    /** statx: stx_ino at 32, stx_dev_major/minor at 136/140. */
    private static boolean sameInode(MemorySegment x, MemorySegment y) {
        return x.get(JAVA_LONG, 32) == y.get(JAVA_LONG, 32)
                && x.get(JAVA_INT, 136) == y.get(JAVA_INT, 136)
                && x.get(JAVA_INT, 140) == y.get(JAVA_INT, 140);
    }

    @Override
    public String toString() {
        return (group == null ? "mode 0600" : "mode 0660 group " + group) + ", peer uids " + new TreeSet<>(allowedUids);
    }
}
