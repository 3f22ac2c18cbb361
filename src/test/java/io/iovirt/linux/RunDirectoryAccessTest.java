// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code vm run}'s directory for its sockets gets its group and mode on its inode ({@link
 * SocketAccess#applyToDirectory}): it used to be chmod'ed (and chgrp'ed) by path after its creation, so whoever may
 * write its parent could swap it for a symlink in between and have the mode and group set on what the link names.
 */
class RunDirectoryAccessTest {
    @TempDir
    Path dir;

    /** A group we may give our files: nogroup as root (a real change), our own group otherwise. */
    private String group() throws Exception {
        return SocketAccess.ownUid() == 0
                ? "nogroup"
                : Files.getAttribute(dir, "posix:group").toString();
    }

    @Test
    void withAGroupTheDirectoryIsGroupOwned0750() throws Exception {
        String group = group();
        Path run = Files.createTempDirectory(dir, "iovirt-vm-");
        SocketAccess.of(group, Set.of()).applyToDirectory(run);
        assertEquals("rwxr-x---", PosixFilePermissions.toString(Files.getPosixFilePermissions(run)));
        assertEquals(group, Files.getAttribute(run, "posix:group").toString());
    }

    @Test
    void withoutAGroupItIs0700() throws Exception {
        Path run = Files.createDirectory(dir.resolve("open"));
        Files.setPosixFilePermissions(run, PosixFilePermissions.fromString("rwxrwxrwx"));
        SocketAccess.ownerOnly().applyToDirectory(run);
        assertEquals("rwx------", PosixFilePermissions.toString(Files.getPosixFilePermissions(run)));
    }

    @Test
    void aSymlinkAtThePathIsRefusedAndNotFollowed() throws Exception {
        String group = group();
        Path victim = Files.createDirectory(dir.resolve("victim"));
        Files.setPosixFilePermissions(victim, PosixFilePermissions.fromString("rwx---r-x"));
        Object victimGroup = Files.getAttribute(victim, "posix:group");
        Path link = Files.createSymbolicLink(dir.resolve("iovirt-vm-swapped"), victim);
        for (SocketAccess access : new SocketAccess[] {SocketAccess.of(group, Set.of()), SocketAccess.ownerOnly()}) {
            LinuxException e = assertThrows(LinuxException.class, () -> access.applyToDirectory(link));
            assertTrue(e.getMessage().contains(link.toString()), e.getMessage());
            assertEquals("rwx---r-x", PosixFilePermissions.toString(Files.getPosixFilePermissions(victim)));
            assertEquals(victimGroup, Files.getAttribute(victim, "posix:group"));
        }
    }

    @Test
    void aFileAtThePathIsRefused() throws Exception {
        Path file = Files.writeString(dir.resolve("file"), "x");
        Files.setPosixFilePermissions(file, PosixFilePermissions.fromString("rw-r--r--"));
        assertThrows(LinuxException.class, () -> SocketAccess.ownerOnly().applyToDirectory(file));
        assertEquals("rw-r--r--", PosixFilePermissions.toString(Files.getPosixFilePermissions(file)));
    }
}
