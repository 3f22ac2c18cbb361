// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import java.util.List;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Parameters;

/**
 * {@code iovirt help [COMMAND...]}: the help of any command, however deep ({@code iovirt help host check}). An
 * ordinary command rather than picocli's help command, so that unknown options are usage errors here too.
 */
@Command(
        name = "help",
        mixinStandardHelpOptions = true,
        description = "Show the help of a command, e.g. iovirt help host check.",
        footerHeading = "%nExamples:%n",
        footer = {"  iovirt help", "  iovirt help vfio nvme identify"})
final class HelpCommand implements Runnable {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Parameters(paramLabel = "COMMAND", arity = "0..*", description = "The command's words, e.g. host check.")
    List<String> words = List.of();

    @Override
    public void run() {
        CommandLine self = spec.commandLine();
        CommandLine target = self.getParent();
        for (String word : words) {
            CommandLine sub = target.getSubcommands().get(word);
            if (sub == null) {
                throw Contract.usage(
                        spec,
                        "'" + word + "' is not a command of '" + ("iovirt " + Contract.commandPath(target)).strip()
                                + "'");
            }
            target = sub;
        }
        target.usage(self.getOut());
        self.getOut().flush();
    }
}
