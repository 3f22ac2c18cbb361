// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.List;

/**
 * A device region (a PCI BAR) mapped into this process: register reads and writes become loads and stores.
 *
 * <p>Every access to a mapped part is a single volatile load or store of exactly the register's width, so the JIT
 * neither merges, splits, elides nor reorders them, and a store is ordered after every earlier store to ordinary
 * memory: a driver that fills a DMA descriptor with plain stores and then writes a doorbell here publishes the
 * descriptor first. (That is sufficient on x86_64, whose stores are seen in order; a weakly ordered CPU would need a
 * barrier towards the device as well.) Registers are little-endian, as PCI is; the supported hosts are little-endian
 * too.
 *
 * <p>Parts of the region that may not be mapped (outside the sparse-mmap areas VFIO reports) are reached through
 * the device descriptor with pread/pwrite instead, transparently and slower. There a 64-bit access is two 32-bit
 * accesses, the low half first, then the high half: vfio-pci's read/write path makes no 8-byte access on Linux 6.1
 * (it splits one into 4-byte accesses itself) and may make one on later kernels, so the split is made here, in one
 * defined order whatever the kernel. Low then high is the order NVMe allows a host without 64-bit accesses to use for
 * its 64-bit registers (CAP, ASQ, ACQ), and the one Linux's nvme driver always uses (lo_hi_readq, lo_hi_writeq). The
 * pair is not atomic: a register that changes between the two reads is read torn.
 */
public final class MmioRegion implements AutoCloseable {
    private static final VarHandle I32 = JAVA_INT.varHandle();
    private static final VarHandle I64 = JAVA_LONG.varHandle();

    static {
        if (ByteOrder.nativeOrder() != ByteOrder.LITTLE_ENDIAN) {
            throw new ExceptionInInitializerError("MMIO registers are little-endian; this host is not");
        }
    }

    /** Reads and writes of the region through the device descriptor (pread/pwrite), for parts not mapped. */
    interface Descriptor {
        long read(long offset, int width) throws VfioException;

        void write(long offset, int width, long value) throws VfioException;
    }

    private final VfioDevice device;
    private final Descriptor descriptor;
    private final RegionInfo region;
    private final Arena arena;
    private final MemorySegment[] areas;
    private final long[] areaStart;
    // the first mapped area, checked first: it holds the registers drivers touch in their hot paths
    private final MemorySegment main;
    private final long mainStart;

    MmioRegion(VfioDevice device, RegionInfo region, Arena arena, List<MemorySegment> segments, List<Long> starts) {
        this(device, region, arena, segments, starts, new Descriptor() {
            @Override
            public long read(long offset, int width) throws VfioException {
                return device.readRegion(region, offset, width);
            }

            @Override
            public void write(long offset, int width, long value) throws VfioException {
                device.writeRegion(region, offset, width, value);
            }
        });
    }

    /** {@code device} may be null when {@code descriptor} does not need it (tests). */
    MmioRegion(
            VfioDevice device,
            RegionInfo region,
            Arena arena,
            List<MemorySegment> segments,
            List<Long> starts,
            Descriptor descriptor) {
        this.device = device;
        this.descriptor = descriptor;
        this.region = region;
        this.arena = arena;
        this.areas = segments.toArray(MemorySegment[]::new);
        this.areaStart = starts.stream().mapToLong(Long::longValue).toArray();
        this.main = areas.length > 0 ? areas[0] : MemorySegment.NULL;
        this.mainStart = areas.length > 0 ? areaStart[0] : 0;
    }

    public RegionInfo region() {
        return region;
    }

    public long size() {
        return region.size();
    }

    public int read32(long offset) {
        long rel = offset - mainStart;
        if (rel >= 0 && rel <= main.byteSize() - 4) {
            return (int) I32.getVolatile(main, rel);
        }
        return (int) slowRead(offset, 4);
    }

    public void write32(long offset, int value) {
        long rel = offset - mainStart;
        if (rel >= 0 && rel <= main.byteSize() - 4) {
            I32.setVolatile(main, rel, value);
            return;
        }
        slowWrite(offset, 4, Integer.toUnsignedLong(value));
    }

    public long read64(long offset) {
        long rel = offset - mainStart;
        if (rel >= 0 && rel <= main.byteSize() - 8) {
            return (long) I64.getVolatile(main, rel);
        }
        return slowRead(offset, 8);
    }

    public void write64(long offset, long value) {
        long rel = offset - mainStart;
        if (rel >= 0 && rel <= main.byteSize() - 8) {
            I64.setVolatile(main, rel, value);
            return;
        }
        slowWrite(offset, 8, value);
    }

    private long slowRead(long offset, int width) {
        check(offset, width);
        MemorySegment seg = mapped(offset, width);
        if (seg != null) {
            return width == 4
                    ? Integer.toUnsignedLong((int) I32.getVolatile(seg, 0L))
                    : (long) I64.getVolatile(seg, 0L);
        }
        if (width == 8) {
            // low half, then high half (see the class comment); each half mapped or not
            long low = Integer.toUnsignedLong(read32(offset));
            return low | (long) read32(offset + 4) << 32;
        }
        try {
            return descriptor.read(offset, width);
        } catch (VfioException e) {
            throw new UncheckedIOException(e);
        }
    }

    private void slowWrite(long offset, int width, long value) {
        check(offset, width);
        MemorySegment seg = mapped(offset, width);
        if (seg != null) {
            if (width == 4) {
                I32.setVolatile(seg, 0L, (int) value);
            } else {
                I64.setVolatile(seg, 0L, value);
            }
            return;
        }
        if (width == 8) {
            // low half, then high half (see the class comment); each half mapped or not
            write32(offset, (int) value);
            write32(offset + 4, (int) (value >>> 32));
            return;
        }
        try {
            descriptor.write(offset, width, value);
        } catch (VfioException e) {
            throw new UncheckedIOException(e);
        }
    }

    private void check(long offset, int width) {
        if (offset < 0 || offset > region.size() - width || (offset & (width - 1)) != 0) {
            throw new IndexOutOfBoundsException(String.format(
                    "%d-byte access at 0x%x outside %s (%d bytes) or unaligned",
                    width, offset, region.name(), region.size()));
        }
    }

    private MemorySegment mapped(long offset, int width) {
        for (int i = 0; i < areas.length; i++) {
            long rel = offset - areaStart[i];
            if (rel >= 0 && rel <= areas[i].byteSize() - width) {
                return areas[i].asSlice(rel, width);
            }
        }
        return null;
    }

    /** Unmaps. Later accesses to mapped parts fail with IllegalStateException. */
    @Override
    public void close() {
        synchronized (this) {
            if (arena.scope().isAlive()) {
                arena.close();
            }
        }
        if (device != null) {
            device.forget(this);
        }
    }
}
