// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import io.iovirt.util.ActionableException;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A PCI function address, domain:bus:device.function, as the kernel names it in sysfs and VFIO expects it in
 * VFIO_GROUP_GET_DEVICE_FD (0000:01:00.1). The one PCI address type of iovirt: host tooling and the VFIO driver share
 * it, so an address one accepts the other accepts too.
 *
 * @param domain 0..0xfffff (sysfs prints 4 digits; Intel VMD domains start at 0x10000 and print with 5)
 * @param bus 0..0xff
 * @param device 0..0x1f
 * @param function 0..7
 */
public record Bdf(int domain, int bus, int device, int function) implements Comparable<Bdf> {
    private static final Pattern FORMAT =
            Pattern.compile("(?:([0-9a-fA-F]{4,5}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\\.([0-7])");

    public Bdf {
        if (domain < 0
                || domain > 0xfffff
                || bus < 0
                || bus > 0xff
                || device < 0
                || device > 0x1f
                || function < 0
                || function > 7) {
            throw new IllegalArgumentException(
                    "PCI address out of range: " + domain + ":" + bus + ":" + device + "." + function);
        }
    }

    /**
     * Parses "0000:01:00.1" or the short "01:00.1" (domain 0), as lspci prints it.
     *
     * @throws ActionableException when the text is not a PCI address
     */
    public static Bdf parse(String text) {
        Bdf bdf = tryParse(text);
        if (bdf == null) {
            throw new ActionableException(
                    "'" + SysfsTree.printable(text) + "' is not a PCI address",
                    "write it as domain:bus:device.function, e.g. 0000:01:00.1 (see iovirt host devices)");
        }
        return bdf;
    }

    /** The address, or null when the text is not one (used when scanning directory names). */
    public static Bdf tryParse(String text) {
        if (text == null) {
            return null;
        }
        Matcher m = FORMAT.matcher(text.trim());
        if (!m.matches()) {
            return null;
        }
        int dev = Integer.parseInt(m.group(3), 16);
        if (dev > 0x1f) {
            return null;
        }
        int domain = m.group(1) == null ? 0 : Integer.parseInt(m.group(1), 16);
        return new Bdf(domain, Integer.parseInt(m.group(2), 16), dev, Integer.parseInt(m.group(4)));
    }

    @Override
    public String toString() {
        return String.format("%04x:%02x:%02x.%x", domain, bus, device, function);
    }

    @Override
    public int compareTo(Bdf o) {
        int c = Integer.compare(domain, o.domain);
        if (c == 0) c = Integer.compare(bus, o.bus);
        if (c == 0) c = Integer.compare(device, o.device);
        if (c == 0) c = Integer.compare(function, o.function);
        return c;
    }
}
