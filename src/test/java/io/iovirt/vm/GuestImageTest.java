// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class GuestImageTest {

    @TempDir
    Path dir;

    @Test
    void manifestPrefersTheElfKernelAndFallsBackToBzImage() throws Exception {
        for (String f : new String[] {"vmlinux", "bzImage", "base.cpio", "fio.cpio"}) {
            Files.writeString(dir.resolve(f), f);
        }
        String common = "version=abc\nkernel_release=6.1.0-57-amd64\nbzimage=" + dir.resolve("bzImage") + "\ninitrd="
                + dir.resolve("base.cpio") + "\nfio_layer=" + dir.resolve("fio.cpio") + "\n";

        GuestImage withElf = GuestImage.parse(common + "kernel=" + dir.resolve("vmlinux") + "\n");
        assertEquals(dir.resolve("vmlinux"), withElf.kernel());
        assertEquals("6.1.0-57-amd64", withElf.kernelRelease());
        assertEquals(dir.resolve("fio.cpio"), withElf.fioLayer());

        assertEquals(dir.resolve("bzImage"), GuestImage.parse(common).kernel());
    }

    @Test
    void incompleteOrStaleManifestsSayWhatIsWrong() throws Exception {
        GuestException missing = assertThrows(GuestException.class, () -> GuestImage.parse("version=abc\n"));
        assertTrue(missing.getMessage().contains("kernel_release"), missing.getMessage());

        GuestException gone = assertThrows(
                GuestException.class,
                () -> GuestImage.parse(
                        "version=abc\nkernel_release=x\nbzimage=/nonexistent/bz\ninitrd=/nonexistent/i\nfio_layer=/x\n"));
        assertTrue(gone.getMessage().contains("delete the cache"), gone.getMessage());
    }

    @Test
    void findsTheBuildScriptOfThisCheckout() {
        Path script = GuestImage.locateScript();
        assertTrue(Files.isRegularFile(script), script.toString());
        assertTrue(script.endsWith(GuestImage.SCRIPT), script.toString());
    }
}
