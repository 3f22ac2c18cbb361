// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

/**
 * Text someone else chose (a guest, a frontend, a tenant's image header, a config file, sysfs) made safe for one line
 * of a message or a log: control characters (C0, DEL, C1) are escaped, so a name cannot start a forged log line or
 * move the terminal's cursor, and a long text is cut.
 */
public final class Printable {
    private Printable() {}

    /** {@code s} with control characters escaped, whole. */
    public static String of(String s) {
        return of(s, Integer.MAX_VALUE);
    }

    /** {@code s} with control characters escaped ({@code \n}, {@code \xNN}), cut after {@code max} of its characters. */
    public static String of(String s, int max) {
        return escaped(s, max, 0x9f);
    }

    /**
     * Bytes read as ISO-8859-1 (a sysfs attribute, a header field): every byte outside printable ASCII escaped
     * ({@code \xNN}), since such bytes are junk rather than text; cut after {@code max} bytes.
     */
    public static String ofBytes(String latin1, int max) {
        return escaped(latin1, max, 0xff);
    }

    private static String escaped(String s, int max, int lastEscaped) {
        StringBuilder b = new StringBuilder(Math.min(s.length(), max) + 8);
        int n = Math.min(s.length(), max);
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            if (c == '\n') {
                b.append("\\n");
            } else if (c < 0x20 || (c >= 0x7f && c <= lastEscaped)) {
                b.append(String.format("\\x%02x", (int) c));
            } else {
                b.append(c);
            }
        }
        if (s.length() > max) {
            b.append("...");
        }
        return b.toString();
    }
}
