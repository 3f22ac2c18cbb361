// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.MemoryLayout.PathElement.groupElement;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;

/**
 * The 64-byte submission queue entry (NVMe Base 2.0, figure 88): CDW0 (opcode, fused/PSDT flags, command
 * identifier), NSID, CDW2–3, metadata pointer, the data pointer as PRP entries 1 and 2, and CDW10–15.
 */
final class Sqe {
    static final StructLayout LAYOUT = MemoryLayout.structLayout(
                    JAVA_BYTE.withName("opcode"),
                    JAVA_BYTE.withName("flags"),
                    JAVA_SHORT.withName("cid"),
                    JAVA_INT.withName("nsid"),
                    JAVA_INT.withName("cdw2"),
                    JAVA_INT.withName("cdw3"),
                    JAVA_LONG.withName("mptr"),
                    JAVA_LONG.withName("prp1"),
                    JAVA_LONG.withName("prp2"),
                    JAVA_INT.withName("cdw10"),
                    JAVA_INT.withName("cdw11"),
                    JAVA_INT.withName("cdw12"),
                    JAVA_INT.withName("cdw13"),
                    JAVA_INT.withName("cdw14"),
                    JAVA_INT.withName("cdw15"))
            .withName("nvme_sqe");

    static final long SIZE = LAYOUT.byteSize();
    static final long OPCODE = off("opcode");
    static final long FLAGS = off("flags");
    static final long CID = off("cid");
    static final long NSID = off("nsid");
    static final long MPTR = off("mptr");
    static final long PRP1 = off("prp1");
    static final long PRP2 = off("prp2");
    static final long CDW10 = off("cdw10");
    static final long CDW11 = off("cdw11");
    static final long CDW12 = off("cdw12");
    static final long CDW13 = off("cdw13");
    static final long CDW14 = off("cdw14");
    static final long CDW15 = off("cdw15");

    private Sqe() {}

    private static long off(String name) {
        return LAYOUT.byteOffset(groupElement(name));
    }

    /**
     * Writes a whole entry (PRP data transfer, no metadata, not fused) at {@code base} in {@code sq}. Takes the queue
     * and an offset rather than a slice, so submitting allocates nothing even without escape analysis.
     */
    static void write(
            MemorySegment sq,
            long base,
            int opcode,
            int cid,
            int nsid,
            long prp1,
            long prp2,
            int cdw10,
            int cdw11,
            int cdw12,
            int cdw13,
            int cdw14,
            int cdw15) {
        sq.set(JAVA_BYTE, base + OPCODE, (byte) opcode);
        sq.set(JAVA_BYTE, base + FLAGS, (byte) 0); // FUSE 00, PSDT 00: PRPs
        sq.set(JAVA_SHORT, base + CID, (short) cid);
        sq.set(JAVA_INT, base + NSID, nsid);
        sq.set(JAVA_LONG, base + 8, 0L); // CDW2-3
        sq.set(JAVA_LONG, base + MPTR, 0L);
        sq.set(JAVA_LONG, base + PRP1, prp1);
        sq.set(JAVA_LONG, base + PRP2, prp2);
        sq.set(JAVA_INT, base + CDW10, cdw10);
        sq.set(JAVA_INT, base + CDW11, cdw11);
        sq.set(JAVA_INT, base + CDW12, cdw12);
        sq.set(JAVA_INT, base + CDW13, cdw13);
        sq.set(JAVA_INT, base + CDW14, cdw14);
        sq.set(JAVA_INT, base + CDW15, cdw15);
    }
}
