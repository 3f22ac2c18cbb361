// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A foreground server started as a real process stops in order on SIGHUP as on SIGTERM (final sync, counters,
 * socket removed, exit 0), and logs to stderr with timestamps, as text or JSON lines, with periodic counters.
 */
class ServeSignalsTest {
    @TempDir
    Path tmp;

    @Test
    void serveBlkStopsGracefullyOnSighupAndLogsJsonLinesWithStats() throws Exception {
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[1 << 20]);
        Path socket = tmp.resolve("blk.sock");
        Path log = tmp.resolve("blk.log");
        Process p = start(log, "serve", "blk", "--image", image.toString(), "--socket", socket.toString(),
                "--log-format", "json", "--stats-interval", "1");
        try {
            awaitLog(p, log, "counters: ");
            kill(p, "HUP");
            assertTrue(p.waitFor(60, TimeUnit.SECONDS), "still running after SIGHUP");
            assertEquals(0, p.exitValue(), Files.readString(log));
        } finally {
            p.destroyForcibly();
        }
        List<String> lines = Files.readAllLines(log);
        for (String l : lines) {
            assertTrue(l.startsWith("{\"time\":\"20") && l.contains("\"level\":\"info\"") && l.endsWith("}"), l);
        }
        assertTrue(lines.stream().anyMatch(l -> l.contains("SIGHUP: stopping")), String.join("\n", lines));
        assertTrue(lines.getLast().contains("stopped; image synced."), lines.getLast());
        assertFalse(Files.exists(socket), "the socket is removed on the way out");
    }

    @Test
    void serveNetStopsGracefullyOnSighupWithTextLogsOnStderr() throws Exception {
        Path socket = tmp.resolve("net.sock");
        Path log = tmp.resolve("net.log");
        ProcessBuilder pb = new ProcessBuilder(IovirtCli.command("serve", "net", "--port",
                "stream:" + socket)).redirectError(log.toFile()).redirectOutput(tmp.resolve("net.out").toFile());
        Process p = pb.start();
        try {
            awaitLog(p, log, "switch running");
            kill(p, "HUP");
            assertTrue(p.waitFor(60, TimeUnit.SECONDS), "still running after SIGHUP");
            assertEquals(0, p.exitValue(), Files.readString(log));
        } finally {
            p.destroyForcibly();
        }
        String text = Files.readString(log);
        assertTrue(text.matches("(?s)20\\d\\d-\\d\\d-\\d\\dT[0-9:.]+Z info iovirt.serve.net: port 0: .*"), text);
        assertTrue(text.contains("received SIGHUP, stopping") && text.contains("final counters"), text);
        assertEquals("", Files.readString(tmp.resolve("net.out")), "logs go to stderr, not stdout");
    }

    @Test
    void aBadLogLevelIsAUsageError() throws Exception {
        io.iovirt.host.CliRun r = io.iovirt.host.CliRun.run(List.of("serve", "blk", "--image", "x", "--socket", "y",
                "--log-level", "loud"));
        assertEquals(2, r.exit(), r.err());
        assertTrue(r.err().contains("--log-level must be error, warn, info, debug or trace"), r.err());
    }

    private static Process start(Path log, String... args) throws IOException {
        return new ProcessBuilder(IovirtCli.command(args)).redirectErrorStream(true).redirectOutput(log.toFile())
                .start();
    }

    private static void awaitLog(Process p, Path log, String text) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
        while (System.nanoTime() < deadline) {
            if (Files.exists(log) && Files.readString(log).contains(text)) {
                return;
            }
            if (!p.isAlive()) {
                throw new AssertionError("exited " + p.exitValue() + ": " + Files.readString(log));
            }
            Thread.sleep(100);
        }
        throw new AssertionError("no '" + text + "' in: " + Files.readString(log));
    }

    private static void kill(Process p, String signal) throws Exception {
        Process k = new ProcessBuilder("kill", "-" + signal, Long.toString(p.pid())).inheritIO().start();
        assertTrue(k.waitFor(10, TimeUnit.SECONDS));
        assertEquals(0, k.exitValue());
    }
}
