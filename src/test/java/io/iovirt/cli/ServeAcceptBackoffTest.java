// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.UnixSocket;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.vhostuser.VhostUserFrontend;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A real {@code iovirt serve blk} that runs out of file descriptors keeps its accept loop: it backs off, says so,
 * and serves the next frontend once descriptors are free again. The process's descriptor limit is lowered from
 * outside ({@code prlimit --pid}) to the descriptors it holds while one frontend is connected. Linux's accept
 * reserves the new connection's descriptor before it waits, so the accept already waiting still has one: a second
 * connection takes it (and is turned away: one frontend per socket), and from then on every accept fails with
 * EMFILE at once, connection or not, until the first frontend leaves.
 */
class ServeAcceptBackoffTest {
    private static final Duration WAIT = Duration.ofSeconds(120);

    @TempDir
    Path tmp;

    @Test
    void outOfDescriptorsTheAcceptLoopBacksOffAndServesTheNextFrontendOnceOneIsFree() throws Exception {
        Require.program("prlimit", "apt-get install util-linux");
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[1 << 20]);
        Path socket = tmp.resolve("blk.sock");
        Path log = tmp.resolve("blk.log");
        try (ChildProcess serve = ChildProcess.builder(IovirtCli.command("serve", "blk", "--image", image.toString(),
                "--socket", socket.toString())).name("serve blk").log(log).lifetime(Duration.ofMinutes(10))
                .startListening(socket, WAIT)) {
            VhostUserFrontend a = VhostUserFrontend.connect(socket, WAIT);
            long features = a.getFeatures();
            Await.until(WAIT, "frontend a connected", serve, () -> logged(log, "connected"));

            prlimit(serve.pid(), lowestFreeFd(serve.pid()) + ":"); // soft limit: every descriptor below it is taken
            try (UnixSocket b = UnixSocket.connect(socket)) { // takes the descriptor the waiting accept reserved
                Await.until(WAIT, "the accept loop reports EMFILE and backs off", serve,
                        () -> logged(log, "accept failed") && logged(log, "EMFILE") && logged(log, "backing off"));
            }
            assertTrue(serve.isAlive());

            a.close(); // the server closes a's socket: one descriptor is free again
            try (VhostUserFrontend c = VhostUserFrontend.connect(socket, WAIT)) {
                assertEquals(features, c.getFeatures(), "the next frontend is served");
            }
            Await.until(WAIT, "accepting again", serve, () -> logged(log, "accepting again after"));
            String text = Files.readString(log);
            String outage = text.substring(0, text.indexOf("accepting again after"));
            assertEquals(1, count(outage, "backing off"), "one line for the whole outage, not one per attempt:\n" + text);
            // c took the descriptor a left, so the loop is out of descriptors again (and says so once more) until
            // the limit is raised.
            prlimit(serve.pid(), "1024:");
            serve.stop(Duration.ofSeconds(30));
            assertTrue(serve.waitFor(Duration.ofSeconds(30)));
            assertEquals(0, serve.exitValue(), serve.logTail(30));
        }
    }

    private static boolean logged(Path log, String text) {
        try {
            return Files.readString(log).contains(text);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static int count(String text, String what) {
        int n = 0;
        for (int i = text.indexOf(what); i >= 0; i = text.indexOf(what, i + 1)) {
            n++;
        }
        return n;
    }

    private static int lowestFreeFd(long pid) throws IOException {
        Set<Integer> open = new TreeSet<>();
        try (Stream<Path> fds = Files.list(Path.of("/proc/" + pid + "/fd"))) {
            fds.forEach(p -> open.add(Integer.parseInt(p.getFileName().toString())));
        }
        int fd = 0;
        while (open.contains(fd)) {
            fd++;
        }
        assertNotEquals(0, fd);
        return fd;
    }

    private static void prlimit(long pid, String nofile) throws Exception {
        Process p = new ProcessBuilder("prlimit", "--pid", Long.toString(pid), "--nofile=" + nofile)
                .redirectErrorStream(true).start();
        assertTrue(p.waitFor(30, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), new String(p.getInputStream().readAllBytes()));
    }
}
