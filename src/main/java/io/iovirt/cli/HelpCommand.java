// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import java.io.PrintWriter;
import java.util.List;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Parameters;

/** {@code iovirt help [COMMAND...]}: the help of any command, however deep ({@code iovirt help host check}). */
@Command(name = "help", helpCommand = true, description = "Show the help of a command, e.g. iovirt help host check.",
        footerHeading = "%nExamples:%n", footer = {"  iovirt help", "  iovirt help vfio nvme identify"})
final class HelpCommand implements CommandLine.IHelpCommandInitializable2, Runnable {
    @Parameters(paramLabel = "COMMAND", arity = "0..*", description = "The command's words, e.g. host check.")
    List<String> words = List.of();

    private CommandLine self;

    @Override
    public void init(CommandLine helpCommandLine, CommandLine.Help.ColorScheme colorScheme, PrintWriter out,
                     PrintWriter err) {
        this.self = helpCommandLine;
    }

    @Override
    public void run() {
        CommandLine target = self.getParent();
        for (String word : words) {
            CommandLine sub = target.getSubcommands().get(word);
            if (sub == null) {
                throw new CommandLine.ParameterException(self, "'" + word + "' is not a command of '"
                        + ("iovirt " + Contract.commandPath(target)).strip() + "'");
            }
            target = sub;
        }
        target.usage(self.getOut());
        self.getOut().flush();
    }
}
