// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The JSON writer of every {@code --json} output: maps (in their iteration order), collections, strings, numbers,
 * booleans and null, indented two spaces. Non-finite numbers (NaN, infinity) are written as null, which JSON has no
 * other way to say; any other object as its {@code toString()} string.
 */
public final class Json {
    private Json() {}

    /**
     * An object whose keys keep the order given ({@code Map.of} iterates in an order that changes from one JVM run to
     * the next, and --json promises a fixed order): {@code Json.object("id", id, "removed", true)}.
     */
    public static Map<String, Object> object(Object... keysAndValues) {
        if (keysAndValues.length % 2 != 0) {
            throw new IllegalArgumentException("keys and values come in pairs: " + keysAndValues.length + " given");
        }
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < keysAndValues.length; i += 2) {
            String key = (String) keysAndValues[i];
            if (m.containsKey(key)) {
                throw new IllegalArgumentException("key '" + key + "' given twice");
            }
            m.put(key, keysAndValues[i + 1]);
        }
        return m;
    }

    public static String write(Object value) {
        StringBuilder b = new StringBuilder();
        write(b, value, 0);
        return b.toString();
    }

    /** One line, no spaces: for line-delimited protocols (the daemon's JSON-RPC). */
    public static String compact(Object value) {
        StringBuilder b = new StringBuilder();
        write(b, value, -1);
        return b.toString();
    }

    /** The same as {@link #compact}: one JSON value per line, for JSON-lines logs and streams. */
    public static String writeLine(Object value) {
        return compact(value);
    }

    private static void write(StringBuilder b, Object v, int indent) {
        if (indent < 0) {
            writeCompact(b, v);
            return;
        }
        switch (v) {
            case null -> b.append("null");
            case String s -> string(b, s);
            case Boolean x -> b.append(x);
            case Integer x -> b.append(x);
            case Long x -> b.append(x);
            case Double d -> b.append(d.isNaN() || d.isInfinite() ? "null" : d.toString());
            case Float f -> b.append(f.isNaN() || f.isInfinite() ? "null" : f.toString());
            case Number x -> b.append(x.toString());
            case Map<?, ?> m -> {
                if (m.isEmpty()) {
                    b.append("{}");
                    return;
                }
                b.append("{\n");
                int i = 0;
                for (Map.Entry<?, ?> e : m.entrySet()) {
                    pad(b, indent + 1);
                    string(b, String.valueOf(e.getKey()));
                    b.append(": ");
                    write(b, e.getValue(), indent + 1);
                    b.append(++i < m.size() ? ",\n" : "\n");
                }
                pad(b, indent);
                b.append('}');
            }
            case Collection<?> c -> {
                if (c.isEmpty()) {
                    b.append("[]");
                    return;
                }
                b.append("[\n");
                int i = 0;
                for (Object o : c) {
                    pad(b, indent + 1);
                    write(b, o, indent + 1);
                    b.append(++i < c.size() ? ",\n" : "\n");
                }
                pad(b, indent);
                b.append(']');
            }
            default -> string(b, v.toString());
        }
    }

    private static void writeCompact(StringBuilder b, Object v) {
        switch (v) {
            case Map<?, ?> m -> {
                b.append('{');
                int i = 0;
                for (Map.Entry<?, ?> e : m.entrySet()) {
                    if (i++ > 0) {
                        b.append(',');
                    }
                    string(b, String.valueOf(e.getKey()));
                    b.append(':');
                    writeCompact(b, e.getValue());
                }
                b.append('}');
            }
            case Collection<?> c -> {
                b.append('[');
                int i = 0;
                for (Object o : c) {
                    if (i++ > 0) {
                        b.append(',');
                    }
                    writeCompact(b, o);
                }
                b.append(']');
            }
            case null, default -> write(b, v, 0);
        }
    }

    private static void pad(StringBuilder b, int indent) {
        b.append("  ".repeat(indent));
    }

    private static void string(StringBuilder b, String s) {
        b.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        b.append('"');
    }
}
