package io.iovirt.cli;

import picocli.CommandLine;

/**
 * Turns an exception escaping a command into one line on stderr: what failed and why (the exception's message is
 * expected to carry the remedy). {@code --verbose} (or IOVIRT_VERBOSE=1) adds the stack trace.
 */
final class ErrorHandler implements CommandLine.IExecutionExceptionHandler {
    static final int EXIT_FAILED = 1;

    @Override
    public int handleExecutionException(Exception ex, CommandLine cl, CommandLine.ParseResult parsed) {
        String msg = ex.getMessage() == null ? ex.getClass().getSimpleName() : ex.getMessage();
        cl.getErr().println("iovirt " + commandPath(cl) + ": " + msg);
        if (Main.verbose(parsed)) {
            ex.printStackTrace(cl.getErr());
        }
        cl.getErr().flush();
        return EXIT_FAILED;
    }

    private static String commandPath(CommandLine cl) {
        String full = cl.getCommandSpec().qualifiedName(" ");
        return full.startsWith("iovirt ") ? full.substring(7) : full;
    }
}
