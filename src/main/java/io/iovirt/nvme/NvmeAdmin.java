// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nvme;

import io.iovirt.util.ActionableException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.file.Path;

/**
 * NVMe admin commands through the Linux controller character device (/dev/nvmeN) and NVME_IOCTL_ADMIN_CMD: the
 * layout of {@code struct nvme_passthru_cmd} (linux/nvme_ioctl.h, 72 bytes), the commands iovirt needs (Identify,
 * Virtualization Management) and their status codes. The ioctl itself is made by {@code io.iovirt.linux}.
 */
public final class NvmeAdmin implements AutoCloseable {
    /** struct nvme_passthru_cmd / nvme_admin_cmd. */
    public static final StructLayout PASSTHRU_CMD = MemoryLayout.structLayout(
                    ValueLayout.JAVA_BYTE.withName("opcode"),
                    ValueLayout.JAVA_BYTE.withName("flags"),
                    ValueLayout.JAVA_SHORT.withName("rsvd1"),
                    ValueLayout.JAVA_INT.withName("nsid"),
                    ValueLayout.JAVA_INT.withName("cdw2"),
                    ValueLayout.JAVA_INT.withName("cdw3"),
                    ValueLayout.JAVA_LONG.withName("metadata"),
                    ValueLayout.JAVA_LONG.withName("addr"),
                    ValueLayout.JAVA_INT.withName("metadata_len"),
                    ValueLayout.JAVA_INT.withName("data_len"),
                    ValueLayout.JAVA_INT.withName("cdw10"),
                    ValueLayout.JAVA_INT.withName("cdw11"),
                    ValueLayout.JAVA_INT.withName("cdw12"),
                    ValueLayout.JAVA_INT.withName("cdw13"),
                    ValueLayout.JAVA_INT.withName("cdw14"),
                    ValueLayout.JAVA_INT.withName("cdw15"),
                    ValueLayout.JAVA_INT.withName("timeout_ms"),
                    ValueLayout.JAVA_INT.withName("result"))
            .withName("nvme_passthru_cmd");

    /** _IOWR('N', 0x41, struct nvme_admin_cmd) = 0xC0484E41. */
    public static final long NVME_IOCTL_ADMIN_CMD = io.iovirt.linux.Ioctl.iowr('N', 0x41, PASSTHRU_CMD.byteSize());

    public static final int OPC_IDENTIFY = 0x06;
    public static final int OPC_VIRT_MGMT = 0x1C;
    public static final int CNS_CONTROLLER = 0x01;
    public static final int CNS_PRIMARY_CTRL_CAPS = 0x14;
    public static final int CNS_SECONDARY_CTRL_LIST = 0x15;
    public static final int ACT_PRIMARY_FLEXIBLE = 0x1;
    public static final int ACT_SECONDARY_OFFLINE = 0x7;
    public static final int ACT_SECONDARY_ASSIGN = 0x8;
    public static final int ACT_SECONDARY_ONLINE = 0x9;
    public static final int RT_VQ = 0;
    public static final int RT_VI = 1;
    public static final int IDENTIFY_SIZE = 4096;
    private static final int TIMEOUT_MS = 10_000;

    static final VarHandle OPCODE = PASSTHRU_CMD.varHandle(MemoryLayout.PathElement.groupElement("opcode"));
    static final VarHandle NSID = PASSTHRU_CMD.varHandle(MemoryLayout.PathElement.groupElement("nsid"));
    static final VarHandle ADDR = PASSTHRU_CMD.varHandle(MemoryLayout.PathElement.groupElement("addr"));
    static final VarHandle DATA_LEN = PASSTHRU_CMD.varHandle(MemoryLayout.PathElement.groupElement("data_len"));
    static final VarHandle CDW10 = PASSTHRU_CMD.varHandle(MemoryLayout.PathElement.groupElement("cdw10"));
    static final VarHandle CDW11 = PASSTHRU_CMD.varHandle(MemoryLayout.PathElement.groupElement("cdw11"));
    static final VarHandle TIMEOUT = PASSTHRU_CMD.varHandle(MemoryLayout.PathElement.groupElement("timeout_ms"));
    static final VarHandle RESULT = PASSTHRU_CMD.varHandle(MemoryLayout.PathElement.groupElement("result"));

    /** Sends one prepared command to the device; returns the ioctl's value (0, or an NVMe status > 0). */
    interface Channel extends AutoCloseable {
        int submit(MemorySegment cmd);

        @Override
        void close();
    }

    private final Path device;
    private final Channel channel;
    private final Arena arena = Arena.ofConfined();
    private final MemorySegment cmd = arena.allocate(PASSTHRU_CMD);

    private NvmeAdmin(Path device, Channel channel) {
        this.device = device;
        this.channel = channel;
    }

    /** Opens a controller character device (/dev/nvme0). Needs CAP_SYS_ADMIN for admin passthrough. */
    public static NvmeAdmin open(Path device) {
        return new NvmeAdmin(device, NvmeIoctl.open(device));
    }

    public Path device() {
        return device;
    }

    /** Identify with CNS {@code cns} and controller id {@code cntid}; returns the 4 KiB data structure. */
    public byte[] identify(int cns, int cntid) {
        MemorySegment data = arena.allocate(IDENTIFY_SIZE, 4096);
        prepare(OPC_IDENTIFY, data);
        CDW10.set(cmd, 0L, (cntid & 0xffff) << 16 | (cns & 0xff));
        execute("Identify CNS " + hex(cns));
        return data.toArray(ValueLayout.JAVA_BYTE);
    }

    /**
     * Virtualization Management (opcode 1Ch).
     *
     * @param act action (ACT_*), {@code rt} resource type (RT_VQ, RT_VI), {@code cntlid} the controller, {@code nr}
     *     the number of resources
     * @return completion dword 0: the number of resources allocated, for assign actions
     */
    public int virtualizationManagement(int act, int rt, int cntlid, int nr) {
        prepare(OPC_VIRT_MGMT, null);
        CDW10.set(cmd, 0L, virtMgmtCdw10(act, rt, cntlid));
        CDW11.set(cmd, 0L, nr & 0xffff);
        execute("Virtualization Management act=" + act + " rt=" + rt + " cntlid=" + cntlid + " nr=" + nr);
        return (int) RESULT.get(cmd, 0L);
    }

    static int virtMgmtCdw10(int act, int rt, int cntlid) {
        return (cntlid & 0xffff) << 16 | (rt & 0x7) << 8 | (act & 0xf);
    }

    private void prepare(int opcode, MemorySegment data) {
        cmd.fill((byte) 0);
        OPCODE.set(cmd, 0L, (byte) opcode);
        NSID.set(cmd, 0L, 0);
        if (data != null) {
            ADDR.set(cmd, 0L, data.address());
            DATA_LEN.set(cmd, 0L, (int) data.byteSize());
        }
        TIMEOUT.set(cmd, 0L, TIMEOUT_MS);
    }

    private void execute(String what) {
        int status = channel.submit(cmd);
        if (status != 0) {
            throw new ActionableException(
                    what + " on " + device + " failed: NVMe status " + hex(status) + " (" + statusName(status) + ")",
                    remedyFor(status));
        }
    }

    /** Names of the generic and Virtualization Management status codes (status field without phase bit). */
    static String statusName(int status) {
        int sct = status >> 8 & 0x7;
        int sc = status & 0xff;
        String name = switch (sct << 8 | sc) {
            case 0x001 -> "Invalid Command Opcode: the controller does not implement it";
            case 0x002 -> "Invalid Field in Command";
            case 0x00b -> "Invalid Namespace or Format";
            case 0x11f -> "Invalid Controller Identifier";
            case 0x120 -> "Invalid Secondary Controller State";
            case 0x121 -> "Invalid Number of Controller Resources";
            case 0x122 -> "Invalid Resource Identifier";
            default -> "status code type " + sct + ", code " + hex(sc);
        };
        return (status & 0x4000) != 0 ? name + ", do not retry" : name;
    }

    private static String remedyFor(int status) {
        return switch (status & 0x7ff) {
            case 0x120 ->
                "the secondary controller must be offline to change its resources, and have resources to go online";
            case 0x121, 0x122 ->
                "ask for fewer queues or interrupts per VF (--vf-queues/--vf-interrupts) or create fewer VFs";
            case 0x001 -> "this controller does not support NVMe virtualization management";
            default -> "check the controller's capabilities (nvme id-ctrl) and dmesg";
        };
    }

    static String hex(int v) {
        return "0x" + Integer.toHexString(v);
    }

    @Override
    public void close() {
        try {
            channel.close();
        } finally {
            arena.close();
        }
    }

    // ---- decoding of Identify data (little-endian) ----

    static int u16(byte[] b, int off) {
        return (b[off] & 0xff) | (b[off + 1] & 0xff) << 8;
    }

    static long u32(byte[] b, int off) {
        return (u16(b, off) | (long) u16(b, off + 2) << 16) & 0xffffffffL;
    }

    /** Identify Primary Controller Capabilities (CNS 14h). */
    public record PrimaryCaps(
            int cntlid,
            long vqfrt,
            long vqrfa,
            int vqrfap,
            int vqprt,
            int vqfrsm,
            int vqgran,
            long vifrt,
            long virfa,
            int virfap,
            int viprt,
            int vifrsm,
            int vigran) {
        public static PrimaryCaps parse(byte[] b) {
            return new PrimaryCaps(
                    u16(b, 0),
                    u32(b, 32),
                    u32(b, 36),
                    u16(b, 40),
                    u16(b, 42),
                    u16(b, 44),
                    u16(b, 46),
                    u32(b, 64),
                    u32(b, 68),
                    u16(b, 72),
                    u16(b, 74),
                    u16(b, 76),
                    u16(b, 78));
        }
    }

    /** One entry of the Secondary Controller List (CNS 15h): 32 bytes each after a 32-byte header. */
    public record SecondaryController(int scid, int pcid, boolean online, int vfn, int nvq, int nvi) {
        public static java.util.List<SecondaryController> parseList(byte[] b) {
            int n = Math.min(b[0] & 0xff, 127);
            java.util.List<SecondaryController> out = new java.util.ArrayList<>();
            for (int i = 0; i < n; i++) {
                int o = 32 + i * 32;
                out.add(new SecondaryController(
                        u16(b, o), u16(b, o + 2), (b[o + 4] & 1) != 0, u16(b, o + 8), u16(b, o + 10), u16(b, o + 12)));
            }
            return out;
        }
    }
}
