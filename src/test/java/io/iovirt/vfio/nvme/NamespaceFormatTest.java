// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.nvme.IdentifyNamespace;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.time.Duration;
import org.junit.jupiter.api.Test;

/**
 * Namespaces whose blocks carry metadata or protection information are refused by the VFIO driver, which moves data
 * only, and IOVA 0 is never mapped. The Identify Namespace data is laid out as QEMU 7.2's nvme-ns builds it (hw/nvme/
 * ns.c: eight LBA formats, 512 B and 4 KiB each with 0, 8, 16 and 64 bytes of metadata; MC both ways; DPC 0x1f).
 */
class NamespaceFormatTest {
    /** Identify Namespace of {@code -device nvme-ns,...,ms=MS,mset=MSET,pi=PI} on a 64 MiB image, 512-byte blocks. */
    private static MemorySegment qemuNamespace(Arena a, int ms, boolean mset, int pi) {
        MemorySegment d = a.allocate(4096);
        long blocks = (64L << 20) / (512 + ms);
        d.set(JAVA_LONG, 0, blocks); // NSZE
        d.set(JAVA_LONG, 8, blocks); // NCAP
        d.set(JAVA_LONG, 16, blocks); // NUSE
        d.set(JAVA_BYTE, 24, (byte) 0x14); // NSFEAT: DAE, OPTPERF
        d.set(JAVA_BYTE, 25, (byte) 7); // NLBAF, zero-based: eight formats
        int index = switch (ms) {
            case 0 -> 0;
            case 8 -> 1;
            case 16 -> 2;
            default -> 3;
        };
        d.set(JAVA_BYTE, 26, (byte) (index | (ms != 0 && mset ? 0x10 : 0))); // FLBAS
        d.set(JAVA_BYTE, 27, (byte) 0x3); // MC: extended and separate metadata
        d.set(JAVA_BYTE, 28, (byte) 0x1f); // DPC
        d.set(JAVA_BYTE, 29, (byte) pi); // DPS
        d.set(JAVA_BYTE, 33, (byte) 0x1); // DLFEAT
        int[][] formats = {{9, 0}, {9, 8}, {9, 16}, {9, 64}, {12, 0}, {12, 8}, {12, 16}, {12, 64}};
        for (int i = 0; i < formats.length; i++) {
            d.set(JAVA_INT, 128 + 4L * i, formats[i][0] << 16 | formats[i][1]);
        }
        return d;
    }

    @Test
    void extendedLbaAndProtectionAreRead() {
        try (Arena a = Arena.ofConfined()) {
            IdentifyNamespace plain = IdentifyNamespace.parse(1, qemuNamespace(a, 0, false, 0));
            assertEquals(0, plain.format().metadataSize());
            assertFalse(plain.extendedLba());
            assertEquals(0, plain.protectionType());

            IdentifyNamespace extended = IdentifyNamespace.parse(1, qemuNamespace(a, 8, true, 0));
            assertEquals(1, extended.formatIndex());
            assertEquals(512, extended.blockSize());
            assertEquals(8, extended.format().metadataSize());
            assertTrue(extended.extendedLba());
            assertEquals(0, extended.dps());

            IdentifyNamespace separate = IdentifyNamespace.parse(1, qemuNamespace(a, 16, false, 1));
            assertEquals(2, separate.formatIndex());
            assertFalse(separate.extendedLba());
            assertEquals(1, separate.protectionType());

            MemorySegment d = qemuNamespace(a, 8, true, 2);
            d.set(JAVA_BYTE, 29, (byte) (2 | 0x8)); // protection information type 2, in the first 8 bytes
            IdentifyNamespace first = IdentifyNamespace.parse(1, d);
            assertEquals(2, first.protectionType());
            assertEquals(0xa, first.dps());
        }
    }

    @Test
    void aFormatWithoutMetadataOrProtectionIsAccepted() {
        try (Arena a = Arena.ofConfined()) {
            assertDoesNotThrow(() -> NvmeController.requireDataOnly(
                    "0000:01:00.0", IdentifyNamespace.parse(1, qemuNamespace(a, 0, false, 0))));
            // DPS bit 3 only says where protection information would sit; with type 0 there is none (as Linux reads it)
            MemorySegment d = qemuNamespace(a, 0, false, 0);
            d.set(JAVA_BYTE, 29, (byte) 0x8);
            assertDoesNotThrow(() -> NvmeController.requireDataOnly("0000:01:00.0", IdentifyNamespace.parse(1, d)));
        }
    }

    @Test
    void interleavedMetadataIsRefusedNamingTheFormatAndTheWayOut() {
        try (Arena a = Arena.ofConfined()) {
            IdentifyNamespace ns = IdentifyNamespace.parse(1, qemuNamespace(a, 8, true, 0));
            NvmeException e =
                    assertThrows(NvmeException.class, () -> NvmeController.requireDataOnly("0000:01:00.0", ns));
            assertEquals(
                    "0000:01:00.0: namespace 1 uses LBA format 1: 512-byte blocks with 8 bytes of metadata each, "
                            + "interleaved with the data (extended LBA) (FLBAS bit 4 1, DPS 0x0) — this driver transfers "
                            + "data only (no metadata pointer, no protection information) and refuses it; format the "
                            + "namespace (it erases it) to one without metadata and protection — 0 (512 B), 4 (4 KiB) — "
                            + "e.g. from the kernel's driver with nvme-cli: nvme format /dev/nvmeXnY --lbaf=N --pi=0, or "
                            + "use the kernel's nvme driver",
                    e.getMessage());
        }
    }

    @Test
    void separateMetadataAndProtectionAreRefused() {
        try (Arena a = Arena.ofConfined()) {
            NvmeException separate = assertThrows(
                    NvmeException.class,
                    () -> NvmeController.requireDataOnly(
                            "d", IdentifyNamespace.parse(1, qemuNamespace(a, 16, false, 0))));
            assertTrue(
                    separate.getMessage()
                            .contains("LBA format 2: 512-byte blocks with 16 bytes of metadata each, in a separate "
                                    + "buffer (metadata pointer) (FLBAS bit 4 0, DPS 0x0)"),
                    separate.getMessage());

            NvmeException pi = assertThrows(
                    NvmeException.class,
                    () -> NvmeController.requireDataOnly(
                            "d", IdentifyNamespace.parse(1, qemuNamespace(a, 64, true, 1))));
            assertTrue(
                    pi.getMessage()
                            .contains("64 bytes of metadata each, interleaved with the data (extended LBA), with "
                                    + "end-to-end protection information type 1 (FLBAS bit 4 1, DPS 0x1)"),
                    pi.getMessage());

            // a controller that claims protection on a format without metadata contradicts itself: refused too
            MemorySegment d = qemuNamespace(a, 0, false, 3);
            NvmeException odd = assertThrows(
                    NvmeException.class, () -> NvmeController.requireDataOnly("d", IdentifyNamespace.parse(1, d)));
            assertTrue(
                    odd.getMessage()
                            .contains("512-byte blocks without metadata, with end-to-end protection information "
                                    + "type 3"),
                    odd.getMessage());

            // no format without metadata to offer
            for (int i = 0; i < 8; i++) {
                d.set(JAVA_INT, 128 + 4L * i, 9 << 16 | 8);
            }
            d.set(JAVA_BYTE, 29, (byte) 0);
            NvmeException none = assertThrows(
                    NvmeException.class, () -> NvmeController.requireDataOnly("d", IdentifyNamespace.parse(1, d)));
            assertTrue(
                    none.getMessage().contains("the namespace lists no LBA format without metadata"),
                    none.getMessage());
        }
    }

    @Test
    void iovaZeroIsNeverTheArenaBase() {
        IllegalArgumentException e = assertThrows(
                IllegalArgumentException.class,
                () -> new NvmeController.Options(NvmeController.IrqMode.POLL, 64, 1 << 20, 0, Duration.ofSeconds(1)));
        assertTrue(e.getMessage().startsWith("IOVA base 0 is refused"), e.getMessage());
        assertEquals(0x10_0000L, NvmeController.Options.defaults().iovaBase());
    }
}
