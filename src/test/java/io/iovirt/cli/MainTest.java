// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
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
    void helpExitsZero() {
        CommandLine cl = Main.commandLine();
        StringWriter out = new StringWriter();
        cl.setOut(new PrintWriter(out));
        assertEquals(0, cl.execute("--help"));
        assertTrue(out.toString().contains("Usage: iovirt"));
    }
}
