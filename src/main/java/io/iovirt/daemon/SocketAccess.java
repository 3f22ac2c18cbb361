// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.GroupPrincipal;
import java.nio.file.attribute.PosixFileAttributeView;
import java.nio.file.attribute.PosixFilePermissions;
import java.nio.file.attribute.UserPrincipalNotFoundException;

/**
 * Who may connect to a device socket: without {@code --socket-group} only the daemon's user (0600); with it, that
 * group too (0660, group changed), so QEMU can run as another user in the group. Connecting to a UNIX socket needs
 * write permission on it.
 */
record SocketAccess(String group) {
    static final SocketAccess OWNER_ONLY = new SocketAccess(null);

    /** Checks that the group exists now, so a typo fails at start rather than at the first device. */
    static SocketAccess of(String group) throws IOException {
        if (group == null || group.isEmpty()) {
            return OWNER_ONLY;
        }
        try {
            java.nio.file.FileSystems.getDefault().getUserPrincipalLookupService().lookupPrincipalByGroupName(group);
        } catch (UserPrincipalNotFoundException e) {
            throw new IOException("--socket-group " + group + ": no such group; create it (groupadd " + group
                    + ") and add QEMU's user to it", e);
        }
        return new SocketAccess(group);
    }

    void apply(Path socket) throws IOException {
        if (group == null) {
            Files.setPosixFilePermissions(socket, PosixFilePermissions.fromString("rw-------"));
            return;
        }
        GroupPrincipal g = socket.getFileSystem().getUserPrincipalLookupService().lookupPrincipalByGroupName(group);
        try {
            Files.getFileAttributeView(socket, PosixFileAttributeView.class).setGroup(g);
        } catch (IOException e) {
            throw new IOException("cannot give socket " + socket + " to group " + group + ": " + e.getMessage()
                    + " (the daemon's user must be a member of the group)", e);
        }
        Files.setPosixFilePermissions(socket, PosixFilePermissions.fromString("rw-rw----"));
    }
}
