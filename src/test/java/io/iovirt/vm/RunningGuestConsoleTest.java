// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link RunningGuest#awaitConsole} matches complete lines only. The "QEMU" here is a sleeping child process: what
 * is under test is how the console file, which the guest's serial output reaches in pieces, is read.
 */
class RunningGuestConsoleTest {
    @TempDir
    Path dir;

    /** A guest whose "QEMU" is a sleeping child process and whose console is {@code console}. */
    private RunningGuest standIn(Path console, Accelerator.Decision accel) throws Exception {
        ChildProcess sleeper = ChildProcess.builder("sleep", "60")
                .name("stand-in")
                .log(dir.resolve("qemu.log"))
                .directory(dir)
                .start();
        return new RunningGuest("console-test", sleeper, dir, console, dir.resolve("initrd"), false, accel);
    }

    @Test
    void aLineStillBeingWrittenIsNotMatchedUntilItEnds() throws Exception {
        Path console = dir.resolve("console.log");
        Accelerator.Decision tcg = new Accelerator.Decision(
                Accelerator.Kind.TCG, Accelerator.Mode.TCG, "test", new Accelerator.KvmStatus(false, "test", "none"));
        try (RunningGuest g = standIn(console, tcg)) {
            Pattern md5 = Pattern.compile("(?m)^NET SENDING(.*)$");
            Files.writeString(console, "booting\nNET SENDING 61a5aecb92ef6774a2754f7ed5", StandardCharsets.US_ASCII);
            GuestException e = assertThrows(GuestException.class, () -> g.awaitConsole(md5, Duration.ofMillis(300)));
            assertTrue(e.getMessage().contains("did not show"), e.getMessage());
            Files.writeString(console, "c32a53\r\n", StandardCharsets.US_ASCII, StandardOpenOption.APPEND);
            assertEquals(
                    " 61a5aecb92ef6774a2754f7ed5c32a53",
                    g.awaitConsole(md5, Duration.ofSeconds(5)).group(1));
        }
    }

    /**
     * A KVM guest in auto mode runs once its init line shows, not when the firmware's banner does: SeaBIOS writes it
     * to the serial console before the kernel runs, and on a PVM host the kernel then stopped under KVM. The banner
     * was taken for a running guest, which then hung instead of being booted again under TCG.
     */
    @Test
    void aKvmGuestRunsOnceItsInitLineShowsNotTheFirmwaresBanner() throws Exception {
        Path console = dir.resolve("console.log");
        Accelerator.Decision kvm =
                Accelerator.decide(Accelerator.Mode.AUTO, new Accelerator.KvmStatus(true, "forced by the test", ""));
        try (RunningGuest g = standIn(console, kvm)) {
            Files.writeString(
                    console,
                    "\u001bc\u001b[2JSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from ROM...\r\n",
                    StandardCharsets.US_ASCII);
            String why = g.awaitFirstOutputUnderKvm(Duration.ofMillis(300));
            assertTrue(why != null && why.contains("did not reach its init"), String.valueOf(why));
            Files.writeString(
                    console, "iovirt-guest: init 0.91s\r\n", StandardCharsets.US_ASCII, StandardOpenOption.APPEND);
            assertEquals(null, g.awaitFirstOutputUnderKvm(Duration.ofSeconds(5)));
        }
    }
}
