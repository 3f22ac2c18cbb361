// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.net.Mac;
import io.iovirt.testing.Await;
import io.iovirt.testing.Require;
import io.iovirt.vm.GuestImage;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A guest reaches the host's network stack through a {@code tap:} port. Everything happens in a network namespace
 * the test creates, so the traffic never leaves this machine's loopback world: {@code iovirt serve net} runs inside
 * it ({@code ip netns exec}) and creates its TAP there, the namespace's side of the TAP gets 10.0.9.1, and a
 * virtio-net guest (vhost-user port: UNIX sockets are not network-namespaced) pings that address and sends a file
 * to a netcat listening in the namespace. The namespace is deleted afterwards.
 */
@Tag("guest")
@Timeout(600)
class TapGuestTest {
    static final Duration STEP = Duration.ofSeconds(240);

    @TempDir
    Path dir;

    static int run(String... cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd)
                .redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.DISCARD)
                .start();
        if (!p.waitFor(60, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new IOException("timed out: " + String.join(" ", cmd));
        }
        return p.exitValue();
    }

    static void must(String... cmd) throws IOException, InterruptedException {
        int rc = run(cmd);
        if (rc != 0) {
            throw new IOException("exit " + rc + ": " + String.join(" ", cmd));
        }
    }

    @Test
    void aGuestPingsAndSendsAFileToTheHostThroughATapPortInANetworkNamespace() throws Exception {
        Require.that(SwitchGuestTest.onPath("qemu-system-x86_64"), "QEMU is not installed");
        Require.that(SwitchGuestTest.onPath("ip"), "iproute2 is not installed");
        String ns = "iovirt-"
                + HexFormat.of()
                        .toHexDigits(ThreadLocalRandom.current().nextInt())
                        .substring(0, 6);
        Require.that(run("ip", "netns", "add", ns) == 0, "cannot create a network namespace (needs root)");
        Process sw = null;
        Process listener = null;
        try {
            must("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up");
            Path sock = dir.resolve("pv.sock");
            Path swLog = dir.resolve("switch.log");
            List<String> cmd = new ArrayList<>(List.of(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    ProcessHandle.current().info().command().orElse("java"),
                    "--enable-native-access=ALL-UNNAMED",
                    "-cp",
                    System.getProperty("java.class.path"),
                    "io.iovirt.cli.Main",
                    "serve",
                    "net",
                    "--port",
                    "tap:iovtap0",
                    "--port",
                    "vhost-user:" + sock));
            sw = new ProcessBuilder(cmd)
                    .redirectErrorStream(true)
                    .redirectOutput(swLog.toFile())
                    .start();
            awaitFile(swLog, "switch running", sw);
            must("ip", "netns", "exec", ns, "ip", "addr", "add", "10.0.9.1/24", "dev", "iovtap0");
            must("ip", "netns", "exec", ns, "ip", "link", "set", "iovtap0", "up");
            Path received = dir.resolve("received.bin");
            listener = new ProcessBuilder("ip", "netns", "exec", ns, "busybox", "nc", "-l", "-p", "5001")
                    .redirectOutput(received.toFile())
                    .redirectError(ProcessBuilder.Redirect.DISCARD)
                    .redirectInput(ProcessBuilder.Redirect.PIPE)
                    .start(); // stdin stays open: no early half-close

            String body = """
                    dd if=/dev/urandom of=/tmp/out bs=1k count=1024 2>/dev/null
                    say SENDING $(md5sum < /tmp/out | cut -d' ' -f1)
                    if ping -c 5 -i 0.2 -W 10 10.0.9.1 > /tmp/ping 2>&1; then say PING ok; else say PING FAIL; cat /tmp/ping; fi
                    nc 10.0.9.1 5001 < /tmp/out && say SENT || say SENDFAIL
                    """;
            try (NetGuest g = NetGuest.start(
                    GuestImage.ensure(),
                    dir,
                    "tapguest",
                    "10.0.9.2",
                    Mac.parse("52:54:00:00:09:02"),
                    NetGuest.Nic.VIRTIO,
                    sock,
                    List.of(),
                    body,
                    STEP.multipliedBy(2))) {
                g.connectControl();
                g.await("UP", STEP);
                g.proceed();
                g.await("READY", STEP);
                g.proceed();
                String md5 = g.await("SENDING", STEP)[0];
                assertEquals("ok", g.await("PING", STEP)[0], g.console());
                g.await("SENT", STEP);
                assertTrue(listener.waitFor(60, TimeUnit.SECONDS), "the host's nc saw the end of the transfer");
                assertEquals(1024 * 1024, Files.size(received));
                assertEquals(md5, md5(received), "the host received the guest's file intact");
                g.proceed();
                g.await("STATS", STEP);
            }
            sw.destroy(); // SIGTERM: the switch stops and prints its final counters
            assertTrue(sw.waitFor(30, TimeUnit.SECONDS));
            String out = Files.readString(swLog);
            Matcher tap = Pattern.compile("tap:iovtap0: rx (\\d+) pkts/\\d+ B, tx (\\d+) pkts")
                    .matcher(out);
            assertTrue(tap.find(), out);
            assertTrue(
                    Long.parseLong(tap.group(1)) > 5 && Long.parseLong(tap.group(2)) > 700,
                    "pings and ~1 MiB went through the TAP port:\n" + out);
        } finally {
            if (listener != null) {
                listener.destroyForcibly();
            }
            if (sw != null) {
                sw.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
            }
            run("ip", "netns", "del", ns);
        }
    }

    static void awaitFile(Path log, String text, Process p) {
        java.util.function.Supplier<String> output = () -> {
            try {
                return Files.exists(log) ? Files.readString(log) : "(no output)";
            } catch (IOException e) {
                return "(cannot read " + log + ": " + e.getMessage() + ")";
            }
        };
        Await.until(
                java.time.Duration.ofSeconds(60),
                () -> "'" + text + "' from iovirt serve net (alive: " + p.isAlive() + "):\n" + output.get(),
                () -> {
                    if (output.get().contains(text)) {
                        return true;
                    }
                    if (!p.isAlive()) {
                        throw new AssertionError(
                                "iovirt serve net exited with " + p.exitValue() + ":\n" + output.get());
                    }
                    return false;
                });
    }

    static String md5(Path f) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(Files.readAllBytes(f)));
    }
}
