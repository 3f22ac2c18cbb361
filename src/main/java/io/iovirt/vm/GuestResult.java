// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.time.Duration;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * How a guest run ended.
 *
 * @param exitCode exit status of the payload in the last boot (/run.sh; 125 = a module failed to load)
 * @param console  the whole serial console, carriage returns removed
 * @param boots    how many times /init started (more than one when the guest rebooted)
 * @param elapsed  from QEMU's start to its exit
 */
public record GuestResult(int exitCode, String console, int boots, Duration elapsed) {

    static final Pattern INIT = Pattern.compile("iovirt-guest: init ");
    static final Pattern START = Pattern.compile("iovirt-guest: payload start ");
    static final Pattern EXIT = Pattern.compile("iovirt-guest: payload exit (\\d+)");

    /** The payload's output in the last boot: the console between the start and exit markers. */
    public String output() {
        int from = lastEnd(START, console);
        Matcher m = EXIT.matcher(console);
        int to = console.length();
        while (m.find()) {
            to = m.start();
        }
        if (from < 0 || from > to) {
            return "";
        }
        int nl = console.indexOf('\n', from);
        return console.substring(nl < 0 || nl > to ? from : nl + 1, to);
    }

    /** Lines of {@link #output()}. */
    public List<String> outputLines() {
        return output().lines().toList();
    }

    /**
     * The value of the last line {@code key=value} the payload printed. Throws (with the output) if there is none,
     * so a test fails with the guest's own words.
     */
    public String field(String key) {
        String prefix = key + "=";
        List<String> lines = outputLines();
        for (int i = lines.size() - 1; i >= 0; i--) {
            String line = lines.get(i).strip();
            if (line.startsWith(prefix)) {
                return line.substring(prefix.length());
            }
        }
        throw new GuestException("the payload printed no '" + prefix + "' line; its output was:\n" + output());
    }

    /** The last console lines, for assertion messages. */
    public String consoleTail(int lines) {
        return ChildProcess.tail(console, lines);
    }

    static int countBoots(String console) {
        Matcher m = INIT.matcher(console);
        int n = 0;
        while (m.find()) {
            n++;
        }
        return n;
    }

    private static int lastEnd(Pattern p, String s) {
        Matcher m = p.matcher(s);
        int end = -1;
        while (m.find()) {
            end = m.end();
        }
        return end;
    }
}
