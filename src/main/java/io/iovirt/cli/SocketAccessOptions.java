// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.linux.SocketAccess;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import picocli.CommandLine.Option;

/**
 * {@code --socket-group}, {@code --allow-uid} and {@code --allow-user} for every command that listens on UNIX sockets for VMs (a
 * {@code @Mixin}): who may connect, enforced twice — by the socket file's mode and group, and by the peer's uid
 * (SO_PEERCRED) on each connection. See {@link SocketAccess}.
 */
public final class SocketAccessOptions {
    private static final System.Logger LOG = System.getLogger("io.iovirt.cli");

    @Option(
            names = "--socket-group",
            paramLabel = "GROUP",
            description = "Make socket files mode 0660 and owned by GROUP, so QEMU running as a member can connect "
                    + "(default: mode 0600, owner only).")
    String socketGroup;

    @Option(
            names = "--allow-uid",
            paramLabel = "UID",
            split = ",",
            description = "Also serve peers running as these uids (QEMU's user when it is not ours; default: our own "
                    + "uid and root only).")
    List<Integer> allowUids = new ArrayList<>();

    @Option(
            names = "--allow-user",
            paramLabel = "USER",
            split = ",",
            description = "Also serve peers running as these users, by name (libvirt-qemu: QEMU under Debian's "
                    + "libvirt). A user that does not exist is left out with a warning, so a service can name "
                    + "libvirt's user before libvirt is installed (restart it once the user exists).")
    List<String> allowUsers = new ArrayList<>();

    private Set<Integer> resolved;

    /** The group named, or null. */
    public String socketGroup() {
        return socketGroup;
    }

    /**
     * The extra uids allowed: {@code --allow-uid}, and the uid of each {@code --allow-user} that exists now (one that
     * does not is left out with a warning: it is what a unit naming libvirt's user sees before libvirt is installed,
     * and failing would keep the service from starting for a user it may never need).
     */
    public Set<Integer> allowUids() {
        if (resolved != null) {
            return new HashSet<>(resolved); // resolved once: a command may build many sockets, one warning each
        }
        Set<Integer> uids = new HashSet<>(allowUids);
        for (String user : allowUsers) {
            int uid = SocketAccess.userId(user);
            if (uid < 0) {
                LOG.log(
                        System.Logger.Level.WARNING,
                        "--allow-user " + user + ": no such user, left out; processes running as " + user
                                + " cannot connect until the user exists and this process is restarted");
            } else {
                uids.add(uid);
            }
        }
        resolved = Set.copyOf(uids);
        return uids;
    }

    /** Whether --allow-uid or --allow-user was given (for commands where they cannot apply). */
    public boolean allowsOthers() {
        return !allowUids.isEmpty() || !allowUsers.isEmpty();
    }

    public SocketAccess access() {
        return SocketAccess.of(socketGroup, allowUids());
    }
}
