// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestException;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.Qmp;
import io.iovirt.vm.RunningGuest;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Live migration of a guest whose disk is a vhost-user-blk backend (issue 11), with real peers: QEMU 7.2 source
 * and destination on this host (the destination started with {@code -incoming}), each on its own backend process
 * serving the same image, driven over QMP.
 *
 * <p>The guest first fills 16 MiB per job with checksummed blocks (fio crc32c), then re-verifies them in a loop
 * with O_DIRECT reads at queue depth 32 and prints one line per pass. Reads the backend completes while the
 * migration copies RAM land in guest memory behind QEMU's back: only the backend's dirty log tells QEMU to copy
 * those pages again, so a backend that logs too little shows up as verify errors on the destination. The test
 * migrates in the middle of a pass, then waits for three more passes on the destination; every pass, before and
 * after, must end with fio's exit status 0 (no mismatch, no I/O error).
 */
@Tag("guest")
abstract class BlkMigrationGuestTest {
    static final int MIB = 1 << 20;
    static final long IMAGE_SIZE = 64L * MIB;
    /** One pass takes ~1-3 s under TCG on an idle machine; a loaded one is several times slower. */
    static final Duration TIMEOUT = Duration.ofSeconds(180);

    /** Source backend restarts during one migration, at most (see restartSourceBackend). */
    private static final int MAX_RESTARTS = 4;

    private static final Pattern PASS = Pattern.compile("iovirt-test: pass (\\d+) rc=(\\d+)");

    static GuestImage image;

    @TempDir
    Path dir;

    Path disk;
    private final Deque<AutoCloseable> toClose = new ArrayDeque<>();

    /** Which backend serves the disk, for messages. */
    abstract String backendName();

    /** Starts a backend for {@code image} on {@code socket}; returns once it listens. */
    abstract ChildProcess startBackend(Path image, Path socket, int queues, String tag);

    /** Whether the backend's log shows that the frontend handed it a dirty log (null: it does not say). */
    abstract String dirtyLogEvidence();

    /** Crashes {@code backend} (SIGKILL); a backend whose state the test can read times the kill by it. */
    void crash(ChildProcess backend) throws Exception {
        backend.kill();
    }

    /**
     * What a backend started during the migration logs when it reports every page dirty (QEMU dropped what the
     * killed one logged since its last sync; null: it does not say).
     */
    String reconnectedLogEvidence() {
        return null;
    }

    /** How many requests a restarted backend resubmitted from the in-flight memory (-1: its log does not say). */
    int resubmitted(ChildProcess restarted) {
        return -1;
    }

    /**
     * Why the guest's disk may stop making progress in this test, for a reference peer known to lose requests (the
     * test is then aborted with this reason, the guest's console and QEMU's log); null for iovirt, whose guest must
     * always finish its passes.
     */
    String knownStall() {
        return null;
    }

    /** Waits for the guest's verify pass {@code pass} to end (see {@link #knownStall} for a guest that stalls). */
    private void awaitPass(RunningGuest g, int pass) {
        try {
            g.awaitConsole(Pattern.compile("iovirt-test: pass " + pass + " "), TIMEOUT);
        } catch (GuestException stalled) {
            String known = knownStall();
            Assumptions.assumeTrue(known == null, () -> known + "\n" + stalled.getMessage());
            throw stalled;
        }
    }

    @BeforeAll
    static void buildImage() {
        image = GuestImage.ensure();
    }

    @BeforeEach
    void createDisk() throws IOException {
        disk = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(IMAGE_SIZE);
        }
    }

    @AfterEach
    void closeAll() throws Exception {
        while (!toClose.isEmpty()) {
            toClose.pop().close();
        }
        // The backends' and guests' logs, for the report (the temporary directory goes away)
        Path keep = Path.of("target", "migration-logs", getClass().getSimpleName());
        java.nio.file.Files.createDirectories(keep);
        try (var files = java.nio.file.Files.walk(dir)) {
            for (Path f : (Iterable<Path>) files::iterator) {
                String n = f.getFileName().toString();
                if (n.endsWith(".log")) {
                    java.nio.file.Files.copy(
                            f,
                            keep.resolve(dir.relativize(f).toString().replace('/', '_')),
                            java.nio.file.StandardCopyOption.REPLACE_EXISTING);
                }
            }
        }
    }

    @Test
    void splitRingMigratesWhileFioVerifiesAtQueueDepth32() throws Exception {
        migrate("split", 1, false, false, false);
    }

    @Test
    void packedRingTwoQueuesMigrate() throws Exception {
        migrate("packed-2q", 2, true, false, false);
    }

    @Test
    void loggingToggledUnderIoThenMigrates() throws Exception {
        migrate("toggle", 1, false, true, false);
    }

    /**
     * "Across a restart of serve": the source's backend is killed with SIGKILL and a new one started on the same
     * socket while the migration is in its iterative phase (dirty logging on). The source QEMU ({@code reconnect=1})
     * reconnects and, since the migration is still running, hands the new backend SET_FEATURES with LOG_ALL,
     * SET_LOG_BASE and the in-flight memory again; the new backend resubmits what was in flight and logs what it
     * writes into guest memory, or the destination's fio finds stale blocks. Throttled to 1 MiB/s until the new
     * backend serves, then released so the migration converges.
     */
    @Test
    void sourceBackendRestartedDuringMigration() throws Exception {
        migrate("restart", 1, false, false, true);
    }

    private void migrate(String name, int queues, boolean packed, boolean toggleFirst, boolean restartSource)
            throws Exception {
        Path sockA = dir.resolve("a.sock");
        Path sockB = dir.resolve("b.sock");
        Path qmpSrc = dir.resolve("src.qmp");
        Path qmpDst = dir.resolve("dst.qmp");
        Path mig = dir.resolve("mig.sock");
        ChildProcess a = startBackend(disk, sockA, queues, "a");
        toClose.push(a);
        ChildProcess b = startBackend(disk, sockB, queues, "b");
        toClose.push(b);

        RunningGuest src = guest(name + "-src", sockA, qmpSrc, queues, packed, restartSource, null, null)
                .start(TIMEOUT.multipliedBy(3));
        toClose.push(src);
        awaitPass(src, 2);

        try (Qmp qs = Qmp.connect(qmpSrc, Duration.ofSeconds(30))) {
            if (toggleFirst) {
                // Logging on and off while the verify loop runs: a migration to nowhere, throttled so it stays in
                // its iterative phase, cancelled after a pass completed under it.
                qs.execute("migrate-set-parameters", Map.of("max-bandwidth", 1L * MIB));
                qs.execute("migrate", Map.of("uri", "exec:cat > /dev/null"));
                awaitStatus(qs, "active");
                int at = lastPass(src.console());
                awaitPass(src, at + 1);
                qs.execute("migrate_cancel", Map.of());
                awaitStatus(qs, "cancelled");
                at = lastPass(src.console());
                awaitPass(src, at + 1);
            }
            RunningGuest dst = guest(name + "-dst", sockB, qmpDst, queues, packed, false, src, "unix:" + mig)
                    .start(TIMEOUT.multipliedBy(3));
            toClose.push(dst);
            try (Qmp qd = Qmp.connect(qmpDst, Duration.ofSeconds(30))) {
                Map<String, Object> params = new LinkedHashMap<>();
                params.put("max-bandwidth", 4L << 30);
                params.put("downtime-limit", 1000L);
                int before = lastPass(src.console());
                if (restartSource) {
                    qs.execute("migrate-set-parameters", Map.of("max-bandwidth", 1L * MIB));
                    qs.execute("migrate", Map.of("uri", "unix:" + mig));
                    awaitStatus(qs, "active");
                    a = restartSourceBackend(a, sockA, queues, src);
                    assertEquals(
                            "active",
                            qs.query("query-migrate").get("status"),
                            "the migration did not survive the source backend's restart");
                    qs.execute("migrate-set-parameters", params); // now let it converge
                } else {
                    qs.execute("migrate-set-parameters", params);
                    qs.execute("migrate", Map.of("uri", "unix:" + mig));
                }
                Map<String, Object> done = awaitStatus(qs, "completed");
                System.out.printf(
                        "migration %s/%s: total %s ms, downtime %s ms, setup %s ms; passes on the source: %d%n",
                        backendName(),
                        name,
                        done.get("total-time"),
                        done.get("downtime"),
                        done.get("setup-time"),
                        before);
                qd.awaitRunning(TIMEOUT); // the source reports "completed" a moment before the destination resumes

                // Three full passes on the destination after the one the migration interrupted.
                int last = Math.max(before, lastPass(src.console()));
                awaitPass(dst, last + 4);
                String all = src.console() + dst.console();
                Matcher m = PASS.matcher(all);
                int passes = 0;
                while (m.find()) {
                    passes++;
                    assertEquals(
                            "0",
                            m.group(2),
                            "fio verify pass " + m.group(1) + " failed:\n" + "--- source ---\n" + src.console()
                                    + "\n--- destination ---\n" + dst.console());
                }
                assertTrue(passes >= last + 4, all);
            }
        }
        String evidence = dirtyLogEvidence();
        if (evidence != null) {
            assertTrue(a.log().contains(evidence), "the source backend never received a dirty log:\n" + a.logTail(30));
        }
        assertTrue(a.isAlive(), a.logTail(20));
        assertTrue(b.isAlive(), b.logTail(20));
    }

    /**
     * SIGKILLs the source's backend while the migration runs and starts a new one on the same socket (the source
     * QEMU reconnects by itself); returns once the guest completed a verify pass on the new backend. A backend that
     * reports resubmissions is crashed again (up to {@link #MAX_RESTARTS} times) until a restarted one resubmitted
     * a request: a read resubmitted under logging writes guest memory that only the new backend's log can report.
     */
    private ChildProcess restartSourceBackend(ChildProcess first, Path socket, int queues, RunningGuest src)
            throws Exception {
        String evidence = dirtyLogEvidence();
        ChildProcess old = first;
        int resubmitted = 0;
        for (int restart = 1; restart <= MAX_RESTARTS; restart++) {
            ChildProcess dying = old;
            if (evidence != null) {
                // the kill must fall while the backend logs, not before QEMU turned logging on
                Await.until(
                        TIMEOUT,
                        "the source backend's dirty log",
                        dying,
                        () -> dying.log().contains(evidence));
            }
            crash(dying);
            Files.deleteIfExists(socket); // the dead backend's socket file
            int at = lastPass(src.console());
            ChildProcess now = startBackend(disk, socket, queues, "a-restart" + restart);
            toClose.push(now);
            // progress on the new backend: a full verify pass that began after the kill
            awaitPass(src, at + 2);
            if (evidence != null) {
                assertTrue(
                        now.log().contains(evidence),
                        "the restarted source backend got no dirty log from QEMU:\n" + now.logTail(40));
            }
            String all = reconnectedLogEvidence();
            if (all != null) {
                assertTrue(
                        now.log().contains(all),
                        "the restarted source backend did not report every page dirty:\n" + now.logTail(40));
            }
            int n = resubmitted(now);
            System.out.printf(
                    "source backend %s restarted (%d) during the migration; %s; the guest verified pass %d on it%n",
                    backendName(), restart, n < 0 ? "resubmissions not reported" : n + " requests resubmitted", at + 2);
            old = now;
            if (n < 0) {
                return now;
            }
            resubmitted += n;
            if (resubmitted > 0) {
                return now;
            }
        }
        throw new AssertionError(MAX_RESTARTS + " restarts of the source backend during the migration and none "
                + "resubmitted a request: the kills never fell while a request was in flight");
    }

    private static int lastPass(String console) {
        Matcher m = PASS.matcher(console);
        int last = 0;
        while (m.find()) {
            last = Integer.parseInt(m.group(1));
        }
        return last;
    }

    /** Polls query-migrate until {@code status}; fails on "failed" or a timeout. */
    private static Map<String, Object> awaitStatus(Qmp qmp, String status) throws Exception {
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        for (; ; ) {
            Map<String, Object> info = qmp.query("query-migrate");
            Object s = info.get("status");
            if (status.equals(s)) {
                return info;
            }
            if ("failed".equals(s) && !status.equals("failed")) {
                throw new AssertionError("migration failed: " + info);
            }
            if (System.nanoTime() > deadline) {
                throw new AssertionError("migration did not reach '" + status + "' within " + TIMEOUT + ": " + info);
            }
            Thread.sleep(100);
        }
    }

    /**
     * Identical for source and destination (the initrd, hence the ROM and RAM layout, must match), except for the
     * socket paths and {@code -incoming}; a destination ({@code source} not null) runs under its source's accelerator.
     */
    private QemuGuest guest(
            String name,
            Path socket,
            Path qmp,
            int queues,
            boolean packed,
            boolean reconnect,
            RunningGuest source,
            String incoming) {
        QemuGuest.Builder b = QemuGuest.builder(image)
                .name(backendName() + "/" + name)
                .workDir(dir)
                .fio()
                .memoryMiB(512)
                .cpus(queues)
                .kernelArgs("jobs=" + queues)
                .args(
                        "-chardev",
                        "socket,id=vub0," + (reconnect ? "reconnect=1," : "") + "path="
                                + QemuGuest.escape(socket.toString()),
                        "-device",
                        "vhost-user-blk-pci,chardev=vub0,num-queues=" + queues + (packed ? ",packed=on" : ""),
                        "-qmp",
                        "unix:" + QemuGuest.escape(qmp.toString()) + ",server=on,wait=off")
                .payload("""
                        set -o pipefail
                        for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
                        F="--filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --size=16M \\
                           --offset_increment=16M --numjobs=$jobs --cpus_allowed=0-$((jobs - 1)) \\
                           --cpus_allowed_policy=split --randseed=42 --verify=crc32c --verify_state_save=0 --iodepth=32"
                        if ! fio --name=fill $F --do_verify=0 > /root/fill.log 2>&1; then
                            cat /root/fill.log; echo "iovirt-test: fill failed"; exit 1
                        fi
                        echo "iovirt-test: filled"
                        pass=0
                        while true; do
                            pass=$((pass + 1))
                            fio --name=verify $F --verify_only --verify_fatal=1 > /root/verify.log 2>&1
                            rc=$?
                            echo "iovirt-test: pass $pass rc=$rc $(grep -o 'err= *[0-9]*' /root/verify.log | tr '\\n' ' ')"
                            [ $rc -eq 0 ] || cat /root/verify.log
                        done
                        """);
        if (source != null) {
            b.incoming(incoming, source);
        }
        return b.build();
    }
}
