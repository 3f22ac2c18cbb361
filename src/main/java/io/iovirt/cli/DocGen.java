// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import picocli.AutoComplete;
import picocli.CommandLine;
import picocli.codegen.docgen.manpage.ManPageGenerator;

/**
 * Build-time only (the {@code package} phase runs it; picocli-codegen is a provided dependency, never loaded when
 * iovirt runs): writes the AsciiDoc man pages and the bash completion script from {@link Main#commandLine()}, the
 * tree with every command. Main registers its subcommands in code, not in its annotation (so a backend start builds
 * only its own command), so picocli's generators, given only the class, would see the top command alone.
 *
 * <p>Arguments: the man page directory and the completion script's path.
 */
final class DocGen {
    private DocGen() {}

    public static void main(String[] args) throws IOException {
        if (args.length != 2) {
            throw new IllegalArgumentException("usage: DocGen MAN_DIR COMPLETION_FILE");
        }
        CommandLine cl = Main.commandLine();
        int rc = ManPageGenerator.generateManPage(new File(args[0]), null, new boolean[0], true, cl.getCommandSpec());
        if (rc != 0) {
            throw new IOException("picocli's ManPageGenerator failed with exit code " + rc);
        }
        Path completion = Path.of(args[1]);
        Files.createDirectories(completion.toAbsolutePath().getParent());
        Files.writeString(completion, AutoComplete.bash("iovirt", cl), StandardCharsets.UTF_8);
    }
}
