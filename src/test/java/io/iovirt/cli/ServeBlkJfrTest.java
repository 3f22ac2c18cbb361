// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import jdk.jfr.consumer.RecordedEvent;
import jdk.jfr.consumer.RecordingFile;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code serve blk --jfr-slow-ms}: a real server process under a JFR recording started the documented way
 * (JAVA_TOOL_OPTIONS), driven by the real {@code bench blk} client; the recording it leaves at exit holds one
 * {@code io.iovirt.blk.SlowRequest} event per request at threshold 0, with the fields docs/cli.md names.
 */
class ServeBlkJfrTest {
    @TempDir
    Path tmp;

    @Test
    void everyRequestOverTheThresholdIsAJfrEventInTheRecording() throws Exception {
        Path image = tmp.resolve("disk.raw");
        Files.write(image, new byte[4 << 20]);
        Path socket = tmp.resolve("blk.sock");
        Path jfr = tmp.resolve("blk.jfr");
        Path log = tmp.resolve("serve.log");
        try (ChildProcess serve = ChildProcess.builder(IovirtCli.serveBlk(image, socket, "--jfr-slow-ms", "0"))
                .name("serve blk")
                .log(log)
                .env("JAVA_TOOL_OPTIONS", "-XX:StartFlightRecording:filename=" + jfr)
                .lifetime(Duration.ofMinutes(5))
                .startListening(socket, Duration.ofMinutes(2))) {
            CliRun bench = CliRun.run(List.of(
                    "bench",
                    "blk",
                    "--socket",
                    socket.toString(),
                    "--rw",
                    "randwrite",
                    "--seconds",
                    "1",
                    "--warmup",
                    "0"));
            assertEquals(0, bench.exit(), bench.err());
            serve.stop(Duration.ofSeconds(60)); // SIGTERM: the JVM writes the recording on its way out
            assertEquals(0, serve.exitValue(), serve.logTail(20));
        }
        Matcher m = Pattern.compile("stopped; image synced\\. requests=(\\d+) reads=0 writes=(\\d+)")
                .matcher(Files.readString(log));
        assertTrue(m.find(), Files.readString(log));
        long requests = Long.parseLong(m.group(1));
        assertTrue(requests > 0);
        List<RecordedEvent> events = RecordingFile.readAllEvents(jfr).stream()
                .filter(e -> e.getEventType().getName().equals("io.iovirt.blk.SlowRequest"))
                .toList();
        assertEquals(requests, events.size(), "one event per request at threshold 0");
        for (RecordedEvent e : events) {
            assertEquals(socket.toString(), e.getString("device"));
            assertEquals(0, e.getInt("queue"));
            assertEquals("write", e.getString("kind"));
            assertEquals(4096, e.getLong("bytes"));
            assertEquals(0, e.getInt("status"));
            assertTrue(e.getLong("offset") % 4096 == 0 && e.getLong("offset") < (4 << 20), e.toString());
            assertTrue(e.getLong("latency") > 0, e.toString());
        }
    }
}
