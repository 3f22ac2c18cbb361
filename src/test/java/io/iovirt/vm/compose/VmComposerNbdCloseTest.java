// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.compose;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.HostPaths;
import io.iovirt.linux.PageCache;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.DiskTempDir;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Closing a composed VM lets go of its FV disks' images as {@code serve nbd} does at exit: the NBD server stops and
 * has no request left, then each image is flushed, then closed. Before, the images were closed without a flush: a
 * write QEMU's NBD client had been told was done, but had not flushed, was left in the page cache only — lost if the
 * host went down before writeback. The check is the page cache's own count of the file's pages not on disk.
 */
@Tag("peer") // qemu-io as QEMU's NBD client
@Timeout(300)
class VmComposerNbdCloseTest {
    @TempDir(factory = DiskTempDir.class) // not a tmpfs /tmp: its pages are never clean
    Path tmp;

    @Test
    void aWriteAcknowledgedBeforeCloseIsOnDiskAfterIt() throws Exception {
        Path img = tmp.resolve("disk.raw"); // on a disk file system (cachestat shows its dirty pages), not tmpfs
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(4 << 20);
            f.getFD().sync();
        }
        VmSpec.Disk disk = new VmSpec.Disk(VmSpec.Kind.FV, img, false, VmSpec.Bus.NVME);
        VmSpec spec = new VmSpec("vm-f", VmSpec.Profile.PVHVM, 512, 1, List.of(disk), List.of(), List.of(), List.of());
        Path run = tmp.resolve("run");
        Files.createDirectory(run);
        long dirtyBeforeClose;
        Process qemu = null;
        try (VmComposer c = VmComposer.compose(spec, run, HostPaths.system().withStateDir(tmp.resolve("state")))) {
            String uri = "nbd+unix:///disk0?socket=" + run.resolve("nbd.sock");
            // QEMU's client, still connected when the VM is closed, as a guest's QEMU is, with a write acknowledged and
            // not flushed yet: cache=writeback sends it without FUA (qemu-io's default, writethrough, sets FUA), and
            // QEMU flushes when it closes the disk, which comes after
            qemu = new ProcessBuilder("qemu-io", "-t", "writeback", "-f", "raw", uri)
                    .redirectErrorStream(true)
                    .start();
            qemu.getOutputStream().write("write -P 0xab 0 1M\n".getBytes(StandardCharsets.US_ASCII));
            qemu.getOutputStream().flush();
            String out = awaitOutput(qemu, "wrote 1048576/1048576 bytes");
            assertTrue(out.contains("wrote 1048576/1048576 bytes"), out);
            dirtyBeforeClose = PageCache.notOnDisk(img);
            // else the check below proves nothing: the write went to disk before the close (and without its flush)
            assertTrue(dirtyBeforeClose > 0, "the acknowledged write is on disk already, before the close");
        } finally {
            if (qemu != null) {
                qemu.getOutputStream().close(); // qemu-io ends at the end of its input
                if (!qemu.waitFor(60, TimeUnit.SECONDS)) {
                    qemu.destroyForcibly();
                }
            }
        }
        assertEquals(
                0,
                PageCache.notOnDisk(img),
                "pages of the image not on disk after close (" + dirtyBeforeClose + " before it)");
        String read = QemuTools.ok("qemu-io", "-r", "-f", "raw", "-c", "read -P 0xab 0 1M", img.toString());
        assertFalse(read.contains("Pattern verification failed"), read);
    }

    /** qemu-io's output up to the first line containing {@code text} (or all of it, when it exits first). */
    private static String awaitOutput(Process p, String text) throws IOException {
        StringBuilder out = new StringBuilder();
        BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
        StringBuilder line = new StringBuilder();
        int ch;
        while ((ch = r.read()) >= 0) {
            out.append((char) ch);
            if (ch == '\n') {
                if (line.toString().contains(text)) {
                    break;
                }
                line.setLength(0);
            } else {
                line.append((char) ch);
            }
        }
        return out.toString();
    }
}
