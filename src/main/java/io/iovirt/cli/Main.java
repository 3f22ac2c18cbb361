package io.iovirt.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** Entry point of the {@code iovirt} command: one line of reason and a non-zero exit on errors. */
@Command(name = "iovirt", mixinStandardHelpOptions = true, version = "iovirt 0.1.0",
        description = "I/O virtualization for KVM/QEMU guests.",
        subcommands = {
                CommandLine.HelpCommand.class,
                DemoCommand.class,
                DaemonCommand.class,
                CtlCommand.class,
                ServeCommand.class,
                io.iovirt.bench.BenchCommand.class,
                io.iovirt.host.HostCommand.class,
                VfioCommand.class,
                VmCommand.class,
        })
public final class Main implements Runnable {

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        spec.commandLine().usage(System.out);
    }

    public static void main(String[] args) {
        // One line per record: time, level, message (java.util.logging's default spreads each over two lines).
        if (System.getProperty("java.util.logging.SimpleFormatter.format") == null) {
            System.setProperty("java.util.logging.SimpleFormatter.format", "%1$tT.%1$tL %4$s %5$s%6$s%n");
        }
        System.exit(commandLine().execute(args));
    }

    /** The configured command line; tests use it to run commands in-process. */
    public static CommandLine commandLine() {
        CommandLine cl = new CommandLine(new Main());
        cl.setExecutionExceptionHandler(new ErrorHandler());
        return cl;
    }
}
