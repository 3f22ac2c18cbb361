// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * docs/api.md against the daemon's own registries, so the reference cannot drift from the code: the methods
 * ({@link Daemon#METHODS}) are its "### " sections, each add method's parameters ({@link Daemon#BLK_PARAMS} and its
 * siblings) are named in its section, and the metrics table lists exactly the families {@link Metrics#render}
 * writes, with their types.
 */
class ApiDocTest {
    private static final Path DOC = Path.of("docs/api.md");

    private static String doc() throws IOException {
        return Files.readString(DOC);
    }

    /** The text of each "### name" section under "## Methods", by name, in the document's order. */
    private static Map<String, String> methodSections() throws IOException {
        String text = doc();
        int start = text.indexOf("\n## Methods\n");
        assertTrue(start >= 0, DOC + " has no '## Methods' section");
        int end = text.indexOf("\n## ", start + 1);
        String methods = text.substring(start, end < 0 ? text.length() : end);
        Map<String, String> sections = new LinkedHashMap<>();
        String[] parts = methods.split("\n### ");
        for (int i = 1; i < parts.length; i++) {
            int nl = parts[i].indexOf('\n');
            sections.put(parts[i].substring(0, nl).strip(), parts[i].substring(nl + 1));
        }
        return sections;
    }

    @Test
    void everyMethodHasItsSectionAndNoOther() throws IOException {
        assertEquals(
                Daemon.METHODS,
                List.copyOf(methodSections().keySet()),
                DOC + ": one '### METHOD' section per method of Daemon.METHODS, in that order");
    }

    @Test
    void everyParameterOfTheAddMethodsIsNamedInItsSection() throws IOException {
        Map<String, String> sections = methodSections();
        Map<String, String[]> params = Map.of(
                "blk.add", Daemon.BLK_PARAMS,
                "nbd.add", Daemon.NBD_PARAMS,
                "net.add", Daemon.NET_PARAMS,
                "net.port.add", Daemon.PORT_PARAMS);
        for (Map.Entry<String, String[]> e : params.entrySet()) {
            String section = sections.get(e.getKey());
            for (String p : e.getValue()) {
                assertTrue(
                        section.contains("`" + p + "`"),
                        DOC + ", " + e.getKey() + ": parameter '" + p + "' is not described");
            }
        }
    }

    /** Each metric family of the table (backticked names in the first column) with the type of its row. */
    private static Map<String, String> documentedMetrics() throws IOException {
        String text = doc();
        int start = text.indexOf("| metric | type | labels |");
        assertTrue(start >= 0, DOC + " has no metrics table");
        Map<String, String> m = new LinkedHashMap<>();
        Pattern name = Pattern.compile("`([a-z_]+)`");
        for (String row : text.substring(start).split("\n")) {
            if (!row.startsWith("|")) {
                break;
            }
            String[] cells = row.split("\\|");
            Matcher n = name.matcher(cells[1]);
            while (n.find()) {
                m.put(n.group(1), cells[2].strip().split("[ (]")[0]);
            }
        }
        return m;
    }

    @Test
    void theMetricsTableListsExactlyWhatIsServed() throws IOException {
        Map<String, String> served = new LinkedHashMap<>();
        String text;
        try (Daemon d = new Daemon(null);
                Metrics m = Metrics.start("127.0.0.1:0", d)) {
            text = Metrics.render(d, m); // with the listener's own families
        }
        for (String line : text.split("\n")) {
            if (line.startsWith("# TYPE ")) {
                String[] f = line.split(" ");
                served.put(f[2], f[3]);
            }
        }
        assertTrue(served.size() > 30, "families written with no device: " + served.keySet());
        Map<String, String> documented = documentedMetrics();
        List<String> problems = new ArrayList<>();
        for (Map.Entry<String, String> e : served.entrySet()) {
            String t = documented.get(e.getKey());
            if (t == null) {
                problems.add(e.getKey() + " (" + e.getValue() + ") is served but not in the table");
            } else if (!t.equals(e.getValue())) {
                problems.add(e.getKey() + " is a " + e.getValue() + ", the table says " + t);
            }
        }
        for (String name : documented.keySet()) {
            if (!served.containsKey(name)) {
                problems.add(name + " is in the table but not served");
            }
        }
        assertTrue(problems.isEmpty(), DOC + ": " + String.join("; ", problems));
    }
}
