// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import java.util.Locale;

/**
 * Byte counts for people, in binary units — the one formatter and parser of sizes on iovirt's command line, in its
 * messages and reports.
 */
public final class ByteSizes {
    private static final String[] SUFFIX = {"", "K", "M", "G", "T", "P", "E"};

    private ByteSizes() {}

    /**
     * Exact and short, for sizes that are usually powers of two (BARs, pages, transfer limits): "4K", "2M", "0";
     * other sizes in the largest unit that divides them exactly (1536 stays "1536",
     * 3072 is "3K").
     */
    public static String binary(long bytes) {
        if (bytes == 0) {
            return "0";
        }
        int unit = 0;
        long v = bytes;
        while (unit < SUFFIX.length - 1 && Long.remainderUnsigned(v, 1024) == 0) { // unsigned: a 2^63-byte BAR
            v = Long.divideUnsigned(v, 1024);
            unit++;
        }
        return Long.toUnsignedString(v) + SUFFIX[unit];
    }

    /**
     * Readable, for capacities and limits: "4 GiB" when exact, else one decimal ("1.5 GiB"), down to bytes
     * ("1000 bytes").
     */
    public static String human(long bytes) {
        if (bytes < 1024) {
            return bytes + (bytes == 1 ? " byte" : " bytes");
        }
        String[] units = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        int i = 0;
        while (i < units.length - 1 && bytes >= 1L << (10 * (i + 2))) {
            i++;
        }
        long unit = 1L << (10 * (i + 1));
        if (bytes % unit == 0) {
            return (bytes / unit) + " " + units[i];
        }
        return String.format(Locale.ROOT, "%.1f %s", (double) bytes / unit, units[i]);
    }

    /**
     * Parses "4G", "512M", "64k", "2GiB", "1073741824" (binary units; a trailing B or iB is allowed).
     *
     * @throws ActionableException when the text is not a size, or does not fit in a long
     */
    public static long parse(String text) {
        String t = text.trim().toUpperCase(Locale.ROOT);
        if (t.endsWith("IB")) {
            t = t.substring(0, t.length() - 2);
        } else if (t.endsWith("B")) {
            t = t.substring(0, t.length() - 1);
        }
        int shift = 0;
        if (!t.isEmpty()) {
            int idx = "KMGTPE".indexOf(t.charAt(t.length() - 1));
            if (idx >= 0) {
                shift = 10 * (idx + 1);
                t = t.substring(0, t.length() - 1);
            }
        }
        try {
            long v = Long.parseLong(t.trim());
            if (v < 0 || v > Long.MAX_VALUE >> shift) {
                throw new NumberFormatException();
            }
            return v << shift;
        } catch (NumberFormatException e) {
            throw new ActionableException(
                    "'" + printable(text) + "' is not a size", "write e.g. 4G, 512M, 64K or 1073741824 (binary units)");
        }
    }

    private static String printable(String s) {
        return Printable.of(s, 64);
    }
}
