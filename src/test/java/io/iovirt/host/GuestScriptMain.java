// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import io.iovirt.cli.Main;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.stream.Stream;
import picocli.CommandLine;

/**
 * Runs several iovirt CLI commands in one JVM (each argument is one command line, split on blanks) and prints each
 * one's stdout, stderr and exit status between markers. Used inside the nested test guest, where starting a JVM
 * under TCG costs tens of seconds: the commands are the same code paths as {@code ./iovirt host ...}.
 *
 * <p>Two pseudo-commands act on the kernel directly: {@code @wait-nvme BDF} waits (at most 60 s) until the nvme
 * driver has either brought the function's controller to "live" or given up on it (no driver bound any more), and
 * prints {@code nvme-state BDF=live|none|<state>}; {@code @write FILE VALUE} writes VALUE to a sysfs file, as an
 * administrator or another tool would behind iovirt's back, and prints {@code wrote FILE=VALUE}.
 */
public final class GuestScriptMain {
    private GuestScriptMain() {}

    public static void main(String[] commands) throws Exception {
        for (int i = 0; i < commands.length; i++) {
            String[] args = commands[i].trim().split("\\s+");
            if (args[0].equals("@write")) {
                System.out.println("=== BEGIN " + i + ": " + commands[i]);
                Files.writeString(Path.of(args[1]), args[2]);
                System.out.println("wrote " + args[1] + "=" + args[2]);
                System.out.println("=== STDERR " + i);
                System.out.println("=== END " + i + " rc=0");
                continue;
            }
            if (args[0].equals("@wait-nvme")) {
                System.out.println("=== BEGIN " + i + ": " + commands[i]);
                System.out.println("nvme-state " + args[1] + "=" + waitNvme(args[1]));
                System.out.println("=== STDERR " + i);
                System.out.println("=== END " + i + " rc=0");
                continue;
            }
            CommandLine cl = Main.commandLine();
            StringWriter out = new StringWriter();
            StringWriter err = new StringWriter();
            cl.setOut(new PrintWriter(out));
            cl.setErr(new PrintWriter(err));
            int rc = cl.execute(args);
            System.out.println("=== BEGIN " + i + ": " + commands[i]);
            System.out.print(out);
            System.out.println("=== STDERR " + i);
            System.out.print(err);
            System.out.println("=== END " + i + " rc=" + rc);
            System.out.flush();
        }
    }

    private static String waitNvme(String bdf) throws IOException, InterruptedException {
        Path dev = Path.of("/sys/bus/pci/devices", bdf);
        String state = "none";
        for (int i = 0; i < 300; i++) {
            state = "none";
            if (Files.exists(dev.resolve("driver")) && Files.isDirectory(dev.resolve("nvme"))) {
                try (Stream<Path> s = Files.list(dev.resolve("nvme"))) {
                    Path ctrl = s.findFirst().orElse(null);
                    if (ctrl != null && Files.exists(ctrl.resolve("state"))) {
                        state = Files.readString(ctrl.resolve("state")).strip();
                    }
                }
            }
            if (state.equals("live") || (i > 0 && state.equals("none"))) {
                return state;
            }
            Thread.sleep(200);
        }
        return state;
    }
}
