// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.StoppableFuse;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The image lock on a file system that stops answering (fuse2fs stopped, {@link StoppableFuse}): its calls on a
 * held lock's descriptor do not wait for it. A peer test: it needs root, fuse2fs and /dev/fuse.
 */
@Tag("peer")
@Timeout(value = 120, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class ImageLockStoppedFsTest {
    @TempDir
    Path dir;

    /**
     * A refusal names the other user without asking the image's file system: a stat of the image's path waited for
     * a stopped FUSE daemon, holding the lock's monitor (and, in a blk device, the lock a frontend's start and
     * blk.set-readonly take), for as long as the daemon was stopped. Both refusals: a shared lock made exclusive
     * ({@link ImageLock#retype}), and an exclusive lock taken anew.
     */
    @Test
    void aRefusalNamesTheHolderWithoutWaitingForTheImagesFileSystem() throws Exception {
        try (StoppableFuse fs = StoppableFuse.mount(dir)) {
            Path img = fs.file("disk.raw", 1 << 20);
            Process reader = QemuTools.readerHolding(img);
            ImageLock ours = ImageLock.on(img, true, FileIo.open(img, FileIo.O_RDWR));
            ImageLock fresh = ImageLock.open(img, false);
            try {
                assertNull(ours.acquire(), "a reader beside the QEMU reader");
                fs.stop();
                String named = "in use by pid " + reader.pid() + " 'qemu-io";
                String retyped = CompletableFuture.supplyAsync(() -> {
                            try {
                                return ours.retype(false);
                            } catch (LinuxException e) {
                                throw new IllegalStateException(e);
                            }
                        })
                        .get(60, TimeUnit.SECONDS);
                assertTrue(retyped != null && retyped.contains(named), retyped);
                String taken = CompletableFuture.supplyAsync(() -> {
                            try {
                                return fresh.acquire();
                            } catch (LinuxException e) {
                                throw new IllegalStateException(e);
                            }
                        })
                        .get(60, TimeUnit.SECONDS);
                assertTrue(taken != null && taken.contains("pid " + reader.pid() + " 'qemu-io"), taken);
            } finally {
                fs.resume(); // a call still waiting returns, and lets go of the lock's monitor
                ours.close();
                fresh.close();
                reader.destroyForcibly().waitFor();
            }
        }
    }
}
