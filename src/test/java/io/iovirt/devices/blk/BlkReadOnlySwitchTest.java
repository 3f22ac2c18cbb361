// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.F_DISCARD;
import static io.iovirt.devices.blk.BlkRequests.F_FLUSH;
import static io.iovirt.devices.blk.BlkRequests.F_RO;
import static io.iovirt.devices.blk.BlkRequests.F_WRITE_ZEROES;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.ForwardingDiskImage;
import io.iovirt.storage.ImageIo;
import io.iovirt.storage.ImageLock;
import io.iovirt.storage.RawImage;
import io.iovirt.storage.qcow2.Qcow2Image;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Await;
import io.iovirt.testing.StoppableFuse;
import io.iovirt.vhostuser.BackendException;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.VhostUserFrontend;
import io.iovirt.vhostuser.VhostUserServer;
import io.iovirt.virtio.VirtioFeatures;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A disk switched to read-only while a frontend is connected (blk.set-readonly): the frontend's offer does not change
 * with it, so what it acknowledges from that offer is still accepted. The image lock follows the switch: no write
 * under a shared lock, with qemu-io (QEMU's image locking) as the other user of the image.
 */
@Timeout(60)
class BlkReadOnlySwitchTest {
    @TempDir
    Path dir;

    /**
     * QEMU reads the features once per connection and acknowledges, at every start and when a migration turns dirty
     * logging on (VHOST_F_LOG_ALL, with REPLY_ACK), what the guest accepted of that offer — DISCARD and WRITE_ZEROES
     * included. The device checked SET_FEATURES against its offer of now, which a switch to read-only had changed, and
     * refused it: a failure reply, on which QEMU 7.2 aborts the migrating VM (vhost_log_global_start).
     */
    @Test
    void featuresOfTheConnectionsOfferAreAcceptedAfterASwitchToReadOnly() throws Exception {
        try (RawImage img = RawImage.open(disk(), false, false)) {
            BlkDevice dev = new BlkDevice("switch", img, 1, "s");
            try (VhostUserServer server = serve(dev);
                    VhostUserFrontend fe = VhostUserFrontend.connect(socket(), Duration.ofSeconds(20))) {
                long offered = fe.getFeatures();
                long guest = VirtioFeatures.VIRTIO_F_VERSION_1 | 1L << F_FLUSH | 1L << F_DISCARD | 1L << F_WRITE_ZEROES;
                assertEquals(guest, offered & guest, "a writable disk offers discard and write-zeroes");
                fe.setFeatures(guest | Features.VHOST_USER_F_PROTOCOL_FEATURES);
                fe.setProtocolFeatures(fe.getProtocolFeatures() & Features.bit(Features.PROTOCOL_REPLY_ACK));
                fe.setFeatures(guest | Features.VHOST_USER_F_PROTOCOL_FEATURES);

                dev.setReadOnly(true);

                // a migration starts: dirty logging on, with a reply (REPLY_ACK) that QEMU insists on
                fe.setFeatures(guest | Features.VHOST_USER_F_PROTOCOL_FEATURES | Features.VHOST_F_LOG_ALL);
                assertEquals(guest, dev.ackedFeatures(), "the device took the features the frontend acknowledged");
                assertTrue((dev.features() & 1L << F_RO) != 0, "a new connection is offered a read-only disk");
                // what no connection was ever offered is still refused
                assertThrows(BackendException.class, () -> dev.setFeatures(guest | 1L << 50));
            }
        }
    }

    /**
     * A disk served read-only holds a shared lock, which lets a QEMU reader in. Switched writable while its frontend
     * ran, it wrote under that shared lock, the reader reading data changed under it, and a reader started afterwards
     * was let in too. Now the switch first makes the lock exclusive: refused, naming the reader, while one holds the
     * image (the disk stays read-only); done once it is gone; and later readers are kept out.
     */
    @Test
    void aDiskSwitchedWritableUnderAFrontendTakesTheImageForWriting() throws Exception {
        Path p = disk();
        try (RawImage img = RawImage.open(p, false, false)) {
            img.setReadOnly(
                    true); // opened writable, served read-only (a blk.set-readonly, a state file's readonly-now)
            BlkDevice dev = new BlkDevice("switch", img, 1, "s");
            Process reader = QemuTools.readerHolding(p);
            try (VhostUserServer server = serve(dev);
                    EventFd call = EventFd.create(true);
                    BlkTestDriver d = frontend(call)) {
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.flush()), "served beside the QEMU reader");

                IOException refused = assertThrows(IOException.class, () -> dev.setReadOnly(false));
                String why = refused.getMessage();
                assertTrue(
                        why.contains("in use by pid " + reader.pid() + " 'qemu-io")
                                && why.contains("stays read-only")
                                && !why.contains(
                                        "pid " + ProcessHandle.current().pid()),
                        why);
                assertTrue(img.readOnly(), "the disk stays read-only");
                assertEquals(BlkRequests.S_IOERR, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));

                reader.destroyForcibly().waitFor();
                dev.setReadOnly(false);
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)), "writable now");
                assertReadersRefused(p);
            } finally {
                reader.destroyForcibly().waitFor();
            }
        }
    }

    /**
     * Another export of this daemon reads the image (an NBD export's shared lock, on an open file description of its
     * own): switching the disk writable is refused naming this process, with what to do about it — the refusal said
     * "another process (not visible in /proc here)" and to stop it. Once that export is gone the switch works.
     */
    @Test
    void aSwitchRefusedByAnotherExportOfThisProcessNamesIt() throws Exception {
        Path p = disk();
        try (RawImage img = RawImage.open(p, false, false)) {
            img.setReadOnly(true);
            BlkDevice dev = new BlkDevice("switch", img, 1, "s");
            ImageLock nbd = ImageLock.holdForExport(p, true, "nbd export");
            try (VhostUserServer server = serve(dev);
                    EventFd call = EventFd.create(true);
                    BlkTestDriver d = frontend(call)) {
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.flush()), "served beside the NBD export");
                String why = assertThrows(IOException.class, () -> dev.setReadOnly(false))
                        .getMessage();
                assertTrue(
                        why.contains("in use by pid " + ProcessHandle.current().pid() + " (this process)")
                                && why.contains("remove this process's other export of the image"),
                        why);
                assertTrue(img.readOnly(), "the disk stays read-only");
                nbd.close();
                dev.setReadOnly(false);
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)), "writable now");
            } finally {
                nbd.close();
            }
        }
    }

    /**
     * A switch to read-only whose write-back fails is refused, but leaves the disk read-only (a raw image stops the
     * guest's writes first, as what matters most then): the next frontend takes a shared lock, as for any read-only
     * disk, so a QEMU reader is let in. The device kept its lock type writable then, and a frontend took the image
     * exclusively while it could not write it.
     */
    @Test
    void aSwitchToReadOnlyWhoseWriteBackFailedLetsTheNextFrontendShare() throws Exception {
        Path p = disk();
        try (RawImage img = RawImage.open(p, false, false);
                EventFd call = EventFd.create(true)) {
            BlkDevice dev = new BlkDevice("switch", img, 1, "s");
            assertThrows(IOException.class, () -> img.flushCompleted(-io.iovirt.linux.Errno.EIO));
            IOException failed = assertThrows(IOException.class, () -> dev.setReadOnly(true));
            assertTrue(failed.getMessage().contains("fdatasync"), failed.getMessage());
            assertTrue(img.readOnly(), "read-only, though its write-back failed");
            try (VhostUserServer server = serve(dev);
                    BlkTestDriver d = frontend(call)) {
                assertEquals(BlkRequests.S_IOERR, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                assertReaderLetIn(p);
            }
        }
    }

    /**
     * The lock a frontend takes is of the type the disk has when it starts, however the disk was switched while no
     * frontend ran (no lock is held then, so such a switch always works, also before the first frontend): the device
     * took the lock of the type its first frontend had found for every later one — shared for a disk switched
     * writable since (written under a shared lock), exclusive for one switched read-only (QEMU readers refused).
     */
    @Test
    void eachFrontendTakesTheLockOfTheDisksTypeThen() throws Exception {
        Path p = disk();
        try (RawImage img = RawImage.open(p, false, false);
                EventFd call = EventFd.create(true)) {
            img.setReadOnly(true);
            BlkDevice dev = new BlkDevice("switch", img, 1, "s");
            try (VhostUserServer server = serve(dev)) {
                try (BlkTestDriver d = frontend(call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.flush()));
                    assertReaderLetIn(p);
                }
                awaitUnlocked(p);
                dev.setReadOnly(false);
                try (BlkTestDriver d = frontend(call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                    assertReadersRefused(p);
                }
                awaitUnlocked(p);
                dev.setReadOnly(true);
                try (BlkTestDriver d = frontend(call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.flush()));
                    assertReaderLetIn(p);
                }
            }
        }
    }

    /** A disk switched writable before its first frontend started: that frontend takes the image for writing. */
    @Test
    void aSwitchBeforeTheFirstFrontendWorks() throws Exception {
        Path p = disk();
        try (RawImage img = RawImage.open(p, false, false);
                EventFd call = EventFd.create(true)) {
            img.setReadOnly(true);
            BlkDevice dev = new BlkDevice("switch", img, 1, "s");
            Process reader = QemuTools.readerHolding(p);
            try {
                dev.setReadOnly(false); // nothing held yet: a reader does not stop it (the frontend's start would)
            } finally {
                reader.destroyForcibly().waitFor();
            }
            try (VhostUserServer server = serve(dev);
                    BlkTestDriver d = frontend(call)) {
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                assertReadersRefused(p);
            }
        }
    }

    /**
     * A disk switched read-only under a running frontend lets readers in once it no longer writes: its exclusive lock
     * becomes the shared one in place (qemu-io -r and qemu-img info, with QEMU's locking, take the image), while a
     * writer is still kept out. The lock stayed exclusive until the frontend stopped its queues, refusing every reader
     * of an image nothing wrote any more.
     */
    @Test
    void aDiskSwitchedReadOnlyUnderAFrontendLetsReadersIn() throws Exception {
        Path p = disk();
        try (RawImage img = RawImage.open(p, false, false);
                EventFd call = EventFd.create(true)) {
            BlkDevice dev = new BlkDevice("switch", img, 2, "s");
            try (VhostUserServer server = serve(dev);
                    BlkTestDriver d = frontend(call)) {
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                assertReadersRefused(p);

                assertNull(dev.setReadOnly(true), "no write in flight: the lock is shared when the switch returns");
                assertReaderLetIn(p);
                QemuTools.ok("qemu-img", "info", "-f", "raw", p.toString());
                var writer = QemuTools.run("qemu-io", "-f", "raw", "-c", "write 0 4k", p.toString());
                assertTrue(writer.exit() != 0 && writer.output().contains("lock"), "a QEMU writer: " + writer);
                assertEquals(BlkRequests.S_IOERR, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.read(d.alloc(4096, 4096), 4096)));

                // and back: exclusive again, the readers refused
                assertNull(dev.setReadOnly(false));
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)), "writable now");
                assertReadersRefused(p);
            }
        }
    }

    /**
     * A switch to read-only that comes while its export is being removed (blk.set-readonly and blk.remove from two
     * control clients) starts no thread and changes nothing: the remove closes the image and the lock once the device
     * is quiescent, and a switching thread started after that check would write back and flush a closed image (and
     * device.close, finding it running, threw and left the lock's descriptor open).
     */
    @Test
    void aSwitchWhileTheExportIsRemovedStartsNoThreadOnTheImage() throws Exception {
        Path p = disk();
        try (RawImage img = RawImage.open(p, false, false)) {
            BlkDevice dev = new BlkDevice("removed", img, 1, "s");
            dev.retire();
            IOException e = assertThrows(IOException.class, () -> dev.setReadOnly(true));
            assertTrue(e.getMessage().contains("being removed"), e.getMessage());
            assertTrue(dev.quiescent(), "no thread of the device's runs");
            assertTrue(!img.readOnly(), "nothing changed");
            dev.close();
        }
    }

    /**
     * A raw disk switched read-only is not grown: its image lock is shared once the switch returns, and the readers
     * it lets in (qemu-io -r) let nobody resize the image. blk.resize truncated the file under them all the same (a
     * qcow2 image refuses it, EROFS).
     */
    @Test
    void aRawDiskSwitchedReadOnlyIsNotGrownUnderItsSharedLock() throws Exception {
        Path p = disk();
        try (RawImage img = RawImage.open(p, false, false);
                EventFd call = EventFd.create(true)) {
            BlkDevice dev = new BlkDevice("switch", img, 1, "s");
            try (VhostUserServer server = serve(dev);
                    BlkTestDriver d = frontend(call)) {
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                assertNull(dev.setReadOnly(true), "the lock is shared when the switch returns");

                IOException e = assertThrows(IOException.class, () -> dev.resize(2 << 20));
                assertTrue(e.getMessage().contains("read-only"), e.getMessage());
                assertEquals(1 << 20, Files.size(p), "the file was not grown under the shared lock");
                assertEquals(1 << 20, img.size());

                assertNull(dev.setReadOnly(false));
                dev.resize(2 << 20);
                assertEquals(2 << 20, Files.size(p), "writable again: grown");
            }
        }
    }

    /**
     * A write that passed its check before the switch to read-only and is still in flight (held after its data went
     * to the image, before it completes) keeps the lock exclusive: a reader let in now could see the data change. The
     * switch answers all the same, saying so; once the write has completed (and a flush after it succeeded) the lock
     * becomes shared by itself and a reader is let in.
     */
    @Test
    void aWriteInFlightAcrossTheSwitchKeepsTheLockExclusiveUntilItCompletes() throws Exception {
        Path p = disk();
        try (RawImage raw = RawImage.open(p, false, false);
                EventFd call = EventFd.create(true)) {
            HeldWrites img = new HeldWrites(raw);
            BlkDevice dev = new BlkDevice("switch", img, 1, "s", BlkDevice.IoEngine.SYNC);
            dev.shareWaitLimit(Duration.ofMillis(200)); // the switch answers while the write is held
            try (VhostUserServer server = serve(dev);
                    BlkTestDriver d = frontend(call);
                    AutoCloseable released = img.release::countDown) { // before the device stops its queue
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.flush()));
                long write = d.write(d.alloc(4096, 4096), 4096);
                assertTrue(img.held.await(20, TimeUnit.SECONDS), "the write is held in flight");

                String pending = dev.setReadOnly(true);
                assertTrue(pending != null && pending.contains("stays exclusive"), String.valueOf(pending));
                assertTrue(img.readOnly(), "read-only now, the write still in flight");
                assertReadersRefused(p);

                img.release.countDown();
                assertEquals(BlkRequests.S_OK, d.awaitStatus(write), "the write that passed its check completes");
                Await.until(Duration.ofSeconds(20), "a QEMU reader to be let in once the write completed", () -> {
                    try {
                        return QemuTools.run(qemuReader(p)).exit() == 0;
                    } catch (IOException e) {
                        throw new java.io.UncheckedIOException(e);
                    } catch (InterruptedException e) {
                        throw new IllegalStateException(e);
                    }
                });
            }
        }
    }

    /**
     * A guest write stuck in the kernel across the switch (the image's FUSE file system stopped: {@link
     * StoppableFuse}, a peer test: root, fuse2fs): blk.set-readonly answers all the same — the image refuses writes
     * from the start of the switch, its write-back waits for the file system — saying the lock stays exclusive, and it
     * does while the write is stuck. Once the file system answers and the write has completed, the lock becomes
     * shared by itself and a QEMU reader is let in. The switch waited for the file system (its write-back on the
     * control thread), and the lock stayed exclusive until the frontend stopped.
     */
    @Test
    @Tag("peer")
    void aWriteStuckInTheKernelAcrossTheSwitchKeepsTheLockExclusiveUntilItCompletes() throws Exception {
        switchedReadOnlyOverAStuckWrite(s -> {
            assertTrue(s.img().readOnly(), "read-only now, the write still stuck");
            assertEquals(FileIo.F_WRLCK, FileIo.ofdConflict(s.probe(), FileIo.F_WRLCK), "still exclusive");

            s.resume();
            Await.until(Duration.ofSeconds(20), "the lock to become shared", () -> {
                try {
                    return FileIo.ofdConflict(s.probe(), FileIo.F_WRLCK) == FileIo.F_RDLCK;
                } catch (LinuxException e) {
                    throw new IllegalStateException(e);
                }
            });
            assertReaderLetIn(s.path());
        });
    }

    /**
     * A raw disk on a {@link StoppableFuse} file system (a peer test) with a frontend whose guest write is stuck in
     * the kernel (the file system stopped, the queue thread waiting for it), switched to read-only: the switch answers
     * that the lock stays exclusive. Then {@code then} runs; the file system is resumed when it returns, at the latest.
     */
    private void switchedReadOnlyOverAStuckWrite(WhileStuck then) throws Exception {
        try (StoppableFuse fs = StoppableFuse.mount(dir)) {
            Path p = fs.file("disk.raw", 4 << 20);
            try (RawImage img = RawImage.open(p, false, false);
                    EventFd call = EventFd.create(true);
                    var probe = FileIo.open(p, FileIo.O_RDONLY)) { // before the stop: opening it then would wait
                BlkDevice dev = new BlkDevice("stuck", img, 1, "s", BlkDevice.IoEngine.SYNC);
                dev.shareWaitLimit(Duration.ofMillis(500));
                try (VhostUserServer server = serve(dev);
                        BlkTestDriver d = frontend(call);
                        AutoCloseable resumed = fs::resume) { // before the device stops its queue
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                    var fds = StoppableFuse.descriptorsOf(p, probe.get());
                    fs.stop();
                    long write = d.write(d.alloc(65536, 4096), 65536);
                    awaitBlockedOn(fds, "the queue thread");

                    String pending = dev.setReadOnly(true);
                    assertTrue(pending != null && pending.contains("stays exclusive"), String.valueOf(pending));
                    then.run(new StuckWrite(fs, p, img, dev, d, probe, write));
                }
            }
        }
    }

    /**
     * What {@link #switchedReadOnlyOverAStuckWrite} hands on: the disk's image at {@code path}, opened as {@code img}
     * and served by {@code dev} to the frontend {@code d}, whose request {@code write} is stuck; {@code probe}, an
     * open file description of the image of the test's own, to see its lock.
     */
    private record StuckWrite(
            StoppableFuse fs, Path path, RawImage img, BlkDevice dev, BlkTestDriver d, Fd probe, long write) {
        /** Resumes the file system: the stuck write completes. */
        void resume() throws Exception {
            fs.resume();
            assertEquals(BlkRequests.S_OK, d.awaitStatus(write), "the write that passed its check completes");
        }
    }

    /** The steps of a test of {@link #switchedReadOnlyOverAStuckWrite}. */
    private interface WhileStuck {
        void run(StuckWrite s) throws Exception;
    }

    /** Until a thread waits in the kernel for the stopped file system on one of {@code fds}. */
    private static void awaitBlockedOn(java.util.List<Integer> fds, String who) {
        Await.until(
                Duration.ofSeconds(20),
                who + " to wait for the stopped file system on " + fds,
                () -> !StoppableFuse.blockedOn(fds).isEmpty());
    }

    /**
     * A queue that stops with writes it gave up on in the kernel (its engine could not wait for its io_uring, and
     * closed it: the kernel may still carry them out) keeps the image locked: the device released the lock when that
     * last queue stopped, and a QEMU writer (or a migration's destination) could take the image while such a write
     * could still land. Here the ring is told nothing of the write (its submit only says queued), so the stop's wait
     * on the ring fails as a failing io_uring_enter would. The next frontend of the export does not make it shared on
     * a switch to read-only either; removing the export leaves the lock to the kernel, which drops it once nothing of
     * the image's open file description is in flight (nothing is, here).
     */
    @Test
    void writesGivenUpOnInTheKernelKeepTheImageLockedAfterTheFrontendStops() throws Exception {
        Path p = Files.write(dir.resolve("disk.raw"), new byte[1 << 20]);
        Path sock = dir.resolve("blk.sock");
        RawImage raw = RawImage.open(p, false, false);
        try (EventFd call = EventFd.create(true);
                var probe = FileIo.open(p, FileIo.O_RDONLY)) {
            LostWrites img = new LostWrites(raw);
            BlkDevice dev = new BlkDevice("lost", img, 1, "s", BlkDevice.IoEngine.IO_URING);
            try (VhostUserServer server = VhostUserServer.start(sock, dev)) {
                try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                    d.write(d.alloc(4096, 4096), 4096);
                    assertTrue(img.lost.await(20, TimeUnit.SECONDS), "the write is \"in the kernel\"");
                }
                Await.until(Duration.ofSeconds(20), "the frontend's queue to stop", () -> dev.worker(0) == null);
                assertEquals(
                        FileIo.F_WRLCK,
                        FileIo.ofdConflict(probe, FileIo.F_WRLCK),
                        "the write given up on may still land: the image stays locked");
                var writer = QemuTools.run("qemu-io", "-f", "raw", "-c", "write 0 4k", p.toString());
                assertTrue(writer.exit() != 0 && writer.output().contains("lock"), "a QEMU writer: " + writer);

                try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.flush()), "the export's next frontend is served");
                    String pending = dev.setReadOnly(true);
                    assertTrue(pending != null && pending.contains("stays exclusive"), String.valueOf(pending));
                    assertReadersRefused(p);
                }
            }
            raw.close(); // as the export's close does, before the device's
            dev.close();
            awaitUnlocked(p); // nothing of the image's open file description is in the kernel here
        } finally {
            raw.close();
        }
    }

    /**
     * An export removed while a write it gave up on is still in the kernel (stuck on a stopped FUSE file system,
     * {@link StoppableFuse}; a peer test: root, fuse2fs) keeps the image locked until that write has completed: the
     * device unlocked the image explicitly when it closed, so another writer could take it while the write could still
     * land. The write runs on a ring of the test's, which the engine knows nothing of — as a ring the engine closed
     * while its wait failed would be: the kernel carries it out all the same. Once the file system answers and that
     * ring is torn down the kernel drops the lock.
     */
    @Test
    @Tag("peer")
    void anExportRemovedWithAWriteStuckInTheKernelKeepsTheImageLockedUntilItCompletes() throws Exception {
        try (StoppableFuse fs = StoppableFuse.mount(dir)) {
            Path p = fs.file("disk.raw", 4 << 20);
            Path sock = dir.resolve("blk.sock");
            RawImage raw = RawImage.open(p, false, false);
            IoUring kernel = IoUring.create(8);
            try (EventFd call = EventFd.create(true);
                    var probe = FileIo.open(p, FileIo.O_RDONLY); // before the stop: opening it then would wait
                    AutoCloseable resumed = fs::resume) {
                LostWrites img = new LostWrites(raw, kernel);
                BlkDevice dev = new BlkDevice("stuck", img, 1, "s", BlkDevice.IoEngine.IO_URING);
                try (VhostUserServer server = VhostUserServer.start(sock, dev)) {
                    try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                        fs.stop();
                        d.write(d.alloc(4096, 4096), 4096);
                        assertTrue(img.lost.await(20, TimeUnit.SECONDS), "the write is handed on");
                        awaitBlockedOn(java.util.List.of(kernel.fd().get()), "the write on the test's ring");
                    }
                    Await.until(Duration.ofSeconds(20), "the frontend's queue to stop", () -> dev.worker(0) == null);
                }
                raw.close(); // as the export's close does (its final flush would wait for the file system)
                dev.close();
                assertEquals(
                        FileIo.F_WRLCK,
                        FileIo.ofdConflict(probe, FileIo.F_WRLCK),
                        "the write still in the kernel may land: the image stays locked");

                fs.resume();
                img.submitter.join();
                kernel.close(); // torn down once the write has completed: the last reference to the image goes
                awaitUnlocked(p);
            } finally {
                raw.close();
                kernel.close();
            }
        }
    }

    /**
     * A raw image whose ring writes are never handed to the kernel, though the engine is told they were (a lost
     * submission): the stop's wait on the ring fails, as a failing io_uring_enter would. Reported as direct I/O, so a
     * lone write goes to the ring too.
     */
    private static final class LostWrites extends ForwardingDiskImage {
        final CountDownLatch lost = new CountDownLatch(1);
        /** Where the writes really go, or null: a ring the engine knows nothing of, as one it closed would be. */
        private final IoUring elsewhere;
        /** The thread that enters {@link #elsewhere}: it may wait in the kernel for the write. */
        volatile Thread submitter;

        LostWrites(RawImage raw) {
            this(raw, null);
        }

        LostWrites(RawImage raw, IoUring elsewhere) {
            super(raw);
            this.elsewhere = elsewhere;
        }

        @Override
        public boolean direct() {
            return true;
        }

        @Override
        public ImageIo newContext(io.iovirt.linux.IoVec iov, java.lang.foreign.MemorySegment bounce) {
            return new ForwardingImageIo(delegate.newContext(iov, bounce)) {
                @Override
                public boolean submitWrite(IoUring ring, long offset, long userData) throws LinuxException {
                    if (elsewhere != null) { // handed to the kernel by a thread of its own: its entry may wait
                        assertTrue(io.submitWrite(elsewhere, offset, userData), "a write for the ring");
                        submitter = Thread.ofPlatform()
                                .daemon()
                                .name("lost write")
                                .start(() -> {
                                    try {
                                        elsewhere.submit();
                                    } catch (LinuxException e) {
                                        throw new IllegalStateException(e);
                                    }
                                });
                    }
                    lost.countDown();
                    return true;
                }
            };
        }
    }

    /**
     * A switch back to writable while the switch to read-only's write-back waits for a stopped file system ({@link
     * StoppableFuse}; a peer test) answers within its bound, as the switch to read-only does: the disk still read-only,
     * saying what is pending and what to do, the lock exclusive already. It waited on the control thread for the
     * image, which that write-back held, for as long as the file system did not answer. Once it answers the disk
     * becomes writable by itself.
     */
    @Test
    @Tag("peer")
    void aSwitchBackToWritableAnswersWhileTheWriteBackWaitsForAStoppedFileSystem() throws Exception {
        switchedReadOnlyOverAStuckWrite(s -> {
            String answer = answered(
                            switchAsync(s.dev(), false),
                            "the switch back to writable to answer while the file system is stopped")
                    .get();
            assertTrue(
                    answer != null && answer.contains("still read-only") && answer.contains("blk.set-readonly true"),
                    String.valueOf(answer));
            assertTrue(s.img().readOnly(), "read-only until the write-back has completed");
            assertEquals(FileIo.F_WRLCK, FileIo.ofdConflict(s.probe(), FileIo.F_WRLCK), "exclusive already");

            s.resume();
            Await.until(
                    Duration.ofSeconds(20),
                    "the disk to become writable by itself",
                    () -> !s.img().readOnly());
            assertEquals(BlkRequests.S_OK, s.d().awaitStatus(s.d().write(s.d().alloc(4096, 4096), 4096)), "writable");
            assertReadersRefused(s.path());
        });
    }

    /**
     * A qcow2 switch to read-only whose tables' first write-back waits for a stopped file system ({@link
     * StoppableFuse}; a peer test) holds its call until the write-back ends (the image takes writes until then); a
     * later blk.set-readonly answers within its bound all the same, refused, saying that the earlier one is still
     * under way and what to do. It waited behind the first for as long as the file system did not answer.
     */
    @Test
    @Tag("peer")
    void aSwitchAfterAQcow2SwitchWhoseWriteBackHangsAnswers() throws Exception {
        try (StoppableFuse fs = StoppableFuse.mount(dir)) {
            Path p = QemuTools.createQcow2(fs.file("first", 4096).getParent(), "disk.qcow2", "16M");
            try (Qcow2Image img = Qcow2Image.open(p, false);
                    AutoCloseable resumed = fs::resume) { // before the image is closed
                BlkDevice dev = new BlkDevice("stuck", img, 1, "s", BlkDevice.IoEngine.SYNC);
                dev.shareWaitLimit(Duration.ofMillis(500));
                var fds = StoppableFuse.descriptorsOf(p, -1);
                fs.stop();
                var first = switchAsync(dev, true);
                awaitBlockedOn(fds, "the switch to read-only");
                var second = answered(
                        switchAsync(dev, false),
                        "the next blk.set-readonly to answer while the first one's write-back waits");
                var refused = assertThrows(java.util.concurrent.ExecutionException.class, second::get);
                String why = refused.getCause().getMessage();
                assertTrue(
                        why.contains("earlier blk.set-readonly")
                                && why.contains("still under way")
                                && why.contains("nothing was changed"),
                        why);
                assertTrue(!first.isDone(), "the first switch still waits for its write-back");

                fs.resume();
                // answers once written back, not refused; no frontend holds a lock: nothing stays exclusive
                assertNull(first.get(20, TimeUnit.SECONDS), "no lock to report after the late write-back");
                assertTrue(img.readOnly());
                assertNull(dev.setReadOnly(false), "switches again once the first has answered");
            }
        }
    }

    /** {@code call}, once it has answered: {@code what} is what the wait for it is for. */
    private static <T> java.util.concurrent.CompletableFuture<T> answered(
            java.util.concurrent.CompletableFuture<T> call, String what) {
        Await.until(Duration.ofSeconds(20), what, call::isDone);
        return call;
    }

    /**
     * {@code dev.setReadOnly(readOnly)} on a platform thread of its own: not on the common pool, which may have one
     * worker on 2 cores, where a second switch could wait behind a first one blocked on its write-back.
     */
    private static java.util.concurrent.CompletableFuture<String> switchAsync(BlkDevice dev, boolean readOnly) {
        var call = new java.util.concurrent.CompletableFuture<String>();
        Thread.ofPlatform().daemon().name("set-readonly " + readOnly).start(() -> {
            try {
                call.complete(dev.setReadOnly(readOnly));
            } catch (IOException | RuntimeException e) {
                call.completeExceptionally(e);
            }
        });
        return call;
    }

    /**
     * A qcow2 disk switched read-only whose next frontend finds a dirty bit and an autoclear bit another program left
     * meanwhile (qemu-io that died with lazy refcounts, after qemu-img added a persistent bitmap) reads the image
     * again without writing it: its lock is shared, and a QEMU reader holds the image beside it. The refresh repaired
     * the refcounts and cleared the autoclear bits, writing under the shared lock. As QEMU does for a read-only open,
     * the image is served as it is; the repair is done by the first start once the disk is switched writable.
     */
    @Test
    void aQcow2ReadAgainUnderASharedLockWritesNothing() throws Exception {
        Path p = QemuTools.createQcow2(dir, "disk.qcow2", "16M", "lazy_refcounts=on");
        Path sock = dir.resolve("blk.sock");
        try (Qcow2Image img = Qcow2Image.open(p, false);
                EventFd call = EventFd.create(true)) {
            BlkDevice dev = new BlkDevice("q", img, 1, "s");
            try (VhostUserServer server = VhostUserServer.start(sock, dev)) {
                try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                    assertNull(dev.setReadOnly(true), "the lock is shared when the switch returns");
                }
                awaitUnlocked(p);
                // another program, between two frontends
                QemuTools.ok("qemu-img", "bitmap", "--add", p.toString(), "b0");
                QemuTools.qemuIo(p, "qcow2", "write -P 0x31 1M 64k", "abort");
                assertEquals(1, header(p, 72) & 1, "qemu-io left a dirty bit");
                assertEquals(1, header(p, 88) & 1, "qemu-img left an autoclear bit");
                byte[] before = Files.readAllBytes(p);

                Process reader = QemuTools.readerHolding(p, "qcow2");
                try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.read(d.alloc(4096, 4096), 4096)));
                    assertTrue(reader.isAlive(), "the QEMU reader shares the image");
                    assertTrue(java.util.Arrays.equals(before, Files.readAllBytes(p)), "written under a shared lock");
                } finally {
                    reader.destroyForcibly().waitFor();
                }
                awaitUnlocked(p);
                assertNull(dev.setReadOnly(false));
                try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) { // the next start, locked exclusive
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                }
                awaitUnlocked(p);
                assertEquals(0, header(p, 72) & 1, "repaired once writable");
                assertEquals(0, header(p, 88), "autoclear bits cleared once writable");
                QemuTools.check(p, false);
                QemuTools.qemuIoOk(p, "qcow2", "read -P 0x31 1M 64k");
            }
        }
    }

    /**
     * A qcow2 disk read again while read-only (its repair left for the switch to writable), whose frontend then
     * stopped, is switched writable with no frontend: the device holds no image lock then, and another program may
     * have changed the image meanwhile (here qemu-io, which repaired the dirty bit itself and allocated a cluster past
     * what this process read). The switch rebuilt the refcounts from the tables it had read, wrote them past the end
     * of the file it knew (over that cluster) and cleared the dirty bit, unlocked: the image was corrupt. The repair
     * is the next frontend's start's, which reads the image again under its exclusive lock.
     */
    @Test
    void aQcow2SwitchedWritableWithNoFrontendWritesNothingItReadBefore() throws Exception {
        Path p = QemuTools.createQcow2(dir, "disk.qcow2", "16M", "lazy_refcounts=on");
        Path sock = dir.resolve("blk.sock");
        try (Qcow2Image img = Qcow2Image.open(p, false);
                EventFd call = EventFd.create(true)) {
            BlkDevice dev = new BlkDevice("q", img, 1, "s");
            try (VhostUserServer server = VhostUserServer.start(sock, dev)) {
                try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                    assertNull(dev.setReadOnly(true), "the lock is shared when the switch returns");
                }
                awaitUnlocked(p);
                QemuTools.qemuIo(p, "qcow2", "write -P 0x31 1M 64k", "abort");
                assertEquals(1, header(p, 72) & 1, "qemu-io left a dirty bit");
                try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.read(d.alloc(4096, 4096), 4096)));
                }
                awaitUnlocked(p);
                // another program, with no frontend running: it repairs the dirty bit and allocates past the end
                QemuTools.qemuIoOk(p, "qcow2", "write -P 0x42 4M 64k");
                assertEquals(0, header(p, 72) & 1, "qemu-io repaired the image");
                byte[] before = Files.readAllBytes(p);

                assertNull(dev.setReadOnly(false));
                assertTrue(java.util.Arrays.equals(before, Files.readAllBytes(p)), "written with no image lock");
                QemuTools.check(p, false);

                try (BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                    assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
                    assertEquals(0, header(p, 72) & 1, "repaired by the start, under the exclusive lock");
                }
                awaitUnlocked(p);
                QemuTools.check(p, false);
                QemuTools.qemuIoOk(p, "qcow2", "read -P 0x31 1M 64k", "read -P 0x42 4M 64k");
            }
        }
    }

    /**
     * A qcow2 disk read again while read-only, switched writable while that frontend still runs (its lock made
     * exclusive first): the switch repairs what the refresh left before the first write.
     */
    @Test
    void aQcow2SwitchedWritableUnderItsFrontendIsRepairedAtOnce() throws Exception {
        Path p = QemuTools.createQcow2(dir, "disk.qcow2", "16M", "lazy_refcounts=on");
        Path sock = dir.resolve("blk.sock");
        try (Qcow2Image img = Qcow2Image.open(p, false);
                EventFd call = EventFd.create(true)) {
            BlkDevice dev = new BlkDevice("q", img, 1, "s");
            assertNull(dev.setReadOnly(true));
            QemuTools.qemuIo(p, "qcow2", "write -P 0x31 1M 64k", "abort");
            assertEquals(1, header(p, 72) & 1, "qemu-io left a dirty bit");
            try (VhostUserServer server = VhostUserServer.start(sock, dev);
                    BlkTestDriver d = new BlkTestDriver(sock, 1 << 20, call)) {
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.read(d.alloc(4096, 4096), 4096)));
                assertEquals(1, header(p, 72) & 1, "read-only: served as it is");
                assertNull(dev.setReadOnly(false));
                assertEquals(0, header(p, 72) & 1, "repaired by the switch, under the exclusive lock");
                assertEquals(BlkRequests.S_OK, d.awaitStatus(d.write(d.alloc(4096, 4096), 4096)));
            }
            awaitUnlocked(p);
            QemuTools.check(p, false);
            QemuTools.qemuIoOk(p, "qcow2", "read -P 0x31 1M 64k");
        }
    }

    /**
     * A switch to writable whose caller is interrupted while the image is busy answers that it is pending, as after
     * its wait's limit, and its end is reported all the same: the INFO line and the callback that has the daemon
     * write its state file again. The interrupted caller left the switch's thread believing it would report the end
     * itself, so nothing did: the state file kept the disk read-only.
     */
    @Test
    void aSwitchToWritableWhoseCallerIsInterruptedStillReportsItsEnd() throws Exception {
        Path p = Files.write(dir.resolve("disk.raw"), new byte[1 << 20]);
        try (RawImage raw = RawImage.open(p, false, false)) {
            CountDownLatch busy = new CountDownLatch(1);
            CountDownLatch release = new CountDownLatch(1);
            ForwardingDiskImage img = new ForwardingDiskImage(raw) {
                @Override
                public void setReadOnly(boolean readOnly) throws IOException {
                    if (!readOnly) { // the image busy: an earlier write-back on a slow file system
                        busy.countDown();
                        try {
                            release.await();
                        } catch (InterruptedException e) {
                            throw new IllegalStateException(e);
                        }
                    }
                    super.setReadOnly(readOnly);
                }
            };
            BlkDevice dev = new BlkDevice("i", img, 1, "s");
            assertNull(dev.setReadOnly(true));
            java.util.concurrent.atomic.AtomicInteger ended = new java.util.concurrent.atomic.AtomicInteger();
            dev.onSwitchEndedLate(ended::incrementAndGet);
            java.util.concurrent.CompletableFuture<String> answer = new java.util.concurrent.CompletableFuture<>();
            Thread caller = Thread.ofPlatform().start(() -> {
                try {
                    answer.complete(dev.setReadOnly(false));
                } catch (IOException | RuntimeException e) {
                    answer.completeExceptionally(e);
                }
            });
            assertTrue(busy.await(20, TimeUnit.SECONDS), "the switch's thread to reach the image");
            caller.interrupt();
            String pending = answer.get(20, TimeUnit.SECONDS);
            assertTrue(pending != null && pending.startsWith("interrupted"), String.valueOf(pending));
            release.countDown();
            Await.until(Duration.ofSeconds(20), "the switch's end to be reported", () -> ended.get() == 1);
            assertTrue(!img.readOnly(), "writable");
        }
    }

    /** The big-endian 64-bit field at {@code offset} of the image's header. */
    private static long header(Path p, long offset) throws IOException {
        try (var f = new java.io.RandomAccessFile(p.toFile(), "r")) {
            f.seek(offset);
            return f.readLong();
        }
    }

    /** A raw image whose first guest write is held after its data went to the file, until the test releases it. */
    private static final class HeldWrites extends ForwardingDiskImage {
        final CountDownLatch held = new CountDownLatch(1);
        final CountDownLatch release = new CountDownLatch(1);

        HeldWrites(RawImage raw) {
            super(raw);
        }

        @Override
        public ImageIo newContext(int maxSegments, int bounceBytes) {
            return new ForwardingImageIo(delegate.newContext(maxSegments, bounceBytes)) {
                @Override
                public void write(long offset) throws IOException {
                    io.write(offset);
                    if (held.getCount() > 0) {
                        held.countDown();
                        try {
                            release.await();
                        } catch (InterruptedException e) {
                            throw new java.io.InterruptedIOException();
                        }
                    }
                }

                @Override
                public boolean submitRead(IoUring ring, long offset, long userData) {
                    return false;
                }

                @Override
                public boolean submitWrite(IoUring ring, long offset, long userData) {
                    return false;
                }
            };
        }
    }

    /** A 1 MiB raw image, disk.raw in {@link #dir}, all zeroes. */
    private Path disk() throws IOException {
        return Files.write(dir.resolve("disk.raw"), new byte[1 << 20]);
    }

    /** Where {@link #serve} listens. */
    private Path socket() {
        return dir.resolve("blk.sock");
    }

    /** {@code dev} served on {@link #socket}. */
    private VhostUserServer serve(BlkDevice dev) throws IOException {
        return VhostUserServer.start(socket(), dev);
    }

    /** A frontend of the device {@link #serve} serves: a driver with 1 MiB of guest RAM, interrupts on {@code call}. */
    private BlkTestDriver frontend(EventFd call) throws IOException {
        return new BlkTestDriver(socket(), 1 << 20, call);
    }

    /** qemu-io reading the first 4 KiB of raw image {@code p} with -r, taking QEMU's shared image lock. */
    private static String[] qemuReader(Path p) {
        return new String[] {"qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", p.toString()};
    }

    /** A QEMU reader started now is let in (reads the image). */
    private static void assertReaderLetIn(Path p) throws IOException, InterruptedException {
        QemuTools.ok(qemuReader(p));
    }

    /** A QEMU reader started now is refused the image (a writer holds it). */
    private static void assertReadersRefused(Path p) throws IOException, InterruptedException {
        var late = QemuTools.run(qemuReader(p));
        assertTrue(late.exit() != 0 && late.output().contains("lock"), "a QEMU reader beside a writer: " + late);
    }

    /** Until the frontend's queues have stopped and the device has let go of the image. */
    private static void awaitUnlocked(Path p) throws IOException {
        try (var probe = FileIo.open(p, FileIo.O_RDONLY)) {
            Await.until(Duration.ofSeconds(20), "the device to release the image lock", () -> {
                try {
                    return FileIo.ofdConflict(probe, FileIo.F_WRLCK) == FileIo.F_UNLCK;
                } catch (LinuxException e) {
                    throw new IllegalStateException(e);
                }
            });
        }
    }
}
