// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;
import static java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED;

import io.iovirt.linux.Errno;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.Ioctl;
import io.iovirt.linux.LinuxException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.OptionalInt;

/**
 * A VFIO container ({@code /dev/vfio/vfio}): the IOMMU context that one or more groups share. Groups are attached
 * with {@link VfioGroup#attach}, then {@link #setIommu} selects the type1v2 IOMMU, after which DMA mappings can be
 * made. Closing the container (after its groups and devices) tears down every mapping that is still there.
 */
public final class VfioContainer implements IommuBackend, AutoCloseable {
    public static final Path DEFAULT_PATH = Path.of("/dev/vfio/vfio");

    /** The IOMMU models a container may offer, by their VFIO_CHECK_EXTENSION number. */
    public enum IommuType {
        TYPE1(VfioAbi.TYPE1_IOMMU, "Type1"),
        SPAPR_TCE(VfioAbi.SPAPR_TCE_IOMMU, "sPAPR TCE"),
        TYPE1V2(VfioAbi.TYPE1V2_IOMMU, "Type1v2"),
        TYPE1_NESTING(VfioAbi.TYPE1_NESTING_IOMMU, "Type1 nesting"),
        SPAPR_TCE_V2(VfioAbi.SPAPR_TCE_V2_IOMMU, "sPAPR TCE v2"),
        NOIOMMU(VfioAbi.NOIOMMU_IOMMU, "no-IOMMU (unsafe)");

        public final int id;
        public final String label;

        IommuType(int id, String label) {
            this.id = id;
            this.label = label;
        }
    }

    /** Container features beyond the IOMMU model. */
    public enum Extension {
        DMA_CC_IOMMU(VfioAbi.DMA_CC_IOMMU, "cache-coherent DMA"),
        EEH(VfioAbi.EEH, "EEH"),
        UNMAP_ALL(VfioAbi.UNMAP_ALL, "unmap-all"),
        UPDATE_VADDR(VfioAbi.UPDATE_VADDR, "update-vaddr");

        public final int id;
        public final String label;

        Extension(int id, String label) {
            this.id = id;
            this.label = label;
        }
    }

    private final Fd fd;
    private final Path path;
    private volatile IommuType iommu;

    private VfioContainer(Fd fd, Path path) {
        this.fd = fd;
        this.path = path;
    }

    /** Opens {@code /dev/vfio/vfio} and checks the API version. */
    public static VfioContainer open() throws VfioException {
        return open(DEFAULT_PATH);
    }

    public static VfioContainer open(Path path) throws VfioException {
        Fd fd;
        try {
            fd = FileIo.open(path, FileIo.O_RDWR);
        } catch (LinuxException e) {
            throw new VfioException(
                    switch (e.errno()) {
                        case Errno.ENOENT ->
                            "no " + path + ": the vfio module is not loaded — 'modprobe vfio-pci' "
                                    + "(it also loads vfio and vfio_iommu_type1)";
                        case Errno.EACCES, Errno.EPERM ->
                            "cannot open " + path + ": " + e.errnoName()
                                    + " — run as root, or give this user read/write access to it";
                        default -> "cannot open " + path + ": " + e.getMessage();
                    },
                    e);
        }
        VfioContainer c = new VfioContainer(fd, path);
        try {
            int version = Ioctl.call(fd, VfioAbi.GET_API_VERSION);
            if (version != VfioAbi.API_VERSION) {
                throw new VfioException(
                        path + " speaks VFIO API version " + version + "; iovirt knows version " + VfioAbi.API_VERSION);
            }
            return c;
        } catch (LinuxException e) {
            c.close();
            throw new VfioException("VFIO_GET_API_VERSION on " + path + " failed: " + e.getMessage(), e);
        } catch (VfioException e) {
            c.close();
            throw e;
        }
    }

    Fd fd() {
        return fd;
    }

    public int apiVersion() throws VfioException {
        try {
            return Ioctl.call(fd, VfioAbi.GET_API_VERSION);
        } catch (LinuxException e) {
            throw new VfioException("VFIO_GET_API_VERSION failed: " + e.getMessage(), e);
        }
    }

    /** VFIO_CHECK_EXTENSION: whether the kernel offers extension (or IOMMU model) {@code id}. */
    public boolean checkExtension(int id) throws VfioException {
        try {
            return Ioctl.call(fd, VfioAbi.CHECK_EXTENSION, (long) id) > 0;
        } catch (LinuxException e) {
            throw new VfioException("VFIO_CHECK_EXTENSION(" + id + ") failed: " + e.getMessage(), e);
        }
    }

    public List<IommuType> supportedIommuTypes() throws VfioException {
        List<IommuType> out = new ArrayList<>();
        for (IommuType t : IommuType.values()) {
            if (checkExtension(t.id)) {
                out.add(t);
            }
        }
        return out;
    }

    public List<Extension> supportedExtensions() throws VfioException {
        List<Extension> out = new ArrayList<>();
        for (Extension x : Extension.values()) {
            if (checkExtension(x.id)) {
                out.add(x);
            }
        }
        return out;
    }

    /**
     * VFIO_SET_IOMMU. Needs at least one group attached (the kernel answers EINVAL otherwise). Type1v2 is what
     * iovirt uses: unmapping must match whole mappings, and it is the model every x86 and arm64 host offers.
     */
    public void setIommu(IommuType type) throws VfioException {
        if (iommu != null) {
            throw new VfioException("the container's IOMMU is already set (" + iommu.label + ")");
        }
        if (type == IommuType.NOIOMMU) {
            throw new VfioException("refusing the no-IOMMU mode: without an IOMMU a device can DMA anywhere in memory");
        }
        if (!checkExtension(type.id)) {
            throw new VfioException("the kernel's VFIO has no " + type.label + " IOMMU driver — load vfio_iommu_type1 "
                    + "('modprobe vfio_iommu_type1') and boot with the IOMMU on (intel_iommu=on or amd_iommu=on)");
        }
        try {
            Ioctl.call(fd, VfioAbi.SET_IOMMU, (long) type.id);
        } catch (LinuxException e) {
            throw new VfioException(
                    "VFIO_SET_IOMMU(" + type.label + ") failed: " + e.getMessage()
                            + (e.errno() == Errno.EINVAL ? " — attach a group to the container first" : ""),
                    e);
        }
        iommu = type;
    }

    /** The IOMMU model set with {@link #setIommu}, or null. */
    public IommuType iommuType() {
        return iommu;
    }

    private void requireIommu(String op) throws VfioException {
        if (iommu == null) {
            throw new VfioException(op + " needs the container's IOMMU to be set (attach a group, then setIommu)");
        }
    }

    @Override
    public String describe() {
        IommuType t = iommu;
        return "VFIO container " + path + (t == null ? " (no IOMMU set)" : " (" + t.label + ")");
    }

    @Override
    public IommuInfo info() throws VfioException {
        requireIommu("VFIO_IOMMU_GET_INFO");
        try {
            return InfoCapabilities.query(
                    VfioAbi.IOMMU_TYPE1_INFO.byteSize(),
                    VfioAbi.IOMMU_INFO_CAPS,
                    "VFIO_IOMMU_GET_INFO",
                    info -> Ioctl.call(fd, VfioAbi.IOMMU_GET_INFO, info),
                    info -> parseIommuInfo(info, info.get(JAVA_INT, VfioAbi.FLAGS)));
        } catch (LinuxException e) {
            throw new VfioException("VFIO_IOMMU_GET_INFO failed: " + e.getMessage(), e);
        }
    }

    static IommuInfo parseIommuInfo(MemorySegment info, int flags) throws VfioException {
        long pageSizes =
                (flags & VfioAbi.IOMMU_INFO_PGSIZES) != 0 ? info.get(JAVA_LONG, VfioAbi.IOMMU_INFO_PGSIZES_OFF) : 0;
        List<IommuInfo.IovaRange> ranges = new ArrayList<>();
        OptionalInt avail = OptionalInt.empty();
        if ((flags & VfioAbi.IOMMU_INFO_CAPS) != 0) {
            long first = Integer.toUnsignedLong(info.get(JAVA_INT, VfioAbi.IOMMU_INFO_CAP_OFFSET));
            for (InfoCapabilities.Cap cap :
                    InfoCapabilities.walk(info, first, VfioAbi.IOMMU_TYPE1_INFO.byteSize(), "IOMMU info")) {
                switch (cap.id()) {
                    case VfioAbi.IOMMU_TYPE1_INFO_CAP_IOVA_RANGE -> {
                        InfoCapabilities.require(cap, VfioAbi.CAP_IOVA_RANGE.byteSize(), "IOVA range capability");
                        long n = Integer.toUnsignedLong(cap.data().get(JAVA_INT, VfioAbi.IOVA_NR));
                        long base = VfioAbi.CAP_IOVA_RANGE.byteSize();
                        long each = VfioAbi.IOVA_RANGE.byteSize();
                        InfoCapabilities.require(cap, base + n * each, "IOVA range capability");
                        for (long i = 0; i < n; i++) {
                            long o = base + i * each;
                            ranges.add(new IommuInfo.IovaRange(
                                    cap.data().get(JAVA_LONG_UNALIGNED, o),
                                    cap.data().get(JAVA_LONG_UNALIGNED, o + 8)));
                        }
                    }
                    case VfioAbi.IOMMU_TYPE1_INFO_DMA_AVAIL -> {
                        InfoCapabilities.require(cap, VfioAbi.CAP_DMA_AVAIL.byteSize(), "DMA-available capability");
                        avail = OptionalInt.of(cap.data().get(JAVA_INT, VfioAbi.DMA_AVAIL_AVAIL));
                    }
                    default -> {
                        // migration capability and future ones: nothing iovirt uses
                    }
                }
            }
        }
        return new IommuInfo(pageSizes, ranges, avail);
    }

    @Override
    public void mapDma(MemorySegment memory, long iova, boolean deviceWrites) throws VfioException {
        requireIommu("VFIO_IOMMU_MAP_DMA");
        long size = memory.byteSize();
        if (!memory.isNative()
                || size == 0
                || (memory.address() & 0xfff) != 0
                || (size & 0xfff) != 0
                || (iova & 0xfff) != 0) {
            throw new IllegalArgumentException(String.format(
                    "DMA mapping must be native, page aligned and whole pages: vaddr 0x%x, iova 0x%x, size %d",
                    memory.address(), iova, size));
        }
        int flags = VfioAbi.DMA_MAP_FLAG_READ | (deviceWrites ? VfioAbi.DMA_MAP_FLAG_WRITE : 0);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment m = a.allocate(VfioAbi.DMA_MAP);
            m.set(JAVA_INT, VfioAbi.ARGSZ, (int) VfioAbi.DMA_MAP.byteSize());
            m.set(JAVA_INT, VfioAbi.FLAGS, flags);
            m.set(JAVA_LONG, VfioAbi.DMA_MAP_VADDR, memory.address());
            m.set(JAVA_LONG, VfioAbi.DMA_MAP_IOVA, iova);
            m.set(JAVA_LONG, VfioAbi.DMA_MAP_SIZE, size);
            Ioctl.call(fd, VfioAbi.IOMMU_MAP_DMA, m);
        } catch (LinuxException e) {
            String what =
                    String.format("VFIO_IOMMU_MAP_DMA of %d bytes at IOVA 0x%x failed: %s", size, iova, e.errnoName());
            throw new VfioException(
                    what + " — "
                            + switch (e.errno()) {
                                case Errno.ENOMEM -> MemLockLimit.explainEnomem(size);
                                case Errno.EEXIST -> "the IOVA range overlaps an existing mapping; choose another IOVA";
                                case Errno.ENOSPC ->
                                    "the container reached vfio_iommu_type1's dma_entry_limit (module parameter, "
                                            + "default 65535 mappings); use fewer, larger mappings";
                                case Errno.EINVAL ->
                                    "the IOVA or size is not aligned to the IOMMU page size, or the range lies "
                                            + "outside the usable IOVA ranges ('iovirt vfio info' lists them)";
                                case Errno.EFAULT -> "the process memory is not mapped";
                                default -> e.getMessage();
                            },
                    e);
        }
    }

    @Override
    public void unmapDma(long iova, long size) throws VfioException {
        requireIommu("VFIO_IOMMU_UNMAP_DMA");
        if (!fd.isOpen()) {
            return; // the container is gone, and with it every mapping the kernel held for it
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment m = a.allocate(VfioAbi.DMA_UNMAP);
            m.set(JAVA_INT, VfioAbi.ARGSZ, (int) VfioAbi.DMA_UNMAP.byteSize());
            m.set(JAVA_LONG, VfioAbi.DMA_UNMAP_IOVA, iova);
            m.set(JAVA_LONG, VfioAbi.DMA_UNMAP_SIZE, size);
            Ioctl.call(fd, VfioAbi.IOMMU_UNMAP_DMA, m);
            long unmapped = m.get(JAVA_LONG, VfioAbi.DMA_UNMAP_SIZE); // the kernel writes back what it removed
            if (unmapped != size) {
                throw new VfioException(String.format(
                        "VFIO_IOMMU_UNMAP_DMA at IOVA 0x%x removed %d bytes, expected %d", iova, unmapped, size));
            }
        } catch (LinuxException e) {
            throw new VfioException(
                    String.format(
                            "VFIO_IOMMU_UNMAP_DMA of %d bytes at IOVA 0x%x failed: %s", size, iova, e.getMessage()),
                    e);
        }
    }

    /** Whether the descriptor is still open. */
    public boolean isOpen() {
        return fd.isOpen();
    }

    /**
     * Closes the container. Close devices and groups first: the kernel keeps the IOMMU context alive while a group
     * still references it, and drops every remaining mapping when the last reference goes.
     */
    @Override
    public void close() {
        fd.close();
    }

    @Override
    public String toString() {
        return describe();
    }
}
