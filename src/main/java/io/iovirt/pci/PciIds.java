// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import java.io.BufferedReader;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;

/**
 * Vendor, device and class names from the pci.ids database (pciutils' format): vendor lines at column 0, devices
 * after one tab, subsystems after two; a class section of "C xx" lines with subclasses and programming interfaces.
 * Lines that do not fit the format are skipped: a damaged database costs names, never the listing.
 */
public final class PciIds {
    private static final PciIds EMPTY = new PciIds(Map.of(), Map.of(), Map.of());

    private final Map<Integer, String> vendors;
    private final Map<Integer, String> devices; // vendor << 16 | device
    private final Map<Integer, String> classes; // class << 16 | 0xffff, class << 8 | subclass (tagged), full 24-bit

    private PciIds(Map<Integer, String> vendors, Map<Integer, String> devices, Map<Integer, String> classes) {
        this.vendors = vendors;
        this.devices = devices;
        this.classes = classes;
    }

    public static PciIds empty() {
        return EMPTY;
    }

    /** Loads the database, or an empty one when {@code file} is null or unreadable. */
    public static PciIds load(Path file) {
        if (file == null || !Files.isReadable(file)) {
            return EMPTY;
        }
        Map<Integer, String> vendors = new HashMap<>();
        Map<Integer, String> devices = new HashMap<>();
        Map<Integer, String> classes = new HashMap<>();
        try (BufferedReader r = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
            int vendor = -1;
            int cls = -1;
            int sub = -1;
            boolean inClasses = false;
            String line;
            while ((line = r.readLine()) != null) {
                if (line.isEmpty() || line.charAt(0) == '#') {
                    continue;
                }
                if (line.startsWith("C ")) {
                    inClasses = true;
                    cls = hex(line, 2, 2);
                    sub = -1;
                    if (cls >= 0) {
                        classes.put(classKey(cls, -1, -1), name(line, 6));
                    }
                } else if (line.charAt(0) != '\t') {
                    inClasses = false;
                    cls = -1;
                    // Other sections (device_type "D", "X"...) use a letter prefix; vendors are 4 hex digits.
                    vendor = hex(line, 0, 4);
                    if (vendor >= 0 && line.length() > 6) {
                        vendors.put(vendor, name(line, 6));
                    }
                } else if (line.startsWith("\t\t")) {
                    if (inClasses && cls >= 0 && sub >= 0) {
                        int progIf = hex(line, 2, 2);
                        if (progIf >= 0) {
                            classes.put(classKey(cls, sub, progIf), name(line, 6));
                        }
                    }
                    // Subsystem names are not shown.
                } else if (inClasses) {
                    sub = cls < 0 ? -1 : hex(line, 1, 2);
                    if (sub >= 0) {
                        classes.put(classKey(cls, sub, -1), name(line, 5));
                    }
                } else if (vendor >= 0) {
                    int device = hex(line, 1, 4);
                    if (device >= 0 && line.length() > 7) {
                        devices.put(vendor << 16 | device, name(line, 7));
                    }
                }
            }
        } catch (IOException | RuntimeException e) {
            // Names are a convenience; a broken database is ignored rather than failing the command.
            return EMPTY;
        }
        return new PciIds(Map.copyOf(vendors), Map.copyOf(devices), Map.copyOf(classes));
    }

    public String vendor(int vendor) {
        return vendors.get(vendor);
    }

    public String device(int vendor, int device) {
        return devices.get(vendor << 16 | device);
    }

    /** The most specific class name for a 24-bit class code (class, subclass, prog-if), or null. */
    public String className(int classCode) {
        int c = classCode >>> 16 & 0xff;
        int s = classCode >>> 8 & 0xff;
        int p = classCode & 0xff;
        String n = classes.get(classKey(c, s, p));
        if (n == null) {
            n = classes.get(classKey(c, s, -1));
        }
        if (n == null) {
            n = classes.get(classKey(c, -1, -1));
        }
        return n;
    }

    public boolean isEmpty() {
        return vendors.isEmpty();
    }

    private static int classKey(int c, int s, int p) {
        return (c & 0xff) << 20 | (s < 0 ? 0x100 : s) << 10 | (p < 0 ? 0x100 : p);
    }

    private static int hex(String line, int from, int digits) {
        if (line.length() < from + digits) {
            return -1;
        }
        int v = 0;
        for (int i = from; i < from + digits; i++) {
            int d = Character.digit(line.charAt(i), 16);
            if (d < 0) {
                return -1;
            }
            v = v << 4 | d;
        }
        if (line.length() > from + digits && line.charAt(from + digits) != ' ') {
            return -1;
        }
        return v;
    }

    private static String name(String line, int from) {
        return from >= line.length() ? "" : line.substring(from).strip();
    }
}
