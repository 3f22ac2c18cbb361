// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.compose;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.HostPaths;
import io.iovirt.storage.qcow2.QemuTools;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * An FV disk of a composed VM holds its image's lock for the VM's life, as an NBD export of the daemon does: QEMU's
 * NBD client takes no lock on the file, so without it another QEMU could write the image under the guest.
 */
@Tag("peer") // qemu-io as the other user of the image
class VmComposerImageLockTest {
    @TempDir
    Path tmp;

    private VmComposer compose(Path image, boolean readOnly) throws IOException {
        VmSpec.Disk disk = new VmSpec.Disk(VmSpec.Kind.FV, image, readOnly, VmSpec.Bus.NVME);
        VmSpec spec = new VmSpec("vm-a", VmSpec.Profile.PVHVM, 512, 1, List.of(disk), List.of(), List.of(), List.of());
        return VmComposer.compose(spec, tmp, HostPaths.system().withStateDir(tmp.resolve("state")));
    }

    private Path image() throws IOException {
        Path img = tmp.resolve("disk.raw");
        Files.write(img, new byte[1 << 20]);
        return img;
    }

    @Test
    void aWritableFvDiskKeepsOtherWritersAwayWhileTheVmRuns() throws Exception {
        Path img = image();
        try (VmComposer c = compose(img, false)) {
            QemuTools.Result w = QemuTools.qemuIo(img, "raw", "write 0 4k");
            assertNotEquals(0, w.exit(), w.output());
            assertTrue(w.output().contains("lock"), w.output());
        }
        QemuTools.Result after = QemuTools.qemuIo(img, "raw", "write 0 4k");
        assertEquals(0, after.exit(), after.output());
    }

    @Test
    void aReadOnlyFvDiskSharesItsImageWithReadersButNotWriters() throws Exception {
        Path img = image();
        try (VmComposer c = compose(img, true)) {
            QemuTools.Result w = QemuTools.qemuIo(img, "raw", "write 0 4k");
            assertNotEquals(0, w.exit(), w.output());
            QemuTools.ok("qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", img.toString());
        }
    }

    @Test
    void aDiskAnotherWriterHoldsIsRefusedBeforeTheVmStarts() throws Exception {
        Path img = image();
        Process writer = QemuTools.writerHolding(img);
        try {
            IOException e =
                    assertThrows(IOException.class, () -> compose(img, false).close());
            assertTrue(e.getMessage().contains("in use"), e.getMessage());
        } finally {
            writer.destroyForcibly().waitFor();
        }
    }
}
