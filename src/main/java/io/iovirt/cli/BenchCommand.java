// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/** {@code iovirt bench ...}: drivers without a VM that load a backend and measure it. */
@Command(
        name = "bench",
        mixinStandardHelpOptions = true,
        description = "Benchmarks: drive a backend directly, without a VM, and measure it.",
        subcommands = {BlkBenchCommand.class, C2cBenchCommand.class})
public final class BenchCommand implements Runnable {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        throw Contract.subcommandRequired(spec);
    }
}
