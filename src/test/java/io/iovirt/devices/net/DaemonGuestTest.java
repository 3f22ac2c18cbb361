// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.daemon.JsonParser;
import io.iovirt.net.Mac;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.IovirtCli;
import io.iovirt.vm.QemuGuest;
import java.io.RandomAccessFile;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The daemon's acceptance test (issue 12, "done when"): one {@code iovirt daemon} process; two disks and a switch
 * with two vhost-user ports and one stream port, all added with {@code iovirt ctl}; three real guests: A (disk 1 +
 * virtio-net), B (disk 2 + virtio-net), C (an emulated e1000 on the stream port). Every guest pings every other; A
 * writes disk 1 and B reads what the host wrote on disk 2. Then, while the guests run, disk 1 is grown with
 * blk.resize (the guest learns it through the vhost-user config-change notification) and C's port is removed; A and
 * B keep reaching each other. Finally the switch's and the disks' counters read through {@code ctl} equal those in
 * /metrics, which promtool accepts, and A's port saw exactly the frames A's driver counted.
 */
@Tag("guest")
@Timeout(1200)
class DaemonGuestTest {
    static final Duration BOOT = Duration.ofSeconds(300);
    static final Duration STEP = Duration.ofSeconds(300);
    static final long DISK = 64L << 20;
    static final long GROWN = 128L << 20;

    static GuestImage image;

    @TempDir
    Path dir;

    @BeforeAll
    static void requirements() {
        assertTrue(SwitchGuestTest.onPath("qemu-system-x86_64"), "QEMU is not installed: run scripts/install-deps.sh");
        assertTrue(SwitchGuestTest.onPath("promtool"), "promtool is not installed: run scripts/install-deps.sh");
        image = GuestImage.ensure();
    }

    @Test
    void oneDaemonServesDisksAndASwitchToRealGuests() throws Exception {
        Path control = dir.resolve("control.sock");
        int metricsPort;
        try (ServerSocket s = new ServerSocket(0)) {
            metricsPort = s.getLocalPort();
        }
        Path disk1 = dir.resolve("disk1.raw");
        Path disk2 = dir.resolve("disk2.raw");
        for (Path d : List.of(disk1, disk2)) {
            try (RandomAccessFile f = new RandomAccessFile(d.toFile(), "rw")) {
                f.setLength(DISK);
            }
        }
        byte[] hostPattern = pattern("iovirt-host-wrote-this", 1 << 20);
        try (RandomAccessFile f = new RandomAccessFile(disk2.toFile(), "rw")) {
            f.seek(8L << 20);
            f.write(hostPattern);
        }
        try (ChildProcess daemon = ChildProcess.builder(IovirtCli.command(
                        "daemon", "--control", control.toString(), "--metrics", "127.0.0.1:" + metricsPort))
                .name("iovirt daemon")
                .log(dir.resolve("daemon.log"))
                .startListening(control, Duration.ofSeconds(60))) {
            assertEquals(
                    "blk1",
                    json(control, "blk.add", "id=blk1", "image=" + disk1, "socket=" + dir.resolve("blk1.sock"))
                            .get("id"));
            assertEquals(
                    "blk2",
                    json(
                                    control,
                                    "blk.add",
                                    "id=blk2",
                                    "image=" + disk2,
                                    "socket=" + dir.resolve("blk2.sock"),
                                    "queues=2")
                            .get("id"));
            assertEquals("sw", json(control, "net.add", "id=sw").get("id"));
            json(control, "net.port.add", "net=sw", "id=a", "kind=vhost-user", "path=" + dir.resolve("a.sock"));
            json(control, "net.port.add", "net=sw", "id=b", "kind=vhost-user", "path=" + dir.resolve("b.sock"));
            json(control, "net.port.add", "net=sw", "id=c", "kind=stream", "path=" + dir.resolve("c.sock"));
            String table = ctl(control, "net.list");
            assertTrue(table.contains("vhost-user") && table.contains("stream"), table);

            String[] ips = {"10.0.12.1", "10.0.12.2", "10.0.12.3"};
            long[] macs = {
                Mac.parse("52:54:00:12:00:01"), Mac.parse("52:54:00:12:00:02"), Mac.parse("52:54:00:12:00:03")
            };
            String phase1 = """
                    for p in %s; do
                      if ping -c 3 -i 0.2 -W 10 $p > /tmp/ping 2>&1; then say PING $p ok; else say PING $p FAIL; cat /tmp/ping; fi
                    done
                    %s
                    say PHASE1
                    ask
                    %s
                    say PHASE2
                    """;
            String diskA = """
                    for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
                    yes iovirt-guest-a-wrote-this | head -c 1048576 > /tmp/p
                    dd if=/tmp/p of=/dev/vda bs=1M seek=4 oflag=direct conv=fsync 2>/dev/null
                    say DISK $(dd if=/dev/vda bs=1M skip=4 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1) $(cat /sys/block/vda/size)
                    """;
            String diskB = """
                    for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
                    say DISK $(dd if=/dev/vda bs=1M skip=8 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1) $(cat /sys/block/vda/size)
                    """;
            String afterA = """
                    for i in $(seq 600); do [ "$(cat /sys/block/vda/size)" = %d ] && break; sleep 0.1; done
                    say SIZE $(cat /sys/block/vda/size)
                    if ping -c 3 -i 0.2 -W 10 %s > /tmp/ping 2>&1; then say PING2 ok; else say PING2 FAIL; cat /tmp/ping; fi
                    """.formatted(GROWN / 512, ips[1]);
            String afterB = """
                    if ping -c 3 -i 0.2 -W 10 %s > /tmp/ping 2>&1; then say PING2 ok; else say PING2 FAIL; cat /tmp/ping; fi
                    """.formatted(ips[0]);
            List<NetGuest> guests = new ArrayList<>();
            try {
                for (int i = 0; i < 3; i++) {
                    List<NetGuest.Peer> peers = new ArrayList<>();
                    StringBuilder others = new StringBuilder();
                    for (int j = 0; j < 3; j++) {
                        if (j != i) {
                            peers.add(new NetGuest.Peer(ips[j], macs[j]));
                            others.append(ips[j]).append(' ');
                        }
                    }
                    String name = "abc".substring(i, i + 1);
                    List<String> extra = i == 2
                            ? List.of()
                            : List.of(
                                    "-chardev",
                                    "socket,id=blk,path="
                                            + QemuGuest.escape(dir.resolve("blk" + (i + 1) + ".sock")
                                                    .toString()),
                                    "-device",
                                    "vhost-user-blk-pci,chardev=blk,num-queues=" + (i + 1));
                    String body = phase1.formatted(
                            others, i == 0 ? diskA : i == 1 ? diskB : "", i == 0 ? afterA : i == 1 ? afterB : "");
                    guests.add(NetGuest.start(
                            image,
                            dir,
                            name,
                            ips[i],
                            macs[i],
                            i == 2 ? NetGuest.Nic.E1000 : NetGuest.Nic.VIRTIO,
                            1,
                            dir.resolve(name + ".sock"),
                            peers,
                            body,
                            BOOT.plus(STEP).plus(STEP),
                            extra,
                            i == 2 ? List.of() : List.of("virtio_blk")));
                }
                for (NetGuest g : guests) {
                    g.await("UP", BOOT);
                }
                for (NetGuest g : guests) {
                    g.proceed();
                }
                for (NetGuest g : guests) {
                    g.await("READY", STEP);
                }
                for (NetGuest g : guests) {
                    g.proceed();
                }
                for (NetGuest g : guests) {
                    g.await("PHASE1", STEP);
                    assertTrue(!g.console().contains(" FAIL"), g.name + ": a ping failed:\n" + g.console());
                }
                String[] diskAOut = guests.get(0).await("DISK", STEP);
                assertEquals(sha256(pattern("iovirt-guest-a-wrote-this", 1 << 20)), diskAOut[0], "guest A's read-back");
                assertEquals(Long.toString(DISK / 512), diskAOut[1]);
                assertEquals(
                        sha256(pattern("iovirt-guest-a-wrote-this", 1 << 20)),
                        sha256(readAt(disk1, 4L << 20, 1 << 20)),
                        "guest A's write on the host");
                assertEquals(sha256(hostPattern), guests.get(1).await("DISK", STEP)[0], "guest B read the host's data");

                // while the guests run: grow disk 1, take C's port away
                Map<String, Object> resized = json(control, "blk.resize", "id=blk1", "size=128M");
                assertEquals(Boolean.TRUE, resized.get("frontend_notified"), resized.toString());
                json(control, "net.port.remove", "net=sw", "id=c");
                guests.get(0).proceed();
                guests.get(1).proceed();
                assertEquals(
                        Long.toString(GROWN / 512),
                        guests.get(0).await("SIZE", STEP)[0],
                        "the guest did not see the new size:\n" + guests.get(0).console());
                assertEquals(
                        "ok",
                        guests.get(0).await("PING2", STEP)[0],
                        guests.get(0).console());
                assertEquals(
                        "ok",
                        guests.get(1).await("PING2", STEP)[0],
                        guests.get(1).console());
                guests.get(0).await("PHASE2", STEP);
                guests.get(1).await("PHASE2", STEP);
                assertEquals(GROWN, Files.size(disk1));

                // counters: ctl and /metrics agree (read twice around the scrape: traffic has stopped), promtool
                // accepts
                Map<String, Object> before = json(control, "stats", "id=sw");
                String metrics = scrape(metricsPort);
                Map<String, Object> after = json(control, "stats", "id=sw");
                assertEquals(before, after, "the switch's counters still moved after all traffic stopped");
                promtool(metrics);
                for (Object o : (List<?>) after.get("ports")) {
                    Map<?, ?> port = (Map<?, ?>) o;
                    String id = (String) port.get("port");
                    assertEquals(
                            port.get("rx_packets"),
                            metric(
                                    metrics,
                                    "iovirt_net_port_packets_total",
                                    "net=\"sw\",port=\"" + id + "\",direction=\"rx\""),
                            "rx of port " + id);
                    assertEquals(
                            port.get("tx_packets"),
                            metric(
                                    metrics,
                                    "iovirt_net_port_packets_total",
                                    "net=\"sw\",port=\"" + id + "\",direction=\"tx\""),
                            "tx of port " + id);
                    assertEquals(
                            port.get("rx_bytes"),
                            metric(
                                    metrics,
                                    "iovirt_net_port_bytes_total",
                                    "net=\"sw\",port=\"" + id + "\",direction=\"rx\""),
                            "rx bytes of port " + id);
                }
                assertEquals(2, ((List<?>) after.get("ports")).size(), "port c is still listed: " + after);
                Map<String, Object> blk1 = json(control, "stats", "id=blk1");
                assertEquals(
                        blk1.get("requests"),
                        metric(metrics, "iovirt_blk_requests_total", "device=\"blk1\",queue=\"0\""));
                assertEquals(
                        blk1.get("bytes_written"),
                        metric(metrics, "iovirt_blk_bytes_total", "device=\"blk1\",queue=\"0\",direction=\"write\""));
                assertTrue((Long) blk1.get("bytes_written") >= 1 << 20, blk1.toString());
                assertEquals(GROWN, metric(metrics, "iovirt_blk_size_bytes", "device=\"blk1\""));

                // the guests' own counters against their ports'
                for (NetGuest g : guests.subList(0, 2)) {
                    g.proceed();
                }
                for (int i = 0; i < 2; i++) {
                    NetGuest.Counters c = NetGuest.Counters.parse(guests.get(i).await("STATS", STEP));
                    Map<?, ?> port = (Map<?, ?>)
                            ((List<?>) json(control, "stats", "id=sw").get("ports")).get(i);
                    assertEquals(c.txPackets(), port.get("rx_packets"), guests.get(i).name + ": guest tx vs port rx");
                }
            } finally {
                for (NetGuest g : guests) {
                    g.close();
                }
            }
            assertTrue(daemon.isAlive(), "the daemon died:\n" + daemon.logTail(40));
        }
    }

    static byte[] pattern(String line, int size) {
        byte[] l = (line + "\n").getBytes(StandardCharsets.US_ASCII);
        byte[] b = new byte[size];
        for (int i = 0; i < size; i++) {
            b[i] = l[i % l.length];
        }
        return b;
    }

    static byte[] readAt(Path file, long offset, int len) throws Exception {
        byte[] b = new byte[len];
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
            f.seek(offset);
            f.readFully(b);
        }
        return b;
    }

    static String sha256(byte[] data) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }

    /** Runs {@code iovirt ctl --control CONTROL args...} as its own process; returns stdout, fails on a non-zero exit. */
    static String ctl(Path control, String... args) throws Exception {
        List<String> a = new ArrayList<>(List.of("ctl", "--control", control.toString()));
        a.addAll(List.of(args));
        Process p = new ProcessBuilder(IovirtCli.command(a))
                .redirectErrorStream(false)
                .start();
        byte[] out = p.getInputStream().readAllBytes();
        String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "iovirt ctl hung");
        assertEquals(0, p.exitValue(), "iovirt ctl " + String.join(" ", args) + ": " + err);
        return new String(out, StandardCharsets.UTF_8);
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> json(Path control, String... args) throws Exception {
        String[] a = java.util.Arrays.copyOf(args, args.length + 1);
        a[args.length] = "--json";
        return (Map<String, Object>) JsonParser.parse(ctl(control, a));
    }

    static String scrape(int port) throws Exception {
        HttpClient c =
                HttpClient.newBuilder().proxy(HttpClient.Builder.NO_PROXY).build();
        HttpResponse<String> r = c.send(
                HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + "/metrics"))
                        .build(),
                HttpResponse.BodyHandlers.ofString());
        assertEquals(200, r.statusCode());
        assertTrue(r.headers().firstValue("Content-Type").orElse("").startsWith("text/plain; version=0.0.4"));
        return r.body();
    }

    /** promtool check metrics: exit 0 and no lint complaint. */
    static void promtool(String metrics) throws Exception {
        Process p = new ProcessBuilder("promtool", "check", "metrics")
                .redirectErrorStream(true)
                .start();
        p.getOutputStream().write(metrics.getBytes(StandardCharsets.UTF_8));
        p.getOutputStream().close();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), "promtool: " + out + "\n" + metrics);
        assertEquals("", out.trim(), "promtool lint: " + out);
    }

    static Long metric(String text, String name, String labels) {
        Matcher m = Pattern.compile("(?m)^" + Pattern.quote(name + "{" + labels + "}") + " (\\S+)$")
                .matcher(text);
        assertTrue(m.find(), name + "{" + labels + "} missing from /metrics");
        return (long) Double.parseDouble(m.group(1));
    }
}
