// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Another user who may write a listening socket's directory swaps the socket file between bind and the mode change:
 * the mode and group must still go to our socket only, never to the file a symlink put in its place names.
 */
class SocketModeRaceTest {
    private static final SocketAccess GROUP = SocketAccess.of("nogroup", Set.of());

    private static void requireRoot() {
        Require.that(SocketAccess.ownUid() == 0, "root (the test sets a socket's group to nogroup)");
    }

    private static Path victim(Path dir) throws IOException {
        Path v = dir.resolve("victim");
        Files.writeString(v, "not a socket");
        Files.setPosixFilePermissions(v, PosixFilePermissions.fromString("rw-r--r--"));
        return v;
    }

    private static void assertUntouched(Path victim) throws IOException {
        assertEquals("rw-r--r--", PosixFilePermissions.toString(Files.getPosixFilePermissions(victim)));
        assertEquals(0, (int) Files.getAttribute(victim, "unix:gid"), "the victim's group");
    }

    private static void run(IoAction a) {
        try {
            a.run();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** What {@code a} threw; a LinuxException with errno 0 when it threw nothing (which the asserts then fail). */
    private static LinuxException failure(IoAction a) {
        try {
            a.run();
        } catch (LinuxException e) {
            return e;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return new LinuxException("nothing", "no failure", 0);
    }

    private interface IoAction {
        void run() throws IOException;
    }

    @Test
    void aSymlinkSwappedInAtThePathAfterBindKeepsItsTargetsModeAndGroup(@TempDir Path dir) throws Exception {
        requireRoot();
        Path victim = victim(dir);
        Path path = dir.resolve("s.sock");
        LinuxException e = failure(() -> UnixSocket.listen(
                        path,
                        4,
                        GROUP,
                        () -> run(() -> {
                            Files.delete(path); // our socket
                            Files.createSymbolicLink(path, victim);
                        }))
                .close());
        assertUntouched(victim);
        assertEquals(Errno.EADDRINUSE, e.errno(), e.getMessage());
        assertTrue(e.getMessage().contains("replaced by another file after bind"), e.getMessage());
    }

    @Test
    void theStepAfterBindActsOnTheBoundSocketOnlyWhicheverWayItFindsIt(@TempDir Path dir) throws Exception {
        requireRoot();
        Path victim = victim(dir);
        for (boolean askKernel : new boolean[] {true, false}) {
            Path path = dir.resolve("s-" + askKernel + ".sock");
            try (UnixSocket bound = UnixSocket.listen(path, 4)) {
                Files.delete(path);
                Files.createSymbolicLink(path, victim);
                LinuxException e = failure(() -> GROUP.apply(bound.fd(), path, askKernel));
                assertUntouched(victim);
                assertTrue(e.getMessage().contains("replaced by another file after bind"), e.getMessage());
            }
        }
    }

    @Test
    void anotherSocketOfOursRenamedIntoPlaceIsToldApartAsRoot(@TempDir Path dir) throws Exception {
        requireRoot(); // SIOCUNIXFILE needs CAP_NET_ADMIN
        Path path = dir.resolve("s.sock");
        Path other = dir.resolve("other.sock");
        try (UnixSocket bound = UnixSocket.listen(path, 4);
                UnixSocket otherSocket = UnixSocket.listen(other, 4)) {
            Files.move(other, path, java.nio.file.StandardCopyOption.REPLACE_EXISTING); // a socket, ours, 0600
            LinuxException e = failure(() -> GROUP.apply(bound.fd(), path, true));
            assertEquals(
                    "rw-------",
                    PosixFilePermissions.toString(Files.getPosixFilePermissions(path, LinkOption.NOFOLLOW_LINKS)),
                    "the other socket's mode");
            assertTrue(e.getMessage().contains("replaced by another file after bind"), e.getMessage());
        }
    }

    @Test
    void theSocketGetsItsModeAndGroupWhicheverWayTheStepFindsIt(@TempDir Path dir) throws Exception {
        requireRoot();
        for (boolean askKernel : new boolean[] {true, false}) {
            Path path = dir.resolve("s-" + askKernel + ".sock");
            try (UnixSocket bound = UnixSocket.listen(path, 4)) {
                GROUP.apply(bound.fd(), path, askKernel);
                assertEquals(
                        "rw-rw----",
                        PosixFilePermissions.toString(Files.getPosixFilePermissions(path, LinkOption.NOFOLLOW_LINKS)));
                assertEquals(65534, (int) Files.getAttribute(path, "unix:gid", LinkOption.NOFOLLOW_LINKS));
            }
        }
        Path path = dir.resolve("owner.sock");
        try (UnixSocket listener = UnixSocket.listen(path, 4, GROUP);
                UnixSocket client = UnixSocket.connect(path);
                UnixSocket server = listener.accept()) {
            assertEquals(
                    "rw-rw----",
                    PosixFilePermissions.toString(Files.getPosixFilePermissions(path, LinkOption.NOFOLLOW_LINKS)));
            assertEquals(65534, (int) Files.getAttribute(path, "unix:gid", LinkOption.NOFOLLOW_LINKS));
        }
    }
}
