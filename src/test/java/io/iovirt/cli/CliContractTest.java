// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import picocli.CommandLine;
import picocli.CommandLine.Model.ArgSpec;
import picocli.CommandLine.Model.CommandSpec;

/** docs/cli.md, checked over every command picocli knows: a new command is covered as soon as it is registered. */
class CliContractTest {
    /** Every command's words ("host bind"), root first. */
    static List<String> allCommands() {
        List<String> out = new ArrayList<>();
        walk(Main.commandLine(), out);
        return out;
    }

    private static void walk(CommandLine cl, List<String> out) {
        out.add(Contract.commandPath(cl));
        for (CommandLine sub : cl.getSubcommands().values()) {
            if (sub.getParent() == cl) { // aliases appear twice
                walk(sub, out);
            }
        }
    }

    static CommandSpec spec(String path) {
        CommandLine cl = Main.commandLine();
        for (String w : words(path)) {
            cl = cl.getSubcommands().get(w);
        }
        return cl.getCommandSpec();
    }

    static List<String> words(String path) {
        return path.isEmpty() ? List.of() : List.of(path.split(" "));
    }

    static List<String> args(String path, String... more) {
        List<String> a = new ArrayList<>(words(path));
        a.addAll(List.of(more));
        return a;
    }

    @TestFactory
    Stream<DynamicTest> helpIsCompleteAndFitsIn100Columns() {
        return allCommands().stream()
                .map(path -> DynamicTest.dynamicTest("iovirt " + path + " --help", () -> {
                    CliRun r = CliRun.run(args(path, "--help"));
                    assertEquals(0, r.exit(), r.err());
                    for (String line : r.out().lines().toList()) {
                        assertTrue(line.length() <= Contract.HELP_WIDTH, "wider than 100 columns: " + line);
                    }
                    CommandSpec spec = spec(path);
                    String[] desc = spec.usageMessage().description();
                    assertTrue(desc.length > 0 && !desc[0].isBlank(), "no description");
                    assertTrue(desc[0].strip().endsWith("."), "the summary (first line) is not a sentence: " + desc[0]);
                    for (ArgSpec a : spec.args()) {
                        assertTrue(
                                a.description().length > 0
                                        && !String.join("", a.description()).isBlank(),
                                "undescribed parameter "
                                        + (a.isOption()
                                                ? ((CommandLine.Model.OptionSpec) a).longestName()
                                                : a.paramLabel()));
                    }
                    if (spec.subcommands().isEmpty()) {
                        assertTrue(
                                String.join("\n", spec.usageMessage().footer()).contains("iovirt "),
                                "no example in the footer");
                    }
                }));
    }

    /**
     * Every example in a help footer parses as it is printed (a line ending in a backslash continues on the next):
     * a renamed option, a missing required parameter or a help line wrapped mid-example fails here, not for the user
     * who pastes it. Parsing only, nothing runs.
     */
    @TestFactory
    Stream<DynamicTest> everyHelpExampleParses() {
        return allCommands().stream()
                .flatMap(path -> examples(spec(path)).stream())
                .map(example -> DynamicTest.dynamicTest(example, () -> {
                    List<String> words = shellWords(example);
                    assertEquals("iovirt", words.getFirst(), example);
                    try {
                        Main.commandLine()
                                .parseArgs(words.subList(1, words.size()).toArray(String[]::new));
                    } catch (CommandLine.ParameterException e) {
                        throw new AssertionError(
                                "the help example '" + example + "' does not parse: " + e.getMessage());
                    }
                }));
    }

    /** The "  iovirt ..." lines of a command's footer, continuation lines joined. */
    static List<String> examples(CommandSpec spec) {
        List<String> out = new ArrayList<>();
        StringBuilder pending = null;
        for (String line : String.join("\n", spec.usageMessage().footer()).split("\n|%n")) {
            if (pending == null && !line.startsWith("  iovirt ")) {
                continue;
            }
            String text = line.strip();
            boolean continues = text.endsWith("\\");
            if (continues) {
                text = text.substring(0, text.length() - 1);
            }
            pending = pending == null
                    ? new StringBuilder(text)
                    : pending.append(' ').append(text);
            if (!continues) {
                out.add(pending.toString());
                pending = null;
            }
        }
        return out;
    }

    /** Splits a command line as a POSIX shell would for the quoting the examples use ('...' and "..."). */
    static List<String> shellWords(String line) {
        List<String> words = new ArrayList<>();
        StringBuilder w = null;
        char quote = 0;
        for (char c : line.toCharArray()) {
            if (quote != 0) {
                if (c == quote) {
                    quote = 0;
                } else {
                    w.append(c);
                }
            } else if (c == '\'' || c == '"') {
                quote = c;
                w = w == null ? new StringBuilder() : w;
            } else if (c == ' ') {
                if (w != null) {
                    words.add(w.toString());
                    w = null;
                }
            } else {
                w = w == null ? new StringBuilder() : w;
                w.append(c);
            }
        }
        if (w != null) {
            words.add(w.toString());
        }
        return words;
    }

    @TestFactory
    Stream<DynamicTest> usageErrorsAreOneLineExit2AndPointAtHelp() {
        return allCommands().stream()
                .map(path -> DynamicTest.dynamicTest("iovirt " + path + " --no-such-option", () -> {
                    CliRun r = CliRun.run(args(path, "--no-such-option"));
                    String name = ("iovirt " + path).strip();
                    assertEquals(2, r.exit(), r.err());
                    assertEquals(1, r.err().strip().lines().count(), r.err());
                    assertTrue(r.err().startsWith(name + ": "), r.err());
                    assertTrue(r.err().strip().endsWith("— see '" + name + " --help'"), r.err());
                    assertTrue(r.out().isEmpty(), r.out());
                }));
    }

    /**
     * Commands without --json, and why: the rest of the leaves are read commands or commands whose result a script
     * wants, and have it (checked below).
     */
    static final java.util.Map<String, String> NO_JSON = java.util.Map.of(
            "help", "prints help text",
            "daemon", "long-running; its state is read with iovirt ctl --json",
            "serve blk", "long-running; --log-format json makes every log and statistics line JSON",
            "serve net", "long-running; --log-format json makes every log and statistics line JSON",
            "serve nbd", "long-running; --log-format json makes every log and statistics line JSON",
            "vm run", "runs a VM in the foreground; its console is the output");

    @TestFactory
    Stream<DynamicTest> everyCommandHasJsonOrAReasonNotTo() {
        return allCommands().stream()
                .filter(p -> spec(p).subcommands().isEmpty())
                .map(path -> DynamicTest.dynamicTest("iovirt " + path, () -> {
                    CommandSpec spec = spec(path);
                    assertTrue(
                            spec.findOption("--json") != null ^ NO_JSON.containsKey(path),
                            NO_JSON.containsKey(path)
                                    ? "has --json now: drop it from NO_JSON"
                                    : "a read command without --json (or add it to NO_JSON with the reason)");
                    if (path.startsWith("serve ")) {
                        for (String o : List.of("--log-level", "--log-format", "--stats-interval")) {
                            assertTrue(
                                    spec.findOption(o) != null,
                                    "a server without " + o + " (LogOptions, StatsOptions)");
                        }
                    }
                    if (path.startsWith("serve ") || path.equals("daemon") || path.equals("vm run")) {
                        for (String o : List.of("--log-level", "--log-format")) {
                            assertTrue(
                                    spec.findOption(o) != null,
                                    "a long-running command without " + o + " (LogOptions)");
                        }
                    }
                }));
    }

    @TestFactory
    Stream<DynamicTest> withJsonUsageErrorsAreJsonToo() {
        return allCommands().stream()
                .filter(p -> spec(p).findOption("--json") != null)
                .map(path -> DynamicTest.dynamicTest("iovirt " + path + " --json --no-such-option", () -> {
                    CliRun r = CliRun.run(args(path, "--json", "--no-such-option"));
                    assertEquals(2, r.exit(), r.err());
                    java.util.Map<?, ?> e = jsonError(r.out());
                    assertEquals(List.of(path, 2L), List.of(e.get("command"), e.get("exit")), r.out());
                    // picocli names the first problem: the unknown option, or a missing required one
                    assertTrue(((String) e.get("message")).endsWith("— see 'iovirt " + path + " --help'"), r.out());
                }));
    }

    /** Every vfio command on an address with no device: exit 1, and with --json a JSON error naming the device. */
    @TestFactory
    Stream<DynamicTest> withJsonOperationFailuresAreJsonToo() {
        return allCommands().stream()
                .filter(p -> p.startsWith("vfio ") && spec(p).findOption("--json") != null)
                .map(path -> DynamicTest.dynamicTest("iovirt " + path + " --json on an absent device", () -> {
                    List<String> a = new ArrayList<>(List.of("vfio"));
                    if (path.startsWith("vfio nvme ")) {
                        a.addAll(List.of("nvme", "7f:1f.7", path.substring("vfio nvme ".length())));
                    } else {
                        a.addAll(List.of(path.substring("vfio ".length()), "7f:1f.7"));
                    }
                    if (path.endsWith(" read") || path.endsWith(" write")) {
                        a.addAll(List.of("--lba", "0"));
                    }
                    if (path.endsWith(" write")) {
                        a.addAll(List.of("--pattern", "x"));
                    }
                    a.add("--json");
                    CliRun r = CliRun.run(a);
                    assertEquals(1, r.exit(), r.err());
                    java.util.Map<?, ?> e = jsonError(r.out());
                    assertEquals(List.of(path, 1L), List.of(e.get("command"), e.get("exit")), r.out());
                    assertTrue(((String) e.get("message")).startsWith("no PCI device 0000:7f:1f.7"), r.out());
                    assertTrue(r.err().startsWith("iovirt " + path + ": no PCI device 0000:7f:1f.7"), r.err());
                }));
    }

    /** stdout is exactly one JSON document {"error": {...}}, parsed by an independent strict parser. */
    static java.util.Map<?, ?> jsonError(String out) {
        Object doc = io.iovirt.bench.StrictJson.parse(out);
        assertTrue(doc instanceof java.util.Map<?, ?> m && m.keySet().equals(java.util.Set.of("error")), out);
        return (java.util.Map<?, ?>) ((java.util.Map<?, ?>) doc).get("error");
    }

    @TestFactory
    Stream<DynamicTest> commandGroupsWithoutASubcommandAreUsageErrors() {
        return allCommands().stream()
                .filter(p -> !spec(p).subcommands().isEmpty())
                .map(path -> DynamicTest.dynamicTest("iovirt " + path, () -> {
                    CliRun r = CliRun.run(args(path));
                    assertEquals(2, r.exit(), r.err());
                    assertTrue(r.err().contains("a subcommand is required: "), r.err());
                    assertEquals(1, r.err().strip().lines().count(), r.err());
                }));
    }

    @Test
    void operationFailuresExit1WithTheErrorFormat() {
        CliRun r = CliRun.run(List.of("host", "devices", "--sysfs-root", "/nonexistent-sysfs"));
        assertEquals(1, r.exit(), r.err());
        assertTrue(r.err().matches("iovirt host devices: [^\n]+: [^\n]+ — [^\n]+\n"), r.err());
        CliRun j = CliRun.run(List.of("host", "devices", "--json", "--sysfs-root", "/nonexistent-sysfs"));
        assertEquals(1, j.exit());
        assertTrue(j.out().contains("\"exit\": 1") && j.out().contains("\"remedy\": \"mount sysfs"), j.out());
    }

    @Test
    void helpTakesACommandPathOfAnyDepth() {
        CliRun r = CliRun.run(List.of("help", "host", "check"));
        assertEquals(0, r.exit(), r.err());
        assertTrue(r.out().startsWith("Usage: iovirt host check"), r.out());
        CliRun deep = CliRun.run(List.of("help", "vfio", "nvme", "identify"));
        assertTrue(deep.out().startsWith("Usage: iovirt vfio nvme identify"), deep.out());
        CliRun bad = CliRun.run(List.of("help", "host", "nope"));
        assertEquals(2, bad.exit());
        CliRun identify = CliRun.run(List.of("vfio", "nvme", "identify", "--help"));
        assertEquals(0, identify.exit(), identify.err());
    }

    @Test
    void theUsageErrorsTheIssueListedAreAllExit2() {
        for (List<String> a : List.of(
                List.of("serve", "blk", "--queues", "0", "--image", "x", "--socket", "y"),
                List.of("bench", "blk", "--bs", "1000", "--socket", "y"),
                List.of("serve", "net", "--port", "vhost-user:/tmp/x,mac=zz"),
                List.of("serve", "net", "--port", "vhost-user:/tmp/x,mac=01:00:00:00:00:01"),
                List.of("host", "devices", "0000:zz:00.0"))) {
            CliRun r = CliRun.run(a);
            assertEquals(2, r.exit(), a + ": " + r.err());
            assertEquals(1, r.err().strip().lines().count(), r.err());
        }
    }
}
