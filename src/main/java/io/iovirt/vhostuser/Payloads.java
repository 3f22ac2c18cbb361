// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * Codecs for vhost-user payloads: static accessors over a MemorySegment holding exactly one payload (native byte
 * order, as the spec says). Readers check nothing beyond the segment's bounds: {@link Connection} has validated
 * sizes and {@link Handler} validates values.
 */
public final class Payloads {
    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED;
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED;

    public static final int HEADER_SIZE = 12;
    public static final int U64_SIZE = 8;
    public static final int VRING_STATE_SIZE = 8;
    public static final int VRING_ADDR_SIZE = 40;
    public static final int MEMORY_HEADER_SIZE = 8;
    public static final int REGION_SIZE = 32;
    /** SET_MEM_TABLE carries at most this many regions (VHOST_MEMORY_BASELINE_NREGIONS). */
    public static final int MAX_MEMORY_TABLE_REGIONS = 8;

    public static final int MEMORY_MAX_SIZE = MEMORY_HEADER_SIZE + MAX_MEMORY_TABLE_REGIONS * REGION_SIZE;
    public static final int SINGLE_REGION_SIZE = 8 + REGION_SIZE;
    public static final int LOG_SIZE = 16;
    public static final int CONFIG_HEADER_SIZE = 12;
    /** VHOST_USER_MAX_CONFIG_SIZE. */
    public static final int CONFIG_MAX_DATA = 256;

    public static final int CONFIG_MAX_SIZE = CONFIG_HEADER_SIZE + CONFIG_MAX_DATA;
    public static final int INFLIGHT_SIZE = 24;
    public static final int IOTLB_SIZE = 32;
    public static final int VRING_AREA_SIZE = 24;
    /** No message this implementation accepts is larger: a bigger size field is refused before any payload is read. */
    public static final int MAX_PAYLOAD_SIZE = Math.max(CONFIG_MAX_SIZE, MEMORY_MAX_SIZE);

    /** VHOST_USER_VRING_IDX_MASK: the vring index in SET_VRING_KICK/CALL/ERR. */
    public static final long VRING_IDX_MASK = 0xff;
    /** VHOST_USER_VRING_NOFD_MASK: no descriptor accompanies SET_VRING_KICK/CALL/ERR. */
    public static final long VRING_NOFD_MASK = 1L << 8;

    private Payloads() {}

    public static long u64(MemorySegment p) {
        return p.get(U64, 0);
    }

    public static void u64(MemorySegment p, long value) {
        p.set(U64, 0, value);
    }

    /** {@code struct vhost_vring_state {unsigned int index; unsigned int num;}}. */
    public static final class VringState {
        private VringState() {}

        public static int index(MemorySegment p) {
            return p.get(U32, 0);
        }

        public static int num(MemorySegment p) {
            return p.get(U32, 4);
        }

        public static void write(MemorySegment p, int index, int num) {
            p.set(U32, 0, index);
            p.set(U32, 4, num);
        }
    }

    /**
     * {@code struct vhost_vring_addr {unsigned int index, flags; u64 desc_user_addr, used_user_addr,
     * avail_user_addr, log_guest_addr;}}. The three ring addresses are frontend virtual addresses.
     */
    public static final class VringAddr {
        /** VHOST_VRING_F_LOG (bit 0 of flags): log used-ring writes. */
        public static final int F_LOG = 1;

        private VringAddr() {}

        public static int index(MemorySegment p) {
            return p.get(U32, 0);
        }

        public static int flags(MemorySegment p) {
            return p.get(U32, 4);
        }

        public static long desc(MemorySegment p) {
            return p.get(U64, 8);
        }

        public static long used(MemorySegment p) {
            return p.get(U64, 16);
        }

        public static long avail(MemorySegment p) {
            return p.get(U64, 24);
        }

        public static long log(MemorySegment p) {
            return p.get(U64, 32);
        }

        public static void write(MemorySegment p, int index, int flags, long desc, long used, long avail, long log) {
            p.set(U32, 0, index);
            p.set(U32, 4, flags);
            p.set(U64, 8, desc);
            p.set(U64, 16, used);
            p.set(U64, 24, avail);
            p.set(U64, 32, log);
        }
    }

    /**
     * One region as SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG describe it: {@code guest_phys_addr, memory_size,
     * userspace_addr, mmap_offset} (four u64). Accessors take the segment of one region.
     */
    public static final class Region {
        private Region() {}

        public static long guestPhysAddr(MemorySegment r) {
            return r.get(U64, 0);
        }

        public static long size(MemorySegment r) {
            return r.get(U64, 8);
        }

        public static long userAddr(MemorySegment r) {
            return r.get(U64, 16);
        }

        public static long mmapOffset(MemorySegment r) {
            return r.get(U64, 24);
        }

        public static void write(MemorySegment r, long gpa, long size, long uva, long mmapOffset) {
            r.set(U64, 0, gpa);
            r.set(U64, 8, size);
            r.set(U64, 16, uva);
            r.set(U64, 24, mmapOffset);
        }
    }

    /** GET/SET_INFLIGHT_FD: {@code u64 mmap_size, u64 mmap_offset; u16 num_queues, queue_size}. */
    public static final class Inflight {
        private Inflight() {}

        public static long mmapSize(MemorySegment p) {
            return p.get(U64, 0);
        }

        public static long mmapOffset(MemorySegment p) {
            return p.get(U64, 8);
        }

        public static int numQueues(MemorySegment p) {
            return Short.toUnsignedInt(p.get(ValueLayout.JAVA_SHORT_UNALIGNED, 16));
        }

        public static int queueSize(MemorySegment p) {
            return Short.toUnsignedInt(p.get(ValueLayout.JAVA_SHORT_UNALIGNED, 18));
        }

        public static void write(MemorySegment p, long mmapSize, long mmapOffset, int numQueues, int queueSize) {
            p.set(U64, 0, mmapSize);
            p.set(U64, 8, mmapOffset);
            p.set(ValueLayout.JAVA_SHORT_UNALIGNED, 16, (short) numQueues);
            p.set(ValueLayout.JAVA_SHORT_UNALIGNED, 18, (short) queueSize);
            p.set(ValueLayout.JAVA_INT_UNALIGNED, 20, 0);
        }
    }

    /** SET_LOG_BASE: {@code u64 mmap_size, u64 mmap_offset} (the dirty log's bytes and where they start in the fd). */
    public static final class Log {
        private Log() {}

        public static long size(MemorySegment p) {
            return p.get(U64, 0);
        }

        public static long offset(MemorySegment p) {
            return p.get(U64, 8);
        }

        public static void write(MemorySegment p, long size, long offset) {
            p.set(U64, 0, size);
            p.set(U64, 8, offset);
        }
    }

    /** SET_MEM_TABLE: {@code u32 nregions, u32 padding, region[nregions]}. */
    public static final class MemoryTable {
        private MemoryTable() {}

        public static int count(MemorySegment p) {
            return p.get(U32, 0);
        }

        /** The payload size that {@code count} regions take. */
        public static int sizeFor(int count) {
            return MEMORY_HEADER_SIZE + count * REGION_SIZE;
        }

        public static MemorySegment region(MemorySegment p, int i) {
            return p.asSlice(MEMORY_HEADER_SIZE + (long) i * REGION_SIZE, REGION_SIZE);
        }

        public static void writeCount(MemorySegment p, int count) {
            p.set(U32, 0, count);
            p.set(U32, 4, 0);
        }
    }

    /** ADD_MEM_REG / REM_MEM_REG: {@code u64 padding, region}. */
    public static final class SingleRegion {
        private SingleRegion() {}

        public static MemorySegment region(MemorySegment p) {
            return p.asSlice(8, REGION_SIZE);
        }
    }

    /** GET_CONFIG / SET_CONFIG: {@code u32 offset, u32 size, u32 flags, u8 payload[size]}. */
    public static final class Config {
        /** VHOST_SET_CONFIG_TYPE_FRONTEND: the driver wrote a writable field. */
        public static final int FLAG_WRITABLE = 0;
        /** VHOST_SET_CONFIG_TYPE_MIGRATION: restoring state on a migration destination. */
        public static final int FLAG_MIGRATION = 1;

        private Config() {}

        public static int offset(MemorySegment p) {
            return p.get(U32, 0);
        }

        public static int size(MemorySegment p) {
            return p.get(U32, 4);
        }

        public static int flags(MemorySegment p) {
            return p.get(U32, 8);
        }

        public static MemorySegment data(MemorySegment p) {
            return p.asSlice(CONFIG_HEADER_SIZE);
        }

        public static void writeHeader(MemorySegment p, int offset, int size, int flags) {
            p.set(U32, 0, offset);
            p.set(U32, 4, size);
            p.set(U32, 8, flags);
        }
    }
}
