// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.IovirtCli;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.RunningGuest;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Crash recovery (issue 11) with a real guest: QEMU 7.2 with {@code reconnect=1} on the vhost-user-blk chardev, a
 * guest writing and verifying checksummed blocks with fio in a loop (O_DIRECT, queue depth 32, random sizes), and
 * {@code iovirt serve blk --direct} (io_uring: requests complete out of order) killed with SIGKILL at random moments
 * and restarted, 20 times. QEMU keeps the in-flight memory the backend handed it (INFLIGHT_SHMFD) and gives it to
 * the new process, which resubmits exactly the requests that were in flight. Every fio pass must end without a
 * verify mismatch or an I/O error; the longest gap between progress lines is reported.
 */
@Tag("guest")
class BlkCrashRecoveryGuestTest {
    static final int MIB = 1 << 20;
    static final int KILLS = 20;
    static final Duration TIMEOUT = Duration.ofSeconds(180);
    private static final Pattern PASS = Pattern.compile("iovirt-test: pass (\\d+) rc=(\\d+) t=([0-9.]+)");
    private static final Pattern STALL = Pattern.compile("iovirt-test: stall ([0-9.]+) s");
    private static final int VIRTIO_F_RING_PACKED = 34;

    @TempDir
    Path dir;

    @Test
    void splitRingSigkillDuringWriteAndVerifyLosesNothing() throws Exception {
        run(false, false);
    }

    /**
     * {@code packed=on} with a warm standby ({@code serve blk --standby}) instead of a restart: the process that takes
     * over was started (and warmed up) long before the kill, so no JVM start lies in QEMU's reconnect path. QEMU 7.2
     * cannot restore a packed ring's position after a crash (it has no used index in shared memory; its restore is
     * a no-op), so the new backend takes the used position and the buffers in flight from the packed in-flight
     * record.
     */
    @Test
    void packedRingSigkillWithAWarmStandby() throws Exception {
        run(true, true);
    }

    private void run(boolean packed, boolean standby) throws Exception {
        GuestImage image = GuestImage.ensure();
        Path disk = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(64L * MIB);
        }
        Path sock = dir.resolve("vub.sock");
        int generation = 0;
        ChildProcess backend = start(disk, sock, generation++, false);
        ChildProcess next = standby ? start(disk, sock, generation++, true) : null;
        Random random = new Random(11);
        int resubmitted = 0;
        List<Double> reconnects = new ArrayList<>();
        List<Double> stalls = new ArrayList<>();
        try (RunningGuest guest = QemuGuest.builder(image)
                .name("crash")
                .workDir(dir)
                .fio()
                .memoryMiB(512)
                .args(
                        "-chardev",
                        "socket,id=vub0,reconnect=1,path=" + QemuGuest.escape(sock.toString()),
                        "-device",
                        "vhost-user-blk-pci,chardev=vub0,num-queues=1" + (packed ? ",packed=on" : ""))
                .payload("""
                        set -o pipefail
                        for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
                        echo "iovirt-test: features $(cat /sys/block/vda/device/features)"
                        # The guest-visible stall: one 4 KiB O_DIRECT read every 100 ms, reported when it took long.
                        while true; do
                            read -r a _ < /proc/uptime
                            dd if=/dev/vda of=/dev/null bs=4k count=1 iflag=direct skip=$((RANDOM % 16000)) 2>/dev/null
                            read -r b _ < /proc/uptime
                            echo "$a $b"
                            sleep 0.1
                        done | awk '{ d = $2 - $1; if (d >= 0.3) { printf "iovirt-test: stall %.2f s at %.2f\\n", d, $1; fflush() } }' &
                        pass=0
                        while true; do
                            pass=$((pass + 1))
                            fio --name=wv --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite \\
                                --bsrange=4k-64k --size=8M --offset=$(( (pass % 4) * 8 ))M --iodepth=32 \\
                                --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \\
                                --randseed=$pass > /root/wv.log 2>&1
                            rc=$?
                            echo "iovirt-test: pass $pass rc=$rc t=$(cut -d' ' -f1 /proc/uptime) $(grep -o 'err= *[0-9]*' /root/wv.log | tr '\\n' ' ')"
                            [ $rc -eq 0 ] || cat /root/wv.log
                        done
                        """)
                .build()
                .start(TIMEOUT.multipliedBy(6))) {
            String features = guest.awaitConsole(Pattern.compile("iovirt-test: features ([01]+)"), TIMEOUT)
                    .group(1);
            assertEquals(
                    packed ? '1' : '0', features.charAt(VIRTIO_F_RING_PACKED), "VIRTIO_F_RING_PACKED: " + features);
            guest.awaitConsole(Pattern.compile("iovirt-test: pass 2 "), TIMEOUT);
            for (int k = 1; k <= KILLS; k++) {
                // A random point of a pass: fio's start-up in the guest takes a second or more under TCG, and a kill
                // before its first request would find nothing in flight.
                Thread.sleep(1500 + random.nextInt(4000));
                int consoleAt = guest.console().length();
                long killedAt = System.nanoTime();
                backend.kill();
                resubmitted += countResubmits(backend.log());
                if (standby) {
                    backend = next; // it takes the socket over by itself
                } else {
                    Files.deleteIfExists(sock);
                    backend = start(disk, sock, generation++, false);
                }
                ChildProcess now = backend;
                Pattern connected = Pattern.compile(Pattern.quote(sock.toString()) + ": frontend .* connected");
                Await.until(
                        TIMEOUT,
                        "the restarted backend's frontend connection",
                        () -> connected.matcher(now.log()).find());
                reconnects.add((System.nanoTime() - killedAt) / 1e9);
                int at = lastPass(guest.console());
                // progress again before the next kill: a request in flight at each kill had to be recovered
                guest.awaitConsole(Pattern.compile("iovirt-test: pass " + (at + 1) + " "), TIMEOUT);
                stalls.add(longestStall(guest.console().substring(consoleAt)));
                if (standby) {
                    next = start(disk, sock, generation++, true); // the next standby, after the recovery
                }
            }
            int at = lastPass(guest.console());
            guest.awaitConsole(Pattern.compile("iovirt-test: pass " + (at + 2) + " "), TIMEOUT);
            resubmitted += countResubmits(backend.log());

            String console = guest.console();
            Matcher m = PASS.matcher(console);
            List<Double> times = new ArrayList<>();
            while (m.find()) {
                assertEquals("0", m.group(2), "fio pass " + m.group(1) + " failed:\n" + console);
                times.add(Double.parseDouble(m.group(3)));
            }
            List<Double> gaps = new ArrayList<>();
            for (int i = 1; i < times.size(); i++) {
                gaps.add(times.get(i) - times.get(i - 1));
            }
            System.out.printf(
                    "crash recovery (%s%s): %d kills, %d fio passes, all rc=0; pass time %s s; "
                            + "kill to reconnected backend %s s; guest stall per kill (4 KiB read) %s s; "
                            + "%d requests resubmitted from the in-flight memory%n",
                    packed ? "packed" : "split",
                    standby ? ", standby" : ", restart",
                    KILLS,
                    times.size(),
                    summary(gaps),
                    summary(reconnects),
                    summary(stalls),
                    resubmitted);
            assertTrue(times.size() > KILLS, console);
            if (packed) {
                // QEMU 7.2 cannot rewind a packed ring after a crash: every request in flight at a kill comes back
                // only through the in-flight record, so with fio at QD 32 some kill must have found one.
                assertTrue(
                        resubmitted > 0, "no kill found a request in flight: the in-flight record was not exercised");
            }
            // A split ring is rewound by QEMU itself to the used index (virtio_queue_restore_last_avail_idx), so the
            // guest-visible property (no fio error, no mismatch) holds either way and the count is reported only:
            // on a quiet CI host 20 kills once found none in the record — see issue 11's note.
        } finally {
            backend.close();
            if (next != null) {
                next.close();
            }
        }
    }

    /** min / median / max. */
    private static String summary(List<Double> values) {
        List<Double> v = new ArrayList<>(values);
        Collections.sort(v);
        return String.format("min %.2f / median %.2f / max %.2f", v.getFirst(), v.get(v.size() / 2), v.getLast());
    }

    /** The longest probe read reported in {@code console} (0 when none took 0.3 s or more). */
    private static double longestStall(String console) {
        Matcher m = STALL.matcher(console);
        double max = 0;
        while (m.find()) {
            max = Math.max(max, Double.parseDouble(m.group(1)));
        }
        return max;
    }

    private static int countResubmits(String log) {
        Matcher m = Pattern.compile("resubmitting (\\d+) request").matcher(log);
        int n = 0;
        while (m.find()) {
            n += Integer.parseInt(m.group(1));
        }
        return n;
    }

    private static int lastPass(String console) {
        Matcher m = PASS.matcher(console);
        int last = 0;
        while (m.find()) {
            last = Integer.parseInt(m.group(1));
        }
        return last;
    }

    private ChildProcess start(Path disk, Path sock, int generation, boolean standby) {
        List<String> args = new ArrayList<>(List.of(
                "serve",
                "blk",
                "--image",
                disk.toString(),
                "--socket",
                sock.toString(),
                "--direct",
                "--io-engine",
                "io_uring"));
        if (standby) {
            args.add("--standby");
        }
        ChildProcess.Builder b = ChildProcess.builder(IovirtCli.command(args))
                .name("iovirt serve blk #" + generation + (standby ? " (standby)" : ""))
                .log(dir.resolve("iovirt-" + generation + ".log"));
        if (!standby) {
            return b.startListening(sock, Duration.ofSeconds(120)); // a JVM start on a loaded 2-core host
        }
        ChildProcess p = b.start();
        Await.until(
                Duration.ofSeconds(120),
                "standby " + generation + " ready",
                p,
                () -> p.log().contains("standby for"));
        return p;
    }
}
