// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

/**
 * The status field of a completion queue entry (bits 15:1 of DW3's upper half; bit 0 is the phase tag), decoded into
 * words. Codes and names follow NVM Express Base Specification 2.0, figures 101–105, and the NVM command set's
 * additions.
 */
public final class NvmeStatus {
    public static final int SCT_GENERIC = 0;
    public static final int SCT_COMMAND_SPECIFIC = 1;
    public static final int SCT_MEDIA = 2;
    public static final int SCT_PATH = 3;
    public static final int SCT_VENDOR = 7;

    public static final int SC_SUCCESS = 0x00;
    public static final int SC_INVALID_OPCODE = 0x01;
    public static final int SC_INVALID_FIELD = 0x02;
    public static final int SC_DATA_TRANSFER_ERROR = 0x04;
    public static final int SC_LBA_OUT_OF_RANGE = 0x80;

    private NvmeStatus() {}

    /** The 15-bit status (without the phase bit) from the CQE's 16-bit status word. */
    public static int fromCqeWord(int word) {
        return (word >>> 1) & 0x7fff;
    }

    public static int statusCode(int status) {
        return status & 0xff;
    }

    public static int statusCodeType(int status) {
        return (status >>> 8) & 0x7;
    }

    /** "Do Not Retry": the same command would fail again. */
    public static boolean doNotRetry(int status) {
        return (status & (1 << 14)) != 0;
    }

    /** More information is available in the Error Information log page. */
    public static boolean more(int status) {
        return (status & (1 << 13)) != 0;
    }

    public static boolean success(int status) {
        return (status & 0x7ff) == 0;
    }

    /** "Data Transfer Error (SCT 0x0, SC 0x04, DNR)" and the like. */
    public static String describe(int status) {
        int sct = statusCodeType(status);
        int sc = statusCode(status);
        String name = name(sct, sc);
        return String.format(
                "%s (SCT 0x%x, SC 0x%02x%s%s)",
                name, sct, sc, doNotRetry(status) ? ", DNR" : "", more(status) ? ", more info in the error log" : "");
    }

    static String name(int sct, int sc) {
        return switch (sct) {
            case SCT_GENERIC ->
                switch (sc) {
                    case 0x00 -> "Successful Completion";
                    case 0x01 -> "Invalid Command Opcode";
                    case 0x02 -> "Invalid Field in Command";
                    case 0x03 -> "Command ID Conflict";
                    case 0x04 -> "Data Transfer Error";
                    case 0x05 -> "Commands Aborted due to Power Loss Notification";
                    case 0x06 -> "Internal Error";
                    case 0x07 -> "Command Abort Requested";
                    case 0x08 -> "Command Aborted due to SQ Deletion";
                    case 0x09 -> "Command Aborted due to Failed Fused Command";
                    case 0x0a -> "Command Aborted due to Missing Fused Command";
                    case 0x0b -> "Invalid Namespace or Format";
                    case 0x0c -> "Command Sequence Error";
                    case 0x0d -> "Invalid SGL Segment Descriptor";
                    case 0x0e -> "Invalid Number of SGL Descriptors";
                    case 0x0f -> "Data SGL Length Invalid";
                    case 0x10 -> "Metadata SGL Length Invalid";
                    case 0x11 -> "SGL Descriptor Type Invalid";
                    case 0x12 -> "Invalid Use of Controller Memory Buffer";
                    case 0x13 -> "PRP Offset Invalid";
                    case 0x14 -> "Atomic Write Unit Exceeded";
                    case 0x15 -> "Operation Denied";
                    case 0x16 -> "SGL Offset Invalid";
                    case 0x18 -> "Host Identifier Inconsistent Format";
                    case 0x19 -> "Keep Alive Timer Expired";
                    case 0x1a -> "Keep Alive Timeout Invalid";
                    case 0x1b -> "Command Aborted due to Preempt and Abort";
                    case 0x1c -> "Sanitize Failed";
                    case 0x1d -> "Sanitize In Progress";
                    case 0x1e -> "SGL Data Block Granularity Invalid";
                    case 0x1f -> "Command Not Supported for Queue in CMB";
                    case 0x20 -> "Namespace is Write Protected";
                    case 0x21 -> "Command Interrupted";
                    case 0x22 -> "Transient Transport Error";
                    case 0x80 -> "LBA Out of Range";
                    case 0x81 -> "Capacity Exceeded";
                    case 0x82 -> "Namespace Not Ready";
                    case 0x83 -> "Reservation Conflict";
                    case 0x84 -> "Format In Progress";
                    default -> "generic status 0x" + Integer.toHexString(sc);
                };
            case SCT_COMMAND_SPECIFIC ->
                switch (sc) {
                    case 0x00 -> "Completion Queue Invalid";
                    case 0x01 -> "Invalid Queue Identifier";
                    case 0x02 -> "Invalid Queue Size";
                    case 0x03 -> "Abort Command Limit Exceeded";
                    case 0x05 -> "Asynchronous Event Request Limit Exceeded";
                    case 0x06 -> "Invalid Firmware Slot";
                    case 0x07 -> "Invalid Firmware Image";
                    case 0x08 -> "Invalid Interrupt Vector";
                    case 0x09 -> "Invalid Log Page";
                    case 0x0a -> "Invalid Format";
                    case 0x0c -> "Invalid Queue Deletion";
                    case 0x0d -> "Feature Identifier Not Saveable";
                    case 0x0e -> "Feature Not Changeable";
                    case 0x0f -> "Feature Not Namespace Specific";
                    case 0x80 -> "Conflicting Attributes";
                    case 0x81 -> "Invalid Protection Information";
                    case 0x82 -> "Attempted Write to Read Only Range";
                    default -> "command-specific status 0x" + Integer.toHexString(sc);
                };
            case SCT_MEDIA ->
                switch (sc) {
                    case 0x80 -> "Write Fault";
                    case 0x81 -> "Unrecovered Read Error";
                    case 0x82 -> "End-to-end Guard Check Error";
                    case 0x83 -> "End-to-end Application Tag Check Error";
                    case 0x84 -> "End-to-end Reference Tag Check Error";
                    case 0x85 -> "Compare Failure";
                    case 0x86 -> "Access Denied";
                    case 0x87 -> "Deallocated or Unwritten Logical Block";
                    default -> "media error 0x" + Integer.toHexString(sc);
                };
            case SCT_PATH ->
                switch (sc) {
                    case 0x00 -> "Internal Path Error";
                    case 0x01 -> "Asymmetric Access Persistent Loss";
                    case 0x02 -> "Asymmetric Access Inaccessible";
                    case 0x03 -> "Asymmetric Access Transition";
                    case 0x60 -> "Controller Pathing Error";
                    case 0x70 -> "Host Pathing Error";
                    case 0x71 -> "Command Aborted By Host";
                    default -> "path error 0x" + Integer.toHexString(sc);
                };
            case SCT_VENDOR -> "vendor-specific status 0x" + Integer.toHexString(sc);
            default -> "status type " + sct + " code 0x" + Integer.toHexString(sc);
        };
    }

    /** A hint for the statuses a user-space driver's own mistakes or the IOMMU cause. */
    static String hint(int status) {
        if (statusCodeType(status) == SCT_GENERIC) {
            switch (statusCode(status)) {
                case SC_DATA_TRANSFER_ERROR:
                    return " — the controller could not move data to or from host memory: a PRP pointed outside the "
                            + "DMA mappings and the IOMMU blocked it (dmesg shows the DMAR/IOMMU fault)";
                case SC_LBA_OUT_OF_RANGE:
                    return " — the LBA range lies beyond the namespace's size";
                case 0x13:
                    return " — a PRP entry is not page aligned";
                default:
                    break;
            }
        }
        return "";
    }
}
