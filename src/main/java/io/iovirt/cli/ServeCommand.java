// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import picocli.CommandLine.Command;

/** {@code iovirt serve ...}: long-running backends that QEMU connects to. */
@Command(
        name = "serve",
        mixinStandardHelpOptions = true,
        description = "Run a device backend in the foreground until SIGINT/SIGTERM.",
        subcommands = {ServeBlkCommand.class, ServeNetCommand.class, ServeNbdCommand.class})
final class ServeCommand implements Runnable {
    @picocli.CommandLine.Spec
    picocli.CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        throw Contract.subcommandRequired(spec);
    }
}
