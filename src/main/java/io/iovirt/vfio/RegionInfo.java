// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import io.iovirt.util.ByteSizes;
import java.util.ArrayList;
import java.util.List;

/**
 * VFIO_DEVICE_GET_REGION_INFO for one region: where it sits in the device descriptor's offset space, its size,
 * what may be done with it, and its capabilities.
 */
public record RegionInfo(int index, String name, int flags, long size, long offset, List<Capability> caps) {
    public RegionInfo {
        caps = List.copyOf(caps);
    }

    /** A region capability. */
    public sealed interface Capability {}

    /** Only these parts of the region may be mmap'ed (the rest, e.g. an MSI-X table, through read/write). */
    public record SparseMmap(List<Area> areas) implements Capability {
        public SparseMmap {
            areas = List.copyOf(areas);
        }
    }

    public record Area(long offset, long size) {}

    /** A device-specific region's type and subtype. */
    public record Type(int type, int subtype) implements Capability {}

    /** The MSI-X table inside this BAR may be mapped along with the rest (IRQ remapping protects it). */
    public record MsixMappable() implements Capability {}

    public record Unknown(int id, int version) implements Capability {}

    public boolean readable() {
        return (flags & VfioAbi.REGION_INFO_FLAG_READ) != 0;
    }

    public boolean writable() {
        return (flags & VfioAbi.REGION_INFO_FLAG_WRITE) != 0;
    }

    public boolean mmappable() {
        return (flags & VfioAbi.REGION_INFO_FLAG_MMAP) != 0;
    }

    public boolean implemented() {
        return size > 0;
    }

    /** The mmap'able areas: the sparse list when there is one, else the whole region when it can be mapped. */
    public List<Area> mmapAreas() {
        for (Capability c : caps) {
            if (c instanceof SparseMmap s) {
                return s.areas();
            }
        }
        return mmappable() && size > 0 ? List.of(new Area(0, size)) : List.of();
    }

    /** "rw mmap" and the like. */
    public String flagsText() {
        List<String> f = new ArrayList<>();
        if (readable() || writable()) {
            f.add((readable() ? "r" : "") + (writable() ? "w" : ""));
        }
        if (mmappable()) {
            f.add("mmap");
        }
        return f.isEmpty() ? "-" : String.join(" ", f);
    }

    public String capsText() {
        List<String> out = capTexts();
        return out.isEmpty() ? "-" : String.join(" ", out);
    }

    /** One text per capability: "sparse-mmap[0x0+4K,...]", "type 0x1/2", "msix-mappable", "cap ID vV". */
    public List<String> capTexts() {
        List<String> out = new ArrayList<>();
        for (Capability c : caps) {
            out.add(
                    switch (c) {
                        case SparseMmap s -> {
                            List<String> a = new ArrayList<>();
                            for (Area area : s.areas()) {
                                a.add(String.format("0x%x+%s", area.offset(), ByteSizes.binary(area.size())));
                            }
                            yield "sparse-mmap[" + String.join(",", a) + "]";
                        }
                        case Type t -> String.format("type %#x/%d", t.type(), t.subtype());
                        case MsixMappable m -> "msix-mappable";
                        case Unknown u -> "cap " + u.id() + " v" + u.version();
                    });
        }
        return out;
    }

    /** vfio-pci's name for region {@code index}. */
    static String pciName(int index) {
        return switch (index) {
            case 0, 1, 2, 3, 4, 5 -> "BAR" + index;
            case VfioAbi.PCI_ROM_REGION_INDEX -> "ROM";
            case VfioAbi.PCI_CONFIG_REGION_INDEX -> "config";
            case VfioAbi.PCI_VGA_REGION_INDEX -> "VGA";
            default -> "region " + index;
        };
    }
}
