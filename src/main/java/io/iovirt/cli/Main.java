// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** Entry point of the {@code iovirt} command: one line of reason and a non-zero exit on errors. */
@Command(
        name = "iovirt",
        mixinStandardHelpOptions = true,
        versionProvider = VersionProvider.class,
        description = "I/O virtualization for KVM/QEMU guests.")
public final class Main implements Runnable {
    /**
     * The subcommands, in help order, with their names (each class's {@code @Command} name; MainTest checks they
     * agree). Registered by {@link #commandLine(String...)} rather than through the annotation so that a backend
     * start builds only the command it runs: picocli builds a command's model by reflection, and the whole tree cost
     * more CPU than the rest of a backend's start-up (docs/benchmarks.md, "Footprint").
     */
    static final String[] NAMES = {"help", "demo", "daemon", "ctl", "serve", "bench", "host", "vfio", "vm"};

    static final Class<?>[] COMMANDS = {
        HelpCommand.class,
        DemoCommand.class,
        DaemonCommand.class,
        CtlCommand.class,
        ServeCommand.class,
        BenchCommand.class,
        HostCommand.class,
        VfioCommand.class,
        VmCommand.class
    };
    /** Commands a per-VM backend is started with: for these, only that command's tree is built. */
    private static final java.util.Set<String> BACKEND_COMMANDS = java.util.Set.of("serve", "vm");

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    /** Declared once here and inherited by every subcommand; read with {@link #verbose}. */
    @CommandLine.Option(
            names = {"-v", "--verbose"},
            scope = CommandLine.ScopeType.INHERIT,
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
        // picocli registers converters for java.sql and java.time types by loading and initializing ~90 JDK classes
        // (java.time.format's among them); no iovirt option has such a type, and each class costs a backend ~8 KiB
        // resident in its AOT cache (docs/benchmarks.md, "Footprint").
        if (System.getProperty("picocli.converters.excludes") == null) {
            System.setProperty("picocli.converters.excludes", "java\\.sql\\..*,java\\.time\\..*");
        }
        CommandLine cl = commandLine(args);
        // UTF-8 whatever the locale: messages use "—" and names from sysfs; a C locale would print '?' for them.
        cl.setOut(new java.io.PrintWriter(
                new java.io.OutputStreamWriter(System.out, java.nio.charset.StandardCharsets.UTF_8), true));
        cl.setErr(new java.io.PrintWriter(
                new java.io.OutputStreamWriter(System.err, java.nio.charset.StandardCharsets.UTF_8), true));
        System.exit(cl.execute(args));
    }

    /** The configured command line with every command; tests use it to run commands in-process. */
    public static CommandLine commandLine() {
        return commandLine(new String[0]);
    }

    /**
     * The command line for running {@code args}: with every command, except when the first word is a backend command
     * ({@code serve}, {@code vm}) that is not asking for help — then only that command's tree (help, errors and
     * completion of that command are the same either way; other top-level names are not needed to run it).
     */
    static CommandLine commandLine(String... args) {
        CommandLine cl = new CommandLine(new Main());
        boolean backendOnly = args.length > 1 && BACKEND_COMMANDS.contains(args[0]);
        for (int i = 0; i < NAMES.length; i++) {
            if (!backendOnly || NAMES[i].equals(args[0])) {
                cl.addSubcommand(NAMES[i], COMMANDS[i]);
            }
        }
        cl.setExecutionExceptionHandler(new ErrorHandler());
        cl.setParameterExceptionHandler(new UsageErrorHandler());
        cl.setUsageHelpAutoWidth(false);
        cl.setUsageHelpWidth(Contract.HELP_WIDTH);
        return cl;
    }
}
