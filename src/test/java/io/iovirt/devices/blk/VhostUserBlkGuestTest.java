// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestImage;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.QemuGuest;
import io.iovirt.vm.RunningGuest;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.HexFormat;
import java.util.Random;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Real-guest tests of a vhost-user-blk backend: an unmodified Linux guest (QEMU 7.2, vhost-user-blk-pci, the
 * guest's own virtio_blk driver) reads and writes a disk the backend serves. The cases are backend-agnostic; a
 * subclass says which backend ({@link #backend()}), so adding a backend is one small class.
 */
@Tag("guest")
abstract class VhostUserBlkGuestTest {

    static final int MIB = 1 << 20;
    static final long IMAGE_SIZE = 64L * MIB;
    /**
     * Per guest run. A run took 4-7 s on an idle 2-core machine and up to 15 s with the machine's load average
     * at 10; ~4x that, so a loaded machine does not fail the suite while a hung guest still does.
     */
    static final Duration TIMEOUT = Duration.ofSeconds(60);

    /** Waits for the disk (the virtio_blk probe is synchronous, but be robust) and stops at the first failure. */
    private static final String PREAMBLE = """
            set -e -o pipefail
            for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
            [ -b /dev/vda ] || { echo "no /dev/vda"; exit 90; }
            """;

    static GuestImage image;

    @TempDir
    Path dir;

    Path disk;
    Path socket;
    private final Deque<AutoCloseable> toClose = new ArrayDeque<>();

    /** The backend under test. */
    protected abstract BlkBackendUnderTest backend();

    @BeforeAll
    static void buildImage() {
        image = GuestImage.ensure();
    }

    @BeforeEach
    void createDisk() throws IOException {
        disk = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.setLength(IMAGE_SIZE); // sparse
        }
        socket = dir.resolve("vub.sock");
    }

    @AfterEach
    void closeAll() throws Exception {
        while (!toClose.isEmpty()) {
            toClose.pop().close();
        }
    }

    // (a)
    @Test
    void hostWrittenPatternIsReadByTheGuestWithODirect() throws Exception {
        byte[] pattern = pattern(1, 16 * MIB);
        writeAt(8L * MIB, pattern);
        startBackend(1, false);

        GuestResult r = run(guest("read-odirect", 1, false).payload(PREAMBLE + """
                echo sectors=$(cat /sys/block/vda/size)
                echo sha=$(dd if=/dev/vda bs=1M skip=8 count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                """));

        assertEquals(Long.toString(IMAGE_SIZE / 512), r.field("sectors"));
        assertEquals(sha256(pattern), r.field("sha"));
    }

    // (b)
    @Test
    void guestWrittenDataMatchesOnTheHost() throws Exception {
        byte[] pattern = pattern(2, 4 * MIB);
        startBackend(1, false);

        GuestResult r = run(guest("write-odirect", 1, false)
                .file("/root/pattern.bin", pattern, 0644)
                .payload(PREAMBLE + """
                        dd if=/root/pattern.bin of=/dev/vda bs=1M seek=4 oflag=direct conv=fsync 2>/dev/null
                        echo sha=$(dd if=/dev/vda bs=1M skip=4 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                        """));

        assertEquals(sha256(pattern), r.field("sha"), "guest read-back");
        assertEquals(sha256(pattern), sha256(readAt(4L * MIB, 4 * MIB)), "host file");
        assertArrayEquals(new byte[4 * MIB], readAt(0, 4 * MIB), "bytes before the write changed");
        assertArrayEquals(new byte[MIB], readAt(8L * MIB, MIB), "bytes after the write changed");
    }

    // (c)
    @Test
    void fioWriteAndVerifyPasses() throws Exception {
        startBackend(1, false);

        GuestResult r = run(guest("fio-verify", 1, false).fio().payload(PREAMBLE + """
                fio --name=verify --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite \\
                    --bsrange=4k-64k --size=16M --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \\
                    --verify_state_save=0 --randseed=42
                """));

        assertEquals(0, r.exitCode(), r.output());
        assertTrue(r.output().contains("err= 0"), r.output());
        assertTrue(r.output().contains("READ:") && r.output().contains("WRITE:"), r.output());
        assertFalse(isZero(readAt(0, 16 * MIB)), "fio's writes did not reach the host file");
    }

    // (d)
    @Test
    void dataFlushedByTheGuestSurvivesKillingQemuAndTheBackend() throws Exception {
        byte[] pattern = pattern(4, 4 * MIB);
        ChildProcess backend = startBackend(1, false);

        // Buffered write in the guest, then fsync: the guest writes the pages back and, with a write-back cache,
        // sends FLUSH. A device that starts write-through but offers CONFIG_WCE (qemu-storage-daemon does) is
        // switched to write-back through its config space (SET_CONFIG), as an administrator would.
        QemuGuest guest = guest("flush-kill", 1, false)
                .file("/root/pattern.bin", pattern, 0644)
                .payload(PREAMBLE + """
                        if [ "$(cat /sys/block/vda/queue/write_cache)" != "write back" ]; then
                            echo "write back" > /sys/block/vda/cache_type
                        fi
                        echo cache="$(cat /sys/block/vda/queue/write_cache)"
                        dd if=/root/pattern.bin of=/dev/vda bs=1M seek=16 conv=fsync 2>/dev/null
                        echo iovirt-test: flushed
                        sleep 600
                        """)
                .build();
        try (RunningGuest running = guest.start(TIMEOUT.multipliedBy(2))) {
            running.awaitConsole(Pattern.compile("iovirt-test: flushed"), TIMEOUT);
            assertTrue(
                    running.console().contains("cache=write back"),
                    "the device offers no volatile write cache, so no FLUSH was sent:\n" + running.console());
            running.kill();
            assertFalse(running.isAlive());
        }
        // Killing the backend as well: acknowledged-flushed data must be in the file, not in a process's memory.
        backend.kill();
        assertEquals(sha256(pattern), sha256(readAt(16L * MIB, 4 * MIB)));
    }

    // (e)
    @Test
    void packedRingOptionCarriesIo() throws Exception {
        byte[] hostPattern = pattern(5, 4 * MIB);
        byte[] guestPattern = pattern(6, 4 * MIB);
        writeAt(0, hostPattern);
        startBackend(1, false);

        GuestResult r = run(guest("packed", 1, true)
                .file("/root/pattern.bin", guestPattern, 0644)
                .payload(PREAMBLE + """
                        echo features=$(cat /sys/block/vda/device/features)
                        echo sha=$(dd if=/dev/vda bs=1M count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                        dd if=/root/pattern.bin of=/dev/vda bs=1M seek=8 oflag=direct conv=fsync 2>/dev/null
                        """));

        String features = r.field("features"); // one character per feature bit, bit 0 first
        assertEquals('1', features.charAt(32), "VIRTIO_F_VERSION_1 not negotiated: " + features);
        if (backend().offersPackedRing()) {
            assertEquals('1', features.charAt(34), "VIRTIO_F_RING_PACKED not negotiated: " + features);
        }
        assertEquals(sha256(hostPattern), r.field("sha"));
        assertEquals(sha256(guestPattern), sha256(readAt(8L * MIB, 4 * MIB)));
    }

    // (f)
    @Test
    void twoQueuesBothCarryIo() throws Exception {
        startBackend(2, false);

        // One fio job pinned to each vCPU; blk-mq maps each CPU to its own queue, and each queue has its own
        // MSI-X vector, so the per-queue interrupt counts show which queues completed requests.
        GuestResult r = run(guest("two-queues", 2, false).cpus(2).fio().payload(PREAMBLE + """
                dev=$(basename "$(readlink /sys/block/vda/device)")
                irqs() { awk -v q="$dev-req.$1" '$NF == q { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; print s }' /proc/interrupts; }
                echo queues=$(ls /sys/block/vda/mq | wc -l)
                q0=$(irqs 0); q1=$(irqs 1)
                fio --name=mq --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --size=8M \\
                    --iodepth=8 --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split --offset_increment=16M \\
                    --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --group_reporting
                echo q0=$(( $(irqs 0) - q0 ))
                echo q1=$(( $(irqs 1) - q1 ))
                """));

        assertEquals(0, r.exitCode(), r.output());
        assertEquals("2", r.field("queues"));
        assertTrue(Long.parseLong(r.field("q0")) > 0, "queue 0 completed nothing:\n" + r.output());
        assertTrue(Long.parseLong(r.field("q1")) > 0, "queue 1 completed nothing:\n" + r.output());
    }

    // (g)
    @Test
    void guestRebootKeepsUsingTheSameBackend() throws Exception {
        byte[] before = pattern(7, 4 * MIB);
        byte[] after = pattern(8, 4 * MIB);
        ChildProcess backend = startBackend(1, false);
        long pid = backend.pid();

        // The disk says which boot this is: the first boot writes, marks sector 2048 and reboots (QEMU stops and
        // restarts the vhost-user device on the same connection); the second checks the data and writes more.
        GuestResult r = run(guest("reboot", 1, false)
                .allowReboot(true)
                .file("/root/before.bin", before, 0644)
                .file("/root/after.bin", after, 0644)
                .payload(PREAMBLE + """
                        if [ "$(dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | head -c 8)" != rebooted ]; then
                            dd if=/root/before.bin of=/dev/vda bs=1M seek=8 oflag=direct conv=fsync 2>/dev/null
                            printf rebooted | dd of=/dev/vda bs=512 seek=2048 conv=sync,fsync 2>/dev/null
                            echo iovirt-test: rebooting
                            reboot -f
                        fi
                        echo sha=$(dd if=/dev/vda bs=1M skip=8 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                        dd if=/root/after.bin of=/dev/vda bs=1M seek=16 oflag=direct conv=fsync 2>/dev/null
                        """));

        assertEquals(0, r.exitCode(), r.consoleTail(30));
        assertEquals(2, r.boots(), r.console());
        assertTrue(r.console().contains("iovirt-test: rebooting"), r.console());
        assertEquals(sha256(before), r.field("sha"), "data written before the reboot, read after it");
        assertEquals(sha256(before), sha256(readAt(8L * MIB, 4 * MIB)));
        assertEquals(sha256(after), sha256(readAt(16L * MIB, 4 * MIB)));
        assertTrue(backend.isAlive(), "the backend died across the guest reboot:\n" + backend.logTail(20));
        assertEquals(pid, backend.pid());
    }

    // (g') a new QEMU process connects to the backend the previous one disconnected from
    @Test
    void aNewVmReconnectsToTheSameBackend() throws Exception {
        byte[] first = pattern(9, 4 * MIB);
        ChildProcess backend = startBackend(1, false);

        GuestResult r1 =
                run(guest("vm-1", 1, false).file("/root/first.bin", first, 0644).payload(PREAMBLE + """
                dd if=/root/first.bin of=/dev/vda bs=1M seek=4 oflag=direct conv=fsync 2>/dev/null
                """));
        assertEquals(0, r1.exitCode(), r1.output());
        assertTrue(backend.isAlive(), "the backend exited when the first VM went away:\n" + backend.logTail(20));

        GuestResult r2 = run(guest("vm-2", 1, false).payload(PREAMBLE + """
                echo sha=$(dd if=/dev/vda bs=1M skip=4 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                """));
        assertEquals(sha256(first), r2.field("sha"));
        assertTrue(backend.isAlive(), "the backend exited after the second VM:\n" + backend.logTail(20));
    }

    // read-only export: the guest sees a read-only disk and the file does not change
    @Test
    void readOnlyDiskRefusesGuestWrites() throws Exception {
        byte[] pattern = pattern(10, 4 * MIB);
        writeAt(0, pattern);
        String before = sha256(Files.readAllBytes(disk));
        startBackend(1, true);

        GuestResult r = run(guest("read-only", 1, false)
                .file("/root/junk.bin", pattern(11, MIB), 0644)
                .payload(PREAMBLE + """
                        echo ro=$(cat /sys/block/vda/ro)
                        echo sha=$(dd if=/dev/vda bs=1M count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
                        if dd if=/root/junk.bin of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null; then
                            echo write=accepted
                        else
                            echo write=refused
                        fi
                        """));

        assertEquals("1", r.field("ro"));
        assertEquals(sha256(pattern), r.field("sha"));
        assertEquals("refused", r.field("write"));
        assertEquals(before, sha256(Files.readAllBytes(disk)), "the read-only image changed");
    }

    // ---- helpers ----

    private ChildProcess startBackend(int queues, boolean readonly) {
        ChildProcess p = backend().start(disk, socket, queues, readonly, dir);
        toClose.push(p);
        return p;
    }

    private QemuGuest.Builder guest(String name, int queues, boolean packed) {
        return QemuGuest.builder(image)
                .name(backend().name() + "/" + name)
                .workDir(dir)
                .args(
                        "-chardev",
                        "socket,id=vub0,path=" + QemuGuest.escape(socket.toString()),
                        "-device",
                        "vhost-user-blk-pci,chardev=vub0,num-queues=" + queues + (packed ? ",packed=on" : ""));
    }

    private static GuestResult run(QemuGuest.Builder guest) {
        GuestResult r = guest.build().run(TIMEOUT);
        assertEquals(0, r.exitCode(), () -> "payload failed:\n" + r.consoleTail(40));
        return r;
    }

    static byte[] pattern(long seed, int size) {
        byte[] b = new byte[size];
        new Random(seed).nextBytes(b);
        return b;
    }

    private void writeAt(long offset, byte[] data) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "rw")) {
            f.seek(offset);
            f.write(data);
        }
    }

    private byte[] readAt(long offset, int len) throws IOException {
        byte[] b = new byte[len];
        try (RandomAccessFile f = new RandomAccessFile(disk.toFile(), "r")) {
            f.seek(offset);
            f.readFully(b);
        }
        return b;
    }

    static String sha256(byte[] data) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }

    private static boolean isZero(byte[] data) {
        for (byte x : data) {
            if (x != 0) {
                return false;
            }
        }
        return true;
    }
}
