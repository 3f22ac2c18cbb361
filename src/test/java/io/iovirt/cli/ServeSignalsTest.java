// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.bench.StrictJson;
import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
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
        Process p = start(
                log,
                "serve",
                "blk",
                "--image",
                image.toString(),
                "--socket",
                socket.toString(),
                "--log-format",
                "json",
                "--stats-interval",
                "1");
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
        // the counters lines carry them as a "stats" object too (docs/cli.md), parsed by an independent parser
        Map<?, ?> periodic = (Map<?, ?>) lines.stream()
                .filter(l -> l.contains("counters: "))
                .map(l -> (Map<?, ?>) StrictJson.parse(l))
                .findFirst()
                .orElseThrow()
                .get("stats");
        assertEquals(0L, ((Map<?, ?>) periodic.get("device")).get("requests"), periodic.toString());
        Map<?, ?> q0 = (Map<?, ?>) ((List<?>) periodic.get("queues")).get(0);
        assertEquals(0L, q0.get("queue"), periodic.toString());
        assertEquals(0L, ((Map<?, ?>) q0.get("worker")).get("lost_notifications"), periodic.toString());
        assertEquals(
                Map.of("connected", false, "waiting", false, "waited", 0L),
                withoutNulls((Map<?, ?>) periodic.get("frontend")),
                periodic.toString());
        Map<?, ?> last = (Map<?, ?>) ((Map<?, ?>) StrictJson.parse(lines.getLast())).get("stats");
        assertTrue(((Map<?, ?>) last.get("device")).containsKey("bytes_written"), last.toString());
    }

    @Test
    void serveNbdStopsGracefullyOnSighupAndLogsJsonLinesWithStats() throws Exception {
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[1 << 20]);
        Path socket = tmp.resolve("nbd.sock");
        Path log = tmp.resolve("nbd.log");
        Path out = tmp.resolve("nbd.out");
        Process p = new ProcessBuilder(IovirtCli.command(
                        "serve",
                        "nbd",
                        "--image",
                        image.toString(),
                        "--socket",
                        socket.toString(),
                        "--log-format",
                        "json",
                        "--stats-interval",
                        "1"))
                .redirectError(log.toFile())
                .redirectOutput(out.toFile())
                .start();
        try {
            awaitLog(p, log, "counters: ");
            kill(p, "HUP");
            assertTrue(p.waitFor(60, TimeUnit.SECONDS), "still running after SIGHUP");
            assertEquals(0, p.exitValue(), Files.readString(log));
        } finally {
            p.destroyForcibly();
        }
        assertEquals("", Files.readString(out), "logs go to stderr, not stdout");
        List<String> lines = Files.readAllLines(log);
        for (String l : lines) {
            Map<?, ?> m = (Map<?, ?>) StrictJson.parse(l);
            assertTrue(((String) m.get("time")).matches("20\\d\\d-\\d\\d-\\d\\dT[0-9:.]+Z"), l);
        }
        assertTrue(
                lines.getFirst().contains("exporting ") && lines.getFirst().contains("\"logger\":\"iovirt.serve.nbd\""),
                lines.getFirst());
        assertTrue(lines.stream().anyMatch(l -> l.contains("SIGHUP: stopping")), String.join("\n", lines));
        Map<?, ?> last = (Map<?, ?>) StrictJson.parse(lines.getLast());
        assertTrue(((String) last.get("message")).startsWith("stopped; image synced."), lines.getLast());
        assertEquals(0L, ((Map<?, ?>) last.get("stats")).get("errors"), lines.getLast());
        assertFalse(Files.exists(socket), "the socket is removed on the way out");
    }

    private static Map<?, ?> withoutNulls(Map<?, ?> m) {
        Map<Object, Object> out = new java.util.HashMap<>(m);
        out.values().removeIf(java.util.Objects::isNull);
        return out;
    }

    @Test
    void serveNetStopsGracefullyOnSighupWithTextLogsOnStderr() throws Exception {
        Path socket = tmp.resolve("net.sock");
        Path log = tmp.resolve("net.log");
        ProcessBuilder pb = new ProcessBuilder(IovirtCli.command("serve", "net", "--port", "stream:" + socket))
                .redirectError(log.toFile())
                .redirectOutput(tmp.resolve("net.out").toFile());
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
        io.iovirt.host.CliRun r = io.iovirt.host.CliRun.run(
                List.of("serve", "blk", "--image", "x", "--socket", "y", "--log-level", "loud"));
        assertEquals(2, r.exit(), r.err());
        assertTrue(r.err().contains("--log-level must be error, warn, info, debug or trace"), r.err());
    }

    private static Process start(Path log, String... args) throws IOException {
        return new ProcessBuilder(IovirtCli.command(args))
                .redirectErrorStream(true)
                .redirectOutput(log.toFile())
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
        Process k = new ProcessBuilder("kill", "-" + signal, Long.toString(p.pid()))
                .inheritIO()
                .start();
        assertTrue(k.waitFor(10, TimeUnit.SECONDS));
        assertEquals(0, k.exitValue());
    }
}
