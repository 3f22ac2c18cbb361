// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.SocketAccess;
import io.iovirt.testing.Require;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Who may talk to a vhost-user socket: the file is 0600 (0660 with a group) whatever the umask, and a peer whose
 * uid is not on the allow-list is refused with a log line even when the file mode let it connect. The other uid is a
 * real process: python3 run as nobody:nogroup through setpriv.
 */
@Timeout(120)
class SocketAccessTest {
    static final int NOBODY = 65534;
    static final String PYTHON = "/usr/bin/python3";

    @TempDir
    Path dir;

    /** Connects as nobody, sends GET_FEATURES and prints the reply's size (0 when the server hung up), or the error. */
    private String connectAsNobody(Path socket) throws Exception {
        String script = "import socket,struct,sys\n"
                + "s=socket.socket(socket.AF_UNIX)\n"
                + "try:\n"
                + "  s.connect(sys.argv[1])\n"
                + "except OSError as e:\n"
                + "  print('connect', e.errno); sys.exit(0)\n"
                + "s.settimeout(10)\n"
                + "try:\n"
                + "  s.sendall(struct.pack('<III',1,1,0))\n"
                + "  print('reply', len(s.recv(64)))\n"
                + "except (ConnectionResetError, BrokenPipeError):\n" // the hang-up may come before the send
                + "  print('reply', 0)\n";
        Process p = new ProcessBuilder(
                        "setpriv",
                        "--reuid=" + NOBODY,
                        "--regid=" + NOBODY,
                        "--clear-groups",
                        PYTHON,
                        "-c",
                        script,
                        socket.toString())
                .redirectErrorStream(true)
                .start();
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), "client hung");
        return new String(p.getInputStream().readAllBytes()).trim();
    }

    private void openDir() throws Exception {
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxr-xr-x"));
    }

    @Test
    void socketsAreOwnerOnlyAndOtherUidsCannotConnect() throws Exception {
        Require.that(SocketAccess.ownUid() == 0, "root (the test connects as uid nobody through setpriv)");
        Require.program("python3", "apt-get install python3");
        openDir();
        Path sock = dir.resolve("vub.sock");
        try (VhostUserServer server = VhostUserServer.start(sock, new RecordingBackend(1))) {
            assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(sock)));
            assertEquals("connect 13", connectAsNobody(sock), "EACCES: the file mode keeps other users out");
        }
    }

    @Test
    void aGroupMayConnectButOnlyAllowedUidsAreServed() throws Exception {
        Require.that(SocketAccess.ownUid() == 0, "root (the test connects as uid nobody through setpriv)");
        Require.program("python3", "apt-get install python3");
        openDir();
        Path sock = dir.resolve("vub.sock");
        try (LogCapture log = LogCapture.start();
                VhostUserServer server =
                        VhostUserServer.start(sock, new RecordingBackend(1), SocketAccess.of("nogroup", Set.of()))) {
            assertEquals("rw-rw----", PosixFilePermissions.toString(Files.getPosixFilePermissions(sock)));
            assertEquals("nogroup", Files.getAttribute(sock, "posix:group").toString());
            assertEquals("reply 0", connectAsNobody(sock), "the server hangs up on a uid it does not serve");
            String line = log.awaitLine("refusing frontend");
            assertTrue(line.contains("uid " + NOBODY + " is not allowed"), line);
            assertTrue(server.awaitIdle(Duration.ofSeconds(10)));
            try (VhostUserFrontend fe = VhostUserFrontend.connect(sock, Duration.ofSeconds(10))) {
                assertEquals(
                        RecordingBackend.DEVICE_FEATURES
                                | Features.VHOST_USER_F_PROTOCOL_FEATURES
                                | Features.VHOST_F_LOG_ALL,
                        fe.getFeatures());
            }
        }
        Files.deleteIfExists(sock);
        try (VhostUserServer server =
                VhostUserServer.start(sock, new RecordingBackend(1), SocketAccess.of("nogroup", Set.of(NOBODY)))) {
            assertEquals("reply 20", connectAsNobody(sock), "an allowed uid gets its GET_FEATURES reply");
        }
    }

    /**
     * {@code --allow-user}: a user named is served (what the packaged units pass for libvirt's QEMU user), and a user
     * that does not exist is left out with a warning rather than keeping the server from starting (a unit naming
     * libvirt's user on a host without libvirt). {@code serve blk} as its own process, the peer as uid nobody.
     */
    @Test
    void allowUserServesANamedUserAndWarnsAboutAMissingOne() throws Exception {
        Require.that(SocketAccess.ownUid() == 0, "root (the test connects as uid nobody through setpriv)");
        Require.program("python3", "apt-get install python3");
        openDir();
        Path img = dir.resolve("d.raw");
        Files.write(img, new byte[1 << 20]);
        Path sock = dir.resolve("blk.sock");
        try (io.iovirt.vm.ChildProcess p = io.iovirt.vm.ChildProcess.builder(io.iovirt.vm.IovirtCli.serveBlk(
                        img, sock, "--socket-group", "nogroup", "--allow-user", "nobody,iovirt-no-such-user"))
                .log(dir.resolve("serve.log"))
                .startListening(sock, Duration.ofSeconds(120))) {
            assertEquals("reply 20", connectAsNobody(sock), p.log());
            assertTrue(
                    p.log().contains("--allow-user iovirt-no-such-user: no such user, left out"),
                    "the missing user is named:\n" + p.log());
        }
    }
}
