// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.compose;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.devices.blk.BlkTestDriver;
import io.iovirt.host.HostPaths;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.PageCache;
import io.iovirt.testing.DiskTempDir;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Closing a composed VM flushes its PV disks' images too, as it does the FV disks' (VmComposerNbdCloseTest) and as
 * {@code vm run} says it does at exit ("closing the backends (images flushed)"). The PV images were closed without
 * a flush: a write the guest had been told was done, not flushed yet, stayed in the page cache only.
 */
@Timeout(120)
class VmComposerPvCloseTest {
    @TempDir(factory = DiskTempDir.class) // not a tmpfs /tmp: its pages are never clean
    Path tmp;

    @Test
    void aWriteCompletedBeforeCloseIsOnDiskAfterIt() throws Exception {
        Path img = tmp.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(4 << 20);
            f.getFD().sync();
        }
        VmSpec.Disk disk = new VmSpec.Disk(VmSpec.Kind.PV, img, false, VmSpec.Bus.AHCI);
        VmSpec spec = new VmSpec("vm-p", VmSpec.Profile.PVHVM, 512, 1, List.of(disk), List.of(), List.of(), List.of());
        Path run = Files.createDirectory(tmp.resolve("run"));
        long dirtyBeforeClose;
        try (VmComposer c = VmComposer.compose(spec, run, HostPaths.system().withStateDir(tmp.resolve("state")));
                EventFd call = EventFd.create(true);
                BlkTestDriver d = new BlkTestDriver(run.resolve("disk0.sock"), 4 << 20, call)) {
            long data = d.alloc(1 << 20, 4096);
            d.ram.segment().asSlice(data, 1 << 20).fill((byte) 0xab);
            assertEquals(0, d.awaitStatus(d.write(data, 1 << 20)), "the guest's write");
            dirtyBeforeClose = PageCache.notOnDisk(img);
            // else the check below proves nothing: the write went to disk before the close (and without its flush)
            assertTrue(dirtyBeforeClose > 0, "the completed write is on disk already, before the close");
        }
        assertEquals(
                0,
                PageCache.notOnDisk(img),
                "pages of the image not on disk after close (" + dirtyBeforeClose + " before it)");
        byte[] back = new byte[1 << 20];
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "r")) {
            f.readFully(back);
        }
        for (byte b : back) {
            assertEquals((byte) 0xab, b);
        }
    }
}
