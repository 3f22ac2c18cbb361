// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.MemoryLayout.PathElement.groupElement;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import java.lang.foreign.MemoryLayout;
import java.lang.foreign.StructLayout;

/**
 * The 16-byte completion queue entry (NVMe Base 2.0, figure 90): command-specific DW0 and DW1, the SQ head pointer
 * and SQ identifier, the command identifier, and the status word whose bit 0 is the phase tag.
 */
final class Cqe {
    static final StructLayout LAYOUT = MemoryLayout.structLayout(
                    JAVA_INT.withName("dw0"),
                    JAVA_INT.withName("dw1"),
                    JAVA_SHORT.withName("sqhd"),
                    JAVA_SHORT.withName("sqid"),
                    JAVA_SHORT.withName("cid"),
                    JAVA_SHORT.withName("status"))
            .withName("nvme_cqe");

    static final long SIZE = LAYOUT.byteSize();
    static final long DW0 = off("dw0");
    static final long DW1 = off("dw1");
    static final long SQHD = off("sqhd");
    static final long SQID = off("sqid");
    static final long CID = off("cid");
    static final long STATUS = off("status");

    private Cqe() {}

    private static long off(String name) {
        return LAYOUT.byteOffset(groupElement(name));
    }
}
