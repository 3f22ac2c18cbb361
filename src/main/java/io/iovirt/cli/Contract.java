// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.util.ActionableException;
import io.iovirt.util.Json;
import java.io.PrintWriter;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import picocli.CommandLine;
import picocli.CommandLine.Model.CommandSpec;

/**
 * The CLI contract of docs/cli.md, in one place, for every command (new ones included: {@code serve nbd},
 * {@code daemon}, {@code ctl}):
 * <ul>
 *   <li>exit {@link #OK} on success, {@link #FAILED} when the operation failed, {@link #USAGE} for a usage error,
 *       {@link #CHECK_FAILED} when a check command ran and found a problem;</li>
 *   <li>a usage error is one line ending in "see 'iovirt CMD --help'" — throw {@link #usage} from a command;</li>
 *   <li>an error is one line {@code iovirt <command>: <what failed>: <why> — <what to do>} — throw an
 *       {@link ActionableException} (problem, remedy);</li>
 *   <li>with {@code --json} anywhere on the command line, errors are one JSON document on stdout as well
 *       ({@link #jsonError}).</li>
 * </ul>
 */
public final class Contract {
    public static final int OK = 0;
    public static final int FAILED = 1;
    public static final int USAGE = 2;
    /** A check command (host check, vfio nvme iommu-check) ran and found what it checks for missing. */
    public static final int CHECK_FAILED = 3;
    /** Help text width (columns) of every command. */
    public static final int HELP_WIDTH = 100;

    private Contract() {}

    /** A usage error of {@code spec}'s command: exit 2, one line, and a pointer to its --help. */
    public static CommandLine.ParameterException usage(CommandSpec spec, String message) {
        return new CommandLine.ParameterException(spec.commandLine(), message);
    }

    /** For command groups run without a subcommand: a usage error that names the subcommands. */
    public static CommandLine.ParameterException subcommandRequired(CommandSpec spec) {
        List<String> names = spec.subcommands().keySet().stream()
                .filter(n -> !n.equals("help"))
                .toList();
        return usage(spec, "a subcommand is required: " + String.join(", ", names));
    }

    /** "host bind" for the command of {@code cl} ("" for the root). */
    public static String commandPath(CommandLine cl) {
        String full = cl.getCommandSpec().qualifiedName(" ");
        return full.equals("iovirt") ? "" : full.startsWith("iovirt ") ? full.substring(7) : full;
    }

    /** "iovirt host bind: " — the prefix of every error line. */
    public static String prefix(CommandLine cl) {
        String path = commandPath(cl);
        return "iovirt" + (path.isEmpty() ? "" : " " + path) + ": ";
    }

    /** Whether the command line asked for JSON output. */
    static boolean wantsJson(String[] args) {
        if (args != null) {
            for (String a : args) {
                if (a.equals("--json")) {
                    return true;
                }
                if (a.equals("--")) {
                    break;
                }
            }
        }
        return false;
    }

    /** The error as one line: newlines in messages become "; ". */
    static String oneLine(String s) {
        return s.strip().replaceAll("\\s*\\R\\s*", "; ");
    }

    /**
     * The JSON form of an error: {@code {"error": {"command", "exit", "message", "problem"?, "remedy"?}}}, the
     * schema docs/cli.md documents.
     */
    static void jsonError(PrintWriter out, CommandLine cl, int exit, String message, Throwable cause) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("command", commandPath(cl));
        e.put("exit", exit);
        e.put("message", message);
        if (cause instanceof ActionableException a) {
            e.put("problem", a.problem());
            e.put("remedy", a.remedy());
        }
        out.println(Json.write(Map.of("error", e)));
        out.flush();
    }
}
