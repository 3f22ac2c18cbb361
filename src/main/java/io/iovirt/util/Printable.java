// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

/**
 * Text someone else chose (a guest, a frontend, a tenant's image header, a config file, sysfs) made safe for one line
 * of a message or a log: control characters (C0, DEL, C1) and the invisible characters that change how a line reads
 * (bidirectional overrides, zero-width characters, line and paragraph separators, lone surrogates) are escaped, so a
 * name cannot start a forged log line, move a terminal's cursor or show itself reversed; a backslash is escaped too,
 * so an escape cannot be forged either; a long text is cut.
 */
public final class Printable {
    private Printable() {}

    /** {@code s} escaped, whole. */
    public static String of(String s) {
        return of(s, Integer.MAX_VALUE);
    }

    /** {@code o}'s text (a path someone else spelled, say) escaped, whole; "null" for null. */
    public static String of(Object o) {
        return of(String.valueOf(o));
    }

    /** {@code s} escaped ({@code \n}, {@code \\}, {@code \xNN}, {@code \\uNNNN}), cut after {@code max} characters. */
    public static String of(String s, int max) {
        return escaped(s, max, false);
    }

    /**
     * Bytes read as ISO-8859-1 (a sysfs attribute, a header field), or any text treated as such: everything outside
     * printable ASCII escaped, since such bytes are junk rather than text; cut after {@code max} characters.
     */
    public static String ofBytes(String latin1, int max) {
        return escaped(latin1, max, true);
    }

    private static String escaped(String s, int max, boolean asciiOnly) {
        int n = Math.min(s.length(), max);
        StringBuilder b = new StringBuilder(n + 8);
        int i = 0;
        while (i < n) {
            int c = s.codePointAt(i); // a lone surrogate is its own code point
            int len = Character.charCount(c);
            if (i + len > n) {
                break; // not half a pair
            }
            if (c == '\n') {
                b.append("\\n");
            } else if (c == '\\') {
                b.append("\\\\");
            } else if (c < 0x20 || (c >= 0x7f && c <= 0x9f) || (asciiOnly && c > 0x7e)) {
                b.append(c <= 0xff ? String.format("\\x%02x", c) : String.format("\\u%04x", c));
            } else if (invisible(c)) {
                b.append(String.format("\\u%04x", c));
            } else {
                b.appendCodePoint(c);
            }
            i += len;
        }
        if (i < s.length()) {
            b.append("...");
        }
        return b.toString();
    }

    /** Format characters (bidi controls, zero-width, tags), line and paragraph separators, lone surrogates. */
    private static boolean invisible(int c) {
        int t = Character.getType(c);
        return t == Character.FORMAT
                || t == Character.LINE_SEPARATOR
                || t == Character.PARAGRAPH_SEPARATOR
                || t == Character.SURROGATE;
    }
}
