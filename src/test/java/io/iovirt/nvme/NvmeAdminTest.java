// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nvme;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.FakeHost;
import io.iovirt.util.ActionableException;
import java.lang.foreign.MemoryLayout.PathElement;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The NVMe admin passthrough structure and the Identify data decoders, checked against the offsets of
 * linux/nvme_ioctl.h and the NVMe base specification. The commands themselves run against QEMU's NVMe controller
 * in HostNestedGuestTest.
 */
class NvmeAdminTest {
    @TempDir
    Path tmp;

    @Test
    void passthruLayoutMatchesTheKernelHeader() {
        assertEquals(72, NvmeAdmin.PASSTHRU_CMD.byteSize());
        assertEquals(0xC0484E41L, NvmeAdmin.NVME_IOCTL_ADMIN_CMD);
        String[] fields = {
            "opcode",
            "flags",
            "nsid",
            "cdw2",
            "metadata",
            "addr",
            "metadata_len",
            "data_len",
            "cdw10",
            "cdw11",
            "cdw15",
            "timeout_ms",
            "result"
        };
        long[] offsets = {0, 1, 4, 8, 16, 24, 32, 36, 40, 44, 60, 64, 68};
        for (int i = 0; i < fields.length; i++) {
            assertEquals(offsets[i], NvmeAdmin.PASSTHRU_CMD.byteOffset(PathElement.groupElement(fields[i])), fields[i]);
        }
    }

    @Test
    void virtualizationManagementDword10() {
        // act in bits 3:0, rt in 10:8, cntlid in 31:16.
        assertEquals(0x0002_0108, NvmeAdmin.virtMgmtCdw10(NvmeAdmin.ACT_SECONDARY_ASSIGN, NvmeAdmin.RT_VI, 2));
        assertEquals(0x0001_0008, NvmeAdmin.virtMgmtCdw10(NvmeAdmin.ACT_SECONDARY_ASSIGN, NvmeAdmin.RT_VQ, 1));
        assertEquals(0x0003_0009, NvmeAdmin.virtMgmtCdw10(NvmeAdmin.ACT_SECONDARY_ONLINE, 0, 3));
    }

    @Test
    void decodesPrimaryCapsAndSecondaryList() {
        byte[] caps = new byte[4096];
        le16(caps, 0, 0x41);
        le32(caps, 32, 4); // vqfrt
        le32(caps, 36, 0); // vqrfa
        le16(caps, 40, 0); // vqrfap
        le16(caps, 42, 2); // vqprt
        le16(caps, 44, 2); // vqfrsm
        le32(caps, 64, 2); // vifrt
        le16(caps, 74, 1); // viprt
        le16(caps, 76, 1); // vifrsm
        NvmeAdmin.PrimaryCaps p = NvmeAdmin.PrimaryCaps.parse(caps);
        assertEquals(new NvmeAdmin.PrimaryCaps(0x41, 4, 0, 0, 2, 2, 0, 2, 0, 0, 1, 1, 0), p);

        byte[] list = new byte[4096];
        list[0] = 2;
        secondary(list, 0, 0x42, 0x41, true, 1, 2, 1);
        secondary(list, 1, 0x43, 0x41, false, 2, 0, 0);
        List<NvmeAdmin.SecondaryController> sc = NvmeAdmin.SecondaryController.parseList(list);
        assertEquals(
                List.of(
                        new NvmeAdmin.SecondaryController(0x42, 0x41, true, 1, 2, 1),
                        new NvmeAdmin.SecondaryController(0x43, 0x41, false, 2, 0, 0)),
                sc);
        list[0] = (byte) 200; // more than a 4 KiB page can hold: clamped to 127 entries
        assertEquals(127, NvmeAdmin.SecondaryController.parseList(list).size());

        byte[] id = new byte[4096];
        le16(id, 78, 0x41);
        le16(id, 256, 1 << 7);
        System.arraycopy("SRIOVPF   ".getBytes(), 0, id, 4, 10);
        IdentifyController c = IdentifyController.parse(id);
        assertEquals(0x41, c.controllerId());
        assertTrue(c.virtualizationManagement());
        assertEquals("SRIOVPF", c.serial());
        le16(id, 256, 0x7f);
        assertFalse(IdentifyController.parse(id).virtualizationManagement());
    }

    @Test
    void statusNamesComeFromTheSpecification() {
        assertEquals("Invalid Secondary Controller State, do not retry", NvmeAdmin.statusName(0x4120));
        assertEquals("Invalid Number of Controller Resources", NvmeAdmin.statusName(0x121));
        assertEquals("Invalid Command Opcode: the controller does not implement it", NvmeAdmin.statusName(0x1));
    }

    @Test
    void aRegularFileIsNotAController() {
        Path fake = tmp.resolve("nvme0");
        FakeHost.write(fake, "");
        ActionableException e = assertThrows(ActionableException.class, () -> {
            try (NvmeAdmin a = NvmeAdmin.open(fake)) {
                a.identify(NvmeAdmin.CNS_CONTROLLER, 0);
            }
        });
        assertTrue(e.getMessage().contains("ENOTTY"), e.getMessage());
        assertTrue(e.getMessage().contains("is not an NVMe controller character device"), e.getMessage());
        ActionableException missing =
                assertThrows(ActionableException.class, () -> NvmeAdmin.open(tmp.resolve("nvme9")));
        assertTrue(missing.getMessage().contains("ENOENT"), missing.getMessage());
    }

    private static void secondary(byte[] b, int i, int scid, int pcid, boolean online, int vfn, int nvq, int nvi) {
        int o = 32 + 32 * i;
        le16(b, o, scid);
        le16(b, o + 2, pcid);
        b[o + 4] = (byte) (online ? 1 : 0);
        le16(b, o + 8, vfn);
        le16(b, o + 10, nvq);
        le16(b, o + 12, nvi);
    }

    private static void le16(byte[] b, int o, int v) {
        b[o] = (byte) v;
        b[o + 1] = (byte) (v >> 8);
    }

    private static void le32(byte[] b, int o, int v) {
        le16(b, o, v);
        le16(b, o + 2, v >>> 16);
    }
}
