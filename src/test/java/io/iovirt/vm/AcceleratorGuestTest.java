// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The accelerator decision with real guests on the three kinds of host: KVM that runs guests, a /dev/kvm that opens
 * but cannot run a stock guest (PVM: this project's build machine), and no /dev/kvm at all (made here by hiding it in
 * a private mount namespace, so every host exercises that path).
 */
@Tag("guest")
class AcceleratorGuestTest {
    /** A boot took 3-4 s idle and up to 15 s at load average 10 under TCG; a failed KVM attempt adds up to 60 s. */
    static final Duration TIMEOUT = Duration.ofSeconds(180);

    static GuestImage image;

    @TempDir
    Path dir;

    @BeforeAll
    static void buildImage() {
        image = GuestImage.ensure();
    }

    /**
     * A guest started under KVM in auto mode even though the probe may say no: on a host whose KVM works it runs
     * under KVM; on this machine's PVM KVM it dies with a KVM internal error and is booted again under TCG with one
     * notice line; without /dev/kvm QEMU cannot initialize KVM, and the same happens.
     */
    @Test
    void autoBootsAFailedKvmGuestAgainUnderTcg() {
        Accelerator.KvmStatus probe = Accelerator.probeSystem();
        Accelerator.Decision forced =
                Accelerator.decide(Accelerator.Mode.AUTO, new Accelerator.KvmStatus(true, "forced by the test", ""));
        assertEquals(Accelerator.Kind.KVM, forced.kind());
        List<String> notices = new CopyOnWriteArrayList<>();
        QemuGuest guest = QemuGuest.builder(image)
                .workDir(dir)
                .name("accel")
                .accelerator(forced)
                .notice(notices::add)
                .payload("echo guest-ran=yes")
                .build();
        try (RunningGuest g = guest.start(TIMEOUT.plusSeconds(30))) {
            GuestResult r = g.awaitExit(TIMEOUT);
            assertEquals(0, r.exitCode(), r.consoleTail(20));
            assertEquals("yes", r.field("guest-ran"));
            Accelerator.Kind ran = g.accelerator().kind();
            assertEquals(
                    probe.usable() ? Accelerator.Kind.KVM : Accelerator.Kind.TCG,
                    ran,
                    "the guest ran under " + ran + " but the probe says: " + probe.reason() + "; notices " + notices);
            if (ran == Accelerator.Kind.TCG) {
                assertEquals(1, notices.size(), notices.toString());
                assertTrue(
                        notices.getFirst().startsWith("accel: KVM guest failed early (")
                                && notices.getFirst().endsWith("); booting it again under TCG"),
                        notices.getFirst());
                assertTrue(
                        g.accelerator().reason().contains("booted again under TCG"),
                        g.accelerator().reason());
            } else {
                assertTrue(notices.isEmpty(), notices.toString());
            }
        }
    }

    /** {@code vm run --accel kvm} on this host: runs if KVM is usable, otherwise one line with reason and remedy. */
    @Test
    void kvmModeRefusesAnUnusableKvmInOneLine() throws Exception {
        Accelerator.KvmStatus probe = Accelerator.probeSystem();
        CliResult r = cli(List.of(), "vm", "run", "--accel", "kvm", "--command", "echo guest-ran=yes", "accel-kvm");
        if (probe.usable()) {
            assertEquals(0, r.exit, r.output);
            assertTrue(r.output.contains("guest-ran=yes"), r.output);
        } else {
            assertEquals(1, r.exit, r.output);
            String line = r.output
                    .lines()
                    .filter(l -> l.startsWith("iovirt vm run: "))
                    .findFirst()
                    .orElse(r.output);
            assertTrue(line.contains("--accel kvm: KVM cannot run a guest here: " + probe.reason()), line);
            assertTrue(line.contains(probe.remedy()), line);
            assertFalse(r.output.contains("\tat "), "no stack trace: " + r.output);
        }
    }

    /**
     * No /dev/kvm (hidden in a private mount namespace): {@code vm run} picks TCG and says why, {@code --accel kvm}
     * refuses, and {@code host check --json} agrees.
     */
    @Test
    void withoutDevKvmEverythingAgreesOnTcg() throws Exception {
        Require.program("unshare", "apt-get install util-linux");
        CliResult run = cli(hideKvm(), "vm", "run", "--command", "echo guest-ran=yes", "accel-nokvm");
        assertEquals(0, run.exit, run.output);
        assertTrue(run.output.contains("accelerator: TCG (KVM unusable: /dev/kvm does not exist"), run.output);
        assertTrue(run.output.contains("guest-ran=yes"), run.output);

        CliResult kvm = cli(hideKvm(), "vm", "run", "--accel", "kvm", "--command", "true", "accel-nokvm-kvm");
        assertEquals(1, kvm.exit, kvm.output);
        assertTrue(
                kvm.output.contains("iovirt vm run: --accel kvm: KVM cannot run a guest here: /dev/kvm does not exist"),
                kvm.output);

        CliResult check = cli(
                hideKvm(),
                "host",
                "check",
                "--json",
                "--state-dir",
                dir.resolve("state").toString());
        assertTrue(
                check.output.contains(
                        "\"id\": \"kvm\",\n      \"status\": \"FAIL\",\n      \"detail\": \"/dev/kvm does not exist"),
                check.output);
        assertTrue(check.output.contains("\"kind\": \"tcg\""), check.output);
    }

    /** A shell prefix that replaces /dev with a copy lacking kvm, in a private mount namespace, then execs the rest. */
    private List<String> hideKvm() throws Exception {
        Path fake = Files.createDirectories(dir.resolve("dev-without-kvm"));
        String script = """
                set -e
                D=$1; shift
                mkdir -p $D/shm $D/pts $D/net
                for n in null zero full random urandom tty net/tun; do
                    [ -e /dev/$n ] || continue
                    touch $D/$n; mount --bind /dev/$n $D/$n
                done
                mount --rbind $D /dev
                [ ! -e /dev/kvm ] || { echo "could not hide /dev/kvm"; exit 97; }
                exec "$@"
                """;
        return List.of(
                "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "hide-kvm", fake.toString());
    }

    private record CliResult(int exit, String output) {}

    private CliResult cli(List<String> prefix, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(prefix);
        cmd.addAll(IovirtCli.command(args));
        Path log = Files.createTempFile(dir, "cli", ".log");
        try (ChildProcess p = ChildProcess.builder(cmd)
                .name("iovirt " + args[0])
                .log(log)
                .env(Accelerator.ENV, "")
                .start()) {
            assertTrue(p.waitFor(TIMEOUT), "iovirt " + String.join(" ", args) + " did not finish:\n" + p.log());
            return new CliResult(p.exitValue(), p.log());
        }
    }
}
