package io.iovirt.vfio;

import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A PCI function address (domain:bus:device.function), the name sysfs and VFIO use for a device. Parses both the
 * full form {@code 0000:01:00.0} and the short form {@code 01:00.0} (domain 0); {@link #toString()} is always the
 * full form, which is what {@code VFIO_GROUP_GET_DEVICE_FD} expects.
 */
public record PciAddress(int domain, int bus, int device, int function) {
    private static final Pattern FORM = Pattern.compile(
            "(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\\.([0-7])");

    public PciAddress {
        if (domain < 0 || domain > 0xffff || bus < 0 || bus > 0xff || device < 0 || device > 0x1f
                || function < 0 || function > 7) {
            throw new IllegalArgumentException(String.format(
                    "not a PCI address: domain %#x bus %#x device %#x function %d", domain, bus, device, function));
        }
    }

    public static PciAddress parse(String text) {
        Matcher m = FORM.matcher(text.trim());
        if (!m.matches()) {
            throw new IllegalArgumentException("not a PCI address: '" + text
                    + "' (expected domain:bus:device.function such as 0000:01:00.0, or bus:device.function)");
        }
        int domain = m.group(1) == null ? 0 : Integer.parseUnsignedInt(m.group(1), 16);
        if (domain > 0xffff) {
            throw new IllegalArgumentException("not a PCI address: '" + text + "' (domain above 0xffff)");
        }
        int device = Integer.parseInt(m.group(3), 16);
        if (device > 0x1f) {
            throw new IllegalArgumentException("not a PCI address: '" + text + "' (device above 0x1f)");
        }
        return new PciAddress(domain, Integer.parseInt(m.group(2), 16), device, Integer.parseInt(m.group(4)));
    }

    @Override
    public String toString() {
        return String.format("%04x:%02x:%02x.%d", domain, bus, device, function);
    }
}
