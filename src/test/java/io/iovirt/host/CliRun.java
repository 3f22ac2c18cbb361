// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import io.iovirt.cli.Main;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.ArrayList;
import java.util.List;
import picocli.CommandLine;

/** Runs the real CLI in-process and captures exit code, stdout and stderr. */
public record CliRun(int exit, String out, String err) {
    public static CliRun run(List<String> args) {
        CommandLine cl = Main.commandLine();
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        cl.setOut(new PrintWriter(out));
        cl.setErr(new PrintWriter(err));
        int exit = cl.execute(args.toArray(String[]::new));
        return new CliRun(exit, out.toString(), err.toString());
    }

    public static CliRun host(FakeHost h, String... args) {
        List<String> all = new ArrayList<>(List.of("host"));
        all.addAll(List.of(args));
        all.addAll(h.cliRoots());
        return run(all);
    }

    /** No Java stack trace reached the user. */
    public boolean noStackTrace() {
        return !err.contains("\tat ") && !err.contains("Exception") && !out.contains("\tat ");
    }
}
