// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

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
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A real {@code iovirt serve blk} that runs out of file descriptors keeps its accept loop: it backs off, says so,
 * and serves the next frontend once descriptors are free again. While a frontend is served the server does not
 * accept (a second one waits in the backlog), so the outage is made when the first frontend leaves: the process's
 * descriptor limit is lowered from outside ({@code prlimit --pid}) below the descriptors it holds, the frontend
 * disconnects, and every accept then fails with EMFILE at once (Linux's accept reserves the new connection's
 * descriptor before it waits), connection or not, until the limit is raised again.
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
        try (ChildProcess serve = ChildProcess.builder(
                        IovirtCli.command("serve", "blk", "--image", image.toString(), "--socket", socket.toString()))
                .name("serve blk")
                .log(log)
                .lifetime(Duration.ofMinutes(10))
                .startListening(socket, WAIT)) {
            VhostUserFrontend a = VhostUserFrontend.connect(socket, WAIT);
            long features = a.getFeatures();
            Await.until(WAIT, "frontend a connected", serve, () -> logged(log, "connected"));

            // every descriptor at or above 3 is out of reach, so the one a's socket leaves does not help
            prlimit(serve.pid(), "3:");
            a.close();
            Await.until(
                    WAIT,
                    "the accept loop reports EMFILE and backs off",
                    serve,
                    () -> logged(log, "accept failed") && logged(log, "EMFILE") && logged(log, "backing off"));
            assertTrue(serve.isAlive());

            prlimit(serve.pid(), "1024:");
            try (VhostUserFrontend c = VhostUserFrontend.connect(socket, WAIT)) {
                assertEquals(features, c.getFeatures(), "the next frontend is served");
            }
            Await.until(WAIT, "accepting again", serve, () -> logged(log, "accepting again after"));
            String text = Files.readString(log);
            String outage = text.substring(0, text.indexOf("accepting again after"));
            assertEquals(
                    1, count(outage, "backing off"), "one line for the whole outage, not one per attempt:\n" + text);
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

    private static void prlimit(long pid, String nofile) throws Exception {
        Process p = new ProcessBuilder("prlimit", "--pid", Long.toString(pid), "--nofile=" + nofile)
                .redirectErrorStream(true)
                .start();
        assertTrue(p.waitFor(30, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), new String(p.getInputStream().readAllBytes()));
    }
}
