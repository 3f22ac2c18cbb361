// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.linux.SocketAccess;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import picocli.CommandLine.Option;

/**
 * {@code --socket-group} and {@code --allow-uid} for every command that listens on UNIX sockets for VMs (a
 * {@code @Mixin}): who may connect, enforced twice — by the socket file's mode and group, and by the peer's uid
 * (SO_PEERCRED) on each connection. See {@link SocketAccess}.
 */
public final class SocketAccessOptions {
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

    /** The group named, or null. */
    public String socketGroup() {
        return socketGroup;
    }

    /** The extra uids allowed. */
    public Set<Integer> allowUids() {
        return new HashSet<>(allowUids);
    }

    public SocketAccess access() {
        return SocketAccess.of(socketGroup, allowUids());
    }
}
