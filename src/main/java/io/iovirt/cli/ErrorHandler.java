// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import picocli.CommandLine;

/**
 * Turns an exception escaping a command into the contract's one error line on stderr (and, with --json, a JSON
 * error on stdout): {@code iovirt <command>: <what failed>: <why> — <what to do>}, exit 1. {@code --verbose} (or
 * IOVIRT_VERBOSE=1) adds the stack trace.
 */
final class ErrorHandler implements CommandLine.IExecutionExceptionHandler {
    @Override
    public int handleExecutionException(Exception ex, CommandLine cl, CommandLine.ParseResult parsed) {
        String msg = Contract.oneLine(ex.getMessage() == null ? ex.getClass().getSimpleName() : ex.getMessage());
        if (Contract.wantsJson(parsed.originalArgs().toArray(String[]::new))) {
            Contract.jsonError(cl.getOut(), cl, Contract.FAILED, msg, ex);
        }
        cl.getErr().println(Contract.prefix(cl) + msg);
        if (Main.verbose(parsed)) {
            ex.printStackTrace(cl.getErr());
        }
        cl.getErr().flush();
        return Contract.FAILED;
    }
}
