// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED;

import io.iovirt.linux.Errno;
import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.Ioctl;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;

/**
 * A device opened through VFIO: its regions (BARs, config space), interrupts and reset. Obtained from
 * {@link VfioGroup#openDevice}; closing it unmaps every region mapped through it and releases the descriptor
 * (vfio-pci then resets the function when it can and disables its interrupts).
 */
public final class VfioDevice implements AutoCloseable {
    private final Fd fd;
    private final String name;
    private final DeviceInfo info;
    private final List<MmioRegion> mappings = new ArrayList<>();
    private volatile RegionInfo configRegion;
    // INTx unmask runs after every level-triggered interrupt: a prebuilt request, no allocation per interrupt
    private final MemorySegment unmaskIntx;

    private VfioDevice(Fd fd, String name, DeviceInfo info) {
        this.fd = fd;
        this.name = name;
        this.info = info;
        this.unmaskIntx = Arena.ofAuto().allocate(VfioAbi.IRQ_SET);
        irqSetHeader(
                unmaskIntx,
                VfioAbi.IRQ_SET_DATA_NONE | VfioAbi.IRQ_SET_ACTION_UNMASK,
                VfioAbi.PCI_INTX_IRQ_INDEX,
                0,
                1,
                (int) VfioAbi.IRQ_SET.byteSize());
    }

    static VfioDevice open(Fd fd, String name) throws VfioException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment s = a.allocate(VfioAbi.DEVICE_INFO);
            s.set(JAVA_INT, VfioAbi.ARGSZ, (int) VfioAbi.DEVICE_INFO.byteSize());
            Ioctl.call(fd, VfioAbi.DEVICE_GET_INFO, s);
            DeviceInfo info = new DeviceInfo(
                    s.get(JAVA_INT, VfioAbi.FLAGS),
                    s.get(JAVA_INT, VfioAbi.DEVICE_INFO_NUM_REGIONS),
                    s.get(JAVA_INT, VfioAbi.DEVICE_INFO_NUM_IRQS));
            if (info.numRegions() < 0 || info.numRegions() > 1024 || info.numIrqs() < 0 || info.numIrqs() > 1024) {
                throw new VfioException("VFIO_DEVICE_GET_INFO for " + name + " reports an implausible " + info);
            }
            return new VfioDevice(fd, name, info);
        } catch (LinuxException e) {
            throw new VfioException("VFIO_DEVICE_GET_INFO for " + name + " failed: " + e.getMessage(), e);
        }
    }

    public String name() {
        return name;
    }

    public DeviceInfo info() {
        return info;
    }

    private String regionName(int index) {
        return info.pci() ? RegionInfo.pciName(index) : "region " + index;
    }

    /** VFIO_DEVICE_GET_REGION_INFO with the capability chain (asked again with a larger buffer when needed). */
    public RegionInfo regionInfo(int index) throws VfioException {
        if (index < 0 || index >= info.numRegions()) {
            throw new IllegalArgumentException("region " + index + " outside 0.." + (info.numRegions() - 1));
        }
        try {
            return InfoCapabilities.query(
                    VfioAbi.REGION_INFO.byteSize(),
                    VfioAbi.REGION_INFO_FLAG_CAPS,
                    "region info for " + name,
                    s -> {
                        s.set(JAVA_INT, VfioAbi.REGION_INFO_INDEX, index);
                        Ioctl.call(fd, VfioAbi.DEVICE_GET_REGION_INFO, s);
                    },
                    s -> parseRegionInfo(s, index, regionName(index)));
        } catch (LinuxException e) {
            if (info.pci() && index == VfioAbi.PCI_VGA_REGION_INDEX && e.errno() == Errno.EINVAL) {
                // vfio-pci answers EINVAL for the VGA region of a device that is not a VGA controller
                return new RegionInfo(index, regionName(index), 0, 0, 0, List.of());
            }
            throw new VfioException(
                    "VFIO_DEVICE_GET_REGION_INFO(" + index + ") for " + name + " failed: " + e.getMessage(), e);
        }
    }

    static RegionInfo parseRegionInfo(MemorySegment s, int index, String name) throws VfioException {
        int flags = s.get(JAVA_INT, VfioAbi.FLAGS);
        long size = s.get(JAVA_LONG, VfioAbi.REGION_INFO_SIZE);
        long offset = s.get(JAVA_LONG, VfioAbi.REGION_INFO_OFFSET);
        List<RegionInfo.Capability> caps = new ArrayList<>();
        if ((flags & VfioAbi.REGION_INFO_FLAG_CAPS) != 0) {
            long first = Integer.toUnsignedLong(s.get(JAVA_INT, VfioAbi.REGION_INFO_CAP_OFFSET));
            String what = name + " region info";
            for (InfoCapabilities.Cap cap : InfoCapabilities.walk(s, first, VfioAbi.REGION_INFO.byteSize(), what)) {
                caps.add(
                        switch (cap.id()) {
                            case VfioAbi.REGION_INFO_CAP_SPARSE_MMAP -> {
                                InfoCapabilities.require(cap, VfioAbi.CAP_SPARSE_MMAP.byteSize(), what);
                                long n = Integer.toUnsignedLong(cap.data().get(JAVA_INT, VfioAbi.SPARSE_NR_AREAS));
                                long base = VfioAbi.CAP_SPARSE_MMAP.byteSize();
                                long each = VfioAbi.SPARSE_MMAP_AREA.byteSize();
                                InfoCapabilities.require(cap, base + n * each, what);
                                List<RegionInfo.Area> areas = new ArrayList<>();
                                for (long i = 0; i < n; i++) {
                                    long ao = cap.data().get(JAVA_LONG_UNALIGNED, base + i * each);
                                    long as = cap.data().get(JAVA_LONG_UNALIGNED, base + i * each + 8);
                                    if (as < 0 || ao < 0 || ao > size || as > size - ao) {
                                        throw new VfioException(String.format(
                                                "%s: sparse mmap area 0x%x+0x%x outside the " + "%d-byte region",
                                                what, ao, as, size));
                                    }
                                    if (as > 0) {
                                        areas.add(new RegionInfo.Area(ao, as));
                                    }
                                }
                                yield new RegionInfo.SparseMmap(areas);
                            }
                            case VfioAbi.REGION_INFO_CAP_TYPE -> {
                                InfoCapabilities.require(cap, VfioAbi.CAP_TYPE.byteSize(), what);
                                yield new RegionInfo.Type(
                                        cap.data().get(JAVA_INT, VfioAbi.CAP_TYPE_TYPE),
                                        cap.data().get(JAVA_INT, VfioAbi.CAP_TYPE_SUBTYPE));
                            }
                            case VfioAbi.REGION_INFO_CAP_MSIX_MAPPABLE -> new RegionInfo.MsixMappable();
                            default -> new RegionInfo.Unknown(cap.id(), cap.version());
                        });
            }
        }
        return new RegionInfo(index, name, flags, size, offset, caps);
    }

    public List<RegionInfo> regions() throws VfioException {
        List<RegionInfo> out = new ArrayList<>();
        for (int i = 0; i < info.numRegions(); i++) {
            out.add(regionInfo(i));
        }
        return out;
    }

    public IrqInfo irqInfo(int index) throws VfioException {
        if (index < 0 || index >= info.numIrqs()) {
            throw new IllegalArgumentException("IRQ index " + index + " outside 0.." + (info.numIrqs() - 1));
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment s = a.allocate(VfioAbi.IRQ_INFO);
            s.set(JAVA_INT, VfioAbi.ARGSZ, (int) VfioAbi.IRQ_INFO.byteSize());
            s.set(JAVA_INT, VfioAbi.IRQ_INFO_INDEX, index);
            Ioctl.call(fd, VfioAbi.DEVICE_GET_IRQ_INFO, s);
            return new IrqInfo(
                    index,
                    info.pci() ? IrqInfo.pciName(index) : "irq " + index,
                    s.get(JAVA_INT, VfioAbi.FLAGS),
                    s.get(JAVA_INT, VfioAbi.IRQ_INFO_COUNT));
        } catch (LinuxException e) {
            throw new VfioException(
                    "VFIO_DEVICE_GET_IRQ_INFO(" + index + ") for " + name + " failed: " + e.getMessage(), e);
        }
    }

    public List<IrqInfo> irqs() throws VfioException {
        List<IrqInfo> out = new ArrayList<>();
        for (int i = 0; i < info.numIrqs(); i++) {
            out.add(irqInfo(i));
        }
        return out;
    }

    // ---- region access through the descriptor -------------------------------------------------------------------

    long readRegion(RegionInfo r, long offset, int width) throws VfioException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(8, 8);
            long n = FileIo.pread(fd, buf.asSlice(0, width), r.offset() + offset);
            if (n != width) {
                throw new VfioException(String.format(
                        "short read of %d bytes at 0x%x in %s of %s: %d", width, offset, r.name(), name, n));
            }
            return switch (width) {
                case 1 -> Byte.toUnsignedLong(buf.get(JAVA_BYTE, 0));
                case 2 -> Short.toUnsignedLong(buf.get(ValueLayout.JAVA_SHORT, 0));
                case 4 -> Integer.toUnsignedLong(buf.get(JAVA_INT, 0));
                default -> buf.get(JAVA_LONG, 0);
            };
        } catch (LinuxException e) {
            throw new VfioException(
                    String.format(
                            "reading %d bytes at 0x%x of %s in %s failed: %s",
                            width, offset, r.name(), name, e.getMessage()),
                    e);
        }
    }

    void writeRegion(RegionInfo r, long offset, int width, long value) throws VfioException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(8, 8);
            buf.set(JAVA_LONG, 0, value); // little-endian: the low `width` bytes come first
            long n = FileIo.pwrite(fd, buf.asSlice(0, width), r.offset() + offset);
            if (n != width) {
                throw new VfioException(String.format(
                        "short write of %d bytes at 0x%x in %s of %s: %d", width, offset, r.name(), name, n));
            }
        } catch (LinuxException e) {
            throw new VfioException(
                    String.format(
                            "writing %d bytes at 0x%x of %s in %s failed: %s",
                            width, offset, r.name(), name, e.getMessage()),
                    e);
        }
    }

    private RegionInfo config() throws VfioException {
        RegionInfo c = configRegion;
        if (c == null) {
            if (!info.pci() || info.numRegions() <= VfioAbi.PCI_CONFIG_REGION_INDEX) {
                throw new VfioException(name + " is not a vfio-pci device: it has no PCI config space region");
            }
            c = regionInfo(VfioAbi.PCI_CONFIG_REGION_INDEX);
            configRegion = c;
        }
        return c;
    }

    /** Reads 1, 2 or 4 bytes of PCI config space (as vfio-pci virtualizes it). */
    public int readConfig(int offset, int width) throws VfioException {
        RegionInfo c = config();
        checkConfig(c, offset, width);
        return (int) readRegion(c, offset, width);
    }

    public void writeConfig(int offset, int width, int value) throws VfioException {
        RegionInfo c = config();
        checkConfig(c, offset, width);
        writeRegion(c, offset, width, value);
    }

    private static void checkConfig(RegionInfo c, int offset, int width) {
        if ((width != 1 && width != 2 && width != 4)
                || offset < 0
                || offset > c.size() - width
                || offset % width != 0) {
            throw new IllegalArgumentException("config space access of " + width + " bytes at " + offset
                    + " is not naturally aligned or outside the " + c.size() + "-byte config space");
        }
    }

    // ---- mapping ------------------------------------------------------------------------------------------------

    /**
     * Maps region {@code index} (a BAR): every mmap'able area of it, read/write as the region allows. Parts outside
     * those areas stay reachable through the returned object, by pread/pwrite.
     */
    public MmioRegion mapRegion(int index) throws VfioException {
        RegionInfo r = regionInfo(index);
        if (!r.implemented()) {
            throw new VfioException(r.name() + " of " + name + " is not implemented (size 0)");
        }
        List<RegionInfo.Area> areas = r.mmapAreas();
        if (areas.isEmpty() && !r.readable()) {
            throw new VfioException(r.name() + " of " + name + " can be neither mapped nor read");
        }
        int prot = (r.readable() ? Mmap.PROT_READ : 0) | (r.writable() ? Mmap.PROT_WRITE : 0);
        Arena arena = Arena.ofShared();
        try {
            List<MemorySegment> segs = new ArrayList<>();
            List<Long> starts = new ArrayList<>();
            for (RegionInfo.Area area : areas) {
                segs.add(Mmap.map(fd, r.offset() + area.offset(), area.size(), prot, Mmap.MAP_SHARED, arena));
                starts.add(area.offset());
            }
            MmioRegion m = new MmioRegion(this, r, arena, segs, starts);
            synchronized (mappings) {
                if (!fd.isOpen()) {
                    throw new VfioException(name + " is closed");
                }
                mappings.add(m);
            }
            return m;
        } catch (LinuxException e) {
            arena.close();
            throw new VfioException("mmap of " + r.name() + " of " + name + " failed: " + e.getMessage(), e);
        } catch (VfioException | RuntimeException e) {
            arena.close();
            throw e;
        }
    }

    void forget(MmioRegion m) {
        synchronized (mappings) {
            mappings.remove(m);
        }
    }

    // ---- reset and interrupts -----------------------------------------------------------------------------------

    /** VFIO_DEVICE_RESET: a function-level (or equivalent) reset. */
    public void reset() throws VfioException {
        if (!info.resettable()) {
            throw new VfioException(name + " offers no reset VFIO can perform (no FLR, PM or bus reset)");
        }
        try {
            Ioctl.call(fd, VfioAbi.DEVICE_RESET);
        } catch (LinuxException e) {
            throw new VfioException("VFIO_DEVICE_RESET of " + name + " failed: " + e.getMessage(), e);
        }
    }

    private static void irqSetHeader(MemorySegment s, int flags, int index, int start, int count, int argsz) {
        s.set(JAVA_INT, VfioAbi.ARGSZ, argsz);
        s.set(JAVA_INT, VfioAbi.FLAGS, flags);
        s.set(JAVA_INT, VfioAbi.IRQ_SET_INDEX, index);
        s.set(JAVA_INT, VfioAbi.IRQ_SET_START, start);
        s.set(JAVA_INT, VfioAbi.IRQ_SET_COUNT, count);
    }

    /**
     * Signals {@code eventfds[i]} when vector {@code start + i} of interrupt {@code index} fires (a null entry leaves
     * that vector unassigned). For MSI and MSI-X this also enables the capability with that many vectors.
     */
    public void setIrqEventFds(int index, int start, List<EventFd> eventfds) throws VfioException {
        int n = eventfds.size();
        try (Arena a = Arena.ofConfined()) {
            long base = VfioAbi.IRQ_SET.byteSize();
            MemorySegment s = a.allocate(base + 4L * n, 4);
            irqSetHeader(s, VfioAbi.IRQ_SET_DATA_EVENTFD | VfioAbi.IRQ_SET_ACTION_TRIGGER, index, start, n, (int)
                    (base + 4L * n));
            for (int i = 0; i < n; i++) {
                EventFd e = eventfds.get(i);
                s.set(JAVA_INT, base + 4L * i, e == null ? -1 : e.fd().get());
            }
            Ioctl.call(fd, VfioAbi.DEVICE_SET_IRQS, s);
        } catch (LinuxException e) {
            throw new VfioException(
                    String.format(
                            "VFIO_DEVICE_SET_IRQS: wiring %d eventfd(s) to %s vectors %d.. of " + "%s failed: %s",
                            n, irqName(index), start, name, e.getMessage()),
                    e);
        }
    }

    /** Disables interrupt {@code index} entirely (all vectors, MSI/MSI-X capability off). */
    public void disableIrq(int index) throws VfioException {
        simpleIrqSet(VfioAbi.IRQ_SET_DATA_NONE | VfioAbi.IRQ_SET_ACTION_TRIGGER, index, 0, 0, "disable");
    }

    /** Re-arms the automasked INTx line after its interrupt has been handled; allocates nothing. */
    public void unmaskIntx() throws VfioException {
        try {
            synchronized (unmaskIntx) {
                Ioctl.call(fd, VfioAbi.DEVICE_SET_IRQS, unmaskIntx);
            }
        } catch (LinuxException e) {
            throw new VfioException(
                    "VFIO_DEVICE_SET_IRQS: unmasking INTx of " + name + " failed: " + e.getMessage(), e);
        }
    }

    private void simpleIrqSet(int flags, int index, int start, int count, String what) throws VfioException {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment s = a.allocate(VfioAbi.IRQ_SET);
            irqSetHeader(s, flags, index, start, count, (int) VfioAbi.IRQ_SET.byteSize());
            Ioctl.call(fd, VfioAbi.DEVICE_SET_IRQS, s);
        } catch (LinuxException e) {
            throw new VfioException(
                    "VFIO_DEVICE_SET_IRQS: " + what + " " + irqName(index) + " of " + name + " failed: "
                            + e.getMessage(),
                    e);
        }
    }

    private String irqName(int index) {
        return info.pci() ? IrqInfo.pciName(index) : "irq " + index;
    }

    public boolean isOpen() {
        return fd.isOpen();
    }

    /** Unmaps every region mapped through this device, then releases the descriptor. */
    @Override
    public void close() {
        List<MmioRegion> open;
        synchronized (mappings) {
            open = new ArrayList<>(mappings);
        }
        for (MmioRegion m : open) {
            m.close();
        }
        synchronized (mappings) {
            fd.close();
        }
    }

    @Override
    public String toString() {
        return "VFIO device " + name;
    }
}
