// SPDX-License-Identifier: Apache-2.0
package io.iovirt.packaging;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.daemon.JsonParser;
import io.iovirt.testing.Await;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The warm standby pair as packaged ({@code packaging/systemd/iovirt-blk-standby@.target} and its members
 * {@code iovirt-blk-standby-a@.service}, {@code -b@}), run the way systemd runs it. PID 1 on the test machines is not
 * systemd, so this test is the service manager: it reads the unit files of this checkout, expands ExecStart as systemd
 * does (specifiers, {@code EnvironmentFile=}, {@code $VAR} split into words), gives the processes the directories
 * systemd would create (StateDirectory, RuntimeDirectory, the configuration directory: under a temp dir), starts
 * both members as child processes and applies their restart policy itself. It SIGKILLs the serving member: the other
 * must take the socket over and a real vhost-user-blk frontend ({@code iovirt bench blk --socket}) must be served by
 * it; the killed member, restarted as {@code Restart=} says, must become the new standby. Twice, so each member
 * serves and stands by once. Then SIGTERM to both (what {@code systemctl stop} of the target does through the
 * members' {@code PartOf=}): both exit with a status the unit counts as success.
 *
 * <p>The dependency structure is checked too, because a wrong one breaks the pair only under a real systemd: the
 * target must only {@code Wants=} the members (with {@code Requires=}/{@code BindsTo=}, a member's automatic restart
 * restarts the target and through {@code PartOf=} the other member, which has just taken over), the members must not
 * depend on each other, and they must carry the same sandboxing as {@code iovirt-blk@.service}.
 */
@Timeout(900)
class SystemdStandbyPairTest {
    private static final Path UNITS = Path.of("packaging/systemd");
    private static final String INSTANCE = "vm1";
    private static final Duration START = Duration.ofSeconds(240); // a JVM start + warm-up on a loaded 2-core host

    @TempDir
    Path dir;

    /** A unit file: its sections' settings in order, specifiers expanded for one instance. */
    record Unit(String name, Map<String, List<String>> service, Map<String, List<String>> unit) {
        static Unit load(String template, String instance) throws IOException {
            Map<String, Map<String, List<String>>> sections = new LinkedHashMap<>();
            Map<String, List<String>> current = null;
            for (String raw : Files.readAllLines(UNITS.resolve(template))) {
                String line = raw.strip();
                if (line.isEmpty() || line.startsWith("#") || line.startsWith(";")) {
                    continue;
                }
                if (line.startsWith("[")) {
                    current = sections.computeIfAbsent(line, k -> new LinkedHashMap<>());
                    continue;
                }
                assertNotNull(current, template + ": a setting outside a section: " + raw);
                assertFalse(line.endsWith("\\"), template + ": continuation lines are not expected: " + raw);
                int eq = line.indexOf('=');
                assertTrue(eq > 0, template + ": not a setting: " + raw);
                current.computeIfAbsent(line.substring(0, eq).strip(), k -> new ArrayList<>())
                        .add(specifiers(line.substring(eq + 1).strip(), instance, template));
            }
            return new Unit(
                    template.replace("@.", "@" + instance + "."),
                    sections.getOrDefault("[Service]", Map.of()),
                    sections.getOrDefault("[Unit]", Map.of()));
        }

        /** %i and %% (the only specifiers these units use; any other one fails rather than being left unexpanded). */
        private static String specifiers(String value, String instance, String template) {
            StringBuilder b = new StringBuilder();
            for (int i = 0; i < value.length(); i++) {
                char c = value.charAt(i);
                if (c != '%') {
                    b.append(c);
                    continue;
                }
                char s = ++i < value.length() ? value.charAt(i) : ' ';
                switch (s) {
                    case 'i' -> b.append(instance);
                    case '%' -> b.append('%');
                    default -> throw new AssertionError(template + ": specifier %" + s + " is not emulated: " + value);
                }
            }
            return b.toString();
        }

        String one(String key) {
            List<String> v = service.getOrDefault(key, List.of());
            assertEquals(1, v.size(), name + ": expected one " + key + "=, got " + v);
            return v.getFirst();
        }

        /** Space-separated values of a [Unit] dependency setting, all its lines. */
        List<String> deps(String key) {
            return unit.getOrDefault(key, List.of()).stream()
                    .flatMap(v -> List.of(v.split("\\s+")).stream())
                    .toList();
        }
    }

    @Test
    void thePairKeepsTheExportServedAcrossSigkillsOfEitherMember() throws Exception {
        Unit target = Unit.load("iovirt-blk-standby@.target", INSTANCE);
        List<String> wanted = target.deps("Wants");
        assertEquals(
                List.of("iovirt-blk-standby-a@vm1.service", "iovirt-blk-standby-b@vm1.service"),
                wanted,
                "the target wants both members");
        for (String hard : List.of("Requires", "BindsTo", "Requisite", "PartOf", "Upholds")) {
            assertTrue(
                    target.deps(hard).isEmpty(),
                    target.name() + " has " + hard + "=: a member's automatic restart would restart the other member");
        }
        Unit single = Unit.load("iovirt-blk@.service", INSTANCE);
        List<Unit> members = new ArrayList<>();
        for (String m : wanted) {
            Unit u = Unit.load(m.replace("@" + INSTANCE + ".", "@."), INSTANCE);
            members.add(u);
            assertEquals(List.of(target.name()), u.deps("PartOf"), u.name() + ": stop of the target must reach it");
            for (String hard : List.of("Requires", "BindsTo", "Requisite", "Upholds")) {
                assertTrue(u.deps(hard).isEmpty(), u.name() + " must not depend on anything through " + hard + "=");
            }
            assertEquals("always", u.one("Restart"), u.name() + ": whatever ended it, it comes back as the standby");
            assertEquals(
                    "yes",
                    u.one("RuntimeDirectoryPreserve"),
                    u.name() + ": stopping one member must not remove the other's socket directory");
            assertTrue(u.one("ExecStart").contains(" --standby "), u.name() + ": " + u.one("ExecStart"));
            // Same environment, identity and sandboxing as the single-process unit: everything but how it starts
            // and restarts.
            for (var e : single.service().entrySet()) {
                if (!Set.of("ExecStart", "Restart").contains(e.getKey())) {
                    assertEquals(e.getValue(), u.service().get(e.getKey()), u.name() + ": " + e.getKey() + "=");
                }
            }
        }
        assertEquals(members.get(0).service(), members.get(1).service(), "the members run the same service");

        // The directories systemd would give the processes, under the temp dir.
        Path state = Files.createDirectories(dir.resolve("state"));
        Path run = Files.createDirectories(dir.resolve("run"));
        Path etc = Files.createDirectories(dir.resolve("etc"));
        Map<String, Path> dirs = Map.of(
                "/var/lib/" + members.get(0).one("StateDirectory") + "/",
                state,
                "/run/" + members.get(0).one("RuntimeDirectory") + "/",
                run,
                "/etc/iovirt/",
                etc,
                "/etc/default/",
                Files.createDirectories(dir.resolve("etc-default")));
        try (RandomAccessFile f =
                new RandomAccessFile(state.resolve(INSTANCE + ".raw").toFile(), "rw")) {
            f.setLength(64L << 20);
        }
        // The per-export options file both units read: two words in one variable must become two arguments.
        Files.writeString(etc.resolve("blk-" + INSTANCE + ".env"), "# options\nIOVIRT_BLK_ARGS=--queues 2\n");
        Path socket = run.resolve(INSTANCE + ".sock");
        long restartMillis = seconds(members.get(0).one("RestartSec"));
        Set<Integer> success = new HashSet<>(Set.of(0)); // what systemd counts as a clean stop
        for (String s : members.get(0).service().getOrDefault("SuccessExitStatus", List.of())) {
            for (String w : s.split("\\s+")) {
                success.add(Integer.parseInt(w));
            }
        }

        ChildProcess[] proc = new ChildProcess[2];
        int[] generation = {0};
        try {
            for (int i = 0; i < 2; i++) {
                proc[i] = start(members.get(i), dirs, generation[0]++);
            }
            Await.until(START, "one member serving, the other standing by", () -> {
                int serving = serving(proc[0], socket) ? 0 : serving(proc[1], socket) ? 1 : -1;
                return serving >= 0 && standingBy(proc[1 - serving]);
            });
            int serving = serving(proc[0], socket) ? 0 : 1;
            assertFalse(serving(proc[1 - serving], socket), "both members serve");
            Map<?, ?> first = bench(socket, "randwrite");
            assertEquals(proc[serving].pid(), backendPid(first), "served by the member that says it serves");
            assertEquals(2L, ((Number) ((Map<?, ?>) first.get("backend")).get("num_queues")).longValue(), "--queues 2");

            List<String> takeovers = new ArrayList<>();
            for (int round = 0; round < 2; round++) {
                int killed = serving;
                int standby = 1 - serving;
                long t0 = System.nanoTime();
                proc[killed].kill(); // SIGKILL: no cleanup of any kind
                Await.until(
                        START,
                        "member " + standby + " taking the socket over",
                        proc[standby],
                        () -> serving(proc[standby], socket));
                takeovers.add(String.format("%.2f s", (System.nanoTime() - t0) / 1e9));
                Map<?, ?> after = bench(socket, round == 0 ? "randread" : "randwrite");
                assertEquals(proc[standby].pid(), backendPid(after), "served by the member that took over");
                // The restart policy: Restart=always brings the killed member back after RestartSec.
                Thread.sleep(restartMillis);
                proc[killed].close();
                proc[killed] = start(members.get(killed), dirs, generation[0]++);
                ChildProcess back = proc[killed];
                Await.until(START, "the restarted member standing by", back, () -> standingBy(back));
                assertFalse(
                        serving(back, socket), "the restarted member serves while the other one does:\n" + back.log());
                assertEquals(proc[standby].pid(), backendPid(bench(socket, "randread")), "still served by the other");
                assertFalse(serving(back, socket), back.log());
                serving = standby;
            }
            System.out.printf("standby pair: SIGKILL of the serving member to the other serving: %s%n", takeovers);

            // systemctl stop of the target: SIGTERM to both members at once.
            for (ChildProcess p : proc) {
                new ProcessBuilder("kill", "-TERM", Long.toString(p.pid()))
                        .start()
                        .waitFor();
            }
            for (int i = 0; i < 2; i++) {
                assertTrue(proc[i].waitFor(Duration.ofSeconds(60)), proc[i] + " did not stop on SIGTERM");
                assertTrue(
                        success.contains(proc[i].exitValue()),
                        proc[i] + " exited with " + proc[i].exitValue() + ", not a success status " + success + ":\n"
                                + proc[i].logTail(20));
            }
            assertEquals(0, proc[serving].exitValue(), "the serving member syncs and exits 0");
            assertTrue(proc[serving].log().contains("image synced"), proc[serving].log());
            assertEquals(0, proc[1 - serving].exitValue(), "the standby exits 0");
            // systemd signals both members without an order: when the serving one is gone before the standby's
            // SIGTERM arrives, the standby takes the socket over first and then stops like a server (seen under
            // load) — a clean stop either way, which is what the unit pair needs.
            String standbyLog = proc[1 - serving].log();
            assertTrue(
                    standbyLog.contains("while standing by") || standbyLog.contains("image synced"),
                    "the standby stopped neither while waiting nor as a server that synced its image:\n" + standbyLog);
        } finally {
            for (ChildProcess p : proc) {
                if (p != null) {
                    p.close();
                }
            }
        }
    }

    /** Starts a member's ExecStart as systemd would, with the directories mapped into the temp dir. */
    private ChildProcess start(Unit u, Map<String, Path> dirs, int generation) throws IOException {
        return ChildProcess.builder(IovirtCli.command(arguments(u, dirs)))
                .name(u.name() + " #" + generation)
                .log(dir.resolve(u.name() + "-" + generation + ".log"))
                .start();
    }

    /**
     * A unit's ExecStart arguments (after the launcher) as systemd passes them: {@code Environment=} (each setting
     * one word, or a double-quoted one), then every {@code EnvironmentFile=} in order (whose settings override), then
     * the expansion; paths under the directories systemd gives the service mapped into the temp dirs of {@code dirs}.
     */
    static List<String> arguments(Unit u, Map<String, Path> dirs) throws IOException {
        Map<String, String> env = new LinkedHashMap<>();
        for (String e : u.service().getOrDefault("Environment", List.of())) {
            Matcher m = Pattern.compile("\"([^\"]*)\"|(\\S+)").matcher(e);
            while (m.find()) {
                String setting = m.group(1) != null ? m.group(1) : m.group(2);
                int eq = setting.indexOf('=');
                assertTrue(eq > 0, u.name() + ": Environment=" + e + " is not KEY=VALUE");
                env.put(setting.substring(0, eq), setting.substring(eq + 1));
            }
        }
        for (String file : u.service().getOrDefault("EnvironmentFile", List.of())) {
            boolean optional = file.startsWith("-");
            Path p = Path.of(mapped(optional ? file.substring(1) : file, dirs));
            if (!Files.exists(p)) {
                assertTrue(optional, u.name() + ": EnvironmentFile " + p + " is missing");
                continue;
            }
            for (String line : Files.readAllLines(p)) {
                String l = line.strip();
                if (l.isEmpty() || l.startsWith("#") || l.startsWith(";")) {
                    continue;
                }
                int eq = l.indexOf('=');
                String v = l.substring(eq + 1).strip();
                if (v.length() >= 2
                        && (v.startsWith("\"") && v.endsWith("\"") || v.startsWith("'") && v.endsWith("'"))) {
                    v = v.substring(1, v.length() - 1);
                }
                env.put(l.substring(0, eq).strip(), v);
            }
        }
        List<String> argv = execStart(u.one("ExecStart"), env);
        assertEquals("/usr/bin/iovirt", argv.getFirst(), u.name() + ": ExecStart runs the packaged launcher");
        List<String> args = new ArrayList<>();
        for (String a : argv.subList(1, argv.size())) {
            String m = mapped(a, dirs);
            assertFalse(
                    m.startsWith("/var/") || m.startsWith("/run/") || m.startsWith("/etc/"),
                    u.name() + ": " + a + " is outside the directories systemd gives the service");
            args.add(m);
        }
        return args;
    }

    /**
     * systemd's ExecStart word splitting: a word that is exactly {@code $VAR} becomes the variable's words (none if
     * unset), {@code ${VAR}} inside a word its value as is.
     */
    static List<String> execStart(String line, Map<String, String> env) {
        String cmd = line.replaceFirst("^[-@:+!]+", "");
        List<String> out = new ArrayList<>();
        for (String w : cmd.trim().split("\\s+")) {
            assertFalse(w.contains("\"") || w.contains("'"), "quoting is not emulated: " + line);
            Matcher whole = Pattern.compile("\\$([A-Za-z_][A-Za-z0-9_]*)").matcher(w);
            if (whole.matches()) {
                String v = env.getOrDefault(whole.group(1), "").strip();
                if (!v.isEmpty()) {
                    out.addAll(List.of(v.split("\\s+")));
                }
                continue;
            }
            Matcher inner = Pattern.compile("\\$\\{([A-Za-z_][A-Za-z0-9_]*)}").matcher(w);
            out.add(inner.replaceAll(r -> Matcher.quoteReplacement(env.getOrDefault(r.group(1), ""))));
        }
        return out;
    }

    static String mapped(String arg, Map<String, Path> dirs) {
        for (var e : dirs.entrySet()) {
            if (arg.startsWith(e.getKey())) {
                return e.getValue().resolve(arg.substring(e.getKey().length())).toString();
            }
        }
        return arg;
    }

    private static long seconds(String timespan) {
        Matcher m = Pattern.compile("(\\d+)(ms|s)?").matcher(timespan);
        assertTrue(m.matches(), "timespan " + timespan + " is not emulated");
        long n = Long.parseLong(m.group(1));
        return "ms".equals(m.group(2)) ? n : n * 1000;
    }

    private static boolean serving(ChildProcess p, Path socket) {
        return Pattern.compile("serving .* on " + Pattern.quote(socket.toString()))
                .matcher(p.log())
                .find();
    }

    private static boolean standingBy(ChildProcess p) {
        return p.log().contains("waiting for the process that serves it to exit");
    }

    /** {@code iovirt bench blk --socket}: a vhost-user-blk frontend in its own process; its JSON result. */
    private Map<?, ?> bench(Path socket, String rw) throws Exception {
        try (ChildProcess b = ChildProcess.builder(IovirtCli.command(
                        "bench",
                        "blk",
                        "--socket",
                        socket.toString(),
                        "--rw",
                        rw,
                        "--qd",
                        "8",
                        "--seconds",
                        "1",
                        "--warmup",
                        "0",
                        "--json"))
                .name("iovirt bench blk")
                .log(dir.resolve("bench-" + System.nanoTime() + ".log"))
                .start()) {
            assertTrue(b.waitFor(START), "bench blk did not finish: " + b.logTail(20));
            assertEquals(0, b.exitValue(), b.log());
            String out = b.log();
            Matcher start = Pattern.compile("(?m)^\\{").matcher(out);
            assertTrue(start.find(), "no JSON result: " + out);
            String json = out.substring(start.start()).strip();
            Map<?, ?> r = (Map<?, ?>) JsonParser.parse(json);
            assertTrue(((Number) r.get("ios")).longValue() > 0, json);
            assertEquals(0L, ((Number) r.get("errors")).longValue(), json);
            return r;
        }
    }

    private static long backendPid(Map<?, ?> result) {
        return ((Number) ((Map<?, ?>) result.get("backend")).get("pid")).longValue();
    }
}
