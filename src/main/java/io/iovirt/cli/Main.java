// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** Entry point of the {@code iovirt} command: one line of reason and a non-zero exit on errors. */
@Command(name = "iovirt", mixinStandardHelpOptions = true, versionProvider = VersionProvider.class,
        description = "I/O virtualization for KVM/QEMU guests.",
        subcommands = {
                HelpCommand.class,
                DemoCommand.class,
                DaemonCommand.class,
                CtlCommand.class,
                ServeCommand.class,
                io.iovirt.cli.BenchCommand.class,
                io.iovirt.cli.HostCommand.class,
                VfioCommand.class,
                VmCommand.class,
        })
public final class Main implements Runnable {

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    /** Declared once here and inherited by every subcommand; read with {@link #verbose}. */
    @CommandLine.Option(names = {"-v", "--verbose"}, scope = CommandLine.ScopeType.INHERIT,
            description = "Print stack traces with errors, and each step a host command takes (sysfs writes).")
    boolean verbose;

    @Override
    public void run() {
        throw Contract.subcommandRequired(spec);
    }

    /** Whether --verbose was given anywhere on the command line (or IOVIRT_VERBOSE=1 is set). */
    static boolean verbose(CommandLine.Model.CommandSpec spec) {
        return verbose(spec.root().commandLine().getParseResult());
    }

    static boolean verbose(CommandLine.ParseResult parsed) {
        if ("1".equals(System.getenv("IOVIRT_VERBOSE"))) {
            return true;
        }
        for (CommandLine.ParseResult p = parsed; p != null; p = p.subcommand()) {
            if (p.hasMatchedOption("--verbose")) {
                return true;
            }
        }
        return false;
    }

    public static void main(String[] args) {
        // One line per record: time, level, message (java.util.logging's default spreads each over two lines).
        if (System.getProperty("java.util.logging.SimpleFormatter.format") == null) {
            System.setProperty("java.util.logging.SimpleFormatter.format", "%1$tT.%1$tL %4$s %5$s%6$s%n");
        }
        CommandLine cl = commandLine();
        // UTF-8 whatever the locale: messages use "—" and names from sysfs; a C locale would print '?' for them.
        cl.setOut(new java.io.PrintWriter(new java.io.OutputStreamWriter(System.out, java.nio.charset.StandardCharsets.UTF_8), true));
        cl.setErr(new java.io.PrintWriter(new java.io.OutputStreamWriter(System.err, java.nio.charset.StandardCharsets.UTF_8), true));
        System.exit(cl.execute(args));
    }

    /** The configured command line; tests use it to run commands in-process. */
    public static CommandLine commandLine() {
        CommandLine cl = new CommandLine(new Main());
        cl.setExecutionExceptionHandler(new ErrorHandler());
        cl.setParameterExceptionHandler(new UsageErrorHandler());
        cl.setUsageHelpAutoWidth(false);
        cl.setUsageHelpWidth(Contract.HELP_WIDTH);
        return cl;
    }
}
