// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

/**
 * NVMe controller registers (NVM Express Base Specification 2.0, section 3.1) and the opcodes iovirt's driver uses.
 * Offsets are from the start of BAR0.
 */
final class NvmeRegs {
    private NvmeRegs() {}

    static final long CAP = 0x00;
    static final long VS = 0x08;
    static final long INTMS = 0x0c;
    static final long INTMC = 0x10;
    static final long CC = 0x14;
    static final long CSTS = 0x1c;
    static final long AQA = 0x24;
    static final long ASQ = 0x28;
    static final long ACQ = 0x30;
    static final long DOORBELLS = 0x1000;

    // CC
    static final int CC_EN = 1;
    static final int CC_CSS_NVM = 0 << 4;
    static final int CC_MPS_SHIFT = 7;
    static final int CC_AMS_RR = 0 << 11;
    static final int CC_SHN_MASK = 3 << 14;
    static final int CC_SHN_NORMAL = 1 << 14;
    static final int CC_IOSQES_SHIFT = 16;
    static final int CC_IOCQES_SHIFT = 20;

    // CSTS
    static final int CSTS_RDY = 1;
    static final int CSTS_CFS = 1 << 1;
    static final int CSTS_SHST_MASK = 3 << 2;
    static final int CSTS_SHST_COMPLETE = 2 << 2;

    // admin opcodes
    static final int ADMIN_DELETE_SQ = 0x00;
    static final int ADMIN_CREATE_SQ = 0x01;
    static final int ADMIN_DELETE_CQ = 0x04;
    static final int ADMIN_CREATE_CQ = 0x05;
    static final int ADMIN_IDENTIFY = 0x06;
    static final int ADMIN_SET_FEATURES = 0x09;
    static final int ADMIN_GET_FEATURES = 0x0a;

    // NVM command set opcodes
    static final int NVM_FLUSH = 0x00;
    static final int NVM_WRITE = 0x01;
    static final int NVM_READ = 0x02;

    // Identify CNS values
    static final int CNS_NAMESPACE = 0x00;
    static final int CNS_CONTROLLER = 0x01;
    static final int CNS_ACTIVE_NAMESPACES = 0x02;

    static final int FEATURE_NUMBER_OF_QUEUES = 0x07;

    /** Submission and completion queue entry sizes as log2, the only ones NVMe I/O queues use. */
    static final int SQES_LOG2 = io.iovirt.nvme.IdentifyController.SQE_LOG2;

    static final int CQES_LOG2 = io.iovirt.nvme.IdentifyController.CQE_LOG2;

    /** The decoded CAP register. */
    record Capabilities(long raw) {
        /** Maximum entries per queue (MQES is zero-based). */
        int maxQueueEntries() {
            return (int) (raw & 0xffff) + 1;
        }

        boolean contiguousQueuesRequired() {
            return (raw & (1L << 16)) != 0;
        }

        /** Worst-case time for CSTS.RDY to follow CC.EN, in milliseconds (CAP.TO counts 500 ms units). */
        long readyTimeoutMillis() {
            return ((raw >>> 24) & 0xff) * 500L;
        }

        /** Bytes between consecutive doorbell registers: 4 << CAP.DSTRD. */
        int doorbellStride() {
            return 4 << doorbellStrideShift();
        }

        /** CAP.DSTRD itself. */
        int doorbellStrideShift() {
            return (int) ((raw >>> 32) & 0xf);
        }

        boolean nvmCommandSet() {
            return (raw & (1L << 37)) != 0;
        }

        int minPageShift() {
            return 12 + (int) ((raw >>> 48) & 0xf);
        }

        int maxPageShift() {
            return 12 + (int) ((raw >>> 52) & 0xf);
        }
    }

    /** Doorbell offsets: SQ y tail at 0x1000 + (2y) * stride, CQ y head at 0x1000 + (2y + 1) * stride. */
    static long sqTailDoorbell(int qid, int stride) {
        return DOORBELLS + (2L * qid) * stride;
    }

    static long cqHeadDoorbell(int qid, int stride) {
        return DOORBELLS + (2L * qid + 1) * stride;
    }

    /**
     * Refuses a controller whose doorbells for queues 0..{@code maxQid} do not all lie inside BAR0. CAP.DSTRD spaces
     * them 4 to 128 KiB apart, and a controller may claim a stride its BAR cannot hold: the doorbell writes would then
     * fail on every command, each after the command took a queue slot.
     */
    static void requireDoorbellsInside(String device, Capabilities cap, int maxQid, long barSize) throws NvmeException {
        long end = cqHeadDoorbell(maxQid, cap.doorbellStride()) + 4;
        if (end > barSize) {
            throw new NvmeException(String.format(
                    "%s: CAP.DSTRD %d spaces the doorbells %d bytes apart, which puts queue %d's completion doorbell "
                            + "at offset 0x%x, beyond BAR0's %d bytes — the controller's registers contradict its BAR "
                            + "(faulty firmware or emulation), so it cannot be driven; check the device's firmware or "
                            + "use another controller",
                    device, cap.doorbellStrideShift(), cap.doorbellStride(), maxQid, end - 4, barSize));
        }
    }

    static String version(int vs) {
        int major = vs >>> 16;
        int minor = (vs >>> 8) & 0xff;
        int tertiary = vs & 0xff;
        return major + "." + minor + (tertiary != 0 ? "." + tertiary : "");
    }
}
