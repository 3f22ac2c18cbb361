package io.iovirt.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** {@code iovirt serve ...}: backends that run in the foreground until SIGINT/SIGTERM. */
@Command(name = "serve", mixinStandardHelpOptions = true,
        description = "Run a backend in the foreground until SIGINT or SIGTERM.",
        subcommands = {ServeNetCommand.class})
public final class ServeCommand implements Runnable {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        throw new CommandLine.ParameterException(spec.commandLine(), "name what to serve, e.g. 'serve net'");
    }
}
