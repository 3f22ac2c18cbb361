// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.daemon.Daemon;
import io.iovirt.daemon.JsonParser;
import io.iovirt.daemon.RpcServer;
import java.io.PrintWriter;
import java.io.RandomAccessFile;
import java.io.StringWriter;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

/** {@code iovirt ctl} against a daemon: tables, --json, exit codes and the one-line error format. */
class CtlCommandTest {
    @TempDir
    Path dir;

    record Run(int exit, String out, String err) {}

    Run ctl(String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        CommandLine cl = Main.commandLine();
        cl.setOut(new PrintWriter(out));
        cl.setErr(new PrintWriter(err));
        String[] a = new String[args.length + 3];
        a[0] = "ctl";
        a[1] = "--control";
        a[2] = dir.resolve("control.sock").toString();
        System.arraycopy(args, 0, a, 3, args.length);
        int exit = cl.execute(a);
        return new Run(exit, out.toString(), err.toString());
    }

    /** ctl --help names every method the daemon has. */
    @Test
    void helpNamesEveryMethod() {
        StringWriter out = new StringWriter();
        CommandLine cl = Main.commandLine();
        cl.setOut(new PrintWriter(out));
        assertEquals(0, cl.execute("ctl", "--help"));
        String help = out.toString().replaceAll("\\s+", " ");
        for (String m : Daemon.METHODS) {
            assertTrue(help.matches("(?s).*[ ,]" + java.util.regex.Pattern.quote(m) + "[,. ].*"), m + ": " + help);
        }
    }

    @Test
    void tablesJsonAndErrors() throws Exception {
        Run none = ctl("version");
        assertEquals(1, none.exit());
        assertTrue(
                none.err().startsWith("iovirt ctl: cannot connect to ")
                        && none.err().contains("is 'iovirt daemon --control"),
                none.err());
        Path img = dir.resolve("d.raw");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        try (Daemon d = new Daemon(null);
                RpcServer s = RpcServer.start(dir.resolve("control.sock"), d)) {
            Run v = ctl("version");
            assertEquals(0, v.exit(), v.err());
            assertTrue(v.out().matches("(?s)version\\s+" + Daemon.VERSION + "\\n.*"), v.out());
            assertEquals(
                    0,
                    ctl("blk.add", "image=" + img, "socket=" + dir.resolve("d.sock"), "queues=2", "readonly=true")
                            .exit());
            Run list = ctl("blk.list");
            String[] lines = list.out().split("\n");
            assertTrue(lines[0].matches("ID\\s+IMAGE\\s+SOCKET\\s+FORMAT\\s+SIZE\\s+QUEUES\\s+READONLY.*"), list.out());
            assertTrue(
                    lines[1].matches("blk0\\s+\\S+d\\.raw\\s+\\S+d\\.sock\\s+raw\\s+1048576\\s+2\\s+true.*"),
                    list.out());
            Run json = ctl("blk.list", "--json");
            List<?> parsed = (List<?>) JsonParser.parse(json.out());
            assertEquals(2L, ((Map<?, ?>) parsed.get(0)).get("queues"));
            Run bad = ctl("blk.add", "image=" + img);
            assertEquals(2, bad.exit());
            assertEquals("iovirt ctl: blk.add: missing parameter 'socket' (error -32602)\n", bad.err());
            Run failed = ctl("blk.remove", "id=nope");
            assertEquals(1, failed.exit());
            assertTrue(failed.err().startsWith("iovirt ctl: no disk 'nope'"), failed.err());
            assertEquals("", failed.out(), "without --json nothing on stdout");
            // with --json the error is also one JSON document on stdout (docs/cli.md), usage errors with exit 2
            Run failedJson = ctl("blk.remove", "id=nope", "--json");
            assertEquals(1, failedJson.exit());
            Map<?, ?> error = (Map<?, ?>) ((Map<?, ?>) JsonParser.parse(failedJson.out())).get("error");
            assertEquals("ctl", error.get("command"));
            assertEquals(1L, error.get("exit"));
            assertTrue(((String) error.get("message")).startsWith("no disk 'nope'"), failedJson.out());
            Run badJson = ctl("blk.add", "image=" + img, "--json");
            assertEquals(2, badJson.exit());
            assertEquals(2L, ((Map<?, ?>) ((Map<?, ?>) JsonParser.parse(badJson.out())).get("error")).get("exit"));
            assertEquals(2, ctl("blk.grow", "id=blk0").exit());
            assertEquals(2, ctl("blk.list", "oops").exit(), "a parameter without '='");
            // values are strings: digits stay as written (they were sent as integers, serial=00042 became 42)
            Path img2 = dir.resolve("e.raw");
            try (RandomAccessFile f = new RandomAccessFile(img2.toFile(), "rw")) {
                f.setLength(1 << 20);
            }
            Run digits = ctl(
                    "blk.add",
                    "id=007",
                    "image=" + img2,
                    "socket=" + dir.resolve("e.sock"),
                    "serial=00042",
                    "queues=1");
            assertEquals(0, digits.exit(), digits.err());
            Map<?, ?> info = (Map<?, ?>)
                    JsonParser.parse(ctl("blk.info", "id=007", "--json").out());
            assertEquals("007", info.get("id"));
            assertEquals("00042", info.get("serial"));
            assertEquals(1L, info.get("queues"));
            // keys in the documented order, the same in every run (Map.of's order changed from one JVM to the next)
            Run ro = ctl("blk.set-readonly", "id=007", "readonly=true", "--json");
            assertEquals(0, ro.exit(), ro.err());
            assertEquals(
                    List.of("id", "readonly", "lock_pending", "writable_pending", "notice"),
                    List.copyOf(((Map<?, ?>) JsonParser.parse(ro.out())).keySet()),
                    ro.out());
            Run removed = ctl("blk.remove", "id=007", "--json");
            assertEquals(
                    List.of("id", "removed"),
                    List.copyOf(((Map<?, ?>) JsonParser.parse(removed.out())).keySet()),
                    removed.out());
            Run xml = ctl("libvirt-xml", "blk0");
            assertEquals(0, xml.exit(), xml.err());
            assertTrue(xml.out().startsWith("<domain type='qemu'>"), xml.out());
        }
    }
}
