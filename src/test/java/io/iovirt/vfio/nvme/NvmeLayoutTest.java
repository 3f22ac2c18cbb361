// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.nvme.IdentifyController;
import io.iovirt.nvme.IdentifyNamespace;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import org.junit.jupiter.api.Test;

/** Queue entry layouts, register decoding and Identify parsing, against the NVMe specification's byte positions. */
class NvmeLayoutTest {
    @Test
    void submissionEntryIs64BytesWithTheSpecsOffsets() {
        assertEquals(64, Sqe.SIZE);
        assertEquals(0, Sqe.OPCODE);
        assertEquals(1, Sqe.FLAGS);
        assertEquals(2, Sqe.CID);
        assertEquals(4, Sqe.NSID);
        assertEquals(16, Sqe.MPTR);
        assertEquals(24, Sqe.PRP1);
        assertEquals(32, Sqe.PRP2);
        assertEquals(40, Sqe.CDW10);
        assertEquals(44, Sqe.CDW11);
        assertEquals(48, Sqe.CDW12);
        assertEquals(60, Sqe.CDW15);
    }

    @Test
    void completionEntryIs16BytesWithTheSpecsOffsets() {
        assertEquals(16, Cqe.SIZE);
        assertEquals(0, Cqe.DW0);
        assertEquals(4, Cqe.DW1);
        assertEquals(8, Cqe.SQHD);
        assertEquals(10, Cqe.SQID);
        assertEquals(12, Cqe.CID);
        assertEquals(14, Cqe.STATUS);
    }

    @Test
    void aReadCommandEncodesAsTheSpecSays() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment sq = a.allocate(3 * 64);
            sq.fill((byte) 0xee); // a reused queue: every byte of the entry must be rewritten, none around it
            long lba = 0x1_2345_6789L;
            Sqe.write(
                    sq,
                    64,
                    NvmeRegs.NVM_READ,
                    0x1234,
                    1,
                    0x100000,
                    0x101000,
                    (int) lba,
                    (int) (lba >>> 32),
                    7,
                    0,
                    0,
                    0);
            MemorySegment slot = sq.asSlice(64, 64);
            byte[] untouched = new byte[64];
            java.util.Arrays.fill(untouched, (byte) 0xee);
            assertArrayEquals(untouched, sq.asSlice(0, 64).toArray(JAVA_BYTE));
            assertArrayEquals(untouched, sq.asSlice(128, 64).toArray(JAVA_BYTE));
            byte[] expected = HexFormat.of()
                    .parseHex("02003412" + "01000000" + "00000000" + "00000000" + "0000000000000000"
                            + "0000100000000000" + "0010100000000000"
                            + "89674523" + "01000000" + "07000000" + "00000000" + "00000000" + "00000000");
            assertArrayEquals(expected, slot.toArray(JAVA_BYTE));
        }
    }

    @Test
    void capabilitiesDecode() {
        // QEMU 7.2 nvme: MQES 2047, CQR, TO 15 (7.5 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4
        NvmeRegs.Capabilities c = new NvmeRegs.Capabilities(0x0040_0020_0f01_07ffL | (1L << 37) | (4L << 52));
        assertEquals(2048, c.maxQueueEntries());
        assertTrue(c.contiguousQueuesRequired());
        assertEquals(7500, c.readyTimeoutMillis());
        assertEquals(4, c.doorbellStride());
        assertTrue(c.nvmCommandSet());
        assertEquals(12, c.minPageShift());
        assertEquals(16, c.maxPageShift());
        assertEquals(16, new NvmeRegs.Capabilities(2L << 32).doorbellStride());
        assertEquals(0x1000, NvmeRegs.sqTailDoorbell(0, 4));
        assertEquals(0x1004, NvmeRegs.cqHeadDoorbell(0, 4));
        assertEquals(0x1008, NvmeRegs.sqTailDoorbell(1, 4));
        assertEquals(0x1030, NvmeRegs.cqHeadDoorbell(1, 16));
        assertEquals("1.4", NvmeRegs.version(0x00010400));
        assertEquals("2.0.1", NvmeRegs.version(0x00020001));
    }

    @Test
    void doorbellsOutsideBar0AreRefused() throws Exception {
        // QEMU 7.2's BAR0 is 16 KiB: DSTRD 0 leaves queue 1's CQ head doorbell at 0x100c
        NvmeRegs.requireDoorbellsInside("d", new NvmeRegs.Capabilities(0x0040_0020_0f01_07ffL), 1, 16384);
        // DSTRD 9 (2 KiB apart): 0x2800..0x2803, inside; DSTRD 10 (4 KiB apart): 0x4000, one stride too far
        NvmeRegs.requireDoorbellsInside("d", new NvmeRegs.Capabilities(9L << 32), 1, 16384);
        NvmeRegs.requireDoorbellsInside("d", new NvmeRegs.Capabilities(10L << 32), 1, 0x4004);
        NvmeException e = assertThrows(
                NvmeException.class,
                () -> NvmeRegs.requireDoorbellsInside("0000:01:00.0", new NvmeRegs.Capabilities(10L << 32), 1, 16384));
        assertEquals(
                "0000:01:00.0: CAP.DSTRD 10 spaces the doorbells 4096 bytes apart, which puts queue 1's completion "
                        + "doorbell at offset 0x4000, beyond BAR0's 16384 bytes — the controller's registers contradict "
                        + "its BAR (faulty firmware or emulation), so it cannot be driven; check the device's firmware "
                        + "or use another controller",
                e.getMessage());
        // the largest stride, 128 KiB
        assertThrows(
                NvmeException.class,
                () -> NvmeRegs.requireDoorbellsInside("d", new NvmeRegs.Capabilities(15L << 32), 1, 16384));
    }

    @Test
    void statusWordsDecodeToNames() {
        int word = (0x4000 | 0x04) << 1 | 1; // DNR, generic, Data Transfer Error, phase 1
        int status = NvmeStatus.fromCqeWord(word);
        assertEquals(NvmeStatus.SC_DATA_TRANSFER_ERROR, NvmeStatus.statusCode(status));
        assertTrue(NvmeStatus.doNotRetry(status));
        assertFalse(NvmeStatus.success(status));
        assertEquals("Data Transfer Error (SCT 0x0, SC 0x04, DNR)", NvmeStatus.describe(status));
        assertEquals("LBA Out of Range (SCT 0x0, SC 0x80)", NvmeStatus.describe(0x80));
        assertEquals("Invalid Queue Identifier (SCT 0x1, SC 0x01)", NvmeStatus.describe(0x101));
        assertEquals(
                "Unrecovered Read Error (SCT 0x2, SC 0x81, more info in the error log)",
                NvmeStatus.describe(0x2000 | 0x281));
        assertTrue(NvmeStatus.success(NvmeStatus.fromCqeWord(1)));
        assertTrue(NvmeStatus.success(0x4000), "DNR without a code is still success");
        NvmeException e = NvmeException.failed("Read LBA 9+1", status);
        assertTrue(e.getMessage().startsWith("Read LBA 9+1 failed: Data Transfer Error"), e.getMessage());
        assertTrue(e.getMessage().contains("IOMMU"), e.getMessage());
        assertEquals(status, e.status());
    }

    private static void putAscii(MemorySegment d, long off, int len, String s) {
        byte[] b = new byte[len];
        java.util.Arrays.fill(b, (byte) ' ');
        byte[] v = s.getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(v, 0, b, 0, v.length);
        MemorySegment.copy(MemorySegment.ofArray(b), 0, d, off, len);
    }

    @Test
    void identifyControllerFieldsComeFromTheirOffsets() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment d = a.allocate(4096);
            d.set(JAVA_BYTE, 0, (byte) 0x36);
            d.set(JAVA_BYTE, 1, (byte) 0x1b);
            putAscii(d, 4, 20, "iovirt-test-1");
            putAscii(d, 24, 40, "QEMU NVMe Ctrl");
            putAscii(d, 64, 8, "7.2.22");
            d.set(JAVA_BYTE, 77, (byte) 7);
            d.set(JAVA_BYTE, 78, (byte) 5);
            d.set(JAVA_INT, 80, 0x10400);
            d.set(JAVA_BYTE, 512, (byte) 0x66);
            d.set(JAVA_BYTE, 513, (byte) 0x44);
            d.set(JAVA_INT, 516, 256);
            IdentifyController id = IdentifyController.parse(d);
            assertEquals(0x1b36, id.vendorId());
            assertEquals("iovirt-test-1", id.serial());
            assertEquals("QEMU NVMe Ctrl", id.model());
            assertEquals("7.2.22", id.firmware());
            assertEquals(5, id.controllerId());
            assertEquals(256, id.namespaces());
            assertTrue(id.supportsStandardEntrySizes());
            assertEquals(512 * 1024, id.maxTransferBytes(12));
            d.set(JAVA_BYTE, 512, (byte) 0x77); // requires 128-byte SQ entries
            assertFalse(IdentifyController.parse(d).supportsStandardEntrySizes());
            d.set(JAVA_BYTE, 10, (byte) 0x01); // a control character in the serial is shown, not passed through
            assertEquals("iovirt?test-1", IdentifyController.parse(d).serial());
        }
    }

    @Test
    void aHugeMdtsMeansNoLimitInsteadOfWrappingAround() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment d = a.allocate(4096);
            d.set(JAVA_BYTE, 512, (byte) 0x66);
            d.set(JAVA_BYTE, 513, (byte) 0x44);
            d.set(JAVA_BYTE, 77, (byte) 50);
            assertEquals(1L << 62, IdentifyController.parse(d).maxTransferBytes(12));
            for (int mdts : new int[] {51, 52, 60, 64, 255}) {
                d.set(JAVA_BYTE, 77, (byte) mdts);
                // 1L << 64 is 1 in Java: a limit of one byte, and every transfer refused
                assertEquals(0, IdentifyController.parse(d).maxTransferBytes(12), "MDTS " + mdts);
            }
            d.set(JAVA_BYTE, 77, (byte) 36);
            assertEquals(0, IdentifyController.parse(d).maxTransferBytes(27), "2^63 with 128 MiB pages");
            assertEquals(1L << 62, IdentifyController.parse(d).maxTransferBytes(26));
            assertThrows(
                    IllegalArgumentException.class,
                    () -> IdentifyController.parse(d).maxTransferBytes(64));
        }
    }

    @Test
    void identifyNamespaceGivesSizeAndBlockSizeOfTheFormatInUse() throws Exception {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment d = a.allocate(4096);
            d.set(JAVA_LONG, 0, 131072);
            d.set(JAVA_LONG, 8, 131072);
            d.set(JAVA_BYTE, 25, (byte) 1); // two formats
            d.set(JAVA_BYTE, 26, (byte) 1); // the second in use
            d.set(JAVA_INT, 128, 9 << 16);
            d.set(JAVA_INT, 132, 12 << 16 | 8);
            IdentifyNamespace ns = IdentifyNamespace.parse(1, d);
            assertEquals(131072, ns.size());
            assertEquals(4096, ns.blockSize());
            assertEquals(8, ns.format().metadataSize());
            assertEquals(512L << 20, ns.bytes());
            d.set(JAVA_BYTE, 26, (byte) 2); // a format beyond the list
            assertThrows(IllegalArgumentException.class, () -> IdentifyNamespace.parse(1, d));
            d.set(JAVA_BYTE, 26, (byte) 0);
            d.set(JAVA_INT, 128, 30 << 16); // 1 GiB blocks
            assertThrows(IllegalArgumentException.class, () -> IdentifyNamespace.parse(1, d));
        }
    }
}
