// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.List;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

class MainTest {
    @Test
    void unknownCommandIsAUsageErrorWithOneLineReason() {
        CommandLine cl = Main.commandLine();
        StringWriter err = new StringWriter();
        cl.setErr(new PrintWriter(err));
        int rc = cl.execute("no-such-command");
        assertEquals(2, rc);
        assertTrue(err.toString().contains("no-such-command"), err.toString());
    }

    @Test
    void registeredNamesAreTheCommandsOwnNames() {
        for (int i = 0; i < Main.NAMES.length; i++) {
            assertEquals(
                    Main.NAMES[i],
                    Main.COMMANDS[i].getAnnotation(CommandLine.Command.class).name());
        }
        assertEquals(
                List.of(Main.NAMES),
                List.copyOf(Main.commandLine().getSubcommands().keySet()));
    }

    @Test
    void aBackendCommandGetsOnlyItsOwnTreeWithTheSameOptionsAndHelp() {
        CommandLine fast = Main.commandLine("serve", "blk", "--help");
        assertEquals(List.of("serve"), List.copyOf(fast.getSubcommands().keySet()));
        CommandLine full = Main.commandLine();
        for (String sub : List.of("blk", "net", "nbd")) {
            CommandLine a = fast.getSubcommands().get("serve").getSubcommands().get(sub);
            CommandLine b = full.getSubcommands().get("serve").getSubcommands().get(sub);
            assertTrue(
                    a.getCommandSpec().optionsMap().containsKey("--verbose"), "--verbose is inherited by serve " + sub);
            assertEquals(
                    b.getCommandSpec().optionsMap().keySet(),
                    a.getCommandSpec().optionsMap().keySet());
            assertEquals(b.getUsageMessage(), a.getUsageMessage());
        }
        assertEquals(
                List.of("run"),
                List.copyOf(Main.commandLine("vm", "run")
                        .getSubcommands()
                        .get("vm")
                        .getSubcommands()
                        .keySet()));
    }

    @Test
    void helpExitsZero() {
        CommandLine cl = Main.commandLine();
        StringWriter out = new StringWriter();
        cl.setOut(new PrintWriter(out));
        assertEquals(0, cl.execute("--help"));
        assertTrue(out.toString().contains("Usage: iovirt"));
    }
}
