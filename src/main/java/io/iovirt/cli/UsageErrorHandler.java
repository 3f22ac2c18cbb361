// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import picocli.CommandLine;

/**
 * Usage errors (unknown option, bad value, missing parameter or subcommand): one line naming the problem and where
 * the help is, exit 2 — never the whole usage text, which buries the reason.
 */
final class UsageErrorHandler implements CommandLine.IParameterExceptionHandler {
    @Override
    public int handleParseException(CommandLine.ParameterException ex, String[] args) {
        CommandLine cl = ex.getCommandLine();
        String msg = Contract.oneLine(ex.getMessage() == null ? "invalid command line" : ex.getMessage());
        String path = Contract.commandPath(cl);
        String line = msg + " — see 'iovirt " + (path.isEmpty() ? "" : path + " ") + "--help'";
        if (Contract.wantsJson(args)) {
            Contract.jsonError(cl.getOut(), cl, Contract.USAGE, line, null);
        }
        cl.getErr().println(Contract.prefix(cl) + line);
        cl.getErr().flush();
        return Contract.USAGE;
    }
}
