// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A strict JSON (RFC 8259) reader for control requests and the configuration file: objects become
 * {@code LinkedHashMap<String, Object>}, arrays {@code List<Object>}, integers {@code Long}, other numbers
 * {@code BigDecimal}, plus {@code String}, {@code Boolean} and null. Input is untrusted: nesting is limited, duplicate
 * keys are refused, and every error names the offset.
 */
public final class JsonParser {
    /** Deeper nesting is refused (a request never needs more than a few levels; recursion must stay bounded). */
    public static final int MAX_DEPTH = 32;

    private final String s;
    private final int maxValues;
    private int pos;
    private int values;

    private JsonParser(String s, int maxValues) {
        this.s = s;
        this.maxValues = maxValues;
    }

    /** A syntax error, with the offset where it was found. */
    public static final class JsonException extends Exception {
        JsonException(String message) {
            super(message, null, false, false);
        }
    }

    public static Object parse(String text) throws JsonException {
        return parse(text, Integer.MAX_VALUE);
    }

    /**
     * As {@link #parse(String)}, refusing a text with more than {@code maxValues} values (objects, arrays, strings,
     * numbers, literals, each counted once): each costs tens of bytes of heap for its two or three of text, so a line
     * of a million empty objects made a client's request take 60 MB — a few such clients at once, and the daemon ran
     * out of heap.
     */
    public static Object parse(String text, int maxValues) throws JsonException {
        JsonParser p = new JsonParser(text, maxValues);
        p.ws();
        Object v = p.value(0);
        p.ws();
        if (p.pos != text.length()) {
            throw p.error("unexpected text after the JSON value");
        }
        return v;
    }

    private JsonException error(String what) {
        return new JsonException(what + " at offset " + pos);
    }

    private void ws() {
        while (pos < s.length()) {
            char c = s.charAt(pos);
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                return;
            }
            pos++;
        }
    }

    private Object value(int depth) throws JsonException {
        if (depth > MAX_DEPTH) {
            throw error("nesting deeper than " + MAX_DEPTH + " levels");
        }
        if (++values > maxValues) {
            throw error("more than " + maxValues + " values");
        }
        if (pos >= s.length()) {
            throw error("unexpected end of input");
        }
        char c = s.charAt(pos);
        return switch (c) {
            case '{' -> object(depth);
            case '[' -> array(depth);
            case '"' -> string();
            case 't' -> literal("true", Boolean.TRUE);
            case 'f' -> literal("false", Boolean.FALSE);
            case 'n' -> literal("null", null);
            default -> {
                if (c == '-' || (c >= '0' && c <= '9')) {
                    yield number();
                }
                throw error("unexpected character '" + printable(c) + "'");
            }
        };
    }

    private static String printable(char c) {
        return c >= 0x20 && c < 0x7f ? String.valueOf(c) : String.format("\\u%04x", (int) c);
    }

    private Object literal(String word, Object v) throws JsonException {
        if (!s.startsWith(word, pos)) {
            throw error("unexpected token (expected " + word + ")");
        }
        pos += word.length();
        return v;
    }

    private Map<String, Object> object(int depth) throws JsonException {
        pos++; // {
        Map<String, Object> m = new LinkedHashMap<>();
        ws();
        if (pos < s.length() && s.charAt(pos) == '}') {
            pos++;
            return m;
        }
        while (true) {
            ws();
            if (pos >= s.length() || s.charAt(pos) != '"') {
                throw error("expected a member name in quotes");
            }
            String key = string();
            ws();
            expect(':');
            ws();
            Object v = value(depth + 1);
            if (m.containsKey(key)) {
                throw error("duplicate member \"" + key + "\"");
            }
            m.put(key, v);
            ws();
            if (pos < s.length() && s.charAt(pos) == ',') {
                pos++;
                continue;
            }
            expect('}');
            return m;
        }
    }

    private List<Object> array(int depth) throws JsonException {
        pos++; // [
        List<Object> l = new ArrayList<>();
        ws();
        if (pos < s.length() && s.charAt(pos) == ']') {
            pos++;
            return l;
        }
        while (true) {
            ws();
            l.add(value(depth + 1));
            ws();
            if (pos < s.length() && s.charAt(pos) == ',') {
                pos++;
                continue;
            }
            expect(']');
            return l;
        }
    }

    private void expect(char c) throws JsonException {
        if (pos >= s.length() || s.charAt(pos) != c) {
            throw error("expected '" + c + "'");
        }
        pos++;
    }

    private String string() throws JsonException {
        pos++; // opening quote
        StringBuilder b = new StringBuilder();
        while (true) {
            if (pos >= s.length()) {
                throw error("unterminated string");
            }
            char c = s.charAt(pos++);
            if (c == '"') {
                return b.toString();
            }
            if (c < 0x20) {
                throw error("control character in a string");
            }
            if (c != '\\') {
                b.append(c);
                continue;
            }
            if (pos >= s.length()) {
                throw error("unterminated escape");
            }
            char e = s.charAt(pos++);
            switch (e) {
                case '"' -> b.append('"');
                case '\\' -> b.append('\\');
                case '/' -> b.append('/');
                case 'b' -> b.append('\b');
                case 'f' -> b.append('\f');
                case 'n' -> b.append('\n');
                case 'r' -> b.append('\r');
                case 't' -> b.append('\t');
                case 'u' -> {
                    if (pos + 4 > s.length()) {
                        throw error("short \\u escape");
                    }
                    int v = 0;
                    for (int i = 0; i < 4; i++) {
                        int d = Character.digit(s.charAt(pos++), 16);
                        if (d < 0) {
                            throw error("bad hex digit in a \\u escape");
                        }
                        v = v * 16 + d;
                    }
                    b.append((char) v);
                }
                default -> throw error("bad escape '\\" + printable(e) + "'");
            }
        }
    }

    private Object number() throws JsonException {
        int start = pos;
        if (s.charAt(pos) == '-') {
            pos++;
        }
        int intStart = pos;
        while (pos < s.length() && Character.isDigit(s.charAt(pos)) && s.charAt(pos) < 0x80) {
            pos++;
        }
        if (pos == intStart || (s.charAt(intStart) == '0' && pos - intStart > 1)) {
            throw error("malformed number");
        }
        boolean integral = true;
        if (pos < s.length() && s.charAt(pos) == '.') {
            integral = false;
            pos++;
            int f = pos;
            while (pos < s.length() && s.charAt(pos) >= '0' && s.charAt(pos) <= '9') {
                pos++;
            }
            if (pos == f) {
                throw error("malformed number");
            }
        }
        if (pos < s.length() && (s.charAt(pos) == 'e' || s.charAt(pos) == 'E')) {
            integral = false;
            pos++;
            if (pos < s.length() && (s.charAt(pos) == '+' || s.charAt(pos) == '-')) {
                pos++;
            }
            int e = pos;
            while (pos < s.length() && s.charAt(pos) >= '0' && s.charAt(pos) <= '9') {
                pos++;
            }
            if (pos == e) {
                throw error("malformed number");
            }
        }
        String t = s.substring(start, pos);
        if (t.length() > 40) {
            throw error("number too long");
        }
        if (integral) {
            try {
                return Long.parseLong(t);
            } catch (NumberFormatException ex) {
                // larger than a long: a BigDecimal below
            }
        }
        try {
            return new BigDecimal(t);
        } catch (NumberFormatException ex) { // the exponent does not fit an int (e.g. 1e99999999999)
            pos = start;
            throw error("number out of range (its exponent is too large)");
        }
    }
}
